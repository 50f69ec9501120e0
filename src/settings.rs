//! The daemon's configuration: a TOML file overridden by `TRIBUTARY__SECTION__KEY`
//! environment variables, validated once into [`Settings`].
//!
//! Field docs here are the user documentation of each key (see `config/tributary.toml`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pg::conninfo::{mask_password, ChannelBinding, Keepalives, TlsVersion};
use crate::pg::ConnInfo;

/// Where the key that encrypts source URLs is looked for when neither `secrets.key` nor
/// `secrets.key_file` is set: the same file whatever the working directory, the
/// configuration file or the command.
///
/// Why this path: it is the `StateDirectory=tributary` of `deploy/systemd/tributary.service`
/// (made 0700 for the service's user, and writable under `ProtectSystem=strict`, which leaves
/// `/etc` read-only), the home of the `tributary` user in `deploy/README.md` and in the
/// `Dockerfile`, and where FHS puts a daemon's state. It is fixed rather than taken from
/// `$STATE_DIRECTORY` or `$CREDENTIALS_DIRECTORY`, which exist only inside the service:
/// commands an operator runs from a shell would look elsewhere and miss the daemon's key.
/// Kubernetes pods get the key from their Secret (`TRIBUTARY__SECRETS__KEY`); with a
/// read-only root filesystem none can be created there, and none should be, since each pod
/// would make its own.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/tributary/tributary.key";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub store: StoreSettings,
    #[serde(default)]
    pub secrets: SecretsSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub pipeline: PipelineSettings,
    #[serde(default)]
    pub supervisor: SupervisorSettings,
}

/// The branch store: the server that holds the bookkeeping and the replica databases.
/// Its `Debug` shows no password ([`ConnInfo`] keeps it in a
/// [`Password`](crate::pg::conninfo::Password)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgresql://user:password@host:port/control_db`. The bookkeeping schema lives in
    /// `control_db`; replica and branch databases are created on the same server, so the
    /// role needs CREATEDB. Parsed once, at load: a URL that does not parse is a
    /// configuration error, never a failure later.
    #[serde(deserialize_with = "store_url")]
    url: ConnInfo,
}

/// `store.url`, parsed. Its error shows no more than
/// [`InvalidUrl`](crate::pg::conninfo::InvalidUrl) does (the password
/// masked); `config` puts the key in front.
fn store_url<'de, D: serde::Deserializer<'de>>(value: D) -> Result<ConnInfo, D::Error> {
    let text = String::deserialize(value)?;
    let info = ConnInfo::parse(&text).map_err(serde::de::Error::custom)?;
    store_support(&info).map_err(serde::de::Error::custom)?;
    Ok(info)
}

/// What the branch store's sessions (sqlx) cannot do that a connection string may ask
/// for (the driver of `bookkeeping::store`): refused when the settings are read, rather than connecting otherwise than asked.
fn store_support(info: &ConnInfo) -> Result<(), String> {
    let tls = &info.tls;
    let refused = [
        (tls.crl.is_some() || tls.crldir.is_some(), "sslcrl and sslcrldir"),
        (!tls.sni, "sslsni=0"),
        (
            tls.min_version != TlsVersion::V1_2 || tls.max_version != TlsVersion::V1_3,
            "ssl_min_protocol_version and ssl_max_protocol_version",
        ),
        (info.channel_binding == ChannelBinding::Require, "channel_binding=require"),
        (
            info.endpoints.iter().any(|e| e.hostaddr.is_some()),
            "hostaddr",
        ),
        (!tls.send_cert, "sslcertmode=disable"),
        (
            info.keepalives != Keepalives::default(),
            "keepalives, keepalives_idle, keepalives_interval, keepalives_count and tcp_user_timeout",
        ),
    ];
    match refused.iter().find(|(given, _)| *given) {
        Some((_, what)) => Err(format!(
            "the branch store's connection string uses {what}, which tributary supports for \
             sources only: remove it from store.url"
        )),
        None => Ok(()),
    }
}

/// Text that never prints: `Debug` shows `****`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// File holding the 32-byte key (64 hex characters) that encrypts source URLs at rest:
    /// an absolute path, [`DEFAULT_KEY_FILE`] when not set. Only a command that stores the
    /// bookkeeping's first source URL (`connector create`) creates it (mode 0600); every
    /// other command, `run` included, only reads it.
    pub key_file: Option<PathBuf>,
    /// The key itself, 64 hex characters; meant for `TRIBUTARY__SECRETS__KEY`. Wins over
    /// `key_file`.
    pub key: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// How often each source's slot (lag, retained WAL, wal_status) is looked at.
    pub slot_interval_secs: u64,
}

