//! `tributary connector retry-setup` and `connector update`: set a connector up again,
//! keeping its row, its credentials (`update --url` replaces them: `control::credentials`),
//! and its slot and replica while they are still valid.
//!
//! ```text
//!  setup in progress (validating, snapshotting) ── decisions or schemas given ──► exit 1
//!                                               └─ otherwise: joins it, starts nothing
//!  preflight of the source                      ── a required check failed ──► exit 1
//!  branch store older than the source, or failing
//!     the store check (`store check`)           ──► exit 1
//!  decisions about tables without a usable replica identity (as in create)
//!  what the source and the replica say:
//!     slot lost or missing, no complete snapshot, tables fixed or created since the
//!     snapshot, schemas changed                 ──► a new snapshot
//!     failed, stopped, retrying an error         ──► resume with slot and replica kept
//!     streaming and healthy                      ──► nothing to do
//! ```
//!
//! The command only records the request (`Bookkeeping::request_setup`); the daemon's
//! pipeline does the work, so running it twice never does the work twice.

use anyhow::anyhow;
use clap::{Args, ValueEnum};

use super::args::{find, schema_list};
use super::decisions::{refuse_nan_as_null, DecisionArgs, NanAsNull};
use super::render::{print_decisions, require_passed, store_refused};
use super::Failure;
use crate::bookkeeping::{Bookkeeping, Connector, SetupChange, TableDecision};
use crate::change::TableName;
use crate::control::connectors::setup::{self, Requested, SetupPlan, Wanted};
use crate::control::health::Health;
use crate::control::{connectors, credentials};
use crate::pipeline::PipelineState;
use crate::settings::Settings;
use crate::source::preflight;

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The connector.
    name: String,
    #[command(flatten)]
    decisions: DecisionArgs,
    /// Take a new snapshot even though the slot and replica could be kept: when the
    /// replica is known to differ from the source (a connector failure says so).
    #[arg(long)]
    resnapshot: bool,
    /// Wait until the connector streams again (exit 0) or fails (exit 1).
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The connector.
    name: String,
    /// A new source URL (new credentials) for the same source: checked to reach the same
    /// PostgreSQL system and database over a working replication connection, stored
    /// encrypted; the pipeline resumes from its slot, without a new snapshot.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Extensions that branches of this connector leave out, comma-separated; '' clears
    /// the list.
    #[arg(long, value_name = "EXTENSIONS")]
    drop_extensions: Option<String>,
    /// The schemas to replicate, comma-separated. A schema added is copied into the
    /// replica, which is kept; a schema removed takes a new snapshot.
    #[arg(long, value_delimiter = ',')]
    schemas: Option<Vec<String>>,
    /// Whether tables created later in the selected schemas are replicated (on) or their
    /// changes ignored (off). Takes effect when the pipeline restarts, which this does.
    #[arg(long, value_enum, value_name = "on|off")]
    include_new_tables: Option<Switch>,
    /// Where the source's wal2json predates 2.6: `accept` that NaN, Infinity and -Infinity
    /// in numeric and float columns arrive as NULL, or `refuse` tables with such columns.
    /// Restarts the pipeline, which resumes where it was.
    #[arg(long, value_enum, value_name = "accept|refuse")]
    nan_as_null: Option<NanAsNull>,
    #[command(flatten)]
    decisions: DecisionArgs,
    /// With --schemas or --url: wait until the connector streams again (exit 0) or fails
    /// (exit 1).
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

pub async fn retry(
    args: RetryArgs,
    bookkeeping: &Bookkeeping,
    settings: &Settings,
) -> Result<(), Failure> {
    let connector = find(bookkeeping, &args.name).await?;
    let restarted = set_up_again(
        bookkeeping,
        settings,
        &connector,
        &args.decisions,
        None,
        args.resnapshot,
        connector.nan_as_null,
    )
    .await?;
    if restarted && args.wait {
        wait_for_streaming(bookkeeping, &connector).await?;
    }
    Ok(())
}

