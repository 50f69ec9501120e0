//! Pipelining: statements sent as soon as they are formed, their replies taken in order.
//!
//! Waiting for each statement's result would cost a network round trip per statement.
//! Instead, statements are sent as soon as they are formed and their results collected
//! later, up to [`MAX_IN_FLIGHT`] statements or [`MAX_IN_FLIGHT_BYTES`] of parameters:
//!
//! ```text
//!   apply() ─► table batch ─► statement (prepared once per table and shape) ─► server
//!                       in-flight queue (FIFO) ◄── results, in order ◄─────────────┘
//! ```
//!
//! tokio-postgres pipelines requests on one connection in the order their futures are
//! first polled: its request futures encode and queue their messages before their first
//! await. The sink polls each request once as it is created, so requests leave in the order
//! they were formed; it keeps the futures in a FIFO queue and checks each reply (error,
//! row count) in that order, opportunistically on every `apply()` and fully before COMMIT.
//! A failure therefore surfaces on a later `apply()` or on `commit()`, naming the change it
//! belongs to (table, LSN, statement kind, the server's SQLSTATE and message). A batch that
//! fails with an SQL error is named by its LSN range, unless the error quotes a key
//! (duplicate key) that identifies the row.
//!
//! The queue is always polled from its front. That matters: tokio-postgres hands each
//! reply to its request's future through a small channel and stops reading the socket
//! while that channel is full, so the future the sink waits on must be the oldest one.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use super::ReplicaSink;
use crate::change::ChangeKind;
use crate::sink::error::SinkError;
use crate::types::Lsn;

/// Statements sent but not yet checked, at most.
pub const MAX_IN_FLIGHT: usize = 512;
/// Parameter bytes of the statements in flight, at most.
pub const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;

pub(super) type Reply = Result<Outcome, tokio_postgres::Error>;

pub(super) type Request = Pin<Box<dyn Future<Output = Reply> + Send>>;

pub(super) enum Outcome {
    Rows(u64),
    /// `RETURNING u.ord` of a batch: the rows that found their target.
    Ords(Vec<i64>),
    /// The lease row's token and the progress row's LSN as text, if there is a row; `None`
    /// without a lease row.
    Progress(Option<(i64, Option<String>)>),
}

/// A request sent to the server, and what its reply must be checked against.
pub(super) struct InFlight {
    /// `None` once replied. Only ever reached through `Mutex::get_mut`, which does not
    /// lock: the mutex is there to make the sink `Sync` (request futures are not).
    pub(super) request: Option<Mutex<Request>>,
    pub(super) reply: Option<Reply>,
    pub(super) op: Op,
    pub(super) bytes: usize,
}

impl InFlight {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.reply.is_some() {
            return Poll::Ready(());
        }
        let request = self
            .request
            .as_mut()
            .expect("a request without a reply is still pending")
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match request.as_mut().poll(cx) {
            Poll::Ready(reply) => {
                self.reply = Some(reply);
                self.request = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pub(super) enum Op {
    Begin,
    ReadProgress,
    /// One change, one row.
    Change {
        table: Arc<str>,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        identity_always: bool,
    },
    /// A batch: one row per entry of `lsns`.
    Batch {
        table: Arc<str>,
        kind: ChangeKind,
        lsns: Vec<Option<Lsn>>,
        /// INSERT: the rows' keys as text, to trace a duplicate-key error to its row.
        keys: Vec<String>,
    },
    Truncate {
        tables: String,
        lsn: Option<Lsn>,
    },
    Refresh {
        view: String,
        lsn: Option<Lsn>,
    },
    RecordProgress {
        lsn: Lsn,
    },
}

impl ReplicaSink {
    /// Sends `request` now (its first poll queues it on the connection, so requests leave
    /// in call order), then checks the replies that have arrived, and waits for the oldest
    /// while too much is in flight.
    pub(super) async fn push(
        &mut self,
        request: Request,
        op: Op,
        bytes: usize,
    ) -> Result<(), SinkError> {
        let mut entry = InFlight {
            request: Some(Mutex::new(request)),
            reply: None,
            op,
            bytes,
        };
        poll_fn(|cx| {
            let _ = entry.poll(cx);
            Poll::Ready(())
        })
        .await;
        self.in_flight_bytes += bytes;
        self.in_flight.push_back(entry);
        while let Some(done) = self.next_reply(false).await {
            self.check(done)?;
        }
        while self.in_flight.len() > MAX_IN_FLIGHT || self.in_flight_bytes > MAX_IN_FLIGHT_BYTES {
            let done = self.next_reply(true).await.expect("the queue is not empty");
            self.check(done)?;
        }
        Ok(())
    }

    /// Waits for and checks every reply in flight.
    pub(super) async fn drain(&mut self) -> Result<(), SinkError> {
        while let Some(done) = self.next_reply(true).await {
            self.check(done)?;
        }
        Ok(())
    }

    /// When a statement of the sink's own fails inside the transaction, the cause is often
    /// an earlier change (the transaction is aborted then, 25P02): report that one.
    pub(super) async fn earlier_error_or(&mut self, error: SinkError) -> SinkError {
        match self.drain().await {
            Err(earlier) => earlier,
            Ok(()) => error,
        }
    }

    /// The oldest request once it has its reply; `None` when the queue is empty, or when
    /// the reply has not arrived and `wait` is false.
    async fn next_reply(&mut self, wait: bool) -> Option<InFlight> {
        let queue = &mut self.in_flight;
        poll_fn(|cx| {
            let Some(front) = queue.front_mut() else {
                return Poll::Ready(None);
            };
            match front.poll(cx) {
                Poll::Ready(()) => Poll::Ready(queue.pop_front()),
                Poll::Pending if wait => Poll::Pending,
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await
    }
}
