//! Retry or stop: the one policy every layer's error goes through.
//!
//! A failure is [`ErrorKind::Transient`] when retrying later, with nobody doing anything,
//! may succeed: the connection or the server's state, never the data. Otherwise it is
//! [`ErrorKind::Definite`], with the [`NextStep`] the operator takes. Errors the server
//! reports are judged by their SQLSTATE in [`sqlstate`] alone (one table: a code means the
//! same on the source, the branch store and the bookkeeping); a layer says only what its
//! own variants are, and which next step fits where the server's code is definite.
//!
//! The supervisor retries transient failures with backoff and parks a connector in
//! `failed` on a definite one; [`NextStep::text`] and [`RETRYING`] are the words the
//! operator then reads.

use std::io;

/// What a failure is to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying later may succeed without anyone changing anything.
    Transient,
    /// Only the operator can clear it.
    Definite(NextStep),
}

impl ErrorKind {
    pub fn is_transient(&self) -> bool {
        matches!(self, ErrorKind::Transient)
    }

    /// Transient when `transient`, else definite with `next`: for an error whose
    /// transience the policy decided and whose next step its layer knows.
    pub fn of(transient: bool, next: NextStep) -> ErrorKind {
        if transient {
            ErrorKind::Transient
        } else {
            ErrorKind::Definite(next)
        }
    }
}

/// What the operator does about a definite failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Fix what the error names (a setting, a privilege, the source URL), then restart.
    FixCause,
    /// Fix it on the branch store; the change is applied again from the last committed
    /// position.
    FixBranchStore,
    /// The bookkeeping's key does not open what was stored with it.
    RestoreKey,
    /// The bookkeeping holds a value tributary never writes.
    RepairBookkeeping,
    /// A bug in tributary; stopping keeps anything from being skipped.
    Report,
    /// The layer's own words, for a case only it can explain.
    Explained(String),
}

/// The next step of a transient failure.
pub const RETRYING: &str =
    "nothing: tributary retries by itself; check connectivity if this persists";

impl NextStep {
    pub fn text(&self) -> String {
        match self {
            NextStep::FixCause => "fix the cause named in the error, then restart tributary".into(),
            NextStep::FixBranchStore => {
                "fix the cause on the branch store (see the error), then run `tributary \
                 connector retry-setup` for this connector (or restart tributary); the change \
                 is applied again from the last committed position"
                    .into()
            }
            NextStep::RestoreKey => {
                "give tributary the key the connector's source URL was stored with \
                 (secrets.key_file or TRIBUTARY__SECRETS__KEY) and restart it, or delete the \
                 connector and create it again"
                    .into()
            }
            NextStep::RepairBookkeeping => {
                "restore the bookkeeping row named in the error (from a backup), or delete the \
                 connector and create it again; tributary never writes such a value"
                    .into()
            }
            NextStep::Report => {
                "report this to the tributary developers with the error; the pipeline stops so \
                 that nothing is skipped"
                    .into()
            }
            NextStep::Explained(text) => text.clone(),
        }
    }
}

/// Whether a server error of SQLSTATE `code` may pass by itself. The one table.
pub fn sqlstate(code: &str) -> bool {
    match code {
        // disk_full: class 53, but no retry frees space.
        "53100" => false,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, in recovery),
        // idle_session_timeout; query_canceled (by an operator: tributary's sessions turn
        // statement_timeout and lock_timeout off).
        "57P01" | "57P02" | "57P03" | "57P05" | "57014" => true,
        // serialization_failure, deadlock_detected, lock_not_available (lock_timeout),
        // object_in_use (a slot or database another session is still leaving).
        "40001" | "40P01" | "55P03" | "55006" => true,
        // Class 08, connection exception; class 53, insufficient resources (too many
        // connections, out of memory, a configured limit such as WAL senders).
        _ => code.starts_with("08") || code.starts_with("53"),
    }
}

/// Whether a tokio-postgres error may pass by itself: by its SQLSTATE when the server sent
/// one; a closed connection, a timeout or any other I/O error otherwise. What remains (a
/// value that does not convert, a protocol surprise) is definite.
pub fn postgres(error: &tokio_postgres::Error) -> bool {
    if let Some(code) = error.code() {
        return sqlstate(code.code());
    }
    error.is_closed() || has_io_cause(error)
}

/// Whether an I/O error is somewhere in the chain of `error`'s causes.
fn has_io_cause(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = error.source();
    while let Some(c) = cause {
        if c.is::<io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_decides_by_sqlstate() {
        for (code, transient) in [
            ("08000", true),
            ("08006", true),
            ("08P01", true),
            ("53000", true),
            ("53100", false),
            ("53200", true),
            ("53300", true),
            ("53400", true),
            ("57P01", true),
            ("57P02", true),
            ("57P03", true),
            ("57P04", false),
            ("57P05", true),
            ("57014", true),
            ("40001", true),
            ("40P01", true),
            ("40002", false),
            ("55P03", true),
            ("55006", true),
            ("55000", false),
            ("28P01", false),
            ("28000", false),
            ("3D000", false),
            ("42501", false),
            ("42P01", false),
            ("42704", false),
            ("23505", false),
            ("22P02", false),
            ("58030", false),
            ("XX000", false),
        ] {
            assert_eq!(sqlstate(code), transient, "{code}");
        }
    }

    #[test]
    fn kinds_and_next_steps() {
        assert!(ErrorKind::of(true, NextStep::Report).is_transient());
        assert_eq!(
            ErrorKind::of(false, NextStep::FixBranchStore),
            ErrorKind::Definite(NextStep::FixBranchStore)
        );
        assert!(NextStep::RestoreKey
            .text()
            .contains("TRIBUTARY__SECRETS__KEY"));
        assert!(NextStep::FixBranchStore.text().contains("retry-setup"));
        assert_eq!(NextStep::Explained("do x".into()).text(), "do x");
        assert!(!NextStep::FixCause.text().contains("retries by itself"));
    }

    #[test]
    fn errors_without_a_sqlstate_are_transient_when_the_connection_failed() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let wrapped: Box<dyn std::error::Error + 'static> = Box::new(Wrapper(io));
        assert!(has_io_cause(wrapped.as_ref()));
        let plain: Box<dyn std::error::Error + 'static> = Box::new(std::fmt::Error);
        assert!(!has_io_cause(plain.as_ref()));
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