pub async fn update(
    args: UpdateArgs,
    bookkeeping: &Bookkeeping,
    settings: &Settings,
) -> Result<(), Failure> {
    if args.url.is_none()
        && args.drop_extensions.is_none()
        && args.schemas.is_none()
        && args.include_new_tables.is_none()
        && args.nan_as_null.is_none()
    {
        return Err(Failure::usage(anyhow!(
            "nothing to update: give --url, --drop-extensions, --schemas, --include-new-tables \
             or --nan-as-null"
        )));
    }
    if args.schemas.is_none() && args.decisions.given() {
        return Err(Failure::usage(anyhow!(
            "replica identity decisions go with --schemas (or `connector retry-setup`)"
        )));
    }
    // Before anything is looked up: a URL that does not parse is refused as given.
    let url = args
        .url
        .as_deref()
        .map(credentials::NewUrl::parse)
        .transpose()
        .map_err(Failure::usage)?;
    let connector = find(bookkeeping, &args.name).await?;
    // The credentials first: the other changes restart a pipeline that needs them.
    let mut restarted = false;
    if let Some(url) = &url {
        restarted = update_url(bookkeeping, &connector, url).await?;
    }
    let schemas = args.schemas.map(schema_list).transpose()?;
    let nan_as_null = args.nan_as_null.map(|n| n == NanAsNull::Accept);
    // New schemas are checked against the NaN decision, and the request that restarts the
    // pipeline for them records it (a pipeline restarted for them must find it); alone, it
    // is recorded here.
    let schemas_change = schemas.as_ref().is_some_and(|s| *s != connector.schemas);
    if nan_as_null.is_some() && !schemas_change {
        bookkeeping
            .update_options(connector.id, None, None, nan_as_null)
            .await?;
    }
    // Then the schemas: when they cannot change (preflight, decisions, setup running),
    // nothing else does.
    if let Some(schemas) = schemas {
        if schemas == connector.schemas {
            say!(
                "✓ {}: already replicates schemas {}",
                connector.name,
                schemas.join(", ")
            );
        } else {
            restarted = set_up_again(
                bookkeeping,
                settings,
                &connector,
                &args.decisions,
                Some(schemas),
                false,
                nan_as_null.unwrap_or(connector.nan_as_null),
            )
            .await?;
        }
    }
    let drop_extensions = args.drop_extensions.as_deref().map(extension_list);
    let include_new_tables = args.include_new_tables.map(|s| s == Switch::On);
    bookkeeping
        .update_options(
            connector.id,
            drop_extensions.as_deref(),
            include_new_tables,
            None,
        )
        .await?;
    if let Some(accepted) = nan_as_null.filter(|a| *a != connector.nan_as_null) {
        // The running pipeline applies under the old decision, and a connector it
        // stopped waits for the operator: either way it starts again, from its slot.
        if !restarted {
            let change = SetupChange {
                restart: true,
                ..SetupChange::default()
            };
            bookkeeping.request_setup(connector.id, &change).await?;
        }
        say!(
            "✓ {}: NaN, Infinity and -Infinity in numeric and float columns {} (where the \
             source's wal2json predates 2.6); the pipeline restarts where it was",
            connector.name,
            if accepted {
                "arrive as NULL"
            } else {
                "refuse their tables"
            }
        );
    }
    say_options(&connector, drop_extensions.as_deref(), include_new_tables);
    if restarted && args.wait {
        wait_for_streaming(bookkeeping, &connector).await?;
    }
    Ok(())
}

/// Says the options `update` changed.
fn say_options(
    connector: &Connector,
    drop_extensions: Option<&[String]>,
    include_new_tables: Option<bool>,
) {
    if let Some(extensions) = drop_extensions {
        if extensions.is_empty() {
            say!("✓ {}: branches keep every extension", connector.name);
        } else {
            say!(
                "✓ {}: branches leave out the extension{} {}",
                connector.name,
                if extensions.len() == 1 { "" } else { "s" },
                extensions.join(", ")
            );
        }
    }
    if let Some(include) = include_new_tables {
        say!(
            "✓ {}: tables created later in its schemas are {}",
            connector.name,
            if include {
                "replicated (a new table needs `connector retry-setup` until schema changes are \
                 captured)"
            } else {
                "ignored"
            }
        );
    }
}

