//! The walsender client: replication commands and the CopyBoth stream.
//!
//! # Progress and acknowledgement
//!
//! ```text
//!   server ── XLogData(wal_start, data) ──► ReplicationStream::next: decoded ──► StreamEvent ──► sink
//!          ◄── StandbyStatusUpdate(write, flush) ──  set_flushed(lsn) ◄── durable commit ──┘
//! ```
//!
//! The flush position we report becomes the slot's `confirmed_flush_lsn`: the server may
//! recycle WAL before it and, after a reconnect, skips every transaction whose commit
//! record lies before it. Reporting a position before its transaction is durably applied
//! would lose that transaction on a crash, so the stream reports as flushed only what its
//! owner passed to [`ReplicationStream::set_flushed`], and that value never moves
//! backwards. The owner derives it from the sink's commits, and from keepalives while
//! nothing is in flight ([`super::AckTracker`]).
//!
//! Status updates are sent when the server asks (a keepalive with `reply_requested`) and on
//! a timer, which must fire well inside `wal_sender_timeout` or the server hangs up. Both
//! happen inside [`ReplicationStream::next`], so the owner must keep polling it (for
//! example in a `select!` beside its other work); `next` is cancel-safe.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::error::{Result, ServerError};
use super::wal2json::{self, PluginOptions};
use super::wire::{Connection, Frame, Rows};
use crate::change;
use crate::pg::{ConnInfo, Endpoint};
use crate::types::{Lsn, SlotName};

/// Session settings that make wal2json render values in one stable, parseable form.
const SESSION_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres \
                               -c extra_float_digits=3 -c bytea_output=hex";

/// wal2json 2.6 option that renders numeric and float values as strings, which keeps NaN
/// and ±Infinity apart from NULL. Older versions reject it at `START_REPLICATION`.
const NUMERIC_AS_STRING: &str = "numeric-data-types-as-string";

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub system_id: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// What to do with the snapshot of a new slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export it, so other sessions can read the database as of the consistent point while
    /// this connection stays idle.
    Export,
    NoExport,
}

/// The reply to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The first position the slot can stream from; the exported snapshot sees exactly the
    /// transactions that committed before it.
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
    pub output_plugin: String,
}

/// What the stream delivers, decoded: the replication protocol and wal2json's JSON end
/// here, and the pipeline and `tail` see positions as [`Lsn`]s and times as times.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// One wal2json record, decoded ([`super::wal2json::decode`]).
    Message(change::Message),
    Keepalive(Keepalive),
    /// A NoticeResponse, in its place among the others: wal2json reports a change it left
    /// out only this way ([`super::notice`]).
    Notice(ServerError),
}

/// A CopyData message of the stream, as the protocol frames it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CopyMessage {
    XLogData(XLogData),
    Keepalive(Keepalive),
}

/// One output-plugin message: for wal2json format 2, one JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct XLogData {
    /// Position of the WAL record this message was decoded from; for a commit, the end of
    /// the commit record.
    wal_start: Lsn,
    data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// Everything before this has been decoded and sent.
    pub wal_end: Lsn,
    pub server_time: i64,
    /// The server wants a status update now, or it will disconnect at `wal_sender_timeout`.
    pub reply_requested: bool,
}

/// Parses one CopyData payload of the stream. Never panics, whatever the input.
fn parse_copy_data(mut payload: Bytes) -> Result<CopyMessage, String> {
    let Some(&kind) = payload.first() else {
        return Err("empty CopyData message".into());
    };
    match kind {
        b'w' => {
            if payload.len() < 25 {
                return Err(format!(
                    "XLogData header truncated at {} bytes",
                    payload.len()
                ));
            }
            payload.advance(1);
            let wal_start = Lsn::new(payload.get_u64());
            // The server's end of WAL and clock: keepalives say them too.
            payload.advance(16);
            Ok(CopyMessage::XLogData(XLogData {
                wal_start,
                data: payload,
            }))
        }
        b'k' => {
            if payload.len() != 18 {
                return Err(format!("keepalive of {} bytes, expected 18", payload.len()));
            }
            payload.advance(1);
            Ok(CopyMessage::Keepalive(Keepalive {
                wal_end: Lsn::new(payload.get_u64()),
                server_time: payload.get_i64(),
                reply_requested: payload.get_u8() != 0,
            }))
        }
        other => Err(format!(
            "unknown replication message type {:?}",
            other as char
        )),
    }
}

