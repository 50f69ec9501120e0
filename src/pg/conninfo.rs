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

/// A connection URL that does not parse. It shows the input only with its password masked
/// ([`mask_password`]), and not at all when the input is a key=value string, whose
/// password a mask could miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection URL{}: {reason}", shown.as_ref().map(|s| format!(" {s}")).unwrap_or_default())]
pub struct InvalidUrl {
    shown: Option<String>,
    reason: String,
}

/// The shape every reason about a malformed URL points to.
const URL_SHAPE: &str = "write postgresql://USER:PASSWORD@HOST:PORT/DBNAME?sslmode=…, with \
                         `@`, `/`, `:`, `#`, `?` and `%` in the user name and password \
                         percent-encoded (%40, %2F, %3A, %23, %3F, %25)";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnInfo {
    /// Parses `postgresql://user:password@host:port/dbname?sslmode=…&sslrootcert=…`.
    ///
    /// Missing parts follow libpq: port 5432, user `$PGUSER` or `$USER`, password
    /// `$PGPASSWORD`, database named like the user, `sslmode=prefer`. A host given as
    /// an absolute path (`?host=/var/run/postgresql`) is a unix socket directory.
    pub fn parse(text: &str) -> Result<ConnInfo, InvalidUrl> {
        let fail = |reason: String| InvalidUrl {
            shown: Some(mask_password(text)),
            reason,
        };
        if let Some(misshapen) = misshapen(text) {
            return Err(misshapen);
        }
        let url =
            Url::parse(&with_default_host(text)).map_err(|e| fail(format!("{e}: {URL_SHAPE}")))?;
        if !matches!(url.scheme(), "postgresql" | "postgres") {
            return Err(fail(format!(
                "scheme {:?} is not supported: start the URL with postgresql://",
                url.scheme()
            )));
        }

        // Named, never quoted: the part may be the password.
        let decode = |part: &str, what: &str| -> Result<String, InvalidUrl> {
            percent_encoding_decode(part).ok_or_else(|| {
                fail(format!(
                    "the {what} is not valid UTF-8 after percent-decoding: {URL_SHAPE}"
                ))
            })
        };

        let mut host = match url.host_str() {
            Some(h) if !h.is_empty() => {
                let h = decode(h.trim_start_matches('[').trim_end_matches(']'), "host")?;
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
            .then(|| decode(url.username(), "user name"))
            .transpose()?;
        let mut password = url
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?
            .map(Password);
        let mut dbname = url
            .path()
            .strip_prefix('/')
            .filter(|p| !p.is_empty())
            .map(|d| decode(d, "database name"))
            .transpose()?;
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        let mut application_name = "tributary".to_owned();
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;

        let mut after_password = false;
        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            let follows_password = std::mem::replace(&mut after_password, key == "password");
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
                // Most likely the rest of a password that holds an `&`: not quoted.
                _ if follows_password => {
                    return Err(fail(
                        "an unknown parameter follows password=: if the password holds `&`, \
                         percent-encode it as %26 (and `%` as %25, `#` as %23)"
                            .into(),
                    ))
                }
                other => {
                    return Err(fail(format!(
                        "unknown parameter {other:?}: supported are {}",
                        PARAMETERS.join(", ")
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

    /// [`ConnInfo::parse`] for a URL tributary stores (a connector's source): refused when
    /// its password would come from `$PGPASSWORD` rather than from the text. Only the text
    /// is stored, so the daemon and later commands would connect without it.
    pub fn parse_to_store(text: &str) -> Result<ConnInfo, InvalidUrl> {
        let info = ConnInfo::parse(text)?;
        let own_password = Url::parse(&with_default_host(text)).is_ok_and(|url| {
            url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password")
        });
        if info.password.is_some() && !own_password {
            return Err(InvalidUrl {
                shown: Some(mask_password(text)),
                reason: "its password would come from PGPASSWORD, which tributary does not \
                         store: the daemon and later commands would connect without it. Put \
                         the password in the URL (percent-encoded), or unset PGPASSWORD if the \
                         server needs none"
                    .into(),
            });
        }
        Ok(info)
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

/// The query parameters [`ConnInfo::parse`] understands.
const PARAMETERS: [&str; 9] = [
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "connect_timeout",
];

/// What makes `text` no URL at all, or one whose user name or password would be misread:
/// checked before the `url` crate sees it, whose reading of such text differs from libpq's
/// (it takes the last `@` of the authority, libpq the first) and whose errors ("invalid port
/// number") would not say what is wrong. The reason never quotes the text.
fn misshapen(text: &str) -> Option<InvalidUrl> {
    let Some(scheme_end) = text.find("://") else {
        if looks_like_conninfo(text) {
            return Some(InvalidUrl {
                shown: None,
                reason: format!(
                    "a key=value connection string (not shown: it may hold a password) is not \
                     taken here; {URL_SHAPE}"
                ),
            });
        }
        // `postgres//…`, `postgresql:/…`, `postgresql:…` or no scheme at all.
        let rest = text
            .strip_prefix("postgresql")
            .or_else(|| text.strip_prefix("postgres"))
            .map_or(text, |rest| rest.trim_start_matches([':', '/']));
        return Some(InvalidUrl {
            shown: Some(mask_password(text)),
            reason: format!(
                "it does not start with postgresql:// (or postgres://): did you mean \
                 postgresql://{}? Otherwise {URL_SHAPE}",
                mask_password(rest)
            ),
        });
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let reason = if authority.matches('@').count() > 1 {
        "the user name or password holds an unencoded `@`: percent-encode it as %40".to_owned()
    } else if !authority.contains('@') && rest.contains('@') && colon_without_port(authority) {
        let reserved = rest[authority_end..].chars().next().unwrap_or('/');
        format!(
            "the password (or user name) holds an unencoded `{reserved}`, which ends the host \
             part early: percent-encode it ({})",
            percent_encoded(reserved)
        )
    } else if rest[authority_end..path_end].contains('@') {
        "an unencoded `@` after the host: percent-encode it as %40 in a database name; if it \
         ends a password, percent-encode the password's `/`, `?` and `#` (%2F, %3F, %23)"
            .to_owned()
    } else {
        return None;
    };
    Some(InvalidUrl {
        shown: Some(mask_password(text)),
        reason,
    })
}

fn percent_encoded(c: char) -> &'static str {
    match c {
        '/' => "`/` as %2F",
        '?' => "`?` as %3F",
        _ => "`#` as %23",
    }
}

/// `host=db user=app …`: libpq's other connection string syntax.
fn looks_like_conninfo(text: &str) -> bool {
    let text = text.trim_start();
    let key_len = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    key_len > 0 && text[key_len..].trim_start().starts_with('=')
}

/// Whether an authority without `@` has a colon that no port follows (`user:pass`, where
/// the password went on with `/`, `?` or `#`), rather than `host`, `host:5432` or `[::1]:5432`.
fn colon_without_port(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.find(']').map_or("", |end| &bracketed[end + 1..]),
        None => authority.find(':').map_or("", |colon| &authority[colon..]),
    };
    match after_host.strip_prefix(':') {
        Some(port) => !port.bytes().all(|b| b.is_ascii_digit()),
        None => !after_host.is_empty(),
    }
}

/// Replaces the password of a `scheme://user:password@…` URL with `****`, and every
/// `password=` parameter's value, also when the text does not otherwise parse, so that an
/// error about a URL never shows its secret.
///
/// In a well-formed URL the password ends at the authority's last `@`. In malformed text
/// (no `://`, or a password holding `/`, `?` or `#`, which end the authority early) it is
/// taken to end at the text's last `@`: that may hide more than the password, never less.
pub fn mask_password(text: &str) -> String {
    let (head, rest) = match text.find("://") {
        Some(end) => text.split_at(end + 3),
        None => ("", text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let misread = head.is_empty()
        || colon_without_port(authority)
        || rest[authority_end..path_end].contains('@');
    let userinfo_end = match authority.rfind('@') {
        Some(at) => Some(at),
        None if misread => rest.rfind('@'),
        None => None,
    };
    let masked = match userinfo_end.and_then(|at| Some((rest[..at].find(':')?, at))) {
        Some((colon, at)) => format!("{head}{}:****{}", &rest[..colon], &rest[at..]),
        None => text.to_owned(),
    };
    mask_query_password(&masked)
}

/// Masks the value of every `password=` parameter: up to the next parameter tributary
/// knows, so that a password holding an unencoded `&` is hidden whole.
fn mask_query_password(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (base, query) = text.split_at(q + 1);
    let mut pairs: Vec<&str> = Vec::new();
    let mut in_password = false;
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if key == "password" {
            in_password = true;
            pairs.push("password=****");
        } else if in_password && !(pair.contains('=') && PARAMETERS.contains(&key)) {
            // Still the password's value.
        } else {
            in_password = false;
            pairs.push(pair);
        }
    }
    format!("{base}{}", pairs.join("&"))
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
            mask_password("postgresql://u:se:cret@h:5/db?password=x&sslmode=require"),
            "postgresql://u:****@h:5/db?password=****&sslmode=require"
        );
        assert_eq!(mask_password("not a url hunter"), "not a url hunter");
    }

    /// Every malformed input an operator was seen to type, with a password `hunter2` in it
    /// somewhere: the error never shows the password, and says what to do instead.
    #[test]
    fn malformed_urls_never_show_the_password_and_say_what_to_do() {
        for (text, advice) in [
            (
                "repl:hunter2@host/db",
                "did you mean postgresql://repl:****@host/db?",
            ),
            (
                "postgres//repl:hunter2@host/db",
                "did you mean postgresql://repl:****@host/db?",
            ),
            (
                "postgresql:/repl:hunter2@host/db",
                "did you mean postgresql://repl:****@host/db?",
            ),
            (
                "postgresql:repl:hunter2@host/db",
                "did you mean postgresql://repl:****@host/db?",
            ),
            (
                "host=db user=repl password=hunter2 dbname=app",
                "key=value connection string",
            ),
            (
                " password = 'hunter2' host=db",
                "key=value connection string",
            ),
            ("postgresql://repl:hunter2/x@host/db", "`/` as %2F"),
            ("postgresql://repl:hunter2?x@host/db", "`?` as %3F"),
            ("postgresql://repl:hunter2#x@host/db", "`#` as %23"),
            ("postgresql://repl:hun@ter2@host/db", "%40"),
            ("postgresql://repl:1234/hunter2@host/db", "%40"),
            (
                "postgresql://repl@host/db?password=hun&ter2&sslmode=require",
                "%26",
            ),
            ("postgresql://repl@host/db?password=hunter2&frob=1", "%26"),
            ("postgresql://repl:hunter2@host:99999/db", "percent-encoded"),
            ("postgresql://repl:hunter2@[::1/db", "percent-encoded"),
            (
                "postgresql://repl:hunter2%ff@host/db",
                "password is not valid UTF-8",
            ),
            (
                "mysql://repl:hunter2@host/db",
                "start the URL with postgresql://",
            ),
            (
                "postgresql://repl:hunter2@host/db?sslmode=sometimes",
                "use disable, prefer",
            ),
        ] {
            let err = ConnInfo::parse(text).expect_err(text);
            let message = err.to_string();
            let debug = format!("{err:?}");
            for secret in ["hunter2", "hun", "ter2", "1234"] {
                assert!(!message.contains(secret), "{text}: {message}");
                assert!(!debug.contains(secret), "{text}: {debug}");
            }
            assert!(message.contains(advice), "{text}: {message}");
        }
    }

    #[test]
    fn well_formed_urls_with_at_signs_in_parameters_still_parse() {
        let info =
            ConnInfo::parse("postgresql://u:p%40ss@h:5433/db?application_name=me@laptop").unwrap();
        assert_eq!(info.password.unwrap().expose(), "p@ss");
        assert_eq!(info.application_name, "me@laptop");
        let no_user = ConnInfo::parse("postgresql://h:5433/db?application_name=me@laptop&user=u");
        assert!(no_user.is_ok(), "{no_user:?}");
        assert!(ConnInfo::parse("postgresql://u@[::1]:5433/db").is_ok());
    }

    #[test]
    fn masking_hides_the_password_of_well_formed_and_malformed_text() {
        for (text, masked) in [
            ("postgresql://u:pw@h/db", "postgresql://u:****@h/db"),
            (
                "postgresql://u@h/db?application_name=a@b",
                "postgresql://u@h/db?application_name=a@b",
            ),
            (
                "postgresql://h:5432/db?application_name=a@b",
                "postgresql://h:5432/db?application_name=a@b",
            ),
            ("postgresql://u:p/w@h/db", "postgresql://u:****@h/db"),
            ("postgresql://u:p#w@h/db", "postgresql://u:****@h/db"),
            ("postgresql://u:p@w@h/db", "postgresql://u:****@h/db"),
            ("repl:pw@host/db", "repl:****@host/db"),
            ("postgres//repl:pw@host/db", "postgres//repl:****@host/db"),
            ("postgresql:/repl:pw@host/db", "postgresql:****@host/db"),
            (
                "postgresql://u@h/db?password=a&b&port=1",
                "postgresql://u@h/db?password=****&port=1",
            ),
            ("no password here", "no password here"),
        ] {
            assert_eq!(mask_password(text), masked, "{text}");
        }
    }
}