impl MetricsSettings {
    pub fn slot_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.slot_interval_secs.max(1))
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9932)),
            slot_interval_secs: 15,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// serde's own message for an unknown variant would quote the value, which may be a
/// password put on the wrong line; this one names the choices only.
impl TryFrom<String> for LogFormat {
    type Error = &'static str;

    fn try_from(text: String) -> Result<LogFormat, &'static str> {
        match text.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be \"text\" or \"json\""),
        }
    }
}

/// The levels of `log.level` (and of each `target=level` directive of a filter).
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `off`, `error`, `warn`, `info`, `debug`, `trace`, or a `RUST_LOG`-style filter of
    /// them (`info,tributary=debug`); a bare word that is not a level is refused. `RUST_LOG`
    /// wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Parallel COPY workers per snapshot.
    pub snapshot_workers: usize,
    /// Tables larger than this many bytes are copied in ctid ranges of about this size.
    pub snapshot_chunk_bytes: u64,
    /// How long one source transaction of a snapshot may stay open, in seconds: once it
    /// is this old, no table is started under it any more, and the remaining tables are
    /// copied under a new snapshot. Bounds how long the snapshot holds back vacuum on the
    /// source, except for a single table that takes longer to copy (a table is always
    /// copied under one snapshot). 0: one snapshot for everything.
    pub snapshot_max_transaction_secs: u64,
    /// A target transaction is committed, at the next source commit, once it holds this
    /// many changes…
    pub batch_max_changes: usize,
    /// …or once its first change is this many milliseconds old.
    pub batch_max_delay_ms: u64,
    /// Upper bound between status updates to the source, in milliseconds; the effective
    /// interval is at most half the source's `wal_sender_timeout`.
    pub status_interval_ms: u64,
    /// On SIGTERM, how long to wait for the current target transaction to commit before
    /// giving up on it (it is rolled back and applied again after restart).
    pub shutdown_grace_secs: u64,
    /// The directory of the pg_dump and pg_restore that snapshots run: the environment
    /// variable [`PG_BINDIR_ENV`] (not a key of the file, as packages and images set it
    /// beside the programs they install). `None`: the snapshot looks for suitable ones.
    #[serde(skip)]
    pub pg_bindir: Option<PathBuf>,
}

/// Names the directory of the client programs a snapshot runs; see
/// [`PipelineSettings::pg_bindir`].
pub const PG_BINDIR_ENV: &str = "TRIBUTARY_PG_BINDIR";

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            snapshot_workers: 4,
            snapshot_chunk_bytes: 256 << 20,
            snapshot_max_transaction_secs: 300,
            batch_max_changes: 10_000,
            batch_max_delay_ms: 200,
            status_interval_ms: 1_000,
            shutdown_grace_secs: 30,
            pg_bindir: None,
        }
    }
}