/// Parses a duration setting as `SHOW` prints it (`60s`, `500ms`, `1min`, `0`).
pub fn parse_pg_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(number.checked_mul(millis)?))
}

/// How long the server may stay silent before the stream is given up as lost, unless
/// [`ReplicationStream::set_silence_limit`] says otherwise.
pub const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// How often to send status updates: `configured`, but at most half of
/// `wal_sender_timeout` so that a lost reply never costs the connection.
pub fn status_interval(configured: Duration, wal_sender_timeout: Duration) -> Duration {
    if wal_sender_timeout.is_zero() {
        configured
    } else {
        configured.min(wal_sender_timeout / 2)
    }
}

/// A connection in replication mode (`replication=database`), between commands.
pub struct ReplicationClient {
    conn: Connection,
    server_major: u32,
    endpoint: Endpoint,
}

impl ReplicationClient {
    /// Connects to the first server of `info` that its `target_session_attrs` allows.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationClient> {
        let (conn, endpoint) = Connection::connect_endpoint(
            info,
            &[("replication", "database"), ("options", SESSION_OPTIONS)],
        )
        .await?;
        let version = conn.parameter("server_version").unwrap_or_default();
        let server_major = version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|major| major.parse().ok())
            .ok_or_else(|| conn.protocol(format!("cannot read server_version {version:?}")))?;
        Ok(ReplicationClient {
            conn,
            server_major,
            endpoint,
        })
    }

    /// Whether the server is a hot standby (as it reports `in_hot_standby`, 14+): a source
    /// from PostgreSQL 16 on.
    pub fn is_standby(&self) -> bool {
        self.conn.parameter("in_hot_standby") == Some("on")
    }

    /// The server this session reached: a run's other sessions must reach the same one.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's major version (15 for 15.4).
    pub fn server_major(&self) -> u32 {
        self.server_major
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.conn.simple_query("IDENTIFY_SYSTEM").await?;
        let field = |name: &str| {
            rows.first(name).ok_or_else(|| {
                self.conn
                    .protocol(format!("IDENTIFY_SYSTEM without {name}"))
            })
        };
        let timeline = field("timeline")?;
        let xlogpos = field("xlogpos")?;
        Ok(SystemInfo {
            system_id: field("systemid")?.to_owned(),
            timeline: timeline
                .parse()
                .map_err(|_| self.conn.protocol(format!("bad timeline {timeline:?}")))?,
            xlog_pos: xlogpos
                .parse()
                .map_err(|e| self.conn.protocol(format!("bad xlogpos: {e}")))?,
            dbname: rows.first("dbname").map(str::to_owned),
        })
    }

    /// A setting of the walsender session, as `SHOW` prints it.
    pub async fn show(&mut self, setting: &str) -> Result<String> {
        let rows = self.conn.simple_query(&format!("SHOW {setting}")).await?;
        rows.rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .ok_or_else(|| {
                self.conn
                    .protocol(format!("SHOW {setting} returned nothing"))
            })
    }

    /// `wal_sender_timeout` of the server; zero when disabled.
    pub async fn wal_sender_timeout(&mut self) -> Result<Duration> {
        let text = self.show("wal_sender_timeout").await?;
        parse_pg_duration(&text).ok_or_else(|| {
            self.conn
                .protocol(format!("cannot read wal_sender_timeout {text:?}"))
        })
    }

    /// Creates a logical slot for wal2json. With [`SnapshotAction::Export`] the snapshot
    /// stays usable only until this connection runs its next command.
    pub async fn create_slot(
        &mut self,
        slot: &SlotName,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot> {
        let rows = self
            .conn
            .simple_query(&create_slot_command(
                slot,
                temporary,
                snapshot,
                (self.server_major, self.is_standby()),
            ))
            .await?;
        let field = |name: &str| {
            rows.first(name).ok_or_else(|| {
                self.conn
                    .protocol(format!("CREATE_REPLICATION_SLOT returned no {name}"))
            })
        };
        Ok(CreatedSlot {
            slot_name: field("slot_name")?.to_owned(),
            consistent_point: field("consistent_point")?
                .parse()
                .map_err(|e| self.conn.protocol(format!("bad consistent_point: {e}")))?,
            snapshot_name: rows.first("snapshot_name").map(str::to_owned),
            output_plugin: field("output_plugin")?.to_owned(),
        })
    }

    /// Drops a slot. With `wait`, waits for another session that still holds it to let go
    /// (possibly forever: bound it with a timeout); without, that is error 55006.
    pub async fn drop_slot(&mut self, slot: &SlotName, wait: bool) -> Result<()> {
        let wait = if wait { " WAIT" } else { "" };
        self.conn
            .simple_query(&format!("DROP_REPLICATION_SLOT {slot}{wait}"))
            .await
            .map(drop)
    }

    /// Runs any SQL the walsender accepts; for replication commands not wrapped here.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.conn
            .simple_query(sql)
            .await
            .map(|Rows { rows, .. }| rows)
    }

    /// Starts streaming from `start` (`Lsn::ZERO`: from the slot's confirmed position).
    ///
    /// An error here ends every temporary slot of the session (the walsender's error
    /// cleanup drops them): with a temporary slot, settle options the server might reject
    /// beforehand with [`probe_numeric_as_string`]; a persistent slot survives the error,
    /// so trying and falling back ([`rejects_numeric_as_string`]) is fine there.
    pub async fn start_replication(
        mut self,
        slot: &SlotName,
        start: Lsn,
        plugin: PluginOptions,
        status_interval: Duration,
    ) -> Result<ReplicationStream> {
        self.start(&start_replication_sql(slot, start, &plugin))
            .await?;
        let mut timer = tokio::time::interval_at(Instant::now() + status_interval, status_interval);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(ReplicationStream {
            client: self,
            numeric_as_string: plugin.numeric_as_string,
            received: start,
            flushed: start,
            timer,
            server_done: false,
            unanswered_since: None,
            silence_limit: DEFAULT_SILENCE_LIMIT.max(status_interval * 3),
        })
    }

    async fn start(&mut self, sql: &str) -> Result<()> {
        self.conn.send_query(sql).await?;
        match self.conn.read_frame().await? {
            Frame::CopyBoth => Ok(()),
            Frame::Other(Message::ErrorResponse(body)) => {
                let error = self.conn.server_error(body.fields());
                self.wait_ready().await?;
                Err(error)
            }
            other => Err(self
                .conn
                .unexpected("in reply to START_REPLICATION", &other)),
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        loop {
            match self.conn.read_frame().await? {
                Frame::Other(Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Other(Message::CommandComplete(_)) | Frame::CopyData(_) => {}
                other => return Err(self.conn.unexpected("while finishing a command", &other)),
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.conn.terminate().await
    }
}

fn start_replication_sql(slot: &SlotName, start: Lsn, plugin: &PluginOptions) -> String {
    let options = plugin
        .to_options()
        .iter()
        .map(|(name, value)| format!("\"{name}\" '{}'", value.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ");
    format!("START_REPLICATION SLOT {slot} LOGICAL {start} ({options})")
}

/// Whether `error` is wal2json refusing `numeric-data-types-as-string` (before 2.6).
pub fn rejects_numeric_as_string(error: &super::Error) -> bool {
    error
        .server_error()
        .is_some_and(|e| e.code == "22023" && e.message.contains(NUMERIC_AS_STRING))
}

/// Whether the source's wal2json accepts `numeric-data-types-as-string` (wal2json 2.6+).
///
/// wal2json checks its options only when decoding starts, so this creates a temporary slot
/// on a connection of its own and starts streaming from it; the slot disappears with that
/// connection. Creating a slot waits for transactions running on the source to finish.
pub async fn probe_numeric_as_string(info: &ConnInfo) -> Result<bool> {
    let mut client = ReplicationClient::connect(info).await?;
    let slot = SlotName::temporary("probe");
    let created = client
        .create_slot(&slot, true, SnapshotAction::NoExport)
        .await?;
    let plugin = PluginOptions {
        numeric_as_string: true,
        ..PluginOptions::default()
    };
    let sql = start_replication_sql(&slot, created.consistent_point, &plugin);
    let supported = match client.start(&sql).await {
        Ok(()) => true,
        Err(e) if rejects_numeric_as_string(&e) => false,
        Err(e) => return Err(e),
    };
    // Dropping the connection ends the session and its temporary slot.
    client.conn.terminate().await;
    Ok(supported)
}

/// The CopyBoth stream started by `START_REPLICATION`. See the module docs.
pub struct ReplicationStream {
    client: ReplicationClient,
    numeric_as_string: bool,
    /// Highest position received, reported as "written".
    received: Lsn,
    /// Highest position the owner declared durable, reported as "flushed".
    flushed: Lsn,
    timer: Interval,
    /// The server ended the stream with CopyDone.
    server_done: bool,
    /// Since when a status update that asked for a reply went unanswered (nothing at all
    /// arrived since): a server that stays silent for [`ReplicationStream::silence_limit`]
    /// is presumed gone. Only [`ReplicationStream::next`] asks, so the owner's
    /// backpressure (not reading) never counts as silence.
    unanswered_since: Option<Instant>,
    silence_limit: Duration,
}

impl ReplicationStream {
    /// How long the server may stay silent, while a status update asks it for a reply,
    /// before the connection is given up as lost. The server's own `wal_sender_timeout` is
    /// the natural value: the walsender gives up on us after as long. At least three status
    /// intervals.
    pub fn set_silence_limit(&mut self, limit: Duration) {
        let interval = self.timer.period();
        self.silence_limit = limit.max(interval * 3);
    }

    /// Whether wal2json renders numeric and float values as strings (NaN distinct from NULL).
    pub fn numeric_as_string(&self) -> bool {
        self.numeric_as_string
    }

    /// The next message, decoded; `None` when the server ended the stream. Answers
    /// keepalives and sends periodic status updates while waiting. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>> {
        loop {
            if let Some(message) = self.try_next()? {
                if matches!(&message, StreamEvent::Keepalive(k) if k.reply_requested) {
                    self.client.conn.flush().await?;
                }
                return Ok(Some(message));
            }
            if self.server_done {
                return Ok(None);
            }
            let conn = &mut self.client.conn;
            // Finish a status update that a cancelled call (or `try_next`) left unsent.
            conn.flush().await?;
            tokio::select! {
                // The timer first: under a steady flood of data the server must still hear
                // from us before wal_sender_timeout.
                biased;
                _ = self.timer.tick() => {
                    let asked = *self.unanswered_since.get_or_insert_with(Instant::now);
                    if asked.elapsed() > self.silence_limit {
                        return Err(self.client.conn.silent(asked.elapsed()));
                    }
                    // An idle server sends nothing while we acknowledge everything: ask.
                    self.queue_status(true);
                    self.client.conn.flush().await?;
                }
                read = conn.fill() => {
                    read?;
                    // Part of a frame is an answer too (one large change can take long).
                    self.unanswered_since = None;
                }
            }
        }
    }

    /// The next message if one has arrived already, without waiting: lets a busy reader
    /// take a run of messages without going back to its `select!` for each. A keepalive
    /// asking for a reply gets it queued; the next [`ReplicationStream::next`] (or status
    /// update) sends it. `None` also once the server ended the stream.
    pub fn try_next(&mut self) -> Result<Option<StreamEvent>> {
        if self.server_done {
            return Ok(None);
        }
        let conn = &mut self.client.conn;
        let Some(frame) = conn.try_frame_with_notices()? else {
            return Ok(None);
        };
        self.unanswered_since = None;
        match frame {
            Frame::CopyData(payload) => {
                match parse_copy_data(payload).map_err(|r| conn.protocol(r))? {
                    CopyMessage::XLogData(x) => {
                        self.received = self.received.max(x.wal_start);
                        Ok(Some(StreamEvent::Message(wal2json::decode(&x.data)?)))
                    }
                    CopyMessage::Keepalive(k) => {
                        if k.reply_requested {
                            self.queue_status(false);
                        }
                        Ok(Some(StreamEvent::Keepalive(k)))
                    }
                }
            }
            Frame::Other(Message::NoticeResponse(body)) => {
                Ok(Some(StreamEvent::Notice(Connection::fields(body.fields()))))
            }
            // A server shutting down ends streaming with CommandComplete and no CopyDone,
            // then exits.
            Frame::Other(Message::CopyDone | Message::CommandComplete(_)) => {
                self.server_done = true;
                Ok(None)
            }
            other => Err(conn.unexpected("while streaming", &other)),
        }
    }

    /// Declares everything up to `lsn` durable. Lower values than before are ignored: the
    /// reported position never moves backwards.
    pub fn set_flushed(&mut self, lsn: Lsn) {
        self.flushed = self.flushed.max(lsn);
    }

    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Waits for the status timer and sends a status update; for owners that cannot call
    /// [`ReplicationStream::next`] for a while (they apply backpressure) but must not let
    /// the server's `wal_sender_timeout` expire. Cancel-safe.
    pub async fn status_when_due(&mut self) -> Result<()> {
        self.timer.tick().await;
        self.queue_status(false);
        self.client.conn.flush().await
    }

    /// Sends a status update now (the timer sends them anyway).
    pub async fn send_status(&mut self) -> Result<()> {
        self.queue_status(false);
        self.client.conn.flush().await
    }

    fn queue_status(&mut self, reply_requested: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
        let written = self.received.max(self.flushed);
        let buf = self.client.conn.write_buf();
        buf.put_u8(b'd');
        buf.put_i32(4 + 34);
        buf.put_u8(b'r');
        buf.put_u64(written.as_u64());
        buf.put_u64(self.flushed.as_u64());
        buf.put_u64(self.flushed.as_u64());
        buf.put_i64(now - PG_EPOCH_OFFSET_MICROS);
        buf.put_u8(u8::from(reply_requested));
    }

    /// Ends streaming after a last status update and returns the connection for more
    /// commands. Messages still in flight are dropped; they were never acknowledged, so the
    /// server sends them again next time.
    pub async fn stop(mut self) -> Result<ReplicationClient> {
        self.queue_status(false);
        frontend::copy_done(self.client.conn.write_buf());
        self.client.conn.flush().await?;
        let mut server_done = self.server_done;
        loop {
            match self.client.conn.read_frame().await? {
                // Data and keepalives can still arrive, even after the server's CopyDone.
                Frame::CopyData(_) => {}
                Frame::Other(Message::CopyDone) if !server_done => server_done = true,
                Frame::Other(Message::CommandComplete(_)) if server_done => {}
                Frame::Other(Message::ReadyForQuery(_)) if server_done => return Ok(self.client),
                other => {
                    return Err(self
                        .client
                        .conn
                        .unexpected("while stopping replication", &other))
                }
            }
        }
    }
}

/// `CREATE_REPLICATION_SLOT` as each version takes it, on a server of `server_major` that
/// is or is not a standby. A persistent slot has the failover property from PostgreSQL 17
/// on, so that standbys with slot synchronization keep a copy of it and a promotion does
/// not cost a new snapshot; a temporary slot, or one made on a standby, cannot have it.
fn create_slot_command(
    slot: &SlotName,
    temporary: bool,
    snapshot: SnapshotAction,
    (server_major, standby): (u32, bool),
) -> String {
    let mut options = Vec::new();
    // PostgreSQL 15 introduced the option list; 13 and 14 know only the keywords.
    let keyword = match (server_major >= 15, snapshot) {
        (true, SnapshotAction::Export) => {
            options.push("SNAPSHOT 'export'");
            ""
        }
        (true, SnapshotAction::NoExport) => {
            options.push("SNAPSHOT 'nothing'");
            ""
        }
        (false, SnapshotAction::Export) => " EXPORT_SNAPSHOT",
        (false, SnapshotAction::NoExport) => " NOEXPORT_SNAPSHOT",
    };
    if server_major >= 17 && !temporary && !standby {
        options.push("FAILOVER true");
    }
    let temporary = if temporary { " TEMPORARY" } else { "" };
    let options = if options.is_empty() {
        String::new()
    } else {
        format!(" ({})", options.join(", "))
    };
    format!("CREATE_REPLICATION_SLOT {slot}{temporary} LOGICAL wal2json{keyword}{options}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend(0x1_0000_0010u64.to_be_bytes());
        w.extend(0x1_0000_0020u64.to_be_bytes());
        w.extend(7i64.to_be_bytes());
        w.extend(b"{}");
        let CopyMessage::XLogData(x) = parse_copy_data(Bytes::from(w)).unwrap() else {
            panic!("not XLogData")
        };
        assert_eq!(x.wal_start.to_string(), "1/10");
        assert_eq!(&x.data[..], b"{}");

        let mut k = vec![b'k'];
        k.extend(5u64.to_be_bytes());
        k.extend(9i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            CopyMessage::Keepalive(Keepalive {
                wal_end: Lsn::new(5),
                server_time: 9,
                reply_requested: true
            })
        );
    }

    #[test]
    fn truncated_messages_are_errors() {
        assert!(parse_copy_data(Bytes::new()).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"w123")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"k1234567")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"q")).is_err());
    }

    #[test]
    fn reads_durations_as_show_prints_them() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
        assert_eq!(
            status_interval(Duration::from_secs(10), Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            status_interval(Duration::from_secs(10), Duration::ZERO),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn slots_are_created_as_each_version_takes_it_failover_from_17_on() {
        let slot = SlotName::new("tributary_x".to_owned()).unwrap();
        let cases = [
            (13, false, SnapshotAction::Export, "EXPORT_SNAPSHOT"),
            (
                14,
                true,
                SnapshotAction::NoExport,
                "TEMPORARY LOGICAL wal2json NOEXPORT_SNAPSHOT",
            ),
            (
                15,
                false,
                SnapshotAction::Export,
                "wal2json (SNAPSHOT 'export')",
            ),
            (
                16,
                false,
                SnapshotAction::NoExport,
                "wal2json (SNAPSHOT 'nothing')",
            ),
            (
                17,
                false,
                SnapshotAction::Export,
                "wal2json (SNAPSHOT 'export', FAILOVER true)",
            ),
            (
                18,
                true,
                SnapshotAction::Export,
                "TEMPORARY LOGICAL wal2json (SNAPSHOT 'export')",
            ),
        ];
        for (major, temporary, snapshot, expected) in cases {
            let command = create_slot_command(&slot, temporary, snapshot, (major, false));
            assert!(
                command.starts_with("CREATE_REPLICATION_SLOT tributary_x ")
                    && command.ends_with(expected),
                "{major}: {command}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_copy_data(Bytes::from(bytes));
        }
    }
}
