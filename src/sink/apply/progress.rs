//! The target transaction's ends, where exactly-once is kept (see the module docs of
//! `apply`): BEGIN with the progress row read and locked, which checks the fencing token
//! too; the end LSN recorded in the progress row and COMMIT, once every reply was checked.

use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::queue::{Op, Outcome, Reply, Request};
use super::transaction::TxState;
use super::{ReplicaSink, ROW_BYTES};
use crate::sink::error::SinkError;
use crate::sink::replica::{
    parse_lsn, read_applied_lsn, setup, READ_PROGRESS_SQL, RECORD_PROGRESS_SQL,
};
use crate::types::{FencingToken, Lsn};

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
    async fn progress_statements(&mut self) -> Result<&ProgressStatements, SinkError> {
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
    async fn commit_at(&mut self, end_lsn: Lsn, strict: bool) -> Result<(), SinkError> {
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
        match advance(recorded, end_lsn, changes, strict) {
            Advance::Record => {}
            Advance::Skip { applied } => {
                tracing::debug!(%end_lsn, %applied, "nothing to record: already applied");
                return self.rollback().await;
            }
            Advance::Backwards { applied } => {
                return Err(SinkError::ProgressBackwards {
                    database: self.database.clone(),
                    applied,
                    requested: end_lsn,
                })
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

    /// Checks the progress row read at BEGIN: locked, and still this session's (the lease
    /// row holds its fencing token, else a newer owner claimed the replica).
    pub(super) fn lock_progress(&mut self, reply: Reply) -> Result<(), SinkError> {
        match reply {
            Ok(Outcome::Progress(Some((token, text)))) if token == self.token.0 => {
                self.locked_progress = Some(text.as_deref().map(parse_lsn));
                Ok(())
            }
            Ok(Outcome::Progress(found)) => Err(SinkError::Fenced {
                database: self.database.clone(),
                token: self.token,
                current: FencingToken(found.map_or(0, |(token, _)| token)),
            }),
            Ok(_) => unreachable!("the progress read returns its row"),
            Err(e) => Err(setup(&self.database, "reading the applied LSN")(e)),
        }
    }

    /// Checks that the progress row took `lsn`.
    pub(super) fn check_recorded(&self, lsn: Lsn, reply: Reply) -> Result<(), SinkError> {
        match reply {
            Ok(Outcome::Rows(1)) => Ok(()),
            Ok(_) => Err(SinkError::Progress {
                database: self.database.clone(),
                lsn,
                source: None,
            }),
            Err(source) => Err(SinkError::Progress {
                database: self.database.clone(),
                lsn,
                source: Some(source),
            }),
        }
    }
}

/// What committing at `end` does to the progress row, which holds `applied`, after
/// `changes` changes (see [`ReplicaSink::commit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advance {
    Record,
    /// An empty transaction that is already applied: nothing to do.
    Skip {
        applied: Lsn,
    },
    /// Recording `end` would apply changes twice, or move the progress backwards.
    Backwards {
        applied: Lsn,
    },
}

/// `strict`: refuse (rather than skip) an empty transaction that does not advance.
fn advance(applied: Option<Lsn>, end: Lsn, changes: u64, strict: bool) -> Advance {
    match applied {
        Some(applied) if end < applied || (end == applied && changes > 0) => {
            if changes == 0 && !strict {
                Advance::Skip { applied }
            } else {
                Advance::Backwards { applied }
            }
        }
        _ => Advance::Record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_never_moves_backwards_and_nothing_applies_twice() {
        let at = Lsn::new;
        let skip = Advance::Skip { applied: at(10) };
        let backwards = Advance::Backwards { applied: at(10) };
        // (recorded, end, changes, strict, verdict)
        let cases = [
            (None, at(5), 3, false, Advance::Record),
            (None, at(5), 0, true, Advance::Record),
            (Some(at(10)), at(11), 3, false, Advance::Record),
            (Some(at(10)), at(11), 0, true, Advance::Record),
            // An empty transaction at the recorded LSN rewrites it.
            (Some(at(10)), at(10), 0, false, Advance::Record),
            (Some(at(10)), at(10), 0, true, Advance::Record),
            // Changes ending where the replica already is were applied already.
            (Some(at(10)), at(10), 1, false, backwards),
            (Some(at(10)), at(9), 0, false, skip),
            (Some(at(10)), at(9), 0, true, backwards),
            (Some(at(10)), at(9), 2, false, backwards),
        ];
        for (recorded, end, changes, strict, verdict) in cases {
            assert_eq!(
                advance(recorded, end, changes, strict),
                verdict,
                "recorded {recorded:?}, end {end}, {changes} changes, strict {strict}"
            );
        }
    }
}
