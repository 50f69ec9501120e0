//! SQL sessions over tokio-postgres with tributary's connection rules.

use std::ops::Deref;

use tokio::task::JoinHandle;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{ChannelBinding, ConnInfo, Endpoint, Host, SslMode};
use super::hosts::{self, ServerRole};
use super::tls;

/// A tokio-postgres client that owns its connection task: dropping it closes the session
/// and ends the task, so no task outlives its user.
pub struct PgClient {
    client: tokio_postgres::Client,
    connection: JoinHandle<()>,
}

impl Deref for PgClient {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl PgClient {
    /// The client, mutably: transactions and COPY need it.
    pub fn client_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Opens a SQL session on the first server of `info` that `target_session_attrs` allows.
/// Errors carry the server's SQLSTATE where there is one; the caller's layer decides
/// what they mean.
pub async fn connect(info: &ConnInfo) -> Result<PgClient, ConnectError> {
    connect_endpoint(info).await.map(|(client, _)| client)
}

/// [`connect`], and which server it reached.
pub async fn connect_endpoint(info: &ConnInfo) -> Result<(PgClient, Endpoint), ConnectError> {
    let tls = tls::client_config(info.sslmode, &info.tls).map_err(|reason| ConnectError::Tls {
        target: info.target(),
        reason,
    })?;
    let tls = MakeRustlsConnect::new(tls);
    hosts::first_accepted(info, |endpoint, check| {
        let tls = tls.clone();
        async move {
            let client = connect_one(info, &endpoint, tls).await?;
            let role = match check {
                false => None,
                true => {
                    let row = client
                        .query_one(hosts::ROLE_QUERY, &[])
                        .await
                        .map_err(|error| ConnectError::Postgres {
                            target: endpoint.target(),
                            error,
                        })?;
                    Some(ServerRole {
                        in_recovery: row.get(0),
                        read_only: row.get(1),
                    })
                }
            };
            Ok((client, role))
        }
    })
    .await
    .map_err(|none| match none.into_single() {
        Ok(single) => single,
        Err(none) => ConnectError::NoServer {
            transient: none.is_transient(ConnectError::is_transient),
            reasons: none.reasons(),
        },
    })
}

async fn connect_one(
    info: &ConnInfo,
    endpoint: &Endpoint,
    tls: MakeRustlsConnect,
) -> Result<PgClient, ConnectError> {
    let mut config = tokio_postgres::Config::new();
    match &endpoint.host {
        Host::Tcp(_) => config.host(endpoint.server_name()),
        Host::Unix(dir) => config.host_path(dir),
    };
    if let Some(addr) = endpoint.hostaddr {
        config.hostaddr(addr);
    }
    config
        .port(endpoint.port)
        .user(&info.user)
        .dbname(&info.dbname)
        .application_name(&info.application_name)
        .connect_timeout(info.connect_timeout)
        .keepalives(info.keepalives.enabled)
        .channel_binding(match info.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        })
        .ssl_mode(match info.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            // Chain and host checks live in the rustls configuration.
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    let keepalives = &info.keepalives;
    if let Some(idle) = keepalives.idle {
        config.keepalives_idle(idle);
    }
    if let Some(interval) = keepalives.interval {
        config.keepalives_interval(interval);
    }
    if let Some(count) = keepalives.count {
        config.keepalives_retries(count);
    }
    if let Some(timeout) = keepalives.user_timeout {
        config.tcp_user_timeout(timeout);
    }
    if !info.options.is_empty() {
        config.options(super::conninfo::options_text(&info.options));
    }
    if let Some(password) = info.password_for(endpoint) {
        config.password(password.expose());
    }
    let (client, connection) =
        config
            .connect(tls)
            .await
            .map_err(|error| ConnectError::Postgres {
                target: endpoint.target(),
                error,
            })?;
    let connection = tokio::spawn(drive(connection, endpoint.target()));
    Ok(PgClient { client, connection })
}

/// Runs the session's connection until it ends. Server notices are logged at DEBUG: the
/// ones tributary's own statements cause ("… does not exist, skipping" from `DROP … IF
/// EXISTS`) say nothing an operator must act on, and tokio-postgres's own `Connection`
/// future would log every one at INFO.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>, target: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => tracing::debug!(
                server = %target,
                "{}: {}",
                notice.severity(),
                notice.message()
            ),
            // Notifications: no session of this kind LISTENs.
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(server = %target, "SQL session ended: {e}");
                return;
            }
            None => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TLS with {target}: {reason}")]
    Tls { target: String, reason: String },
    /// The message carries the cause's whole text, so the cause is not also a `source`
    /// (reports that print the chain would say it twice).
    #[error("connecting to {target}: {}", super::error_message(error))]
    Postgres {
        target: String,
        error: tokio_postgres::Error,
    },
    #[error("no server of the connection string could be used: {reasons}")]
    NoServer { reasons: String, transient: bool },
}

impl ConnectError {
    /// Retry or stop ([`super::retry`]): a refused or lost connection, a server starting up
    /// or out of connection slots may pass; a TLS configuration or bad credentials do not.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Tls { .. } => false,
            ConnectError::Postgres { error, .. } => super::retry::postgres(error),
            ConnectError::NoServer { transient, .. } => *transient,
        }
    }
}
