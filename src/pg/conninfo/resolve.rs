//! From `(keyword, value)` pairs to [`ConnInfo`], the way libpq fills in what a string
//! leaves out: the string first, then its service's section, then the `PG*` environment
//! variable of each keyword, then the built-in default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    files, ChannelBinding, ConnInfo, Endpoint, Host, InvalidUrl, Keepalives, Password, RootCert,
    SessionAttrs, SslMode, TlsOptions, TlsVersion,
};

/// Every keyword libpq knows, with the environment variable it falls back to.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("service", Some("PGSERVICE")),
    ("servicefile", Some("PGSERVICEFILE")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslpassword", None),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("gssdelegation", Some("PGGSSDELEGATION")),
    ("min_protocol_version", Some("PGMINPROTOCOLVERSION")),
    ("max_protocol_version", Some("PGMAXPROTOCOLVERSION")),
    ("replication", None),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("sslkeylogfile", None),
];

/// Keywords libpq knows that tributary refuses, with what to do instead.
fn refused(key: &str) -> Option<&'static str> {
    Some(match key {
        "replication" => "tributary opens replication connections itself: remove replication=",
        "require_auth" => {
            "require_auth is not supported: restrict the methods in the server's pg_hba.conf \
             instead, and remove it"
        }
        "requirepeer" => {
            "requirepeer is not supported: connect over TCP with a password or a client \
             certificate, or remove it"
        }
        "sslkeylogfile" => "sslkeylogfile is not supported (it writes session keys): remove it",
        _ => return None,
    })
}

/// Whether libpq knows `key` (refused ones included): a URL parameter that follows a
/// password and is no keyword is most likely the rest of that password.
pub(super) fn is_keyword(key: &str) -> bool {
    KEYWORDS.iter().any(|(k, _)| *k == key) || key == "ssl"
}

/// Where environment variables and the home directory come from (the process, or a table
/// in tests).
pub(super) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    /// The name of the user the process runs as: libpq's default user name.
    fn os_user(&self) -> Option<String>;
}

pub(super) struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn os_user(&self) -> Option<String> {
        // The password database, as libpq reads it: a daemon under systemd or in a
        // container often has no USER variable.
        whoami::fallible::username().ok()
    }
}

impl Environment for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }

    fn os_user(&self) -> Option<String> {
        self.var("USER")
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Debian's libpq looks for the server's socket here when no host is given.
pub(super) const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Where each value came from, for the one rule that depends on it (a stored string
/// must carry its own password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Text,
    Service,
    Environment,
}

/// Resolves the pairs read from `text` into connection settings.
pub(super) fn resolve(
    text: &str,
    pairs: Vec<(String, String)>,
    env: &dyn Environment,
) -> Result<(ConnInfo, HashMap<&'static str, Origin>), InvalidUrl> {
    let fail = |reason: String| InvalidUrl {
        shown: super::shown(text),
        reason,
    };
    let mut values: HashMap<&'static str, (String, Origin)> = HashMap::new();
    for (key, value) in pairs {
        let known = keyword(&key).ok_or_else(|| fail(unknown(&key)))?;
        values.insert(known, (value, Origin::Text));
    }
    let service = values
        .get("service")
        .map(|(v, _)| v.clone())
        .or_else(|| env.var("PGSERVICE"));
    if let Some(name) = service {
        let file = values
            .get("servicefile")
            .map(|(v, _)| v.clone())
            .or_else(|| env.var("PGSERVICEFILE"));
        let pairs = files::service(
            &name,
            file.as_deref(),
            env.var("HOME").as_deref(),
            env.var("PGSYSCONFDIR").as_deref(),
        )
        .map_err(|e| fail(e.0))?;
        for (key, value) in pairs {
            let known = keyword(&key)
                .ok_or_else(|| fail(format!("in service {name:?}: {}", unknown(&key))))?;
            values.entry(known).or_insert((value, Origin::Service));
        }
    }
    for (key, var) in KEYWORDS {
        if let Some(value) = var.and_then(|var| env.var(var)) {
            values.entry(key).or_insert((value, Origin::Environment));
        }
    }
    for key in values.keys() {
        if let Some(reason) = refused(key) {
            return Err(fail(reason.to_owned()));
        }
    }
    let origins = values.iter().map(|(k, (_, o))| (*k, *o)).collect();
    let get = |key: &str| values.get(key).map(|(v, _)| v.as_str());
    let info = interpret(&get, env).map_err(fail)?;
    Ok((info, origins))
}

fn keyword(key: &str) -> Option<&'static str> {
    KEYWORDS.iter().map(|(k, _)| *k).find(|k| *k == key)
}

