//! Connection settings as libpq takes them: a `postgresql://` URL or `key=value` pairs
//! ([`syntax`]), completed from the service file, the `PG*` environment variables and the
//! defaults ([`resolve`]), with passwords from the string, `PGPASSWORD` or the password
//! file ([`files`]). Secrets never appear in any `Display` or `Debug` form.

mod files;
mod resolve;
mod syntax;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use syntax::mask_password;

/// Whether a connection string (either form) gives `keyword` a non-empty value, as read
/// from a server setting such as `primary_conninfo`; `false` when it does not parse.
pub fn names_keyword(text: &str, keyword: &str) -> bool {
    syntax::pairs(text).is_ok_and(|pairs| pairs.iter().any(|(k, v)| k == keyword && !v.is_empty()))
}

/// How TLS is negotiated, with libpq's meaning for each mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate (libpq's default).
    Prefer,
    /// Require TLS; verify the certificate chain only when a root certificate is given.
    Require,
    /// Require TLS and a certificate chain that leads to the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported: use disable, prefer, require, verify-ca or verify-full"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Which server of several a session may use (`target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    fn parse(value: &str) -> Result<SessionAttrs, String> {
        Ok(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            other => {
                return Err(format!(
                    "unknown target_session_attrs {other:?}: use any, read-write, read-only, \
                     primary, standby or prefer-standby"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// SCRAM channel binding (`channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

impl ChannelBinding {
    fn parse(value: &str) -> Result<ChannelBinding, String> {
        Ok(match value {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(format!(
                    "unknown channel_binding {other:?}: use disable, prefer or require"
                ))
            }
        })
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or address (empty when only `hostaddr` is given).
    Tcp(String),
    /// A directory holding the server's unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// One server of a connection string's host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    /// Connect here instead of looking `host` up; `host` still names the server for TLS
    /// and the password file.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Endpoint {
    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Host::Tcp(h), _) if !h.is_empty() && h.contains(':') => format!("[{h}]:{}", self.port),
            (Host::Tcp(h), _) if !h.is_empty() => format!("{h}:{}", self.port),
            (Host::Tcp(_), Some(IpAddr::V6(a))) => format!("[{a}]:{}", self.port),
            (Host::Tcp(_), Some(a)) => format!("{a}:{}", self.port),
            (Host::Tcp(_), None) => format!("localhost:{}", self.port),
            (Host::Unix(dir), _) => format!("{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }

    /// The name the server's certificate must carry (and SNI sends): the host name, else
    /// the address.
    pub fn server_name(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Host::Tcp(h), _) if !h.is_empty() => h.clone(),
            (_, Some(addr)) => addr.to_string(),
            _ => "localhost".to_owned(),
        }
    }

    /// What a TCP connection dials: the address if given, else the host name.
    pub fn dial(&self) -> Option<String> {
        match (&self.host, self.hostaddr) {
            (_, Some(addr)) => Some(addr.to_string()),
            (Host::Tcp(h), None) => Some(h.clone()),
            (Host::Unix(_), None) => None,
        }
    }

    /// The host field a password file line is matched against: as libpq, `localhost` for
    /// the default socket directory, any other directory as it is written.
    fn passfile_host(&self) -> String {
        match &self.host {
            Host::Unix(dir) if dir == Path::new(resolve::DEFAULT_SOCKET_DIR) => {
                "localhost".to_owned()
            }
            Host::Unix(dir) => dir.display().to_string(),
            Host::Tcp(h) if h.is_empty() => self.server_name(),
            Host::Tcp(h) => h.clone(),
        }
    }
}

/// Where the root certificates for verifying the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Everything TLS needs beyond `sslmode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub rootcert: Option<RootCert>,
    /// The client certificate (PEM) and its key (PEM, PKCS#8/PKCS#1/SEC1, or encrypted
    /// PKCS#8 opened with `key_password`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub key_password: Option<Password>,
    pub crl: Option<PathBuf>,
    pub crldir: Option<PathBuf>,
    /// Send the host name in the handshake (SNI).
    pub sni: bool,
    /// `sslcertmode=disable`: never present the client certificate.
    pub send_cert: bool,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// TCP keepalive settings; `None` leaves the operating system's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalives {
    pub enabled: bool,
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
    pub user_timeout: Option<Duration>,
}

/// libpq's: keepalives on, with the operating system's timings.
impl Default for Keepalives {
    fn default() -> Keepalives {
        Keepalives {
            enabled: true,
            idle: None,
            interval: None,
            count: None,
            user_timeout: None,
        }
    }
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Password {
        Password(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(****)")
    }
}

/// Connection settings for one database, on one or several servers.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Tried in this order (shuffled with `load_balance_hosts=random`).
    pub endpoints: Vec<Endpoint>,
    pub user: String,
    /// From the string, the service file or `PGPASSWORD`.
    pub password: Option<Password>,
    /// Consulted per server when no password is given otherwise.
    pub passfile: Option<PathBuf>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub tls: TlsOptions,
    pub channel_binding: ChannelBinding,
    pub session_attrs: SessionAttrs,
    pub load_balance: bool,
    pub application_name: String,
    /// Run-time settings sent at startup (`options=-c name=value`).
    pub options: Vec<(String, String)>,
    pub keepalives: Keepalives,
    /// For each server tried.
    pub connect_timeout: Duration,
}

/// A connection string that cannot be used. It shows the input only with its secrets
/// masked ([`mask_password`]), and not at all when it is a key=value string that does not
/// read, whose password a mask could miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string{}: {reason}", shown.as_ref().map(|s| format!(" {s}")).unwrap_or_default())]
pub struct InvalidUrl {
    shown: Option<String>,
    reason: String,
}

/// The shape every reason about a malformed URL points to.
const URL_SHAPE: &str = "write postgresql://USER:PASSWORD@HOST:PORT/DBNAME?sslmode=…, with \
                         `@`, `/`, `:`, `#`, `?` and `%` in the user name and password \
                         percent-encoded (%40, %2F, %3A, %23, %3F, %25), or key=value pairs \
                         (host=… user=… password='…')";

/// How an error may show `text`: masked.
fn shown(text: &str) -> Option<String> {
    Some(mask_password(text))
}

impl ConnInfo {
    /// Parses a `postgresql://` URL or a `key=value` string with libpq's rules: what it
    /// leaves out comes from its service (`service=`, `PGSERVICE`), then the `PG*`
    /// environment variables, then libpq's defaults (the local socket directory or
    /// localhost, port 5432, user `$USER`, database named like the user, `sslmode=prefer`).
    pub fn parse(text: &str) -> Result<ConnInfo, InvalidUrl> {
        Self::parse_in(text, &resolve::ProcessEnvironment).map(|(info, _)| info)
    }

    fn parse_in(
        text: &str,
        env: &dyn resolve::Environment,
    ) -> Result<(ConnInfo, HashMap<&'static str, resolve::Origin>), InvalidUrl> {
        resolve::resolve(text, syntax::pairs(text)?, env)
    }

    /// [`ConnInfo::parse`] for a string tributary stores (a connector's source): refused
    /// when its password would come from `PGPASSWORD` rather than from the text, a service
    /// file or the password file. Only the text is stored, so the daemon and later commands
    /// (with their own environment) would connect without it.
    pub fn parse_to_store(text: &str) -> Result<ConnInfo, InvalidUrl> {
        let (info, origins) = Self::parse_in(text, &resolve::ProcessEnvironment)?;
        let mut from_env: Vec<&str> = origins
            .iter()
            .filter(|(key, origin)| **origin == resolve::Origin::Environment && **key != "password")
            .map(|(key, _)| *key)
            .collect();
        if !from_env.is_empty() {
            from_env.sort_unstable();
            return Err(InvalidUrl {
                shown: shown(text),
                reason: format!(
                    "{} would come from PG* environment variables, which tributary does not \
                     store: the daemon and later commands would connect otherwise. Write them \
                     in the connection string (or a service file), or unset the variables",
                    from_env.join(", ")
                ),
            });
        }
        if origins.get("password") == Some(&resolve::Origin::Environment) {
            return Err(InvalidUrl {
                shown: shown(text),
                reason: "its password would come from PGPASSWORD, which tributary does not \
                         store: the daemon and later commands would connect without it. Put \
                         the password in the connection string (percent-encoded in a URL), in \
                         a password file (~/.pgpass of the user the daemon runs as), or unset \
                         PGPASSWORD if the server needs none"
                    .into(),
            });
        }
        Ok(info)
    }

    /// The same servers and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        ConnInfo {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// Only `endpoint`: for the sessions of one run, which must all reach the server its
    /// first session found (a snapshot exported on one server is unknown on another).
    pub fn pinned(&self, endpoint: &Endpoint) -> ConnInfo {
        ConnInfo {
            endpoints: vec![endpoint.clone()],
            load_balance: false,
            ..self.clone()
        }
    }

    /// The servers in the order to try them.
    pub fn endpoints_to_try(&self) -> Vec<Endpoint> {
        let mut endpoints = self.endpoints.clone();
        if self.load_balance {
            use rand::seq::SliceRandom;
            endpoints.shuffle(&mut rand::thread_rng());
        }
        endpoints
    }

    /// The first server, the one a single-host string names.
    pub fn primary_endpoint(&self) -> &Endpoint {
        &self.endpoints[0]
    }

    /// `host:port` or the socket path of every server, for messages.
    pub fn target(&self) -> String {
        self.endpoints
            .iter()
            .map(Endpoint::target)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The password for `endpoint`: the one given, else the password file's entry.
    pub fn password_for(&self, endpoint: &Endpoint) -> Option<Password> {
        self.password.clone().or_else(|| {
            files::passfile_password(
                self.passfile.as_deref()?,
                &endpoint.passfile_host(),
                endpoint.port,
                &self.dbname,
                &self.user,
            )
        })
    }
}

/// How [`ConnInfo::url`] writes the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowPassword {
    /// `:****`, for output that must never carry the secret.
    Masked,
    /// Left out: for a command to paste, which then asks for it (or finds it in the
    /// environment or `~/.pgpass`).
    Omitted,
    /// The password itself, percent-encoded: only when the operator asks for it.
    Shown,
}

impl ConnInfo {
    /// A connection URL for these servers and database, with every setting that differs
    /// from libpq's default, so that it connects as this one does.
    pub fn url(&self, password: ShowPassword) -> String {
        // RFC 3986's unreserved characters stay as they are.
        const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let encode = |text: &str| percent_encoding::utf8_percent_encode(text, RESERVED).to_string();
        let secret = |p: &Password| match password {
            ShowPassword::Omitted => None,
            ShowPassword::Masked => Some("****".to_owned()),
            ShowPassword::Shown => Some(encode(p.expose())),
        };
        let user = encode(&self.user);
        let userinfo = match self.password.as_ref().and_then(secret) {
            Some(p) => format!("{user}:{p}"),
            None => user,
        };
        let dbname = encode(&self.dbname);
        let mut query: Vec<String> = Vec::new();
        let sockets = self
            .endpoints
            .iter()
            .any(|e| matches!(e.host, Host::Unix(_)));
        let authority = if sockets {
            let hosts: Vec<String> = self
                .endpoints
                .iter()
                .map(|e| match &e.host {
                    Host::Unix(dir) => dir.display().to_string(),
                    Host::Tcp(h) => h.clone(),
                })
                .collect();
            let ports: Vec<String> = self.endpoints.iter().map(|e| e.port.to_string()).collect();
            query.push(format!("host={}", encode(&hosts.join(","))));
            query.push(format!("port={}", ports.join(",")));
            String::new()
        } else {
            query.push(format!("sslmode={}", self.sslmode.as_str()));
            self.endpoints
                .iter()
                .map(|e| match &e.host {
                    Host::Tcp(h) if h.is_empty() => format!(":{}", e.port),
                    _ => e.target(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.endpoints.iter().any(|e| e.hostaddr.is_some()) {
            let addrs: Vec<String> = self
                .endpoints
                .iter()
                .map(|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default())
                .collect();
            query.push(format!("hostaddr={}", encode(&addrs.join(","))));
        }
        let path = |p: &PathBuf| encode(&p.display().to_string());
        let tls = &self.tls;
        match &tls.rootcert {
            Some(RootCert::File(p)) => query.push(format!("sslrootcert={}", path(p))),
            Some(RootCert::System) => query.push("sslrootcert=system".to_owned()),
            None => {}
        }
        for (key, value) in [
            ("sslcert", &tls.cert),
            ("sslkey", &tls.key),
            ("sslcrl", &tls.crl),
            ("sslcrldir", &tls.crldir),
        ] {
            if let Some(p) = value {
                query.push(format!("{key}={}", path(p)));
            }
        }
        if let Some(p) = tls.key_password.as_ref().and_then(secret) {
            query.push(format!("sslpassword={p}"));
        }
        if !tls.sni {
            query.push("sslsni=0".to_owned());
        }
        if self.session_attrs != SessionAttrs::Any {
            query.push(format!(
                "target_session_attrs={}",
                self.session_attrs.as_str()
            ));
        }
        if self.load_balance {
            query.push("load_balance_hosts=random".to_owned());
        }
        if self.channel_binding == ChannelBinding::Require {
            query.push("channel_binding=require".to_owned());
        }
        format!(
            "postgresql://{userinfo}@{authority}/{dbname}?{}",
            query.join("&")
        )
    }
}

/// A URL without the password, safe for logs and errors.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url(ShowPassword::Masked))
    }
}

/// Run-time settings as the startup packet's `options` carries them: `-c name=value`, with
/// spaces and backslashes escaped.
pub fn options_text(options: &[(String, String)]) -> String {
    let escape = |text: &str| text.replace('\\', "\\\\").replace(' ', "\\ ");
    options
        .iter()
        .map(|(name, value)| format!("-c {}={}", escape(name), escape(value)))
        .collect::<Vec<_>>()
        .join(" ")
}