impl PipelineSettings {
    pub fn batch_max_delay(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// [`PipelineSettings::snapshot_max_transaction_secs`]; `None` for no bound.
    pub fn snapshot_max_transaction(&self) -> Option<Duration> {
        (self.snapshot_max_transaction_secs > 0)
            .then(|| Duration::from_secs(self.snapshot_max_transaction_secs))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSettings {
    /// Seconds between checks of the bookkeeping for new, changed or removed connectors
    /// (changes are also noticed at once through LISTEN/NOTIFY).
    pub poll_interval_secs: u64,
    /// First retry delay after a transient failure, in milliseconds; doubles per failure…
    pub backoff_initial_ms: u64,
    /// …up to this many seconds.
    pub backoff_max_secs: u64,
    /// How long a connector's lease lasts unless renewed (every quarter of it). A daemon
    /// that could not renew for three quarters of it stops its pipelines; another daemon
    /// takes the connector over once it expires, so this bounds the takeover after a crash.
    pub lease_ttl_secs: u64,
}

impl SupervisorSettings {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            poll_interval_secs: 10,
            backoff_initial_ms: 500,
            backoff_max_secs: 60,
            lease_ttl_secs: 20,
        }
    }
}

/// What is wrong with the configuration. No variant quotes what failed to parse: a line of
/// the file or a value may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error(
        "{origin} is not valid TOML: {detail} (the line is not shown: it may hold a password)"
    )]
    Syntax { origin: String, detail: String },
    #[error("cannot read the configuration: {0}")]
    Load(String),
    /// A key (or a section) the configuration does not have: a typo, or a key of another
    /// version. `variable` is the environment variable that set it, if one did.
    #[error(
        "unknown key {key}{}: {}",
        variable.as_ref().map_or_else(String::new, |v| format!(" (set by {v})")),
        match section {
            Some(section) => format!("the keys of [{section}] are {}", valid.join(", ")),
            None => format!(
                "the sections are {}",
                valid.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ")
            ),
        }
    )]
    UnknownKey {
        key: String,
        section: Option<String>,
        valid: &'static [&'static str],
        variable: Option<String>,
    },
    #[error(
        "store.url is not set: set it in {origin} (--config names the file) or in \
         TRIBUTARY__STORE__URL"
    )]
    NoStoreUrl { origin: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `file` (when it exists, or always when `required`) and the environment.
    pub fn load(file: &Path, required: bool) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => {
                return Err(SettingsError::Read {
                    path: file.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        Settings::parse(&text, &file.display().to_string())
    }

    /// Parses `text` as the configuration file's TOML (the environment still applies).
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        Settings::parse(text, "the configuration")
    }

    /// `origin` names the text in messages.
    fn parse(text: &str, origin: &str) -> Result<Settings, SettingsError> {
        let config = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("TRIBUTARY")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()
            .map_err(|e| describe(e, text, origin))?;
        check_keys(&config)?;
        // No [store], or one without url; a store of the wrong type is deserialization's.
        let no_url = match config.get_table("store") {
            Ok(store) => !store.contains_key("url"),
            Err(e) => matches!(e, config::ConfigError::NotFound(_)),
        };
        if no_url {
            return Err(SettingsError::NoStoreUrl {
                origin: origin.to_owned(),
            });
        }
        let mut settings: Settings = config
            .try_deserialize()
            .map_err(|e| describe(e, text, origin))?;
        // Empty is unset, as a shell's `TRIBUTARY_PG_BINDIR=` means.
        settings.pipeline.pg_bindir = std::env::var_os(PG_BINDIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |s: &str| Err(SettingsError::Invalid(s.to_owned()));
        if let Some(path) = self.secrets.key_file.as_ref().filter(|p| p.is_relative()) {
            return Err(SettingsError::Invalid(format!(
                "secrets.key_file must be an absolute path, not {:?}: a relative one names \
                 another file in each directory tributary is started from",
                path.display().to_string()
            )));
        }
        check_log_filter("log.level", &self.log.level)?;
        // RUST_LOG wins over log.level, so it gets the same check.
        if let Ok(filter) = std::env::var("RUST_LOG") {
            check_log_filter("RUST_LOG", &filter)?;
        }
        if self.pipeline.snapshot_workers == 0 {
            return invalid("pipeline.snapshot_workers must be at least 1");
        }
        if self.pipeline.batch_max_changes == 0 {
            return invalid("pipeline.batch_max_changes must be at least 1");
        }
        if self.pipeline.status_interval_ms == 0 {
            return invalid("pipeline.status_interval_ms must be at least 1");
        }
        if self.supervisor.lease_ttl_secs < 2 {
            return invalid("supervisor.lease_ttl_secs must be at least 2");
        }
        Ok(())
    }

    /// The branch store's connection settings.
    pub fn store(&self) -> &ConnInfo {
        &self.store.url
    }
}

/// A log filter (`log.level`, or `RUST_LOG` which wins over it) whose every directive
/// names a level.
fn check_log_filter(name: &str, filter: &str) -> Result<(), SettingsError> {
    match filter
        .split(',')
        .map(str::trim)
        .find(|d| !log_directive_valid(d))
    {
        // The directive is shown: a filter holds target names and levels, no secret.
        Some(directive) => Err(SettingsError::Invalid(format!(
            "{name}: {directive:?} is not a level: use one of {}, or a filter such as \
             \"info,tributary=debug\"",
            LOG_LEVELS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Whether `directive` of a `log.level` filter names a level: `info`, or `target=info`
/// (an empty one, as in a trailing comma, is allowed). A bare word is taken by
/// tracing as a target to log at every level, everything else off: `verbose` would
/// silently turn all logging off.
fn log_directive_valid(directive: &str) -> bool {
    let level = directive
        .rsplit_once('=')
        .map_or(directive, |(_, level)| level);
    directive.is_empty() || LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
}

/// The keys serde accepts for the struct `T`: its `deny_unknown_fields` list.
fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// A deserializer that only records which fields the struct asks for.
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only structs have keys"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the keys were asked for"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// The keys of section `name` of [`Settings`].
fn section_keys(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "store" => keys_of::<StoreSettings>(),
        "secrets" => keys_of::<SecretsSettings>(),
        "metrics" => keys_of::<MetricsSettings>(),
        "log" => keys_of::<LogSettings>(),
        "pipeline" => keys_of::<PipelineSettings>(),
        "supervisor" => keys_of::<SupervisorSettings>(),
        _ => return None,
    })
}

/// Refuses the first key that no section has, naming the keys it could have meant and the
/// environment variable that set it, if one did (before serde would, which names neither).
fn check_keys(config: &config::Config) -> Result<(), SettingsError> {
    let sections = keys_of::<Settings>();
    let top: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        config.clone().try_deserialize().unwrap_or_default();
    for section in top.keys() {
        let Some(valid) = section_keys(section) else {
            return Err(SettingsError::UnknownKey {
                key: section.clone(),
                section: None,
                valid: sections,
                variable: variable(&[section]),
            });
        };
        // Not a table: deserializing says what it should be.
        let Ok(table) = config.get_table(section) else {
            continue;
        };
        if let Some(key) = table.keys().find(|k| !valid.contains(&k.as_str())) {
            return Err(SettingsError::UnknownKey {
                key: format!("{section}.{key}"),
                section: Some(section.clone()),
                valid,
                variable: variable(&[section, key]),
            });
        }
    }
    debug_assert!(sections.iter().all(|s| section_keys(s).is_some()));
    Ok(())
}

/// The `TRIBUTARY__…` environment variable of the key at `path`, if one is set (`config`
/// reads them case-insensitively).
fn variable(path: &[&String]) -> Option<String> {
    let prefix = std::iter::once("TRIBUTARY")
        .chain(path.iter().map(|p| p.as_str()))
        .collect::<Vec<_>>()
        .join("__");
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .find(|name| {
            let (head, tail) = name.split_at_checked(prefix.len()).unwrap_or_default();
            head.eq_ignore_ascii_case(&prefix) && (tail.is_empty() || tail.starts_with("__"))
        })
}

/// A `config` error as a [`SettingsError`] that shows no value that failed to parse, once:
/// `config`'s own Display includes its cause, which is also its `source()`, so a chain of
/// them printed everything twice.
fn describe(error: config::ConfigError, text: &str, origin: &str) -> SettingsError {
    match error {
        config::ConfigError::FileParse { cause, .. } => {
            let detail = match cause.downcast_ref::<toml::de::Error>() {
                Some(syntax) => match syntax.span() {
                    Some(span) => {
                        let (line, column) = position(text, span.start);
                        format!("line {line}, column {column}: {}", syntax.message())
                    }
                    None => syntax.message().to_owned(),
                },
                // A number out of range, say: no text of the file.
                None => cause.to_string(),
            };
            SettingsError::Syntax {
                origin: origin.to_owned(),
                detail,
            }
        }
        // [`store_url`]'s own error, which masks the password itself and whose advice the
        // mask of `redacted` would take for a URL (a value that is not a string is a
        // `Type` error, handled there).
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } if key == "store.url" && matches!(*error, config::ConfigError::Message(_)) => {
            SettingsError::Invalid(format!("store.url: {error}"))
        }
        other => SettingsError::Load(redacted(&other)),
    }
}

/// A value of the wrong type is named by its kind (`string`), never quoted; other messages
/// (serde's, which quote an unknown variant, say) have any password masked.
fn redacted(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let found = unexpected.to_string();
            let kind = found.split(['`', '"']).next().unwrap_or_default().trim();
            format!(
                "{}: expected {expected}, found {kind}",
                key.as_deref().unwrap_or("a value")
            )
        }
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => format!("{key}: {}", redacted(error)),
        config::ConfigError::At { error, .. } => redacted(error),
        other => mask_quoted(&without_strings(&other.to_string())),
    }
}

/// serde's `string "…"` (a value of the wrong type or an invalid one) as `a string`.
fn without_strings(text: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(QUOTED) {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        // The value is Debug-quoted: `\"` and `\\` inside it are escapes.
        let value = &rest[start + QUOTED.len()..];
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i + 1);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// `text` with the password of every quoted (`` ` `` or `"`) or bare part masked.
fn mask_quoted(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(quote) = rest.find(['`', '"']) {
        masked.push_str(&mask_password(&rest[..quote]));
        masked.push_str(&rest[quote..=quote]);
        rest = &rest[quote + 1..];
    }
    masked.push_str(&mask_password(rest));
    masked
}

/// Line and column (both from 1, columns in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::conninfo::Password;

    fn load(text: &str) -> Result<Settings, SettingsError> {
        Settings::from_toml(text)
    }

    #[test]
    fn the_example_configuration_is_valid_and_matches_the_defaults() {
        let example = Settings::load(Path::new("config/tributary.toml"), true).unwrap();
        let defaults = load("[store]\nurl = \"postgresql://u@h/db\"\n").unwrap();
        assert_eq!(example.metrics.listen, defaults.metrics.listen);
        assert_eq!(
            example.pipeline.batch_max_changes,
            defaults.pipeline.batch_max_changes
        );
        assert_eq!(
            example.pipeline.snapshot_chunk_bytes,
            defaults.pipeline.snapshot_chunk_bytes
        );
        assert_eq!(
            example.pipeline.snapshot_max_transaction_secs,
            defaults.pipeline.snapshot_max_transaction_secs
        );
        assert_eq!(
            example.supervisor.backoff_max_secs,
            defaults.supervisor.backoff_max_secs
        );
        assert_eq!(
            example.supervisor.lease_ttl_secs,
            defaults.supervisor.lease_ttl_secs
        );
        assert_eq!(example.metrics.listen.port(), 9932);
    }

    #[test]
    fn mistakes_are_reported() {
        let err = load("[store]\nurl = \"postgresql://u@h/db\"\nsurprise = 1\n").unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
        let err = load("[store]\nurl = \"mysql://u:hunter2@h/db\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid configuration: store.url: invalid connection string"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err =
            load("[store]\nurl = \"postgresql://u@h/db\"\n[pipeline]\nsnapshot_workers = 0\n")
                .unwrap_err();
        assert!(err.to_string().contains("snapshot_workers"), "{err}");
        assert!(load("").is_err(), "store.url is required");
        let err = load("[store]\nurl = \"postgresql://u@h/db\"\n[secrets]\nkey_file = \"k.key\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
    }

    /// Whatever failed to parse, the message (with its whole chain, as the CLI prints it)
    /// never shows the password, names where the mistake is, and says it once.
    #[test]
    fn configuration_errors_never_show_a_password_and_say_it_once() {
        const URL: &str = "postgresql://u:hunter2@h/db";
        for (text, needle) in [
            (format!("[store]\nurl = \"{URL}\n"), "line 2, column 35"),
            (format!("[store]\nurl = {URL}\n"), "line 2, column 7"),
            (
                format!("[store]\nurl = '{URL}'\nfoo bar\n"),
                "line 3, column 5",
            ),
            (
                format!("[store]\nurl = \"{URL}\"\n[log]\nlevel = 'info\n"),
                "line 4",
            ),
            (
                format!("store = \"{URL}\"\n"),
                "store: invalid type: a string, expected",
            ),
            (
                format!("[store]\nurl = \"{URL}\"\n[log]\nformat = \"{URL}\"\n"),
                "format",
            ),
            (
                format!("[store]\nurl = \"{URL}\"\n[metrics]\nlisten = \"{URL}\"\n"),
                "listen",
            ),
            (
                "[store]\nurl = \"repl:hunter2@h/db\"\n".into(),
                "did you mean",
            ),
            (
                "[store]\nurl = \"host=h password='hunter2\"\n".into(),
                "key=value",
            ),
            (
                "[store]\nurl = \"postgresql://u:hunter2#x@h/db\"\n".into(),
                "%23",
            ),
        ] {
            let err = load(&text).unwrap_err();
            let shown = format!("{:#}", anyhow::Error::new(err));
            assert!(!shown.contains("hunter2"), "{text:?}: {shown}");
            assert!(shown.contains(needle), "{text:?}: {shown}");
            assert_eq!(shown.matches(needle).count(), 1, "said once: {shown}");
        }
    }

    #[test]
    fn unknown_keys_are_named_with_the_keys_of_their_section() {
        const STORE: &str = "[store]\nurl = \"postgresql://u@h/db\"\n";
        for (text, message) in [
            (
                format!("{STORE}[log]\nlevl = \"debug\"\n"),
                "unknown key log.levl: the keys of [log] are level, format",
            ),
            (
                format!("{STORE}[logs]\nlevel = \"debug\"\n"),
                "unknown key logs: the sections are [store], [secrets], [metrics], [log], \
                 [pipeline], [supervisor]",
            ),
            (
                format!("{STORE}[pipeline]\npg_bindir = \"/usr/bin\"\n"),
                "unknown key pipeline.pg_bindir: the keys of [pipeline] are snapshot_workers, \
                 snapshot_chunk_bytes, snapshot_max_transaction_secs, batch_max_changes, \
                 batch_max_delay_ms, \
                 status_interval_ms, shutdown_grace_secs",
            ),
            (
                "url = \"postgresql://u@h/db\"\n".to_owned(),
                "unknown key url: the sections are [store]",
            ),
        ] {
            let err = load(&text).unwrap_err().to_string();
            assert!(err.starts_with(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn only_a_missing_store_url_asks_for_one() {
        for text in ["", "[store]\n", "[log]\nlevel = \"info\"\n"] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.starts_with("store.url is not set"), "{text:?}: {err}");
        }
        let err = load("[store]\nurl = \"postgresql://u@h/db\"\n[log]\nformat = \"yaml\"\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("store.url"), "{err}");
        assert!(
            err.contains("log.format: must be \"text\" or \"json\""),
            "{err}"
        );
    }

    #[test]
    fn log_levels_are_levels_or_filters() {
        for (level, valid) in [
            ("info", true),
            ("DEBUG", true),
            ("off", true),
            ("info,tributary=debug", true),
            ("warn,tokio_postgres=off,", true),
            ("tributary::sink[apply]=trace", true),
            ("verbose", false),
            ("info,tributary", false),
            ("tributary=loud", false),
        ] {
            let text =
                format!("[store]\nurl = \"postgresql://u@h/db\"\n[log]\nlevel = {level:?}\n");
            match load(&text) {
                Ok(_) => assert!(valid, "{level} was taken"),
                Err(e) => {
                    assert!(!valid, "{level}: {e}");
                    let e = e.to_string();
                    assert!(e.contains("log.level"), "{e}");
                    assert!(e.contains("off, error, warn, info, debug, trace"), "{e}");
                }
            }
        }
    }

    #[test]
    fn quoted_strings_are_left_out() {
        for (text, without) in [
            (
                r#"invalid type: string "a:b@c", expected u64"#,
                "invalid type: a string, expected u64",
            ),
            (r#"string "x\"y\\" and string "z""#, "a string and a string"),
            (r#"string "unterminated"#, "a string"),
            ("nothing quoted", "nothing quoted"),
        ] {
            assert_eq!(without_strings(text), without, "{text}");
        }
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        for (text, offset, at) in [
            ("", 0, (1, 1)),
            ("abc", 2, (1, 3)),
            ("a\nbc", 2, (2, 1)),
            ("a\nbc", 99, (2, 3)),
            ("é\nxé", 6, (2, 3)),
            ("é\nxé", 5, (2, 2)),
            ("éé", 1, (1, 1)),
        ] {
            assert_eq!(position(text, offset), at, "{text:?} at {offset}");
        }
    }

    #[test]
    fn debug_never_shows_the_store_password_or_the_key() {
        for url in [
            "postgresql://u:hunter2@h/db",
            "postgresql://u@h/db?password=hunter2&sslmode=disable",
        ] {
            let settings = load(&format!(
                "[store]\nurl = \"{url}\"\n[secrets]\nkey = \"abcdef\"\n"
            ))
            .unwrap();
            assert_eq!(
                settings.store().password.as_ref().map(Password::expose),
                Some("hunter2")
            );
            assert_eq!(
                settings.secrets.key.as_ref().map(Secret::expose),
                Some("abcdef")
            );
            let debug = format!("{settings:?}");
            assert!(debug.contains("dbname: \"db\""), "{debug}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(!debug.contains("abcdef"), "{debug}");
        }
    }
}
