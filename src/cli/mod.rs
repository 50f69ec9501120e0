//! The command line: clap arguments in, one command run, an exit code out.
//!
//! Exit codes (a contract scripts rely on): 0 success, 1 a check or operation failed,
//! 2 usage error (clap's own code for bad arguments, and ours for a bad configuration).

/// `println!` that never panics: output nobody reads any more (`tributary … | head`) is
/// dropped, and the command goes on to finish its work.
macro_rules! say {
    () => {
        say!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod args;
mod branch;
mod connector;
mod create;
mod decisions;
mod preflight;
mod render;
mod run;
mod setup;
mod status;
mod store;
mod tables;
mod tail;
mod verify;
mod wait;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::{LogFormat, Settings, DEFAULT_KEY_FILE};

const DEFAULT_CONFIG: &str = "config/tributary.toml";

#[derive(Debug, Parser)]
#[command(name = "tributary", version, about, propagate_version = true)]
pub struct Args {
    /// Configuration file (TOML). Environment variables TRIBUTARY__SECTION__KEY override
    /// its keys, e.g. TRIBUTARY__STORE__URL. [default: config/tributary.toml, if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: one pipeline per enabled connector, until SIGTERM or Ctrl-C.
    Run,
    /// Create or upgrade the bookkeeping schema on the branch store, then exit.
    Migrate,
    /// Manage connectors (one per source database).
    #[command(subcommand)]
    Connector(connector::ConnectorCommand),
    /// Per connector: state, snapshot progress, slot lag, retained WAL, wal_status, apply
    /// lag, last error, and whether it is healthy (streaming or being set up by a live
    /// daemon). Exit code 0 only when every enabled connector is healthy, 1 otherwise.
    Status {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = render::Format::Text)]
        format: render::Format,
        /// Show it again every this many seconds (changes/s between two looks), until
        /// interrupted or its output is closed (`| head`).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch: Option<u64>,
    },
    /// The branch store (store.url).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Manage branches: writable copies of a connector's replica.
    #[command(subcommand)]
    Branch(branch::BranchCommand),
    /// Stream a source database's changes to the terminal, decoded, through a temporary
    /// replication slot that disappears when the command ends. Stores nothing.
    Tail(tail::TailArgs),
    /// Compare the source and the replica exactly, at one source position: the pipeline
    /// stands still briefly while a snapshot of the source is taken, then cuts a branch at
    /// exactly that position; each table's row count and content checksum are computed on
    /// both, by key ranges in parallel, and differing ranges are read row by row. Read-only
    /// on the source. Exit 0 when every table is equal, 1 otherwise.
    Verify(verify::VerifyArgs),
}

/// A failure with the exit code it maps to.
pub struct Failure {
    code: u8,
    /// Printed on stderr; `None` when the command's own output already says what failed.
    error: Option<anyhow::Error>,
}

impl Failure {
    /// A usage or configuration error (exit 2).
    fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: 2,
            error: Some(error.into()),
        }
    }

    /// Exits with `code` without printing anything more.
    fn quiet(code: u8) -> Failure {
        Failure { code, error: None }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            code: 1,
            error: Some(error.into()),
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            if let Some(error) = error {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    }
}

async fn dispatch(args: Args) -> Result<(), Failure> {
    if let Command::Tail(tail) = args.command {
        init_logging("info", LogFormat::Text);
        return Ok(tail::run(tail).await?);
    }
    // Preflight needs no configuration (without a branch store it skips one check), and
    // must not migrate or create anything, which `connector::run` does first.
    if let Command::Connector(connector::ConnectorCommand::Preflight(checks)) = args.command {
        init_logging("warn", LogFormat::Text);
        return preflight::run(checks, args.config.as_deref()).await;
    }
    // Printing the capture SQL needs nothing else either.
    if let Command::Connector(connector::ConnectorCommand::SourceSql {
        name: None,
        role,
        uninstall,
    }) = &args.command
    {
        connector::source_sql(role.as_deref(), *uninstall);
        return Ok(());
    }
    let (settings, config_path) = load_settings(args.config.as_deref())?;
    // The daemon logs at the configured level; a command's output is its report, so it
    // logs only warnings and errors unless RUST_LOG asks for more.
    let level = match args.command {
        Command::Run => settings.log.level.as_str(),
        _ => "warn",
    };
    init_logging(level, settings.log.format);
    match args.command {
        Command::Run => run::run(settings, &config_path).await,
        Command::Migrate => {
            crate::bookkeeping::Bookkeeping::migrate(settings.store()).await?;
            say!("bookkeeping schema is up to date");
            Ok(())
        }
        Command::Connector(command) => connector::run(command, settings, &config_path).await,
        Command::Status { format, watch } => {
            let bookkeeping = open_bookkeeping(&settings, &config_path).await?;
            let watch = watch.map(std::time::Duration::from_secs);
            status::run(&bookkeeping, format, watch).await
        }
        // Checked as it is: no migration, no bookkeeping needed.
        Command::Store(command) => store::run(command, settings.store()).await,
        // Deleting a branch opens nothing sealed: it works when the key is lost too, and
        // the last sealed branch password it removes lets a new key be used.
        Command::Branch(command @ branch::BranchCommand::Delete { .. }) => {
            let bookkeeping = crate::bookkeeping::Bookkeeping::open_without_key(
                settings.store(),
                &settings.secrets,
                Path::new(DEFAULT_KEY_FILE),
            )
            .await?;
            branch::run(command, &bookkeeping, &settings).await
        }
        Command::Branch(command) => {
            let bookkeeping = open_bookkeeping(&settings, &config_path).await?;
            branch::run(command, &bookkeeping, &settings).await
        }
        Command::Verify(args) => {
            let bookkeeping = open_bookkeeping(&settings, &config_path).await?;
            verify::run(args, &bookkeeping, &settings).await
        }
        Command::Tail(_) => unreachable!("handled above"),
    }
}

