//! The transport under a protocol connection: the socket to one server (unix or TCP,
//! with keepalives) and the TLS negotiation `sslmode` asks for.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use super::error::{Error, Result};
use super::wire::Transport;
use crate::pg::conninfo::{ConnInfo, Endpoint, Host, SslMode};
use crate::pg::tls;

/// What the transport to a server turned out to be, before any startup message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encryption {
    /// A unix socket, which never carries TLS (as with libpq).
    UnixSocket,
    /// TCP without TLS: `sslmode=disable`, or a server that declined under `prefer`.
    Plain,
    /// TLS, with the protocol version agreed on (`TLSv1.3`).
    Tls(&'static str),
}

/// Why [`probe_transport`] failed: before a socket was connected, or after.
#[derive(Debug)]
pub(crate) enum TransportError {
    Unreachable(Error),
    Tls(Error),
}

/// Opens the transport to the first server of `info` as [`Connection::connect`] does
/// (socket, then TLS as `sslmode` asks) and closes it again before any startup message,
/// which the server does not even log. Tells an unreachable server from a TLS problem
/// before credentials come into play.
pub(crate) async fn probe_transport(info: &ConnInfo) -> Result<Encryption, TransportError> {
    let endpoint = info.primary_endpoint();
    let target = endpoint.target();
    let deadline = tokio::time::Instant::now() + info.connect_timeout;
    let timed_out = || Error::ConnectTimeout {
        target: target.clone(),
        seconds: info.connect_timeout.as_secs(),
    };
    let tcp = match tokio::time::timeout_at(deadline, dial(info, endpoint, &target))
        .await
        .map_err(|_| TransportError::Unreachable(timed_out()))?
        .map_err(TransportError::Unreachable)?
    {
        Dialed::Unix(_) => return Ok(Encryption::UnixSocket),
        Dialed::Tcp(tcp) => tcp,
    };
    let secured = tokio::time::timeout_at(deadline, secure(tcp, info, endpoint, &target))
        .await
        .map_err(|_| TransportError::Tls(timed_out()))?
        .map_err(TransportError::Tls)?;
    Ok(match secured {
        Secured::Plain(mut tcp) => {
            let _ = tcp.shutdown().await;
            Encryption::Plain
        }
        Secured::Tls(mut tls) => {
            let version = match tls.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            };
            let _ = tls.shutdown().await;
            Encryption::Tls(version)
        }
    })
}

enum Dialed {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// The socket to one server, with the TCP keepalives the connection string asks for.
async fn dial(info: &ConnInfo, endpoint: &Endpoint, target: &str) -> Result<Dialed> {
    let connect_err = |source| Error::Connect {
        target: target.to_owned(),
        source,
    };
    let host = match (&endpoint.host, endpoint.dial()) {
        (Host::Unix(dir), None) => {
            let path = dir.join(format!(".s.PGSQL.{}", endpoint.port));
            return Ok(Dialed::Unix(
                UnixStream::connect(path).await.map_err(connect_err)?,
            ));
        }
        (_, dial) => dial.unwrap_or_default(),
    };
    let tcp = TcpStream::connect((host.as_str(), endpoint.port))
        .await
        .map_err(connect_err)?;
    tcp.set_nodelay(true).map_err(connect_err)?;
    let keepalives = &info.keepalives;
    let socket = socket2::SockRef::from(&tcp);
    if keepalives.enabled {
        let mut settings = socket2::TcpKeepalive::new();
        if let Some(idle) = keepalives.idle {
            settings = settings.with_time(idle);
        }
        if let Some(interval) = keepalives.interval {
            settings = settings.with_interval(interval);
        }
        if let Some(count) = keepalives.count {
            settings = settings.with_retries(count);
        }
        socket.set_tcp_keepalive(&settings).map_err(connect_err)?;
    }
    if let Some(timeout) = keepalives.user_timeout {
        socket
            .set_tcp_user_timeout(Some(timeout))
            .map_err(connect_err)?;
    }
    Ok(Dialed::Tcp(tcp))
}

/// A TCP stream after the TLS negotiation `sslmode` asks for.
enum Secured {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The transport of a session, and the hash of the server's certificate that SCRAM
/// channel binding (`tls-server-end-point`) uses, when TLS is on and the certificate's
/// signature names a hash.
pub(super) async fn open_transport(
    info: &ConnInfo,
    endpoint: &Endpoint,
    target: &str,
) -> Result<(Box<dyn Transport>, Option<Vec<u8>>)> {
    Ok(match dial(info, endpoint, target).await? {
        Dialed::Unix(unix) => (Box::new(unix), None),
        Dialed::Tcp(tcp) => match secure(tcp, info, endpoint, target).await? {
            Secured::Plain(tcp) => (Box::new(tcp), None),
            Secured::Tls(tls) => {
                let hash = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| tls::server_end_point(cert));
                (tls as Box<dyn Transport>, hash)
            }
        },
    })
}

async fn secure(
    mut tcp: TcpStream,
    info: &ConnInfo,
    endpoint: &Endpoint,
    target: &str,
) -> Result<Secured> {
    if info.sslmode == SslMode::Disable {
        return Ok(Secured::Plain(tcp));
    }
    let tls_err = |reason: String| Error::Tls {
        target: target.to_owned(),
        reason,
    };
    let io_err = |source| Error::Io {
        target: target.to_owned(),
        source,
    };
    // Build the configuration first: a missing root certificate is reported even when the
    // server turns out not to speak TLS.
    let config = tls::client_config(info.sslmode, &info.tls).map_err(tls_err)?;

    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_err)?;
    // Exactly one byte: anything the server sent after it before the handshake would be
    // unauthenticated plaintext, so nothing more is read here (CVE-2021-23222).
    let answer = tcp.read_u8().await.map_err(io_err)?;
    match answer {
        b'S' => {}
        b'N' if info.sslmode == SslMode::Prefer => return Ok(Secured::Plain(tcp)),
        b'N' => {
            return Err(tls_err(format!(
                "the server does not accept TLS connections but sslmode={} requires TLS; enable \
                 ssl on the server or use sslmode=prefer/disable",
                info.sslmode.as_str()
            )))
        }
        other => {
            return Err(tls_err(format!(
                "unexpected answer {:?} to the TLS request",
                other as char
            )))
        }
    }
    let host = endpoint.server_name();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| tls_err(format!("{host:?} is not a valid host name for TLS: {e}")))?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(format!("handshake failed: {e}")))?;
    Ok(Secured::Tls(Box::new(stream)))
}
