//! Connection settings parsed from a `postgresql://` URL, with the password kept out of
//! every `Display` and `Debug` form.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

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

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding the server's unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// Where the root certificates for verifying the server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(****)")
    }
}

/// Parsed connection settings for one source database.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<RootCert>,
    pub application_name: String,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection URL {url}: {reason}")]
pub struct InvalidUrl {
    /// The URL with its password masked.
    url: String,
    reason: String,
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnInfo {
    /// Parses `postgresql://user:password@host:port/dbname?sslmode=…&sslrootcert=…`.
    ///
    /// Missing parts follow libpq: port 5432, user `$PGUSER` or `$USER`, password
    /// `$PGPASSWORD`, database named like the user, `sslmode=prefer`. A host given as
    /// an absolute path (`?host=/var/run/postgresql`) is a unix socket directory.
    pub fn parse(text: &str) -> Result<ConnInfo, InvalidUrl> {
        let fail = |reason: String| InvalidUrl {
            url: mask_password(text),
            reason,
        };
        let url = Url::parse(&with_default_host(text)).map_err(|e| fail(e.to_string()))?;
        if !matches!(url.scheme(), "postgresql" | "postgres") {
            return Err(fail(format!(
                "scheme {:?} is not supported: start the URL with postgresql://",
                url.scheme()
            )));
        }

        let decode = |part: &str| -> Result<String, InvalidUrl> {
            percent_encoding_decode(part).ok_or_else(|| {
                fail(format!(
                    "{part:?} is not valid UTF-8 after percent-decoding"
                ))
            })
        };

        let mut host = match url.host_str() {
            Some(h) if !h.is_empty() => {
                let h = decode(h.trim_start_matches('[').trim_end_matches(']'))?;
                if h.contains(',') {
                    return Err(fail("several hosts in one URL are not supported".into()));
                }
                if !valid_host(&h) {
                    return Err(fail(format!(
                        "host {h:?} is neither a host name nor an IP address"
                    )));
                }
                Some(host_from(&h))
            }
            _ => None,
        };
        let mut port = url.port();
        let mut user = (!url.username().is_empty())
            .then(|| decode(url.username()))
            .transpose()?;
        let mut password = url.password().map(decode).transpose()?.map(Password);
        let mut dbname = url
            .path()
            .strip_prefix('/')
            .filter(|p| !p.is_empty())
            .map(decode)
            .transpose()?;
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        let mut application_name = "tributary".to_owned();
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;

        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match key.as_ref() {
                "host" => {
                    if !valid_host(&value) {
                        return Err(fail(format!(
                            "host {value:?} is neither a host name, an IP address nor an \
                             absolute socket directory (one host per URL)"
                        )));
                    }
                    host = Some(host_from(&value));
                }
                "port" => {
                    port = Some(value.parse().map_err(|_| {
                        fail(format!(
                            "port {value:?} is not a number between 1 and 65535"
                        ))
                    })?)
                }
                "user" => user = Some(value),
                "password" => password = Some(Password(value)),
                "dbname" => dbname = Some(value),
                "sslmode" => sslmode = SslMode::parse(&value).map_err(fail)?,
                "sslrootcert" => {
                    sslrootcert = Some(if value == "system" {
                        RootCert::System
                    } else {
                        RootCert::File(PathBuf::from(value))
                    })
                }
                "application_name" => application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        fail(format!(
                            "connect_timeout {value:?} is not a whole number of seconds"
                        ))
                    })?;
                    connect_timeout = if secs == 0 {
                        DEFAULT_CONNECT_TIMEOUT
                    } else {
                        Duration::from_secs(secs.max(2))
                    };
                }
                other => {
                    return Err(fail(format!(
                        "unknown parameter {other:?}: supported are host, port, user, password, \
                         dbname, sslmode, sslrootcert, application_name, connect_timeout"
                    )))
                }
            }
        }

        let user = match user.or_else(|| std::env::var("PGUSER").ok()) {
            Some(u) => u,
            None => std::env::var("USER").map_err(|_| {
                fail("no user name: put it in the URL (postgresql://USER@host/db)".into())
            })?,
        };
        let password = password.or_else(|| std::env::var("PGPASSWORD").ok().map(Password));
        let dbname = dbname.unwrap_or_else(|| user.clone());
        let host = host.unwrap_or_else(|| Host::Tcp("localhost".into()));
        let port = match port {
            Some(0) => return Err(fail("port 0 is not valid".into())),
            Some(p) => p,
            None => 5432,
        };
        if sslrootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
            // libpq makes the same demand: the system store only means something with host checks.
            return Err(fail("sslrootcert=system needs sslmode=verify-full".into()));
        }

        Ok(ConnInfo {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name,
            connect_timeout,
        })
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        ConnInfo {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    /// `host:port` or the socket path, for messages.
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), self.port),
        }
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
    /// A connection URL for this server and database.
    pub fn url(&self, password: ShowPassword) -> String {
        // RFC 3986's unreserved characters stay as they are.
        const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let encode = |text: &str| percent_encoding::utf8_percent_encode(text, RESERVED).to_string();
        let secret = match (&self.password, password) {
            (None, _) | (Some(_), ShowPassword::Omitted) => String::new(),
            (Some(_), ShowPassword::Masked) => ":****".to_owned(),
            (Some(p), ShowPassword::Shown) => format!(":{}", encode(p.expose())),
        };
        let user = encode(&self.user);
        let dbname = encode(&self.dbname);
        match &self.host {
            Host::Tcp(_) => format!(
                "postgresql://{user}{secret}@{}/{dbname}?sslmode={}",
                self.target(),
                self.sslmode.as_str()
            ),
            Host::Unix(dir) => format!(
                "postgresql://{user}{secret}@/{dbname}?host={}&port={}",
                encode(&dir.display().to_string()),
                self.port
            ),
        }
    }
}

