//! Which position may be acknowledged to the source.
//!
//! Two sources of truth: the sink says which commits are durable, and keepalives say how
//! far the server has read. A keepalive's position may be acknowledged only while no
//! received transaction is waiting to be applied: otherwise a crash after the
//! acknowledgement would skip that transaction for good. Transactions can begin at a lower
//! LSN than an earlier transaction's commit (they interleave on the server), so "in
//! flight" is tracked by begin/commit, never by comparing LSNs.

use crate::types::Lsn;

#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    /// A BEGIN was received whose COMMIT was not.
    in_transaction: bool,
    /// End of the last commit received.
    last_commit: Lsn,
    /// What may be reported as flushed.
    durable: Lsn,
}

impl AckTracker {
    /// Starts from a durable position (the replica's applied LSN).
    pub fn new(durable: Lsn) -> AckTracker {
        AckTracker {
            in_transaction: false,
            last_commit: durable,
            durable,
        }
    }

    pub fn begin(&mut self) {
        self.in_transaction = true;
    }

    /// A commit was received (not yet applied); `end_lsn` is the position after it.
    pub fn commit(&mut self, end_lsn: Lsn) {
        self.in_transaction = false;
        self.last_commit = self.last_commit.max(end_lsn);
    }

    /// The sink made everything up to `lsn` durable.
    pub fn applied(&mut self, lsn: Lsn) {
        self.durable = self.durable.max(lsn);
    }

    /// A keepalive said the server has sent everything before `wal_end`. Returns the
    /// position that may be recorded as applied (and then passed to [`AckTracker::applied`])
    /// when nothing received is waiting to be applied; `None` otherwise.
    ///
    /// The owner records it durably before acknowledging it, so that the acknowledged
    /// position never runs ahead of the position stored with the data.
    pub fn idle_position(&self, wal_end: Lsn) -> Option<Lsn> {
        (!self.in_transaction && self.durable >= self.last_commit && wal_end > self.durable)
            .then_some(wal_end)
    }

    /// The position to report as flushed.
    pub fn flushed(&self) -> Lsn {
        self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(n: u64) -> Lsn {
        Lsn::new(n)
    }

    #[test]
    fn idle_keepalives_advance_the_acknowledgement() {
        let mut t = AckTracker::new(lsn(100));
        assert_eq!(t.idle_position(lsn(500)), Some(lsn(500)));
        t.applied(lsn(500));
        assert_eq!(t.flushed(), lsn(500));
    }

    #[test]
    fn keepalive_inside_a_transaction_is_not_acknowledged() {
        let mut t = AckTracker::new(lsn(100));
        t.begin();
        assert_eq!(t.idle_position(lsn(900)), None);
    }

    #[test]
    fn received_but_unapplied_commit_blocks_keepalives() {
        let mut t = AckTracker::new(lsn(100));
        t.begin();
        t.commit(lsn(300));
        assert_eq!(
            t.idle_position(lsn(900)),
            None,
            "commit 300 is not durable yet"
        );
        t.applied(lsn(300));
        assert_eq!(t.flushed(), lsn(300));
        assert_eq!(t.idle_position(lsn(900)), Some(lsn(900)));
    }

    #[test]
    fn interleaved_transaction_starting_below_the_last_commit_is_in_flight() {
        // tx A commits at 300 (applied); tx B began at 150 and is still streaming.
        let mut t = AckTracker::new(lsn(100));
        t.begin();
        t.commit(lsn(300));
        t.applied(lsn(300));
        t.begin();
        assert_eq!(t.idle_position(lsn(900)), None);
    }

    #[test]
    fn never_moves_backwards() {
        let mut t = AckTracker::new(lsn(500));
        t.applied(lsn(200));
        assert_eq!(t.idle_position(lsn(300)), None);
        assert_eq!(t.flushed(), lsn(500));
    }
}
