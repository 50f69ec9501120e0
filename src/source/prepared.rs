//! Prepared transactions (two-phase commit) on the source, and why a new slot waits.
//!
//! Creating a logical slot waits until every transaction that was running when it started
//! has ended, to find its consistent point; prepared transactions count. A prepared
//! transaction has left its session, so `pg_stat_activity` does not list it: only
//! `pg_prepared_xacts` does, and it stays until someone runs `COMMIT PREPARED` or
//! `ROLLBACK PREPARED`. Preflight, the pipeline (while its slot waits) and `status` name
//! them from here.

use std::fmt;

use tokio_postgres::Client;

use crate::pg::quote_literal;

/// The pending prepared transactions, oldest first: gid, owner, database, prepared at.
/// Every role may read the view.
pub const PENDING_SQL: &str = "SELECT gid, owner::text, database::text,
                                      to_char(prepared AT TIME ZONE 'UTC',
                                              'YYYY-MM-DD HH24:MI:SS \"UTC\"')
                                 FROM pg_catalog.pg_prepared_xacts ORDER BY prepared";

/// One row of `pg_prepared_xacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedXact {
    pub gid: String,
    pub owner: String,
    pub database: String,
    /// When it was prepared, as text (UTC).
    pub prepared: String,
}

impl fmt::Display for PreparedXact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (owner {}, database {}, prepared at {})",
            quote_literal(&self.gid),
            self.owner,
            self.database,
            self.prepared
        )
    }
}

/// The prepared transactions pending on the source.
pub async fn pending(client: &Client) -> Result<Vec<PreparedXact>, tokio_postgres::Error> {
    Ok(client
        .query(PENDING_SQL, &[])
        .await?
        .iter()
        .map(|row| PreparedXact {
            gid: row.get(0),
            owner: row.get(1),
            database: row.get(2),
            prepared: row.get(3),
        })
        .collect())
}

/// The pending prepared transactions, and how to end them.
pub fn describe(pending: &[PreparedXact]) -> String {
    let listed: Vec<String> = pending.iter().map(ToString::to_string).collect();
    let first = &pending[0];
    format!(
        "{} prepared transaction{} pending (pg_prepared_xacts lists {}; pg_stat_activity \
         does not): {}; end {} with COMMIT PREPARED {gid} or ROLLBACK PREPARED {gid}, \
         connected to database {} as its owner or a superuser (or let the transaction \
         manager that prepared {} finish)",
        pending.len(),
        if pending.len() == 1 { " is" } else { "s are" },
        if pending.len() == 1 { "it" } else { "them" },
        listed.join(", "),
        if pending.len() == 1 { "it" } else { "each" },
        first.database,
        if pending.len() == 1 { "it" } else { "them" },
        gid = quote_literal(&first.gid),
    )
}

/// Why creating a slot (its consistent point) is taking long: the pending prepared
/// transactions when there are some, else where to look for long-running ones.
pub fn slot_wait_reason(pending: &[PreparedXact]) -> String {
    let waits = "creating a logical slot waits until every transaction running on the source \
                 has ended";
    if pending.is_empty() {
        format!(
            "{waits}: find the long-running ones with SELECT pid, xact_start, state, query \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start"
        )
    } else {
        format!("{waits}, and {}", describe(pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xact(gid: &str) -> PreparedXact {
        PreparedXact {
            gid: gid.into(),
            owner: "app".into(),
            database: "shop".into(),
            prepared: "2024-05-01 10:00:00 UTC".into(),
        }
    }

    #[test]
    fn reasons_name_prepared_transactions_or_where_to_look() {
        assert!(slot_wait_reason(&[]).contains("FROM pg_stat_activity WHERE backend_xid"));
        let one = slot_wait_reason(&[xact("it's")]);
        assert!(
            one.contains(
                "1 prepared transaction is pending (pg_prepared_xacts lists it; \
                 pg_stat_activity does not): 'it''s' (owner app, database shop, prepared at \
                 2024-05-01 10:00:00 UTC); end it with COMMIT PREPARED 'it''s' or ROLLBACK \
                 PREPARED 'it''s', connected to database shop"
            ),
            "{one}"
        );
        let two = describe(&[xact("a"), xact("b")]);
        assert!(
            two.starts_with("2 prepared transactions are pending"),
            "{two}"
        );
        assert!(two.contains("'a' (owner app"), "{two}");
        assert!(two.contains("'b' (owner app"), "{two}");
        assert!(two.contains("end each with"), "{two}");
    }
}
