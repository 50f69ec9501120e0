//! Which PostgreSQL major versions work together in a connector: the source, the branch
//! store, and the `pg_dump` and `pg_restore` its snapshots run. Pure rules; `connector
//! create`, `retry-setup` and the snapshot (`tools.rs`) apply them.
//!
//! - **Branch store ≥ source.** The replica gets the source's schema as `pg_dump` writes
//!   it, and PostgreSQL only means a dump for servers of the dumped version or newer: a
//!   newer server's definitions use what an older one lacks (pg_restore of a 18 source
//!   into a 15 store fails on its first statement), and so may the schema changes replayed
//!   later. So the pair is refused before anything is created.
//! - **pg_dump ≥ source.** pg_dump refuses servers newer than itself.
//! - **pg_restore 17 or newer only into a store of 17 or newer.** It starts every session
//!   with `SET transaction_timeout = 0`, a setting servers before 17 do not have, so the
//!   restore fails at once (checked: pg_restore 18 into 15, a dump of a 13 source). Older
//!   programs restore into older stores: 16's into 13 and into 14 are round trips of the
//!   version matrix (`tests/versions.rs`).
//!
//! PostgreSQL promises a dump only for servers of the dumping program's version or newer,
//! so where the client programs are searched for, those of a version from the source's to
//! the store's are preferred; newer ones that the rules above allow are the fallback.

use std::fmt;

/// The first version whose pg_restore sets `transaction_timeout`.
const TRANSACTION_TIMEOUT: u32 = 17;

/// A branch store older than the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the branch store runs PostgreSQL {store_major}, older than the source's PostgreSQL \
     {source_major}: a schema dumped from a newer server is not meant for an older one (its \
     definitions, and the schema changes replayed later, may use what PostgreSQL \
     {store_major} lacks); use a branch store of PostgreSQL {source_major} or newer \
     (store.url), or upgrade this one"
)]
pub struct StoreTooOld {
    pub source_major: u32,
    pub store_major: u32,
}

/// Refuses a branch store older than the source.
pub fn check_store(source: u32, store: u32) -> Result<(), StoreTooOld> {
    if store < source {
        return Err(StoreTooOld {
            source_major: source,
            store_major: store,
        });
    }
    Ok(())
}

/// The client programs' major versions a snapshot of a `source` server into a `store`
/// server can use (the store is at least the source: [`check_store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolRange {
    pub source: u32,
    pub store: u32,
}

/// Why client programs of some version cannot take part in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolProblem {
    /// pg_dump is older than the source server.
    OlderThanSource,
    /// pg_restore sets `transaction_timeout`, which the store does not have.
    SetsTransactionTimeout,
}

impl ToolRange {
    pub fn new(source: u32, store: u32) -> ToolRange {
        ToolRange { source, store }
    }

    /// The newest version that fits, when there is a limit.
    fn newest(&self) -> Option<u32> {
        (self.store < TRANSACTION_TIMEOUT).then_some(TRANSACTION_TIMEOUT - 1)
    }

    /// Whether programs of version `tool` can snapshot the source into the store.
    pub fn check(&self, tool: u32) -> Result<(), ToolProblem> {
        if tool < self.source {
            return Err(ToolProblem::OlderThanSource);
        }
        if self.newest().is_some_and(|newest| tool > newest) {
            return Err(ToolProblem::SetsTransactionTimeout);
        }
        Ok(())
    }

    /// Among the versions of the client programs installed, the one to use: the newest
    /// that fits and is not newer than the store, else the newest that fits, else the
    /// newest (which the snapshot then refuses, saying which versions fit); `None` when
    /// none is installed.
    pub fn choose(&self, installed: &[u32]) -> Option<u32> {
        let fitting: Vec<u32> = installed
            .iter()
            .copied()
            .filter(|tool| self.check(*tool).is_ok())
            .collect();
        let promised = fitting.iter().copied().filter(|tool| *tool <= self.store);
        promised
            .max()
            .or_else(|| fitting.iter().copied().max())
            .or_else(|| installed.iter().copied().max())
    }