/// A URL without the password, safe for logs and errors.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url(ShowPassword::Masked))
    }
}

/// `postgresql://user@/db?host=/socket/dir` leaves the URL's host empty, which libpq
/// accepts and the `url` crate does not: fill in `localhost`, which a `host` parameter
/// then overrides.
fn with_default_host(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &text[start..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    let host = &rest[host_start..authority_end];
    if host.is_empty() || host.starts_with(':') {
        format!(
            "{}localhost{}",
            &text[..start + host_start],
            &text[start + host_start..]
        )
    } else {
        text.to_owned()
    }
}

/// A `host` parameter libpq could use: a socket directory, an IP address, or a name the
/// URL syntax accepts as a host (which rules out control characters, `/`, `,` and spaces).
fn valid_host(text: &str) -> bool {
    if text.starts_with('/') {
        return !text.contains('\0');
    }
    text.parse::<std::net::IpAddr>().is_ok()
        || (!text.contains(',') && url::Host::parse(text).is_ok())
}

fn host_from(text: &str) -> Host {
    if text.starts_with('/') {
        Host::Unix(PathBuf::from(text))
    } else {
        Host::Tcp(text.to_owned())
    }
}

fn percent_encoding_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Replaces the password of a `scheme://user:password@…` URL with `****`, also when the
/// URL does not otherwise parse, so that an error about a URL never shows its secret.
pub fn mask_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return mask_query_password(text);
    };
    let userinfo = &authority[..at];
    let masked_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:****", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    mask_query_password(&format!(
        "{}{}{}",
        &text[..scheme_end + 3],
        masked_userinfo,
        &rest[at..]
    ))
}