/// Loads the configuration; a bad or missing one is a usage error (exit 2). Each error
/// says which key is wrong (only a missing store.url asks for one).
fn load_settings(explicit: Option<&Path>) -> Result<(Settings, PathBuf), Failure> {
    let path = explicit.map_or_else(|| PathBuf::from(DEFAULT_CONFIG), Path::to_path_buf);
    Settings::load(&path, explicit.is_some())
        .map(|settings| (settings, path))
        .map_err(Failure::usage)
}

/// The bookkeeping, migrated, with the key for source URLs (checked; never created here).
async fn open_bookkeeping(
    settings: &Settings,
    config_path: &Path,
) -> Result<crate::bookkeeping::Bookkeeping, Failure> {
    crate::bookkeeping::Bookkeeping::open(
        settings.store(),
        &settings.secrets,
        Path::new(DEFAULT_KEY_FILE),
    )
    .await
    .map_err(|e| match former_key_file(&e, settings, config_path) {
        Some(former) => anyhow::anyhow!(
            "{e}. An earlier tributary kept the key beside the configuration file, and {} \
             exists: move it to {DEFAULT_KEY_FILE}, or set secrets.key_file to it",
            former.display()
        )
        .into(),
        None => e.into(),
    })
}

/// For `connector delete`: with `force`, the bookkeeping even when the key is lost or
/// wrong (the connector is then deleted without its source URL); without, such an error
/// says that `--force` is the way out. Other errors as in [`open_bookkeeping`].
async fn open_bookkeeping_for_delete(
    settings: &Settings,
    config_path: &Path,
    name: &str,
    force: bool,
) -> Result<crate::bookkeeping::Bookkeeping, Failure> {
    let failure = match open_bookkeeping(settings, config_path).await {
        Ok(bookkeeping) => return Ok(bookkeeping),
        Err(failure) => failure,
    };
    let key_problem = failure.error.as_ref().is_some_and(|e| {
        e.downcast_ref::<crate::bookkeeping::Error>()
            .is_some_and(crate::bookkeeping::Error::is_key_problem)
    });
    match (key_problem, force, failure.error) {
        (true, true, _) => Ok(crate::bookkeeping::Bookkeeping::open_without_key(
            settings.store(),
            &settings.secrets,
            Path::new(DEFAULT_KEY_FILE),
        )
        .await?),
        (true, false, Some(e)) => Err(anyhow::anyhow!(
            "{e}. If the key is lost for good, `tributary connector delete {name} --force` \
             deletes the connector without its source URL (the replica database and \
             bookkeeping go; the SQL that drops its slot on the source is printed)"
        )
        .into()),
        (_, _, error) => Err(Failure {
            code: failure.code,
            error,
        }),
    }
}

/// When no key was found at the default location: the file where releases before it
/// kept the key (`tributary.key` beside the configuration file), if there is one.
fn former_key_file(
    error: &crate::bookkeeping::Error,
    settings: &Settings,
    config_path: &Path,
) -> Option<PathBuf> {
    if !matches!(error, crate::bookkeeping::Error::NoKey { .. })
        || settings.secrets.key_file.is_some()
    {
        return None;
    }
    let former = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .join("tributary.key");
    let former = std::path::absolute(&former).unwrap_or(former);
    former.is_file().then_some(former)
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests;
