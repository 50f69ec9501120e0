//! Named crash points: the windows where a kill -9 leaves the most to recover, made
//! reachable on purpose so that a test can stop the process exactly there instead of
//! hoping a random kill lands in them.
//!
//! They exist only with the `crash-points` feature. `cargo test` turns it on (Cargo.toml
//! lists the crate as its own dev-dependency with the feature), so the binary the
//! integration tests run has them and a `cargo build` or `cargo install` has none: in a
//! release build [`reach`] compiles to nothing and the environment variable means nothing.

/// A place in the code where the process may be killed for a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A snapshot's rows are copied into the replica, the progress row saying so is not
    /// written yet.
    AfterCopyBeforeProgress,
    /// The slot exists on the source, no transaction has been committed from it yet.
    AfterSlotBeforeFirstCommit,
    /// A branch's database is being created from its connector's replica.
    DuringBranchCut,
    /// `connector delete` has dropped the slot, the replica and bookkeeping rows remain.
    DuringDelete,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 4] = [
        CrashPoint::AfterCopyBeforeProgress,
        CrashPoint::AfterSlotBeforeFirstCommit,
        CrashPoint::DuringBranchCut,
        CrashPoint::DuringDelete,
    ];

    /// The name `TRIBUTARY_CRASH_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterCopyBeforeProgress => "after-copy-before-progress",
            CrashPoint::AfterSlotBeforeFirstCommit => "after-slot-before-first-commit",
            CrashPoint::DuringBranchCut => "during-branch-cut",
            CrashPoint::DuringDelete => "during-delete",
        }
    }
}

/// The environment variable naming the crash point to stop at: `<name>` stops the first
/// time the point is reached, `<name>:<n>` the n-th time.
pub const ENV: &str = "TRIBUTARY_CRASH_AT";

/// Kills this process with SIGKILL, as an operator's `kill -9` would, when `ENV` names
/// `point` (and this is the n-th time it is reached): no destructor, no graceful
/// shutdown, no flushed buffer runs.
#[inline]
pub fn reach(point: CrashPoint) {
    #[cfg(feature = "crash-points")]
    if is_due(point, std::env::var(ENV).as_deref().unwrap_or("")) {
        eprintln!("crash point {} reached: killing the process", point.name());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // `kill` missing from PATH: still never go on past the point.
        std::process::abort();
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}

/// Whether `point` is due now under the setting `wanted`; counts the times each point was
/// reached in this process.
#[cfg(feature = "crash-points")]
fn is_due(point: CrashPoint, wanted: &str) -> bool {
    use std::sync::atomic::{AtomicU32, Ordering};
    static REACHED: [AtomicU32; CrashPoint::ALL.len()] =
        [const { AtomicU32::new(0) }; CrashPoint::ALL.len()];
    let (name, nth) = match wanted.split_once(':') {
        Some((name, n)) => (name, n.parse().unwrap_or(1)),
        None => (wanted, 1),
    };
    if name != point.name() {
        return false;
    }
    let index = CrashPoint::ALL
        .iter()
        .position(|p| *p == point)
        .unwrap_or(0);
    REACHED[index].fetch_add(1, Ordering::Relaxed) + 1 == nth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_kebab_case() {
        let names: std::collections::HashSet<_> =
            CrashPoint::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), CrashPoint::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
    }

    #[test]
    fn a_point_is_due_the_nth_time_it_is_reached() {
        let point = CrashPoint::DuringDelete;
        let wanted = "during-delete:3";
        let due: Vec<bool> = (0..4).map(|_| is_due(point, wanted)).collect();
        assert_eq!(due, [false, false, true, false]);
        assert!(!is_due(CrashPoint::DuringBranchCut, wanted));
        assert!(!is_due(CrashPoint::DuringBranchCut, ""));
    }

    #[test]
    fn unit_tests_are_built_with_the_crash_points() {
        // The integration tests rely on the same self dev-dependency turning the feature on.
        let built_with = cfg!(feature = "crash-points");
        assert!(
            built_with,
            "cargo test must build with the crash-points feature"
        );
    }
}
