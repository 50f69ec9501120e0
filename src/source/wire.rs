//! One frontend/backend protocol connection: transport (TCP, TLS, unix socket), framing,
//! startup, authentication and the simple query protocol.
//!
//! Frames are cut from one read buffer. CopyData frames, the hot path of streaming, are
//! handed out as `Bytes` slices of that buffer without copying; everything else is parsed
//! with `postgres-protocol`. A frame is bounded by [`MAX_FRAME_LEN`], so a corrupt length
//! is an error rather than an allocation of gigabytes.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::{self, ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{Error, Result, ServerError};
use super::transport::open_transport;
pub(crate) use super::transport::{probe_transport, Encryption, TransportError};
use crate::pg::conninfo::{options_text, ChannelBinding, ConnInfo, Endpoint, Password};
use crate::pg::hosts::{self, ServerRole};

/// Largest frame accepted: a row of several 1 GB values can legitimately come close.
pub(crate) const MAX_FRAME_LEN: usize = 1 << 31;

const READ_CHUNK: usize = 64 * 1024;

pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A backend frame.
pub(crate) enum Frame {
    /// The payload of a CopyData message.
    CopyData(Bytes),
    /// CopyBothResponse (`W`), which `postgres-protocol` does not know.
    CopyBoth,
    Other(Message),
}

/// Result of a simple query: the rows of its last result set, as text.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// Value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(index)?.as_deref()
    }
}

pub(crate) struct Connection {
    stream: Box<dyn Transport>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    target: String,
    parameters: HashMap<String, String>,
}

impl Connection {
    /// Connects to the first server of `info` that `target_session_attrs` allows,
    /// negotiates TLS, starts up with `params` and authenticates.
    pub async fn connect(info: &ConnInfo, params: &[(&str, &str)]) -> Result<Connection> {
        Self::connect_endpoint(info, params)
            .await
            .map(|(conn, _)| conn)
    }

    /// [`Connection::connect`], and which server it reached.
    pub async fn connect_endpoint(
        info: &ConnInfo,
        params: &[(&str, &str)],
    ) -> Result<(Connection, Endpoint)> {
        hosts::first_accepted(info, |endpoint, check| async move {
            let mut conn = Self::connect_one(info, &endpoint, params).await?;
            let role = match check {
                false => None,
                true => {
                    let rows = conn.simple_query(hosts::ROLE_QUERY).await?;
                    let value = |i: usize| {
                        rows.rows
                            .first()
                            .and_then(|row| row.get(i).cloned().flatten())
                            .unwrap_or_default()
                    };
                    Some(ServerRole::from_text(&value(0), &value(1)))
                }
            };
            Ok((conn, role))
        })
        .await
        .map_err(|none| match none.into_single() {
            Ok(single) => single,
            Err(none) => Error::NoServer {
                transient: none.is_transient(|e: &Error| e.kind().is_transient()),
                reasons: none.reasons(),
            },
        })
    }

    async fn connect_one(
        info: &ConnInfo,
        endpoint: &Endpoint,
        params: &[(&str, &str)],
    ) -> Result<Connection> {
        let target = endpoint.target();
        let timeout = info.connect_timeout;
        tokio::time::timeout(
            timeout,
            Self::connect_inner(info, endpoint, params, target.clone()),
        )
        .await
        .map_err(|_| Error::ConnectTimeout {
            target,
            seconds: timeout.as_secs(),
        })?
    }