/// Checks and stores the new URL (`control::credentials`), saying what it reached; returns
/// whether the pipeline starts again.
async fn update_url(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    url: &credentials::NewUrl,
) -> Result<bool, Failure> {
    let updated = credentials::update_url(bookkeeping, connector, url).await?;
    let seen = &updated.checked.seen;
    say!(
        "✓ {}: the new URL reaches the same source (system {}, database {}) over a working \
         replication connection; stored encrypted",
        connector.name,
        seen.system_id,
        seen.database
    );
    match &updated.checked.slot {
        Some(_) => say!(
            "✓ {}: slot {} is there: the pipeline resumes from it, without a new snapshot",
            connector.name,
            connector.slot_name
        ),
        None => say!(
            "! {}: slot {} is not on the source: the pipeline's next setup decides (a new \
             snapshot if the connector had streamed)",
            connector.name,
            connector.slot_name
        ),
    }
    if !updated.restarted {
        say!(
            "  Setup is running ({}): it uses the new URL at its next connection",
            connector.state
        );
    }
    Ok(updated.restarted)
}

/// `a, b,,c` → `[a, b, c]`, without repetitions; `''` → `[]`.
fn extension_list(raw: &str) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !list.iter().any(|n| n == name) {
            list.push(name.to_owned());
        }
    }
    list
}

/// Checks the source again and asks the daemon to set the connector up again when there
/// is something to do. Returns whether it did (the connector is back in `pending`).
async fn set_up_again(
    bookkeeping: &Bookkeeping,
    settings: &Settings,
    connector: &Connector,
    decision_args: &DecisionArgs,
    new_schemas: Option<Vec<String>>,
    force_snapshot: bool,
    nan_as_null: bool,
) -> Result<bool, Failure> {
    let name = &connector.name;
    let file = decision_args.read_file()?;
    if connector.state.is_setting_up() && connector.last_error.is_none() {
        return in_progress(
            bookkeeping,
            connector,
            connector.state,
            decision_args.given() || new_schemas.is_some(),
        )
        .await;
    }

    let info = bookkeeping.source(connector).await?;
    let schemas = new_schemas.unwrap_or_else(|| connector.schemas.clone());
    let connectors = bookkeeping.connectors().await?;
    let known = connectors::known(
        Some(bookkeeping.installation()),
        &connectors,
        Some(connector.id),
    );
    let report = preflight::run(&info, &schemas, &known).await;
    require_passed(
        &info,
        &schemas,
        &report,
        &format!("Setup of {name} not restarted."),
    )?;
    let store = settings.store();
    connectors::check_store(report.server_major, store)
        .await
        .map_err(|e| store_refused(store, e, &format!("Setup of {name} not restarted.")))?;
    if !nan_as_null && !report.nan_as_null_columns.is_empty() {
        return Err(refuse_nan_as_null(
            &report.nan_as_null_columns,
            &format!("`tributary connector update {name} --nan-as-null accept`"),
            &format!("Setup of {name} not restarted."),
        ));
    }

    let existing = bookkeeping.table_decisions(connector.id).await?;
    let decisions =
        decision_args.decide(file, &report, &schemas, &existing, "Nothing was changed.")?;

    let plan = setup::plan(
        bookkeeping,
        store,
        connector,
        &info,
        &report,
        Wanted {
            schemas: &schemas,
            decisions: &decisions,
            resnapshot: force_snapshot,
        },
    )
    .await?;
    let decisions_changed = decisions != existing;
    say_plan(&plan, decisions_changed.then_some(&decisions[..]));
    let new_schemas = (schemas != connector.schemas).then_some(&schemas[..]);
    let changed_decisions = decisions_changed.then_some(&decisions[..]);
    let new_nan_as_null = (nan_as_null != connector.nan_as_null).then_some(nan_as_null);
    match setup::request(
        bookkeeping,
        connector,
        &plan,
        changed_decisions,
        (new_schemas, new_nan_as_null),
    )
    .await?
    {
        Requested::InProgress(state) => {
            return in_progress(bookkeeping, connector, state, true).await;
        }
        Requested::Kept(health) => return kept(connector, &health).map(|()| false),
        Requested::Restarted => {}
    }
    let reasons = plan.reasons;
    if reasons.is_empty() && !plan.additions.is_empty() {
        say!(
            "✓ Setup of {name} restarts: the replica is kept, and only what it lacks is copied \
             into it while its other tables stay as they are:"
        );
        for addition in &plan.additions {
            say!("    - {addition}");
        }
    } else if reasons.is_empty() {
        say!(
            "✓ Setup of {name} restarts: it resumes from the replica's applied position with \
             slot {} (kept).",
            connector.slot_name
        );
    } else {
        say!("✓ Setup of {name} restarts with a new snapshot, which replaces the replica:");
        for reason in &reasons {
            say!("    - {reason}");
        }
    }
    say!(
        "A running daemon picks it up now (start one with `tributary run`); follow it with \
         `tributary connector list`."
    );
    Ok(true)
}

