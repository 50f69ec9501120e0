//! The target transaction's state: idle, open, or failed until rolled back.

use super::ReplicaSink;
use crate::sink::error::SinkError;
use crate::sink::replica::setup;

pub(super) enum TxState {
    Idle,
    Open {
        /// Changes applied in this target transaction.
        changes: u64,
    },
    /// The open transaction failed; only [`ReplicaSink::rollback`] gets out.
    Failed {
        first: String,
        transient: bool,
    },
}

impl ReplicaSink {
    /// Counts a change (or a schema change) in the open target transaction.
    pub(super) fn count_change(&mut self) {
        if let TxState::Open { changes } = &mut self.state {
            *changes += 1;
        }
    }

    /// Abandons the open target transaction, including whatever is buffered or in flight.
    pub async fn rollback(&mut self) -> Result<(), SinkError> {
        self.forget_transaction();
        if matches!(
            std::mem::replace(&mut self.state, TxState::Idle),
            TxState::Idle
        ) {
            return Ok(());
        }
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(setup(&self.database, "rolling back the target transaction"))
    }

    /// Whether a target transaction is open (also a failed one, until rolled back).
    pub fn in_transaction(&self) -> bool {
        !matches!(self.state, TxState::Idle)
    }

    pub(super) fn usable(&self) -> Result<(), SinkError> {
        match &self.state {
            TxState::Failed { first, transient } => Err(SinkError::Aborted {
                first: first.clone(),
                transient: *transient,
            }),
            _ => Ok(()),
        }
    }

    /// Marks the open transaction failed when `result` is an error.
    pub(super) fn note<T>(&mut self, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(error) = &result {
            if !matches!(self.state, TxState::Idle) {
                self.state = TxState::Failed {
                    first: error.to_string(),
                    transient: error.is_transient(),
                };
            }
        }
        result
    }

    fn forget_transaction(&mut self) {
        // Dropping a request whose reply is outstanding is fine: the connection discards
        // replies nobody waits for.
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        for table in self.open_batches.drain(..) {
            self.tables[table].open = None;
        }
        self.buffered_bytes = 0;
        self.truncate = None;
        self.refreshed = None;
        self.unplaced.clear();
        self.locked_progress = None;
    }

    /// After an error in commit: make sure no transaction stays open, best effort (a lost
    /// connection ends it anyway).
    pub(super) async fn abandon(&mut self) {
        if let Err(e) = self.rollback().await {
            tracing::debug!("rolling back after a failed commit: {e}");
        }
    }
}
