//! Which replica identity logical decoding really uses for a table.
//!
//! `relreplident` alone does not say: PostgreSQL takes an index as the table's key only if
//! it is valid and immediate (relcache's `RelationGetIndexList`). So a DEFERRABLE primary
//! key leaves a `REPLICA IDENTITY DEFAULT` table without any identity, and so does dropping
//! the index of `REPLICA IDENTITY USING INDEX` (the setting stays `i`). wal2json then drops
//! the table's UPDATEs and DELETEs with only a WARNING. Preflight, the snapshot and the
//! running pipeline all classify through [`classify`], over the columns of [`FACTS_SQL`].

/// Which old values an UPDATE or DELETE carries (`ALTER TABLE … REPLICA IDENTITY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The default, with a primary key: the key's columns.
    PrimaryKey,
    /// `USING INDEX`: the columns of this unique index (in the table's schema).
    Index(String),
    /// Every column of the old row.
    Full,
    /// No old values, for the reason given. UPDATE and DELETE on such a table cannot be
    /// applied to a replica (wal2json leaves them out).
    Nothing(Missing),
}

impl ReplicaIdentity {
    /// Whether UPDATEs and DELETEs carry a key the replica can find rows by.
    pub fn is_usable(&self) -> bool {
        !matches!(self, ReplicaIdentity::Nothing(_))
    }
}

/// Why a table has no usable replica identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `REPLICA IDENTITY NOTHING` was set; `primary_key`: the table has a usable one,
    /// which `REPLICA IDENTITY DEFAULT` would make its identity.
    Declared { primary_key: bool },
    /// `REPLICA IDENTITY DEFAULT` and no primary key.
    NoKey,
    /// `REPLICA IDENTITY DEFAULT` and a DEFERRABLE primary key, which PostgreSQL ignores.
    DeferrableKey,
    /// `REPLICA IDENTITY USING INDEX` whose index was dropped (or is not usable).
    IndexDropped,
}

impl Missing {
    /// The cause, as the end of a sentence about the table.
    pub fn describe(self) -> &'static str {
        match self {
            Missing::Declared { .. } => "REPLICA IDENTITY NOTHING is set",
            Missing::NoKey => "it has no primary key (REPLICA IDENTITY DEFAULT)",
            Missing::DeferrableKey => {
                "its primary key is DEFERRABLE, which PostgreSQL does not use as a replica \
                 identity (REPLICA IDENTITY DEFAULT)"
            }
            Missing::IndexDropped => {
                "the index of its REPLICA IDENTITY USING INDEX was dropped, which leaves it \
                 without an identity"
            }
        }
    }
}

/// Four columns over `pg_class c`: `relreplident`, whether a usable primary key exists,
/// whether a DEFERRABLE one does, and the usable identity index's name.
pub const FACTS_SQL: &str = "c.relreplident::text,
       EXISTS (SELECT FROM pg_catalog.pg_index i
                WHERE i.indrelid = c.oid AND i.indisprimary AND i.indimmediate
                  AND i.indisvalid),
       EXISTS (SELECT FROM pg_catalog.pg_index i
                WHERE i.indrelid = c.oid AND i.indisprimary AND NOT i.indimmediate),
       (SELECT ic.relname::text FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = c.oid AND i.indisreplident AND i.indimmediate AND i.indisvalid)";

/// The identity from the columns of [`FACTS_SQL`].
pub fn classify(
    replident: &str,
    primary_key: bool,
    deferrable_key: bool,
    index: Option<String>,
) -> ReplicaIdentity {
    match (replident, index) {
        ("f", _) => ReplicaIdentity::Full,
        ("d", _) if primary_key => ReplicaIdentity::PrimaryKey,
        ("d", _) if deferrable_key => ReplicaIdentity::Nothing(Missing::DeferrableKey),
        ("d", _) => ReplicaIdentity::Nothing(Missing::NoKey),
        ("i", Some(index)) => ReplicaIdentity::Index(index),
        ("i", None) => ReplicaIdentity::Nothing(Missing::IndexDropped),
        _ => ReplicaIdentity::Nothing(Missing::Declared { primary_key }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_postgres_uses_count() {
        use Missing::*;
        use ReplicaIdentity::*;
        let ix = || Some("t_code_key".to_owned());
        for (replident, pk, deferrable, index, expected) in [
            ("d", true, false, None, PrimaryKey),
            ("d", false, true, None, Nothing(DeferrableKey)),
            ("d", false, false, None, Nothing(NoKey)),
            ("d", false, false, ix(), Nothing(NoKey)),
            ("f", false, true, None, Full),
            ("f", false, false, None, Full),
            ("i", true, false, ix(), Index("t_code_key".into())),
            ("i", true, false, None, Nothing(IndexDropped)),
            (
                "n",
                true,
                false,
                None,
                Nothing(Declared { primary_key: true }),
            ),
            (
                "n",
                false,
                false,
                ix(),
                Nothing(Declared { primary_key: false }),
            ),
        ] {
            let identity = classify(replident, pk, deferrable, index.clone());
            assert_eq!(
                identity, expected,
                "{replident} pk={pk} deferrable={deferrable} {index:?}"
            );
            assert_eq!(identity.is_usable(), !matches!(expected, Nothing(_)));
        }
    }

    #[test]
    fn every_cause_reads_as_a_reason() {
        assert!(Missing::DeferrableKey.describe().contains("DEFERRABLE"));
        assert!(Missing::IndexDropped.describe().contains("dropped"));
        assert!(Missing::NoKey.describe().contains("no primary key"));
        assert!(Missing::Declared { primary_key: true }
            .describe()
            .contains("NOTHING"));
    }
}
