//! `tributary connector …`: preflight (`preflight.rs`), create (`create.rs`), retry-setup
//! and update (`setup.rs`), tables (`tables.rs`), and here list, switch and delete.

use std::path::Path;

use bytesize::ByteSize;
use clap::Subcommand;
use serde::Serialize;

use super::args::find;
use super::render::Format;
use super::tables::TablesView;
use super::Failure;
use crate::bookkeeping::{Bookkeeping, Connector, Lease};
use crate::control::chain;
use crate::control::connectors::attention::{self, Facts};
use crate::control::connectors::delete::{self, Step};
use crate::control::connectors::resync;
use crate::control::connectors::slot as source_slot;
use crate::control::connectors::tables;
use crate::control::health::{self, Slot};
use crate::pg::{self, ConnInfo};
use crate::settings::Settings;
use crate::source::capture::{self, CaptureStatus};
use crate::state::TableState;

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Check whether a source database can be replicated: connection, settings, privileges,
    /// wal2json, replica identities. Changes and stores nothing; prints a grant script for
    /// what is missing. Tables without a usable replica identity fail unless decided with
    /// the flags `create` takes. Exit code 0 when every required check passes, 1 otherwise.
    Preflight(super::preflight::PreflightArgs),
    /// Register a source database after a preflight; a running daemon snapshots it and
    /// starts streaming. Tables without a usable replica identity need a decision
    /// (exclude, add_pk or replica_identity_full): from a file, the default (exclude) or,
    /// on a terminal, asked per table. Exit code 1 when preflight fails, 2 for undecided
    /// tables or a bad decisions file; nothing is created then.
    Create(super::create::CreateArgs),
    /// List connectors: the active one marked (*), state (qualified when no daemon runs
    /// it: `streaming (no daemon)`), whether a branch cut now is current (ready: streaming
    /// under a live daemon), slot lag, why one is not healthy, and warnings (tables not
    /// replicated, slot WAL at risk). Exit code 0 whatever their state (`tributary status`
    /// exits 1 when one is not healthy).
    List {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Make a connector the active one: the one commands use when --connector is omitted.
    Switch {
        /// The connector's name.
        name: String,
    },
    /// Check the source again and restart a connector's setup, keeping the connector, its
    /// credentials, and its slot and replica while they are valid; takes a new snapshot
    /// when one is needed (lost slot, tables fixed or created since the snapshot). Safe to
    /// run while setup is in progress: it joins it.
    RetrySetup(super::setup::RetryArgs),
    /// Change a connector's options.
    Update(super::setup::UpdateArgs),
    /// Copy some tables of a streaming connector again (a suspected divergence, or a table
    /// held out of the stream after a lost change, once its cause is fixed), the others
    /// untouched: the daemon copies them under a new snapshot and each joins the stream
    /// from its copy's position. Streaming pauses while they are copied. Exit code 2 for a
    /// table the connector does not replicate.
    Resync {
        /// The connector's name.
        name: String,
        /// A table to copy again: schema.name, or the name alone when no other schema has
        /// it. Repeat for several.
        #[arg(long = "table", value_name = "TABLE", required = true)]
        tables: Vec<String>,
    },
    /// List a connector's tables: state (pending, copying, copied, streaming,
    /// needs_decision, failed; an excluded table with its decision, or unlogged), the
    /// source position its copy is exact at, complete copies, rows copied, and for a table
    /// in trouble the problem and the next step; then how many tables are in each state.
    /// Exit code 0 whatever their state.
    Tables {
        /// The connector's name.
        name: String,
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Wait until a connector streams (a progress bar on a terminal), or with --caught-up
    /// until it has applied what the source had written by then. Exit 1 if it fails.
    Wait(super::wait::WaitArgs),
    /// Print the SQL of tributary's schema change capture objects (a function and two
    /// event triggers in schema `tributary` on the source), to run once as a superuser so
    /// that a source role without superuser still has DDL captured. Idempotent; it also
    /// upgrades older versions. With a connector's name, also says what its source has.
    SourceSql {
        /// A connector's name: also say what its source has installed (on stderr).
        name: Option<String>,
        /// The source role tributary connects as, to be granted the key capture messages
        /// are signed with (with a connector's name: the role of its URL).
        #[arg(long)]
        role: Option<String>,
        /// Print the SQL that removes the objects instead.
        #[arg(long)]
        uninstall: bool,
    },
    /// Delete a connector: stops its pipeline (after its current transaction), drops its
    /// replication slot on the source and checks it is gone, drops its replica database
    /// (ending sessions still connected to it), and removes its bookkeeping. The source's
    /// schema change capture objects go too when no other tributary slot is left there.
    Delete {
        /// The connector's name.
        name: String,
        /// Do not wait for a session streaming from the slot to let go: end it. Also
        /// deletes when the source cannot be reached or the pipeline does not stop,
        /// leaving the slot to drop by hand, and when the source URL cannot be decrypted
        /// (the key is lost or wrong): then the source is not touched, and the SQL that
        /// drops the slot there is printed.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(
    command: ConnectorCommand,
    settings: Settings,
    config_path: &Path,
) -> Result<(), Failure> {
    let bookkeeping = match &command {
        ConnectorCommand::Delete { name, force } => {
            super::open_bookkeeping_for_delete(&settings, config_path, name, *force).await?
        }
        _ => super::open_bookkeeping(&settings, config_path).await?,
    };
    match command {
        ConnectorCommand::Create(args) => {
            super::create::run(args, &bookkeeping, settings.store()).await
        }
        ConnectorCommand::List { format } => list(&bookkeeping, format).await,
        ConnectorCommand::Switch { name } => {
            let connector = find(&bookkeeping, &name).await?;
            let previous = bookkeeping
                .connectors()
                .await?
                .into_iter()
                .find(|c| c.active);
            bookkeeping.set_active(connector.id).await?;
            match previous {
                Some(p) if p.id == connector.id => {
                    say!("{} is the active connector already", connector.name)
                }
                Some(p) => say!("Switched from {} to {}", p.name, connector.name),
                None => say!("{} is the active connector", connector.name),
            }
            Ok(())
        }
        ConnectorCommand::RetrySetup(args) => {
            super::setup::retry(args, &bookkeeping, &settings).await
        }
        ConnectorCommand::Update(args) => super::setup::update(args, &bookkeeping, &settings).await,
        ConnectorCommand::Wait(args) => super::wait::run(args, &bookkeeping).await,
        ConnectorCommand::Tables { name, format } => {
            super::tables::run(&bookkeeping, &name, format).await
        }
        ConnectorCommand::Resync { name, tables } => {
            let connector = find(&bookkeeping, &name).await?;
            let chosen = resync::request(&bookkeeping, &connector, &tables)
                .await
                .map_err(|e| {
                    if e.is_usage() {
                        Failure::usage(e)
                    } else {
                        e.into()
                    }
                })?;
            let names: Vec<String> = chosen.iter().map(ToString::to_string).collect();
            say!(
                "✓ {}: {} will be copied again; the other tables stay as they are. \
                 `tributary connector wait {}` follows it.",
                connector.name,
                names.join(", "),
                connector.name
            );
            Ok(())
        }
        ConnectorCommand::Delete { name, force } => {
            let connector = find(&bookkeeping, &name).await?;
            delete(&bookkeeping, &settings, &connector, force).await
        }
        ConnectorCommand::SourceSql {
            name,
            role,
            uninstall,
        } => {
            let mut role = role;
            if let Some(name) = name {
                let connector = find(&bookkeeping, &name).await?;
                let source = bookkeeping.source(&connector).await?;
                report_capture(&source).await;
                role.get_or_insert(source.user.clone());
            }
            source_sql(role.as_deref(), uninstall);
            Ok(())
        }
        ConnectorCommand::Preflight(_) => unreachable!("handled by cli::dispatch"),
    }
}

/// The contract of `connector list --format json`: one object per connector.
#[derive(Serialize)]
struct ConnectorView<'a> {
    name: &'a str,
    /// The connector commands use when --connector is omitted.
    active: bool,
    /// The pipeline's state as its daemon last recorded it (`live` says whether one runs
    /// it now).
    state: &'a str,
    /// The state as the text output shows it (`streaming (no daemon)`, …).
    shown_state: String,
    /// Streaming from a complete snapshot under a live daemon: a branch cut now is current.
    ready: bool,
    /// Whether it is healthy (`control/health.rs`); `null` for a disabled connector.
    healthy: Option<bool>,
    /// Why not, when not healthy.
    reason: Option<String>,
    /// The daemon holding its unexpired lease (`host:pid`); `null` when none.
    owner: Option<String>,
    /// Whether that daemon is still connected to the bookkeeping.
    live: bool,
    enabled: bool,
    source: &'a str,
    schemas: &'a [String],
    slot_name: &'a str,
    replica_database: &'a str,
    last_error: Option<&'a str>,
    /// What the operator does next: when not healthy, or the one recorded with the error.
    next_step: Option<String>,
    /// The slot as the source reports it; `null` when the source could not be asked
    /// (`source_error` says why) or has no such slot.
    slot: Option<SlotView>,
    source_error: Option<String>,
    /// Tables of the selected schemas that are not replicated, with the decision why.
    excluded_tables: Vec<ExcludedTable>,
    /// Its tables per state, and how many replicated ones are not streaming.
    tables: TablesView,
    drop_extensions: &'a [String],
    include_new_tables: bool,
    /// The operator accepted that NaN and ±Infinity arrive as NULL where the source's
    /// wal2json predates 2.6 (`--nan-as-null accept`).
    nan_as_null: bool,
    /// What needs attention, one sentence each.
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct SlotView {
    wal_status: &'static str,
    /// Whether a session streams from it now.
    active: bool,
    /// WAL bytes between the slot's confirmed position and the source's current one.
    lag_bytes: Option<u64>,
    /// WAL bytes the slot keeps on the source's disk.
    retained_wal_bytes: Option<u64>,
    /// Why the source invalidated the slot (`wal_removed`, `idle_timeout`, …: see
    /// `source::slot::Cause`); `null` while it is valid.
    invalidation_cause: Option<&'static str>,
    /// For how long nobody has streamed from it (PostgreSQL 17+; `null` before, and while
    /// a session streams).
    inactive_seconds: Option<f64>,
}

#[derive(Serialize)]
struct ExcludedTable {
    table: String,
    decision: String,
}

async fn list(bookkeeping: &Bookkeeping, format: Format) -> Result<(), Failure> {
    let connectors = bookkeeping.connectors().await?;
    let leases = bookkeeping.leases().await?;
    let mut views = Vec::with_capacity(connectors.len());
    for connector in &connectors {
        views.push(view(bookkeeping, connector, &leases).await?);
    }
    if format == Format::Json {
        say!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        say!(
            "no connectors; create one with `tributary connector create postgresql <url> --name <name>`"
        );
        return Ok(());
    }
    say!(
        "  {:<20} {:<22} {:<6} {:>10}  {:<32} SOURCE",
        "CONNECTOR",
        "STATE",
        "READY",
        "LAG",
        "REPLICA DATABASE"
    );
    for v in &views {
        let lag = v.slot.as_ref().and_then(|s| s.lag_bytes).map_or_else(
            || "-".to_owned(),
            |b| ByteSize(b).display().iec().to_string(),
        );
        say!(
            "{} {:<20} {:<22} {:<6} {:>10}  {:<32} {}",
            if v.active { "*" } else { " " },
            v.name,
            v.shown_state,
            if v.ready { "yes" } else { "no" },
            lag,
            v.replica_database,
            v.source
        );
        match (&v.reason, v.last_error) {
            (Some(reason), _) => say!("    not healthy: {reason}"),
            (None, Some(error)) => say!("    error: {error}"),
            (None, None) => {}
        }
        if let Some(next) = v.next_step.as_ref().filter(|_| v.healthy != Some(true)) {
            say!("    next step: {next}");
        }
        if let Some(line) = v.tables.line() {
            say!("    {line}");
        }
        for warning in &v.warnings {
            say!("    warning: {warning}");
        }
    }
    if !views.iter().any(|v| v.active) {
        say!("\nNo active connector: choose one with `tributary connector switch <name>`.");
    }
    Ok(())
}

async fn view<'a>(
    bookkeeping: &Bookkeeping,
    c: &'a Connector,
    leases: &std::collections::HashMap<crate::types::ConnectorId, Lease>,
) -> Result<ConnectorView<'a>, Failure> {
    let listed = tables::list(bookkeeping, c).await?;
    let excluded_tables: Vec<ExcludedTable> = listed
        .iter()
        .filter(|t| t.state == TableState::Excluded)
        .map(|t| ExcludedTable {
            table: t.table.to_string(),
            decision: t.decision.clone(),
        })
        .collect();
    let (slot, source_error) = match source_slot::inspect(bookkeeping, c).await {
        Ok(slot) => (slot, None),
        Err(e) => (None, Some(chain(&e))),
    };
    let slot_fact = match &source_error {
        Some(_) => Slot::Unknown,
        None => Slot::from_info(slot.as_ref()),
    };
    let assessment = health::assess(bookkeeping, c, leases, &slot_fact).await?;
    let health = &assessment.health;
    let excluded: Vec<(String, &str)> = excluded_tables
        .iter()
        .map(|t| (t.table.clone(), t.decision.as_str()))
        .collect();
    let warnings = attention::warnings(&Facts {
        connector: c,
        slot: slot.as_ref(),
        source_error: source_error.as_deref(),
        excluded: &excluded,
    });
    Ok(ConnectorView {
        name: c.name.as_str(),
        active: c.active,
        state: c.state.as_str(),
        shown_state: health.shown_state.clone(),
        ready: health.is_current(),
        healthy: health.healthy(),
        reason: health.problem().map(|p| p.reason.clone()),
        owner: assessment.owner.name().map(str::to_owned),
        live: assessment.owner.is_live(),
        enabled: c.enabled,
        source: &c.source_display,
        schemas: &c.schemas,
        slot_name: c.slot_name.as_str(),
        replica_database: &c.replica_database,
        last_error: c.last_error.as_deref(),
        next_step: health
            .problem()
            .map(|p| p.next_step.clone())
            .or_else(|| c.next_step.clone()),
        slot: slot.map(|s| SlotView {
            wal_status: s.wal_status.as_str(),
            active: s.active_pid.is_some(),
            lag_bytes: s.lag_bytes,
            retained_wal_bytes: s.retained_bytes,
            invalidation_cause: s.invalidation().map(|i| i.cause.as_str()),
            inactive_seconds: s.inactive_seconds,
        }),
        source_error,
        excluded_tables,
        tables: TablesView::counted(c.name.as_str(), &listed),
        drop_extensions: &c.drop_extensions,
        include_new_tables: c.include_new_tables,
        nan_as_null: c.nan_as_null,
        warnings,
    })
}