/// What the plan says before it is recorded: tables excluded although they could be
/// replicated, and the decisions when they `changed`.
fn say_plan(plan: &SetupPlan, changed: Option<&[(TableName, TableDecision)]>) {
    if !plan.excluded_with_identity.is_empty() {
        let names: Vec<String> = plan
            .excluded_with_identity
            .iter()
            .map(ToString::to_string)
            .collect();
        say!(
            "Note: excluded by decision although they have a usable replica identity: {}. To \
             replicate them, run retry-setup with a decisions file that leaves them out.",
            names.join(", ")
        );
    }
    match changed {
        Some([]) => say!("✓ No table needs a replica identity decision any more."),
        Some(decisions) => {
            say!("Replica identity decisions:");
            print_decisions(decisions);
        }
        None => {}
    }
}

/// Nothing was restarted: fine when the connector is healthy, else why not and what to do.
fn kept(connector: &Connector, health: &Health) -> Result<(), Failure> {
    let name = &connector.name;
    if let Some(problem) = health.problem() {
        return Err(anyhow!(
            "setup of {name} needs nothing (slot {} kept), but it is not healthy: {}. Next \
             step: {}",
            connector.slot_name,
            problem.reason,
            problem.next_step
        )
        .into());
    }
    say!(
        "✓ Setup of {name} is healthy ({} from slot {}): nothing to do.",
        health.shown_state,
        connector.slot_name
    );
    Ok(())
}

/// Setup is running already: join it, or refuse a change to what it is working from.
async fn in_progress(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    state: PipelineState,
    changes: bool,
) -> Result<bool, Failure> {
    let name = &connector.name;
    if changes {
        return Err(anyhow!(
            "setup of {name} is in progress ({state}): decisions and schemas cannot change \
             while it runs. Wait for it to finish (`tributary connector list`), then run this \
             again if it is still needed."
        )
        .into());
    }
    let progress = connectors::tables::progress(&bookkeeping.tables(connector.id).await?);
    say!(
        "Setup of {name} is already in progress ({state}{}); nothing new was started. A \
         running daemon carries it on; follow it with `tributary connector list`.",
        if state == PipelineState::Snapshotting {
            let source = bookkeeping.source(connector).await?;
            match connectors::slot::creation_wait(&source, &connector.slot_name).await {
                Ok(Some(why)) => format!(": waiting for the slot's consistent point: {why}"),
                _ => format!(": {} of {} tables copied", progress.copied, progress.total),
            }
        } else {
            String::new()
        }
    );
    Ok(false)
}

/// Follows the connector until it streams without a pending snapshot (Ok) or fails.
async fn wait_for_streaming(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<(), Failure> {
    super::wait::until_streaming(bookkeeping, connector).await
}