    async fn connect_inner(
        info: &ConnInfo,
        endpoint: &Endpoint,
        params: &[(&str, &str)],
        target: String,
    ) -> Result<Connection> {
        let (stream, binding) = open_transport(info, endpoint, &target).await?;
        let mut conn = Connection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            target,
            parameters: HashMap::new(),
        };
        let password = info.password_for(endpoint);
        conn.startup(info, password.as_ref(), binding, params)
            .await?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        password: Option<&Password>,
        binding: Option<Vec<u8>>,
        params: &[(&str, &str)],
    ) -> Result<()> {
        // One `options` for both: the string's settings first, tributary's own after
        // them, so that those it depends on win.
        let options = std::iter::once(options_text(&info.options))
            .chain(
                params
                    .iter()
                    .filter(|(key, _)| *key == "options")
                    .map(|(_, value)| (*value).to_owned()),
            )
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let mut all = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", info.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if !options.is_empty() {
            all.push(("options", options.as_str()));
        }
        all.extend(params.iter().filter(|(key, _)| *key != "options"));
        frontend::startup_message(all.iter().copied(), &mut self.write_buf)
            .map_err(|e| self.protocol(format!("cannot encode startup message: {e}")))?;
        self.flush().await?;

        self.authenticate(info, password, binding).await?;
        loop {
            match self.read_frame().await? {
                Frame::Other(Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Other(Message::ParameterStatus(body)) => {
                    let (name, value) = (body.name(), body.value());
                    if let (Ok(name), Ok(value)) = (name, value) {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Frame::Other(Message::BackendKeyData(_)) => {}
                other => return Err(self.unexpected("during startup", &other)),
            }
        }
    }

    async fn authenticate(
        &mut self,
        info: &ConnInfo,
        password: Option<&Password>,
        binding: Option<Vec<u8>>,
    ) -> Result<()> {
        let target = self.target.clone();
        let require_binding = info.channel_binding == ChannelBinding::Require;
        let unbound = |what: &str| Error::Auth {
            target: target.clone(),
            reason: format!(
                "channel_binding=require, but {what}: use SCRAM-SHA-256 over TLS (sslmode \
                 require or stricter, scram-sha-256 in pg_hba.conf), or drop channel_binding"
            ),
        };
        let password = || {
            password
                .map(|p| p.expose().as_bytes())
                .ok_or_else(|| Error::Auth {
                    target: target.clone(),
                    reason: format!(
                    "the server asks for a password for user {:?} but none was given: put it in \
                     the connection string, in PGPASSWORD or in the password file (~/.pgpass)",
                    info.user
                ),
                })
        };
        match self.read_frame().await? {
            Frame::Other(Message::AuthenticationOk) if require_binding => {
                return Err(unbound("the server let the session in without SCRAM"))
            }
            Frame::Other(Message::AuthenticationOk) => return Ok(()),
            Frame::Other(
                Message::AuthenticationCleartextPassword | Message::AuthenticationMd5Password(_),
            ) if require_binding => {
                return Err(unbound("the server asks for a plain or MD5 password"))
            }
            Frame::Other(Message::AuthenticationCleartextPassword) => {
                let pw = password()?.to_vec();
                frontend::password_message(&pw, &mut self.write_buf)
                    .map_err(|e| self.protocol(e.to_string()))?;
            }
            Frame::Other(Message::AuthenticationMd5Password(body)) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    info.user.as_bytes(),
                    password()?,
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                    .map_err(|e| self.protocol(e.to_string()))?;
            }
            Frame::Other(Message::AuthenticationSasl(body)) => {
                let mut mechanisms = body.mechanisms();
                let (mut scram, mut plus) = (false, false);
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| self.protocol(e.to_string()))?
                {
                    scram |= m == sasl::SCRAM_SHA_256;
                    plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                if !scram && !plus {
                    return Err(Error::Auth {
                        target: self.target.clone(),
                        reason:
                            "the server offers no SASL mechanism tributary supports (SCRAM-SHA-256)"
                                .into(),
                    });
                }
                let pw = password()?.to_vec();
                // Bound to the server's certificate (tls-server-end-point) whenever the
                // server offers it over TLS, as libpq's channel_binding=prefer does.
                let (mechanism, binding) = match (plus, binding, info.channel_binding) {
                    (true, Some(hash), ChannelBinding::Prefer | ChannelBinding::Require) => (
                        sasl::SCRAM_SHA_256_PLUS,
                        sasl::ChannelBinding::tls_server_end_point(hash),
                    ),
                    (_, _, ChannelBinding::Require) => {
                        return Err(unbound(
                            "the server offers no SCRAM-SHA-256-PLUS on this session",
                        ))
                    }
                    (_, Some(_), ChannelBinding::Prefer) => {
                        (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
                    }
                    _ => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                };
                let mut scram = ScramSha256::new(&pw, binding);
                frontend::sasl_initial_response(mechanism, scram.message(), &mut self.write_buf)
                    .map_err(|e| self.protocol(e.to_string()))?;
                self.flush().await?;
                match self.read_frame().await? {
                    Frame::Other(Message::AuthenticationSaslContinue(body)) => {
                        scram.update(body.data()).map_err(|e| self.auth_failed(e))?;
                    }
                    other => return Err(self.unexpected("during SCRAM authentication", &other)),
                }
                frontend::sasl_response(scram.message(), &mut self.write_buf)
                    .map_err(|e| self.protocol(e.to_string()))?;
                self.flush().await?;
                match self.read_frame().await? {
                    Frame::Other(Message::AuthenticationSaslFinal(body)) => {
                        scram.finish(body.data()).map_err(|e| self.auth_failed(e))?;
                    }
                    other => return Err(self.unexpected("during SCRAM authentication", &other)),
                }
            }
            Frame::Other(
                Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential,
            ) => {
                return Err(Error::Auth {
                    target: self.target.clone(),
                    reason:
                        "the server requires GSSAPI/SSPI/Kerberos authentication, which tributary \
                             does not support: use scram-sha-256 for this role in pg_hba.conf"
                            .into(),
                })
            }
            other => return Err(self.unexpected("at authentication", &other)),
        }
        self.flush().await?;
        match self.read_frame().await? {
            Frame::Other(Message::AuthenticationOk) => Ok(()),
            other => Err(self.unexpected("after authentication", &other)),
        }
    }

    fn auth_failed(&self, e: std::io::Error) -> Error {
        Error::Auth {
            target: self.target.clone(),
            reason: format!("SCRAM exchange failed: {e}"),
        }
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Runs one statement with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Rows::default();
        let mut error = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(Message::RowDescription(body)) => {
                    rows = Rows::default();
                    let mut fields = body.fields();
                    while let Some(field) =
                        fields.next().map_err(|e| self.protocol(e.to_string()))?
                    {
                        rows.columns.push(field.name().to_owned());
                    }
                }
                Frame::Other(Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let mut values = Vec::with_capacity(rows.columns.len());
                    let mut ranges = body.ranges();
                    while let Some(range) =
                        ranges.next().map_err(|e| self.protocol(e.to_string()))?
                    {
                        let value = range
                            .map(|r| {
                                std::str::from_utf8(&buf[r])
                                    .map(str::to_owned)
                                    .map_err(|_| self.protocol("a value is not valid UTF-8".into()))
                            })
                            .transpose()?;
                        values.push(value);
                    }
                    rows.rows.push(values);
                }
                Frame::Other(Message::CommandComplete(_) | Message::EmptyQueryResponse) => {}
                Frame::Other(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    }
                }
                Frame::Other(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(body.fields()));
                }
                other => return Err(self.unexpected("in reply to a query", &other)),
            }
        }
    }

    /// Sends a query without waiting for its result (`START_REPLICATION`).
    pub async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await
    }

    /// Reads the next frame, handling notices and parameter changes along the way.
    pub async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Cuts the next frame from the read buffer without waiting, `None` if it is incomplete.
    /// Notices are logged and parameter changes recorded here, not returned.
    pub fn try_frame(&mut self) -> Result<Option<Frame>> {
        self.try_frame_inner(false)
    }

    /// Like [`Connection::try_frame`], but notices are returned too, in their place among
    /// the other frames: on a replication stream a notice can be about the data.
    pub fn try_frame_with_notices(&mut self) -> Result<Option<Frame>> {
        self.try_frame_inner(true)
    }

    fn try_frame_inner(&mut self, notices: bool) -> Result<Option<Frame>> {
        loop {
            let Some(frame) = self.cut_frame()? else {
                return Ok(None);
            };
            let frame = match frame {
                frame @ Frame::Other(Message::NoticeResponse(_)) if notices => Some(frame),
                frame => self.absorb(frame),
            };
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
        }
    }

    /// Logs a notice and records a parameter change, which the server may send at any
    /// time; returns every other frame.
    fn absorb(&mut self, frame: Frame) -> Option<Frame> {
        match frame {
            Frame::Other(Message::NoticeResponse(body)) => {
                let notice = Self::fields(body.fields());
                tracing::info!(target: "tributary::source", server = %self.target, "{notice}");
                None
            }
            Frame::Other(Message::ParameterStatus(body)) => {
                if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                    self.parameters.insert(name.to_owned(), value.to_owned());
                }
                None
            }
            frame => Some(frame),
        }
    }

    fn cut_frame(&mut self) -> Result<Option<Frame>> {
        cut_frame(&mut self.read_buf).map_err(|reason| self.protocol(reason))
    }

    /// Reads more bytes from the server into the read buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<()> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(Error::Closed {
                target: self.target.clone(),
            });
        }
        Ok(())
    }

    /// Buffer for the next message to send; [`Connection::flush`] sends it.
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Sends everything buffered. Cancel-safe: what was written is removed from the buffer,
    /// so a cancelled flush resumes where it stopped and no message is sent twice or torn.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.write_buf.is_empty() {
            let n = self
                .stream
                .write(&self.write_buf)
                .await
                .map_err(|source| self.io(source))?;
            if n == 0 {
                return Err(Error::Closed {
                    target: self.target.clone(),
                });
            }
            self.write_buf.advance(n);
        }
        self.stream.flush().await.map_err(|source| self.io(source))
    }

    /// Says goodbye; errors are irrelevant at this point.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    pub fn server_error(&self, fields: ErrorFields<'_>) -> Error {
        Error::Server {
            target: self.target.clone(),
            error: Box::new(Self::fields(fields)),
        }
    }

    /// The fields of an ErrorResponse or NoticeResponse.
    pub fn fields(mut fields: ErrorFields<'_>) -> ServerError {
        let mut error = ServerError {
            severity: "ERROR".into(),
            code: "XX000".into(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        error
    }

    pub fn silent(&self, silence: std::time::Duration) -> Error {
        Error::Silent {
            target: self.target.clone(),
            seconds: silence.as_secs(),
        }
    }

    pub fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            target: self.target.clone(),
            reason,
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            target: self.target.clone(),
            source,
        }
    }

    /// The error for a frame that does not belong here (a server error stays a server error).
    pub fn unexpected(&self, context: &str, frame: &Frame) -> Error {
        match frame {
            Frame::Other(Message::ErrorResponse(body)) => self.server_error(body.fields()),
            Frame::CopyData(_) => self.protocol(format!("unexpected CopyData {context}")),
            Frame::CopyBoth => self.protocol(format!("unexpected CopyBothResponse {context}")),
            Frame::Other(_) => self.protocol(format!("unexpected message {context}")),
        }
    }
}