/// `connector delete`: the work is `control::connectors::delete`; this says what it did.
async fn delete(
    bookkeeping: &Bookkeeping,
    settings: &Settings,
    connector: &Connector,
    force: bool,
) -> Result<(), Failure> {
    let name = &connector.name;
    let slot_name = &connector.slot_name;
    let drop_sql = delete::drop_sql(slot_name);
    let mut step = |step: Step<'_>| match step {
        Step::WithoutSource(e) => say!(
            "! cannot open the source URL of {name} ({e}); deleting without the source (--force)"
        ),
        Step::NotStopped(e) => say!("! {}; deleting anyway (--force)", chain(e)),
        Step::SessionEnded { pid, slot } => {
            say!("! ended the source session {pid} that streamed from {slot} (--force)")
        }
        Step::SlotKept(not_ours) => say!(
            "! kept replication slot {slot_name} on the source: it is not this \
             installation's ({not_ours}). If no other tributary installation or client \
             uses it, drop it there, since it retains WAL: `{drop_sql}`"
        ),
        Step::SlotNotDropped(e) => say!(
            "! could not drop replication slot {slot_name} on the source ({}). It keeps \
             WAL until dropped: run on the source `{drop_sql}`",
            chain(e)
        ),
        Step::CaptureRemoved => {
            say!("  Removed the schema change capture objects from the source.")
        }
        Step::CaptureNotRemoved(e) => say!(
            "! could not remove the schema change capture objects from the source ({}); no \
             other tributary slot uses them: `tributary connector source-sql --uninstall` \
             prints the SQL to run as a superuser",
            chain(e)
        ),
    };
    let deleted =
        delete::delete(bookkeeping, settings.store(), connector, force, &mut step).await?;
    match deleted.slot_dropped {
        Some(dropped) => say!(
            "✓ Deleted connector {name}: {}replica database {} dropped, bookkeeping removed.",
            if dropped {
                format!("replication slot {slot_name} dropped on the source (checked), ")
            } else {
                String::new()
            },
            connector.replica_database
        ),
        None => {
            say!(
                "✓ Deleted connector {name}: replica database {} dropped, bookkeeping removed. \
                 The source was not touched.",
                connector.replica_database
            );
            say!(
                "  Its replication slot keeps WAL on the source until dropped: as a superuser \
                 (or the connector's replication role) on the source database{}, run\n    \
                 SELECT pg_drop_replication_slot('{slot_name}');\n  and, when no other \
                 tributary slot is left there, the SQL of `tributary connector source-sql \
                 --uninstall`.",
                connector
                    .source_database
                    .as_deref()
                    .map(|db| format!(" {db:?} ({})", connector.source_display))
                    .unwrap_or_else(|| format!(" ({})", connector.source_display))
            );
        }
    }
    report_kept_branches(&deleted.branches);
    Ok(())
}

