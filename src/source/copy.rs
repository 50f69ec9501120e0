//! A source session on an exported snapshot that reads rows with `COPY … TO STDOUT`.
//!
//! The snapshot's hot path: every byte of the initial copy passes through here. Rows are
//! taken straight out of the connection's read buffer and handed on as large blocks of
//! COPY data, without a per-row allocation, message or task hop; the replica's
//! `COPY … FROM STDIN` reads them back as one byte stream (message boundaries carry no
//! meaning in COPY data).

use bytes::BytesMut;

use super::error::{Error, Result};
use super::wire::Connection;
use crate::pg::{quote_literal, ConnInfo};

/// Whether `SET TRANSACTION SNAPSHOT` failed with `sqlstate` because no snapshot of that
/// name exists (any more): invalid_parameter_value ("invalid snapshot identifier") up to
/// PostgreSQL 17, undefined_object ("snapshot … does not exist") from 18 on.
pub fn snapshot_unknown(sqlstate: &str) -> bool {
    matches!(sqlstate, "22023" | "42704")
}

/// One `REPEATABLE READ READ ONLY` transaction on an exported snapshot.
pub struct SnapshotSession {
    conn: Connection,
}

/// Why [`SnapshotSession::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The snapshot is unknown to the server: its exporting connection has run another
    /// command or closed.
    #[error("the source no longer knows snapshot {name}: {source}")]
    SnapshotGone {
        name: String,
        #[source]
        source: Error,
    },
    #[error(transparent)]
    Session(#[from] Error),
}

impl SnapshotSession {
    /// Connects, runs `settings` (one or more `SET` statements), and imports `snapshot`.
    pub async fn open(
        info: &ConnInfo,
        settings: &str,
        snapshot: &str,
    ) -> Result<SnapshotSession, OpenError> {
        let mut conn = Connection::connect(info, &[]).await?;
        conn.simple_query(settings).await?;
        conn.simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        match conn
            .simple_query(&format!(
                "SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot)
            ))
            .await
        {
            Ok(_) => Ok(SnapshotSession { conn }),
            Err(source) if source.sqlstate().is_some_and(snapshot_unknown) => {
                Err(OpenError::SnapshotGone {
                    name: snapshot.to_owned(),
                    source,
                })
            }
            Err(source) => Err(source.into()),
        }
    }

    /// Starts `sql`, a `COPY … TO STDOUT`; its data then comes from [`CopyOut::read`].
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>> {
        self.conn.start_copy_out(sql).await?;
        Ok(CopyOut {
            conn: &mut self.conn,
            remaining: 0,
            finished: false,
        })
    }

    /// Ends the transaction and the session.
    pub async fn close(mut self) -> Result<()> {
        self.conn.simple_query("COMMIT").await?;
        self.conn.terminate().await;
        Ok(())
    }
}

/// The data of one running `COPY … TO STDOUT`.
pub struct CopyOut<'a> {
    conn: &'a mut Connection,
    /// Payload bytes of the CopyData message cut by the end of the last read.
    remaining: usize,
    finished: bool,
}

impl CopyOut<'_> {
    /// Appends the next COPY data to `out`, at most `limit` bytes, waiting for at least one.
    /// Returns `false` once the COPY has ended (and the session is ready for the next one).
    pub async fn read(&mut self, out: &mut BytesMut, limit: usize) -> Result<bool> {
        if self.finished {
            return Ok(false);
        }
        let more = self
            .conn
            .read_copy_data(&mut self.remaining, out, limit)
            .await?;
        self.finished = !more;
        Ok(more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_unknown_in_the_words_of_each_version() {
        for (sqlstate, unknown) in [
            ("22023", true),  // 13 to 17: invalid snapshot identifier
            ("42704", true),  // 18: snapshot "…" does not exist
            ("08006", false), // a lost connection: the session's problem
            ("25001", false), // not in a transaction block
        ] {
            assert_eq!(snapshot_unknown(sqlstate), unknown, "{sqlstate}");
        }
    }
}
