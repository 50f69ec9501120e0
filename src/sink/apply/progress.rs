//! The target transaction's ends, where exactly-once is kept (see the module docs of
//! `apply`): BEGIN with the progress row read and locked, which checks the fencing token
//! too; the end LSN recorded in the progress row and COMMIT, once every reply was checked.

use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::queue::{Op, Outcome, Request};
use super::transaction::TxState;
use super::{ReplicaSink, ROW_BYTES};
use crate::sink::error::SinkError;
use crate::sink::replica::{read_applied_lsn, setup, READ_PROGRESS_SQL, RECORD_PROGRESS_SQL};
use crate::types::Lsn;

pub(super) struct ProgressStatements {
    pub(super) read: Statement,
    pub(super) record: Statement,
}

impl ReplicaSink {
    /// The applied LSN recorded in the replica; `None` when none was recorded yet (the
    /// snapshot has not finished, or the replica was never prepared). Inside an open
    /// target transaction it is still the committed value: the transaction writes the row
    /// only in [`ReplicaSink::commit`].
    pub async fn applied_lsn(&mut self) -> Result<Option<Lsn>, SinkError> {
        self.usable()?;
        match read_applied_lsn(&self.client, &self.database).await {
            Ok(lsn) => Ok(lsn),
            Err(error) => Err(self.earlier_error_or(error).await),
        }
    }

    /// Records `lsn` as applied in a transaction of its own: the consistent point when a
    /// snapshot completes, or an idle position. Refuses to move the progress backwards.
    pub async fn mark_applied(&mut self, lsn: Lsn) -> Result<(), SinkError> {
        if !matches!(self.state, TxState::Idle) {
            return Err(SinkError::Misuse(
                "mark_applied() was called while a target transaction is open",
            ));
        }
        let result = self.commit_at(lsn, true).await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    /// Sends what is buffered, records `end_lsn` as applied in the same transaction, and
    /// commits. After it returns `Ok`, everything up to `end_lsn` is durable. Without an
    /// open transaction it records the position alone.
    ///
    /// A transaction that applied changes must end past the recorded LSN (else it applies
    /// them twice: [`SinkError::ProgressBackwards`]); an empty one at or below it is
    /// skipped. On error the transaction is rolled back.
    pub async fn commit(&mut self, end_lsn: Lsn) -> Result<(), SinkError> {
        if let TxState::Failed { first, transient } = &self.state {
            let error = SinkError::Aborted {
                first: first.clone(),
                transient: *transient,
            };
            self.abandon().await;
            return Err(error);
        }
        let result = self.commit_at(end_lsn, false).await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    /// Opens the target transaction unless one is open: BEGIN, and the progress row read
    /// and locked, both pipelined with the first change.
    pub(super) async fn begin(&mut self) -> Result<(), SinkError> {
        if !matches!(self.state, TxState::Idle) {
            return Ok(());
        }
        let read = self.progress_statements().await?.read.clone();
        self.state = TxState::Open { changes: 0 };
        self.locked_progress = None;
        let client = Arc::clone(&self.client);
        let begin: Request = Box::pin(async move {
            client
                .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await
                .map(|()| Outcome::Rows(0))
        });
        self.push(begin, Op::Begin, ROW_BYTES).await?;
        let client = Arc::clone(&self.client);
        let read: Request = Box::pin(async move {
            let rows = client.query(&read, &[]).await?;
            Ok(Outcome::Progress(
                rows.first().map(|row| (row.get(0), row.get(1))),
            ))
        });
        self.push(read, Op::ReadProgress, ROW_BYTES).await
    }

    /// The progress statements, prepared on first use (outside any transaction), so that
    /// connecting works on a replica whose progress table does not exist yet.
    pub(super) async fn progress_statements(&mut self) -> Result<&ProgressStatements, SinkError> {
        if self.progress.is_none() {
            self.drain().await?;
            let preparing = || setup(&self.database, "preparing the progress statements");
            let read = self
                .client
                .prepare(READ_PROGRESS_SQL)
                .await
                .map_err(preparing())?;
            let record = self
                .client
                .prepare_typed(RECORD_PROGRESS_SQL, &[Type::TEXT])
                .await
                .map_err(preparing())?;
            self.progress = Some(ProgressStatements { read, record });
        }
        Ok(self.progress.as_ref().expect("prepared above"))
    }

    /// Sends whatever is buffered, checks every reply, records `end_lsn` and commits.
    /// `strict`: refuse (rather than skip) an empty transaction that does not advance.
    pub(super) async fn commit_at(&mut self, end_lsn: Lsn, strict: bool) -> Result<(), SinkError> {
        self.check_placed().await?;
        self.begin().await?;
        self.flush_truncate().await?;
        self.flush_batches().await?;
        // Every change must have succeeded, row count included, before COMMIT is sent.
        self.drain().await?;
        let changes = match self.state {
            TxState::Open { changes } => changes,
            _ => unreachable!("begin() opened the transaction and drain() succeeded"),
        };
        let recorded = self
            .locked_progress
            .take()
            .expect("the progress row is read right after BEGIN and checked by drain()");
        if let Some(applied) = recorded {
            if end_lsn < applied || (end_lsn == applied && changes > 0) {
                if changes == 0 && !strict {
                    tracing::debug!(%end_lsn, %applied, "nothing to record: already applied");
                    return self.rollback().await;
                }
                return Err(SinkError::ProgressBackwards {
                    database: self.database.clone(),
                    applied,
                    requested: end_lsn,
                });
            }
        }
        let record = self.progress_statements().await?.record.clone();
        let client = Arc::clone(&self.client);
        let lsn_text = end_lsn.to_string();
        let request: Request = Box::pin(async move {
            client
                .execute(&record, &[&lsn_text])
                .await
                .map(Outcome::Rows)
        });
        self.push(request, Op::RecordProgress { lsn: end_lsn }, ROW_BYTES)
            .await?;
        self.drain().await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|source| SinkError::Commit {
                database: self.database.clone(),
                lsn: end_lsn,
                source,
            })?;
        self.state = TxState::Idle;
        tracing::debug!(%end_lsn, changes, "target transaction committed");
        Ok(())
    }
}