/// Cuts the next complete frame off the front of `buf`; `None` while it is incomplete.
/// A pure function of the buffer, so that it can be fuzzed: it never panics.
pub(crate) fn cut_frame(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(format!("frame {:?} has invalid length {len}", tag as char));
    }
    let total = len + 1;
    if buf.len() < total {
        // Grow towards the frame in steps: a corrupt length must not allocate gigabytes
        // before a single byte of the frame arrived.
        buf.reserve((total - buf.len()).min(8 << 20));
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    Ok(Some(match tag {
        backend::COPY_DATA_TAG => {
            frame.advance(5);
            Frame::CopyData(frame.freeze())
        }
        b'W' => Frame::CopyBoth,
        _ => match Message::parse(&mut frame) {
            Ok(Some(message)) => Frame::Other(message),
            Ok(None) => return Err(format!("frame {:?} is incomplete", tag as char)),
            Err(e) => return Err(format!("frame {:?}: {e}", tag as char)),
        },
    }))
}

/// Where [`take_copy_data`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyDataEnd {
    /// The buffer ends inside a CopyData message or its header: more bytes are needed.
    NeedMore,
    /// `out` reached the limit.
    Full,
    /// The buffer starts with a whole-message boundary and another kind of message.
    OtherMessage,
}

/// Moves the payload bytes of consecutive CopyData messages from `buf` to `out`, until
/// `out` holds `limit` bytes, the buffer runs dry, or another message begins.
/// `remaining` carries the unread payload of a message cut by the end of the buffer from
/// one call to the next, so a message never has to fit in the buffer: a row of a 1 GB
/// value passes through in pieces. Message boundaries are dropped, which COPY FROM
/// allows (its input is a byte stream). A pure function of its arguments, so that it can
/// be fuzzed: it never panics.
pub(crate) fn take_copy_data(
    buf: &mut BytesMut,
    remaining: &mut usize,
    out: &mut BytesMut,
    limit: usize,
) -> Result<CopyDataEnd, String> {
    loop {
        if out.len() >= limit {
            return Ok(CopyDataEnd::Full);
        }
        if *remaining > 0 {
            if buf.is_empty() {
                return Ok(CopyDataEnd::NeedMore);
            }
            let n = (*remaining).min(buf.len()).min(limit - out.len());
            out.extend_from_slice(&buf[..n]);
            buf.advance(n);
            *remaining -= n;
            continue;
        }
        match buf.first() {
            None => return Ok(CopyDataEnd::NeedMore),
            Some(&backend::COPY_DATA_TAG) => {}
            Some(_) => return Ok(CopyDataEnd::OtherMessage),
        }
        if buf.len() < 5 {
            return Ok(CopyDataEnd::NeedMore);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if !(4..=MAX_FRAME_LEN).contains(&len) {
            return Err(format!("CopyData message has invalid length {len}"));
        }
        buf.advance(5);
        *remaining = len - 4;
    }
}

impl Connection {
    /// Sends `sql`, a `COPY … TO STDOUT`, and waits until the server starts sending rows,
    /// which [`Connection::read_copy_data`] then reads.
    pub async fn start_copy_out(&mut self, sql: &str) -> Result<()> {
        self.send_query(sql).await?;
        match self.read_frame().await? {
            Frame::Other(Message::CopyOutResponse(_)) => Ok(()),
            Frame::Other(Message::ErrorResponse(body)) => {
                Err(self.server_error_then_ready(body.fields()).await)
            }
            other => Err(self.unexpected("in reply to COPY TO STDOUT", &other)),
        }
    }

    /// Appends up to `limit` bytes of COPY data to `out` (waiting for at least one),
    /// straight from the read buffer. Returns `false`, with nothing appended, once the
    /// server has finished the COPY and is ready for the next query; a server error ends
    /// it likewise and is returned. `remaining` must start at 0 for each COPY.
    pub async fn read_copy_data(
        &mut self,
        remaining: &mut usize,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<bool> {
        let start = out.len();
        loop {
            let end = take_copy_data(&mut self.read_buf, remaining, out, start + limit)
                .map_err(|reason| self.protocol(reason))?;
            match end {
                CopyDataEnd::Full => return Ok(true),
                CopyDataEnd::NeedMore if out.len() > start => return Ok(true),
                CopyDataEnd::NeedMore => self.fill().await?,
                CopyDataEnd::OtherMessage if out.len() > start => return Ok(true),
                // Exactly one frame: more CopyData may follow a notice.
                CopyDataEnd::OtherMessage => match self.cut_frame()? {
                    None => self.fill().await?,
                    Some(frame) => match self.absorb(frame) {
                        None => {}
                        Some(Frame::Other(Message::CopyDone)) => {
                            self.wait_ready().await?;
                            return Ok(false);
                        }
                        Some(Frame::Other(Message::ErrorResponse(body))) => {
                            return Err(self.server_error_then_ready(body.fields()).await);
                        }
                        Some(other) => return Err(self.unexpected("during COPY TO STDOUT", &other)),
                    },
                },
            }
        }
    }

    /// The server's error, after reading on to ReadyForQuery so that the session can run
    /// the next query. The server's error is what counts: after a FATAL one the server
    /// closes the connection, which then says nothing new.
    async fn server_error_then_ready(&mut self, fields: ErrorFields<'_>) -> Error {
        let error = self.server_error(fields);
        let _ = self.wait_ready().await;
        error
    }

    /// Reads through the end of a command to ReadyForQuery, returning the first server
    /// error on the way.
    async fn wait_ready(&mut self) -> Result<()> {
        let mut error = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(Message::ReadyForQuery(_)) => return error.map_or(Ok(()), Err),
                Frame::Other(Message::ErrorResponse(body)) => {
                    error.get_or_insert(self.server_error(body.fields()));
                }
                Frame::Other(Message::CommandComplete(_)) => {}
                other => return Err(self.unexpected("at the end of a command", &other)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn cuts_frames_and_waits_for_incomplete_ones() {
        let mut bytes = frame(b'd', b"wxyz");
        bytes.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert!(matches!(cut_frame(&mut buf), Ok(Some(Frame::CopyData(d))) if &d[..] == b"wxyz"));
        assert!(matches!(cut_frame(&mut buf), Ok(None)));
        buf.extend_from_slice(&bytes[bytes.len() - 1..]);
        assert!(matches!(
            cut_frame(&mut buf),
            Ok(Some(Frame::Other(Message::ReadyForQuery(_))))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_impossible_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(cut_frame(&mut buf), Err(e) if e.contains("invalid length")));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(cut_frame(&mut buf).is_err());
    }

    /// Feeds `stream` to `take_copy_data` in pieces of `piece` bytes with an output limit
    /// of `limit`, the way `read_copy_data` does; returns the payload and what follows it.
    fn relay(stream: &[u8], piece: usize, limit: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let (mut buf, mut remaining, mut payload) = (BytesMut::new(), 0, Vec::new());
        let mut pieces = stream.chunks(piece.max(1));
        loop {
            let mut out = BytesMut::new();
            match take_copy_data(&mut buf, &mut remaining, &mut out, limit)? {
                CopyDataEnd::OtherMessage => {
                    payload.extend_from_slice(&out);
                    let mut rest = buf.to_vec();
                    pieces.for_each(|p| rest.extend_from_slice(p));
                    return Ok((payload, rest));
                }
                CopyDataEnd::Full => payload.extend_from_slice(&out),
                CopyDataEnd::NeedMore => {
                    payload.extend_from_slice(&out);
                    match pieces.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => return Ok((payload, buf.to_vec())),
                    }
                }
            }
        }
    }

    #[test]
    fn copy_data_payloads_pass_through_and_stop_at_the_next_message() {
        let mut stream = frame(b'd', b"first row");
        stream.extend(frame(b'd', b""));
        stream.extend(frame(b'd', &[7u8; 300]));
        let done = frame(b'c', b"");
        stream.extend(&done);
        let mut expected = b"first row".to_vec();
        expected.extend([7u8; 300]);
        for piece in [1, 2, 5, 64, 4096] {
            for limit in [1, 7, 100, 1 << 16] {
                let (payload, rest) = relay(&stream, piece, limit).unwrap();
                assert_eq!(payload, expected, "piece {piece}, limit {limit}");
                assert_eq!(rest, done, "piece {piece}, limit {limit}");
            }
        }
    }

    #[test]
    fn copy_data_with_an_impossible_length_is_an_error() {
        let stream = [b'd', 0, 0, 0, 2];
        assert!(relay(&stream, 5, 64).is_err());
    }

    proptest! {
        #[test]
        fn copy_data_survives_any_split(
            rows in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20),
            piece in 1usize..64,
            limit in 1usize..128,
        ) {
            let mut stream = Vec::new();
            for row in &rows {
                stream.extend(frame(b'd', row));
            }
            stream.extend(frame(b'C', b"COPY 1\0"));
            let (payload, rest) = relay(&stream, piece, limit).unwrap();
            prop_assert_eq!(payload, rows.concat());
            prop_assert_eq!(rest, frame(b'C', b"COPY 1\0"));
        }

        #[test]
        fn copy_data_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            limit in 1usize..128,
        ) {
            let _ = relay(&bytes, 13, limit);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = cut_frame(&mut buf) {}
        }

        #[test]
        fn arbitrary_bodies_of_known_tags_never_panic(
            tag in proptest::sample::select(b"123ACDEGHIKNRSTWZcdnst".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut buf = BytesMut::from(&frame(tag, &body)[..]);
            if let Ok(Some(Frame::Other(message))) = cut_frame(&mut buf) {
                // Walk the lazily parsed parts too.
                match message {
                    Message::DataRow(row) => { let mut r = row.ranges(); while let Ok(Some(_)) = r.next() {} }
                    Message::RowDescription(d) => { let mut f = d.fields(); while let Ok(Some(_)) = f.next() {} }
                    Message::ErrorResponse(e) => { let mut f = e.fields(); while let Ok(Some(_)) = f.next() {} }
                    Message::AuthenticationSasl(s) => { let mut m = s.mechanisms(); while let Ok(Some(_)) = m.next() {} }
                    _ => {}
                }
            }
        }
    }
}
