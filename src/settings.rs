//! The daemon's configuration: a TOML file overridden by `TRIBUTARY__SECTION__KEY`
//! environment variables, validated once into [`Settings`].
//!
//! Field docs here are the user documentation of each key (see `config/tributary.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pg::ConnInfo;

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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgresql://user:password@host:port/control_db`. The bookkeeping schema lives in
    /// `control_db`; replica and branch databases are created on the same server, so the
    /// role needs CREATEDB.
    pub url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// File holding the 32-byte key (64 hex characters) that encrypts source URLs at rest.
    /// Created with mode 0600 on first use when neither this nor `key` is set, at
    /// `tributary.key` beside the configuration file.
    pub key_file: Option<PathBuf>,
    /// The key itself, 64 hex characters; meant for `TRIBUTARY__SECRETS__KEY`.
    pub key: Option<String>,
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
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a `RUST_LOG`-style filter. `RUST_LOG`
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

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `file` (when it exists, or always when `required`) and the environment.
    pub fn load(file: &Path, required: bool) -> Result<Settings, SettingsError> {
        Settings::from_file(config::File::from(file).required(required))
    }

    /// Parses `text` as the configuration file's TOML (the environment still applies).
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        Settings::from_file(config::File::from_str(text, config::FileFormat::Toml))
    }

    fn from_file<F>(file: F) -> Result<Settings, SettingsError>
    where
        F: config::Source + Send + Sync + 'static,
    {
        let mut settings: Settings = config::Config::builder()
            .add_source(file)
            .add_source(
                config::Environment::with_prefix("TRIBUTARY")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()?
            .try_deserialize()?;
        // Empty is unset, as a shell's `TRIBUTARY_PG_BINDIR=` means.
        settings.pipeline.pg_bindir = std::env::var_os(PG_BINDIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |s: &str| Err(SettingsError::Invalid(s.to_owned()));
        ConnInfo::parse(&self.store.url)
            .map_err(|e| SettingsError::Invalid(format!("store.url: {e}")))?;
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

    /// The branch store's connection settings (validated at load).
    pub fn store(&self) -> ConnInfo {
        ConnInfo::parse(&self.store.url).expect("validated at load")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.to_string().contains("store.url"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err =
            load("[store]\nurl = \"postgresql://u@h/db\"\n[pipeline]\nsnapshot_workers = 0\n")
                .unwrap_err();
        assert!(err.to_string().contains("snapshot_workers"), "{err}");
        assert!(load("").is_err(), "store.url is required");
    }
}
