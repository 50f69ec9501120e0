//! Preflight's judgements of single tables that cannot be replicated as they are: without
//! a usable replica identity, or unlogged.

use super::{display, identity_check, plural, Check, Server, Table, UNLOGGED};
use crate::pg::{quote_ident, quote_table};
use crate::source::identity::{Missing, ReplicaIdentity};

/// The failing check of a table without a usable replica identity, with its cause and fix.
pub(super) fn judge_missing_identity(table: &Table) -> Check {
    let name = identity_check(&table.name);
    let sql = quote_table(&table.name);
    let alternatives = format!(
        "add a primary key; or ALTER TABLE {sql} REPLICA IDENTITY FULL; (every UPDATE and \
         DELETE then logs the whole old row); or exclude the table from the connector"
    );
    let dropped = "wal2json drops its UPDATEs and DELETEs with only a warning";
    let ReplicaIdentity::Nothing(missing) = table.identity else {
        unreachable!("only tables without an identity are judged here")
    };
    match (missing, &table.usable_index) {
        // The key is there; only the setting keeps it from serving.
        (Missing::Declared { primary_key: true }, _) => Check::fail(
            name,
            format!("REPLICA IDENTITY NOTHING although it has a primary key: {dropped}"),
            format!(
                "ALTER TABLE {sql} REPLICA IDENTITY DEFAULT; (its primary key becomes the \
                 identity); or exclude the table from the connector"
            ),
        ),
        (Missing::Declared { primary_key: false }, None) => Check::fail(
            name,
            format!("REPLICA IDENTITY NOTHING: {dropped}"),
            alternatives,
        ),
        (Missing::DeferrableKey, _) => Check::fail(
            name,
            format!("none: {}; {dropped}", missing.describe()),
            format!(
                "re-create the primary key NOT DEFERRABLE; or ALTER TABLE {sql} REPLICA \
                 IDENTITY FULL; or exclude the table from the connector"
            ),
        ),
        (_, Some(index)) => Check::fail(
            name,
            format!(
                "none: {} ({dropped}), although unique index {index} could serve",
                missing.describe()
            ),
            format!(
                "ALTER TABLE {sql} REPLICA IDENTITY USING INDEX {};",
                quote_ident(index)
            ),
        ),
        (Missing::NoKey, None) => Check::fail(
            name,
            format!("none: no primary key and no unique index on NOT NULL columns; {dropped}"),
            alternatives,
        ),
        (Missing::IndexDropped, None) => Check::fail(
            name,
            format!("none: {}; {dropped}", missing.describe()),
            alternatives,
        ),
    }
}

/// Unlogged tables are not replicated: PostgreSQL writes none of their changes to the
/// WAL. The replica gets their definitions, empty; a warning, since that may be intended.
pub(super) fn judge_unlogged(server: &Server) -> Check {
    let unlogged: Vec<String> = server
        .relations
        .iter()
        .filter(|r| r.unlogged)
        .map(|r| display(&r.name))
        .collect();
    if unlogged.is_empty() {
        return Check::pass(UNLOGGED, "none");
    }
    Check::warn(
        UNLOGGED,
        format!(
            "{} not replicated (their changes are not in the WAL): {}",
            unlogged.len(),
            unlogged.join(", ")
        ),
        format!(
            "the replica and its branches get {} definition{} without rows; ALTER TABLE … SET \
             LOGGED on the source before creating the connector to replicate {}",
            if unlogged.len() == 1 { "its" } else { "their" },
            plural(unlogged.len()),
            if unlogged.len() == 1 { "it" } else { "them" },
        ),
    )
}