fn unknown(key: &str) -> String {
    if key.starts_with("oauth_") {
        return format!(
            "{key}: OAuth authentication is not supported; use a password or a client certificate"
        );
    }
    // A key is never a secret, unless the string was mistyped: only keyword-like text
    // is quoted.
    let shown = if key.len() <= 40 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{key:?}")
    } else {
        "(not shown)".to_owned()
    };
    format!(
        "unknown parameter {shown}: libpq's parameters are {}",
        KEYWORDS
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

type Get<'a> = dyn Fn(&str) -> Option<&'a str> + 'a;

fn interpret<'a>(get: &Get<'a>, env: &dyn Environment) -> Result<ConnInfo, String> {
    let endpoints = endpoints(get)?;
    let user = match get("user") {
        Some(u) => u.to_owned(),
        None => env.os_user().ok_or(
            "no user name: add user=NAME (or put it in the URL, postgresql://USER@host/db)",
        )?,
    };
    let dbname = get("dbname").unwrap_or(&user).to_owned();
    // libpq (16+): with the system's roots and no sslmode, verify-full is the default.
    let default_mode = if get("sslrootcert") == Some("system") {
        "verify-full"
    } else {
        "prefer"
    };
    let sslmode = SslMode::parse(get("sslmode").unwrap_or(default_mode))?;
    // libpq's defaults under ~/.postgresql, each taken only where the file exists.
    let home_file = |name: &str| {
        env.var("HOME")
            .map(|home| PathBuf::from(home).join(".postgresql").join(name))
            .filter(|path| path.is_file())
    };
    let rootcert = get("sslrootcert")
        .map(|v| {
            if v == "system" {
                RootCert::System
            } else {
                RootCert::File(PathBuf::from(v))
            }
        })
        .or_else(|| home_file("root.crt").map(RootCert::File));
    if rootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
        // libpq makes the same demand: the system store only means something with host checks.
        return Err("sslrootcert=system needs sslmode=verify-full".into());
    }
    let tls = TlsOptions {
        rootcert,
        cert: get("sslcert")
            .map(PathBuf::from)
            .or_else(|| home_file("postgresql.crt")),
        key: get("sslkey")
            .map(PathBuf::from)
            .or_else(|| home_file("postgresql.key")),
        key_password: get("sslpassword").map(|p| Password::new(p.to_owned())),
        crl: get("sslcrl")
            .map(PathBuf::from)
            .or_else(|| home_file("root.crl")),
        crldir: get("sslcrldir").map(PathBuf::from),
        sni: flag(get, "sslsni", true)?,
        send_cert: match get("sslcertmode").unwrap_or("allow") {
            "allow" => true,
            "disable" => false,
            "require" => {
                return Err("sslcertmode=require is not supported: use allow (the default) and \
                            let the server's pg_hba.conf demand the certificate (clientcert=verify-full)"
                    .into())
            }
            other => return Err(format!("unknown sslcertmode {other:?}: use allow or disable")),
        },
        min_version: tls_version(get, "ssl_min_protocol_version", TlsVersion::V1_2)?,
        max_version: tls_version(get, "ssl_max_protocol_version", TlsVersion::V1_3)?,
    };
    if tls.min_version > tls.max_version {
        return Err("ssl_min_protocol_version is above ssl_max_protocol_version".into());
    }
    if tls.key.is_some() != tls.cert.is_some() {
        return Err("a client certificate needs both sslcert and sslkey".into());
    }
    match get("sslnegotiation").unwrap_or("postgres") {
        "postgres" => {}
        "direct" => {
            return Err("sslnegotiation=direct is not supported: use postgres (the default)".into())
        }
        other => return Err(format!("unknown sslnegotiation {other:?}: use postgres")),
    }
    match get("gssencmode").unwrap_or("prefer") {
        "disable" | "prefer" => {}
        "require" => {
            return Err(
                "gssencmode=require is not supported (no GSSAPI): use TLS with sslmode \
                        instead"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "unknown gssencmode {other:?}: use disable or prefer"
            ))
        }
    }
    if let Some(encoding) = get("client_encoding") {
        if !matches!(
            encoding.to_ascii_uppercase().as_str(),
            "UTF8" | "UTF-8" | "UNICODE" | "AUTO"
        ) {
            return Err(format!(
                "client_encoding {encoding:?} is not supported: tributary reads and writes UTF8"
            ));
        }
    }
    for key in ["min_protocol_version", "max_protocol_version"] {
        if let Some(v) = get(key) {
            if v != "3.0" {
                return Err(format!(
                    "{key}={v} is not supported: tributary speaks protocol 3.0"
                ));
            }
        }
    }
    let _ = flag(get, "sslcompression", false)?;
    let connect_timeout = match get("connect_timeout") {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(0) => DEFAULT_CONNECT_TIMEOUT,
            // libpq's floor: one second would fail before most handshakes finish.
            Ok(secs) => Duration::from_secs(secs.max(2)),
            Err(_) => {
                return Err(format!(
                    "connect_timeout {v:?} is not a whole number of seconds"
                ))
            }
        },
    };
    Ok(ConnInfo {
        endpoints,
        user,
        password: get("password").map(|p| Password::new(p.to_owned())),
        passfile: get("passfile")
            .map(PathBuf::from)
            .or_else(|| files::default_passfile(env.var("HOME").as_deref())),
        dbname,
        sslmode,
        tls,
        channel_binding: ChannelBinding::parse(get("channel_binding").unwrap_or("prefer"))?,
        session_attrs: SessionAttrs::parse(get("target_session_attrs").unwrap_or("any"))?,
        load_balance: match get("load_balance_hosts").unwrap_or("disable") {
            "disable" => false,
            "random" => true,
            other => {
                return Err(format!(
                    "unknown load_balance_hosts {other:?}: use disable or random"
                ))
            }
        },
        application_name: get("application_name")
            .or(get("fallback_application_name"))
            .unwrap_or("tributary")
            .to_owned(),
        options: options(get("options").unwrap_or(""))?,
        keepalives: Keepalives {
            enabled: flag(get, "keepalives", true)?,
            idle: seconds(get, "keepalives_idle")?,
            interval: seconds(get, "keepalives_interval")?,
            count: number(get, "keepalives_count")?,
            user_timeout: number(get, "tcp_user_timeout")?
                .map(|ms| Duration::from_millis(ms.into())),
        },
        connect_timeout,
    })
}