    /// What `problem` means, following "programs of PostgreSQL N, …".
    pub fn explain(&self, problem: ToolProblem) -> String {
        match problem {
            ToolProblem::OlderThanSource => format!(
                "older than the source's PostgreSQL {} (pg_dump must be at least the source's \
                 major version, and pg_restore at least pg_dump's)",
                self.source
            ),
            ToolProblem::SetsTransactionTimeout => format!(
                "whose pg_restore cannot restore into the branch store's PostgreSQL {} (from \
                 {TRANSACTION_TIMEOUT} on it sets transaction_timeout, which older servers do \
                 not have)",
                self.store
            ),
        }
    }
}

impl fmt::Display for ToolRange {
    /// The versions that fit and the package to install, e.g. "the client programs of
    /// PostgreSQL 13 to 16 (postgresql-client-15)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's own version always fits, and PostgreSQL promises its dumps restore.
        let package = format!("postgresql-client-{}", self.store);
        match self.newest() {
            Some(newest) if newest == self.source => {
                write!(f, "the client programs of PostgreSQL {newest} ({package})")
            }
            Some(newest) => write!(
                f,
                "the client programs of PostgreSQL {} to {newest} ({package})",
                self.source
            ),
            None => write!(
                f,
                "the client programs of PostgreSQL {} or newer ({package})",
                self.source
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_older_than_the_source_is_refused() {
        for (source, store, refused) in [
            (13, 13, false),
            (13, 18, false),
            (15, 14, true),
            (18, 15, true),
            (18, 18, false),
            (17, 16, true),
        ] {
            assert_eq!(
                check_store(source, store).is_err(),
                refused,
                "{source} → {store}"
            );
        }
        let message = check_store(18, 15).unwrap_err().to_string();
        assert!(message.contains("PostgreSQL 15"), "{message}");
        assert!(
            message.contains("branch store of PostgreSQL 18 or newer"),
            "{message}"
        );
    }

    #[test]
    fn client_programs_fit_between_the_source_and_what_the_store_understands() {
        use ToolProblem::*;
        for (source, store, tool, expected) in [
            (13, 13, 13, Ok(())),
            (13, 13, 16, Ok(())),
            (13, 13, 17, Err(SetsTransactionTimeout)),
            (13, 15, 18, Err(SetsTransactionTimeout)),
            (15, 14, 15, Ok(())),
            (15, 16, 14, Err(OlderThanSource)),
            (16, 16, 16, Ok(())),
            (13, 17, 18, Ok(())),
            (17, 17, 16, Err(OlderThanSource)),
            (18, 18, 18, Ok(())),
            (18, 18, 19, Ok(())),
        ] {
            assert_eq!(
                ToolRange::new(source, store).check(tool),
                expected,
                "{tool} for {source} → {store}"
            );
        }
    }

    #[test]
    fn the_programs_to_use_are_the_newest_that_fit_preferably_not_newer_than_the_store() {
        for (source, store, installed, expected) in [
            (13, 15, &[18, 16, 15][..], Some(15)),
            (13, 15, &[18, 16][..], Some(16)),
            (13, 15, &[18][..], Some(18)),
            (13, 18, &[13, 16, 17, 18][..], Some(18)),
            (15, 17, &[18, 16][..], Some(16)),
            (15, 17, &[18, 14][..], Some(18)),
            (17, 17, &[15][..], Some(15)),
            (15, 15, &[][..], None),
        ] {
            assert_eq!(
                ToolRange::new(source, store).choose(installed),
                expected,
                "{installed:?} for {source} → {store}"
            );
        }
    }

    #[test]
    fn the_advice_names_the_versions_that_fit_and_a_package() {
        for (source, store, expected) in [
            (
                13,
                15,
                "the client programs of PostgreSQL 13 to 16 (postgresql-client-15)",
            ),
            (
                16,
                16,
                "the client programs of PostgreSQL 16 (postgresql-client-16)",
            ),
            (
                15,
                18,
                "the client programs of PostgreSQL 15 or newer (postgresql-client-18)",
            ),
        ] {
            assert_eq!(ToolRange::new(source, store).to_string(), expected);
        }
        let range = ToolRange::new(13, 15);
        assert!(range
            .explain(ToolProblem::SetsTransactionTimeout)
            .contains("branch store's PostgreSQL 15 (from 17 on it sets transaction_timeout"));
        assert!(ToolRange::new(18, 18)
            .explain(ToolProblem::OlderThanSource)
            .contains("source's PostgreSQL 18"));
    }
}