fn mask_query_password(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (base, query) = text.split_at(q + 1);
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=****".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}{}", masked.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_mask_omit_or_show_the_password() {
        let info =
            ConnInfo::parse("postgresql://app%40x:p%2Fw%3Ad@db.example:6432/shop?sslmode=require")
                .unwrap()
                .with_dbname("dev_1");
        assert_eq!(
            info.url(ShowPassword::Masked),
            "postgresql://app%40x:****@db.example:6432/dev_1?sslmode=require"
        );
        assert_eq!(info.to_string(), info.url(ShowPassword::Masked));
        assert_eq!(
            info.url(ShowPassword::Omitted),
            "postgresql://app%40x@db.example:6432/dev_1?sslmode=require"
        );
        let shown = info.url(ShowPassword::Shown);
        assert_eq!(
            shown,
            "postgresql://app%40x:p%2Fw%3Ad@db.example:6432/dev_1?sslmode=require"
        );
        let back = ConnInfo::parse(&shown).unwrap();
        assert_eq!(
            back.password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .as_deref(),
            Some("p/w:d")
        );
        assert_eq!(back.user, "app@x");
    }

    #[test]
    fn parses_a_full_url() {
        let info = ConnInfo::parse(
            "postgresql://rep%40user:p%3Ass%2Fw@db.example.com:6543/sales?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=t1",
        )
        .unwrap();
        assert_eq!(info.host, Host::Tcp("db.example.com".into()));
        assert_eq!(info.port, 6543);
        assert_eq!(info.user, "rep@user");
        assert_eq!(info.password.as_ref().unwrap().expose(), "p:ss/w");
        assert_eq!(info.dbname, "sales");
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(info.application_name, "t1");
    }

    #[test]
    fn accepts_postgres_scheme_and_defaults() {
        let info = ConnInfo::parse("postgres://alice@localhost").unwrap();
        assert_eq!(info.port, 5432);
        assert_eq!(info.dbname, "alice");
        assert_eq!(info.sslmode, SslMode::Prefer);
    }

    #[test]
    fn unix_socket_directory_from_query() {
        let info = ConnInfo::parse("postgresql://bob@/db?host=/tmp/sock&port=5555").unwrap();
        assert_eq!(info.host, Host::Unix("/tmp/sock".into()));
        for bad in ["\t(\t/va\0", "a b", "x,y", "/dir\0"] {
            let url = format!(
                "postgres://u@/db?host={}",
                bad.replace('\0', "%00").replace(' ', "%20")
            );
            assert!(ConnInfo::parse(&url).is_err(), "{url}");
        }
        assert!(ConnInfo::parse("postgres://u@/db?host=::1").is_ok());
        assert!(ConnInfo::parse("postgresql://u@db.example%40x/db").is_err());
        assert!(ConnInfo::parse("postgresql://u@[::1]:5433/db").is_ok());
        assert_eq!(info.target(), "/tmp/sock/.s.PGSQL.5555");
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        for (url, needle) in [
            ("mysql://u@h/db", "scheme"),
            ("postgresql://u@h/db?sslmode=sometimes", "unknown sslmode"),
            ("postgresql://u@h/db?port=abc", "port"),
            ("postgresql://u@h/db?frobnicate=1", "unknown parameter"),
            ("postgresql://u@h/db?sslrootcert=system", "verify-full"),
            ("postgresql://u@h1,h2/db", "several hosts"),
        ] {
            let err = ConnInfo::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn passwords_never_print() {
        let url = "postgresql://u:hunter2@h/db?sslmode=frob";
        let err = ConnInfo::parse(url).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let info = ConnInfo::parse("postgresql://u:hunter2@h/db").unwrap();
        assert!(!info.to_string().contains("hunter2"));
        assert!(!format!("{info:?}").contains("hunter2"));
        let q = ConnInfo::parse("postgresql://u@h/db?password=hunter2&port=x").unwrap_err();
        assert!(!q.to_string().contains("hunter2"), "{q}");
        assert_eq!(
            mask_password("postgresql://u:se:cret@h:5/db?password=x&a=b"),
            "postgresql://u:****@h:5/db?password=****&a=b"
        );
        assert_eq!(mask_password("not a url hunter"), "not a url hunter");
    }
}