/// The hosts, each with its address and port: lists in `host`, `hostaddr` and `port` pair
/// up by position; a single port applies to every host.
fn endpoints(get: &Get<'_>) -> Result<Vec<Endpoint>, String> {
    let split = |key| -> Vec<String> {
        get(key).map_or(Vec::new(), |v| {
            v.split(',').map(|s| s.trim().to_owned()).collect()
        })
    };
    let mut hosts = split("host");
    let addrs = split("hostaddr");
    let ports = split("port");
    if hosts.is_empty() {
        hosts = vec![String::new(); addrs.len().max(1)];
    }
    if !addrs.is_empty() && addrs.len() != hosts.len() {
        return Err(format!(
            "{} host names and {} hostaddr values: give one address per host",
            hosts.len(),
            addrs.len()
        ));
    }
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(format!(
            "{} hosts and {} ports: give one port for all or one per host",
            hosts.len(),
            ports.len()
        ));
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
                Some(a) => Some(a.parse::<IpAddr>().map_err(|_| {
                    format!("hostaddr {a:?} is not an IP address (host names go in host=)")
                })?),
                None => None,
            };
            let port = match ports
                .get(if ports.len() == 1 { 0 } else { i })
                .filter(|p| !p.is_empty())
            {
                None => 5432,
                Some(p) => match p.parse::<u16>() {
                    Ok(0) | Err(_) => {
                        return Err(format!("port {p:?} is not a number between 1 and 65535"))
                    }
                    Ok(p) => p,
                },
            };
            let host = if name.starts_with('/') {
                if name.contains('\0') {
                    return Err("a socket directory holds a NUL character".into());
                }
                Host::Unix(PathBuf::from(name))
            } else if name.is_empty() && hostaddr.is_none() {
                default_host()
            } else {
                if !name.is_empty() && !valid_host(name) {
                    return Err(format!(
                        "host {name:?} is neither a host name, an IP address nor an absolute \
                         socket directory"
                    ));
                }
                Host::Tcp(name.clone())
            };
            Ok(Endpoint {
                host,
                hostaddr,
                port,
            })
        })
        .collect()
}

/// libpq's default: the local socket directory where it exists, else TCP to localhost.
fn default_host() -> Host {
    if std::path::Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
    } else {
        Host::Tcp("localhost".into())
    }
}

/// A name the URL syntax accepts as a host, or an IP address (which rules out control
/// characters, `/`, `,` and spaces).
fn valid_host(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok() || url::Host::parse(text).is_ok()
}

/// `options`: libpq passes it to the server as command-line switches; only run-time
/// settings (`-c name=value`, `--name=value`) are taken, which every client here can send.
fn options(text: &str) -> Result<Vec<(String, String)>, String> {
    let bad =
        || format!("options {text:?}: only -c name=value (or --name=value) settings are supported");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().ok_or_else(bad)?
        } else if let Some(rest) = word.strip_prefix("-c").or_else(|| word.strip_prefix("--")) {
            rest.to_owned()
        } else {
            return Err(bad());
        };
        let (name, value) = setting.split_once('=').ok_or_else(bad)?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

fn flag(get: &Get<'_>, key: &str, default: bool) -> Result<bool, String> {
    match get(key) {
        None => Ok(default),
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(other) => Err(format!("{key} {other:?} is neither 0 nor 1")),
    }
}

fn number(get: &Get<'_>, key: &str) -> Result<Option<u32>, String> {
    get(key)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{key} {v:?} is not a whole number"))
        })
        .transpose()
}

fn seconds(get: &Get<'_>, key: &str) -> Result<Option<Duration>, String> {
    Ok(number(get, key)?.map(|s| Duration::from_secs(s.into())))
}

fn tls_version(get: &Get<'_>, key: &str, default: TlsVersion) -> Result<TlsVersion, String> {
    match get(key) {
        None | Some("") => Ok(default),
        Some("TLSv1.2") => Ok(TlsVersion::V1_2),
        Some("TLSv1.3") => Ok(TlsVersion::V1_3),
        Some(v @ ("TLSv1" | "TLSv1.1")) => Err(format!(
            "{key}={v} is not supported: TLS below 1.2 is refused; use TLSv1.2"
        )),
        Some(other) => Err(format!("unknown {key} {other:?}: use TLSv1.2 or TLSv1.3")),
    }
}