/// Says which branches of a deleted connector were kept.
fn report_kept_branches(branches: &[crate::bookkeeping::Branch]) {
    if !branches.is_empty() {
        let names: Vec<String> = branches.iter().map(|b| b.name.to_string()).collect();
        say!(
            "  Kept {} branch{}: {} (`tributary branch delete <name>` removes one).",
            names.len(),
            if names.len() == 1 { "" } else { "es" },
            names.join(", ")
        );
    }
}

/// Prints the capture objects' SQL (to stdout, so that it can be piped into psql), with
/// the grant of their signing key to `role`.
pub(super) fn source_sql(role: Option<&str>, uninstall: bool) {
    if uninstall {
        say!("{}", capture::uninstall_sql().trim_end());
        return;
    }
    say!("{}", capture::install_sql().trim_end());
    match role {
        Some(role) => say!("{}", capture::grant_key_sql(role)),
        None => say!(
            "-- For a source role that is not a superuser (--role names it):\n-- {}",
            capture::grant_key_sql("<tributary's source role>")
        ),
    }
}

/// Says on stderr what the source has installed, as SQL comments.
async fn report_capture(source: &ConnInfo) {
    let facts = match pg::connect(source).await {
        Ok(client) => capture::inspect(&client).await.map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let line = match facts {
        Ok(facts) => match facts.status {
            CaptureStatus::Installed => format!(
                "installed at version {} (current): nothing to do",
                capture::CAPTURE_VERSION
            ),
            CaptureStatus::Outdated { found } => format!(
                "installed at version {}, this tributary installs {}: run this SQL to upgrade",
                found.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                capture::CAPTURE_VERSION
            ),
            CaptureStatus::Missing if facts.can_install => {
                "not installed; the connector's role is a superuser, so tributary installs \
                 them itself at its next start"
                    .to_owned()
            }
            CaptureStatus::Missing => "not installed: run this SQL as a superuser".to_owned(),
        },
        Err(e) => format!("could not be inspected ({e:#})"),
    };
    eprintln!("-- The source's schema change capture objects are {line}.");
}
