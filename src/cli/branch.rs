//! `tributary branch create|list|delete|reset`: writable copies of a connector's replica.
//!
//! ```text
//!  create / reset
//!    name checked (syntax, reserved, taken)
//!    cut:  a daemon streams the connector ──► request in the bookkeeping; its pipeline
//!                                             pauses at a source commit boundary, closes
//!                                             its session, CREATE DATABASE … TEMPLATE,
//!                                             resumes (pipeline/stream.rs)
//!          no pipeline uses the replica    ──► CREATE DATABASE … TEMPLATE from here
//!    finish (here): drop the connector's drop-extensions, sequences from the source's
//!                   current values, the branch's record in its own `tributary.branch`,
//!                   the branch given to its role (control/branch_access.rs)
//!    ──► ready; a failure drops the half-made branch (and the role made for it)
//! ```
//!
//! `cut.rs` is the cut; `render.rs` what the commands print.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use clap::{Args, Subcommand};

use self::render::{list, print_url, report, report_finished, UrlView};
use super::Failure;
use super::{args::find, render::Format};
use crate::bookkeeping::{Bookkeeping, Branch, BranchAccess, BranchState, Connector};
use crate::control::branch_access::{self, AccessRequest};
use crate::control::health::{self, Slot};
use crate::pg::conninfo::Password;
use crate::pg::{self, quote_ident, ConnInfo, PgClient, ShowPassword};
use crate::settings::Settings;
use crate::sink;
use crate::types::{BranchName, Lsn, RoleName};

mod cut;
mod render;

use self::cut::{being_cut, cut, ready_to_branch};

#[derive(Debug, Subcommand)]
pub enum BranchCommand {
    /// Create a branch: a database on the branch store copied from the connector's
    /// replica at a source commit boundary, with sequences set from the source, owned by a
    /// login role of its own. Prints its connection URL (with the role's password) and a
    /// psql command.
    Create(CreateArgs),
    /// Print a branch's connection URL again, with its role's password.
    Url {
        /// The branch's name (its database's).
        name: String,
        /// Output: the URL and a psql command for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List branches.
    List {
        /// Output: a table for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Delete a branch's database, and the role tributary created for it. Refused while
    /// clients are connected, unless --force.
    Delete {
        /// The branch's name (its database's).
        name: String,
        /// End the sessions connected to the branch.
        #[arg(long)]
        force: bool,
    },
    /// Re-create a branch from the replica's current state, keeping its name, its role and
    /// its URL.
    Reset {
        /// The branch's name (its database's).
        name: String,
        /// End the sessions connected to the branch.
        #[arg(long)]
        force: bool,
        /// Print the password in the URL instead of masking it.
        #[arg(long)]
        show_password: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The branch's name, which is also its database's: up to 63 bytes, any characters but
    /// control characters (quote it for the shell).
    name: String,
    /// The connector to branch from. [default: the active connector]
    #[arg(long)]
    connector: Option<String>,
    /// Have this existing role own the branch instead of a role created for it: tributary
    /// neither creates nor drops it, and prints the URL without a password.
    #[arg(long, value_name = "ROLE")]
    owner: Option<String>,
    /// Output: the URL and a psql command for people, or a JSON object (with `url`) for
    /// scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// How long to wait for the pipeline to reach a source commit boundary (the copy
    /// itself is always waited for).
    #[arg(long, default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Create it also when the connector is not streaming under a live daemon (no daemon
    /// runs it, or it failed): the branch then holds the replica as it is, and the command
    /// says as of when. Without it such a connector is refused (exit 1).
    #[arg(long)]
    allow_stale: bool,
}

pub async fn run(
    command: BranchCommand,
    bookkeeping: &Bookkeeping,
    settings: &Settings,
) -> Result<(), Failure> {
    let store = settings.store();
    match command {
        BranchCommand::Create(args) => {
            let name = BranchName::new(args.name).map_err(Failure::usage)?;
            let request = match args.owner {
                Some(role) => AccessRequest::Owner(RoleName::new(role).map_err(Failure::usage)?),
                None => AccessRequest::OwnRole,
            };
            let connector = resolve_connector(bookkeeping, args.connector.as_deref()).await?;
            check_name(bookkeeping, &store, &name).await?;
            let stale = check_current(bookkeeping, &connector, args.allow_stale).await?;
            branch_access::check(&store, &name, &request).await?;
            let started = Instant::now();
            let cutter = ready_to_branch(bookkeeping, &store, &connector).await?;
            let cut = cut(
                bookkeeping,
                &store,
                &connector,
                &name,
                cutter,
                Duration::from_secs(args.timeout),
                None,
            )
            .await?;
            let finished = finish(
                bookkeeping,
                &store,
                &connector,
                &name,
                cut,
                Handing::New(request),
            )
            .await?;
            let view = UrlView::of(
                &store,
                &name,
                &connector.name.to_string(),
                cut.0,
                &finished.given,
            )
            .stale(stale);
            if args.format == Format::Json {
                print_url(&view, Format::Json)?;
            } else {
                report(&view, &connector, cut, started, ShowPassword::Shown);
            }
            report_finished(&finished, args.format);
            Ok(())
        }
        BranchCommand::Url { name, format } => {
            let branch = recorded(bookkeeping, &store, &name).await?;
            let lsn = match (branch.state, branch.lsn) {
                (BranchState::Copied | BranchState::Ready, Some(lsn)) => lsn,
                (state, _) => {
                    return Err(anyhow!(
                        "branch {} is {}, not ready: it has no URL yet; `tributary branch list` \
                         shows when it is",
                        branch.name,
                        state.as_str()
                    )
                    .into())
                }
            };
            let password = bookkeeping.branch_password(&branch.name).await?;
            let given = Given {
                access: branch.access.clone(),
                password,
            };
            let view = UrlView::of(&store, &branch.name, &branch.connector_name, lsn, &given);
            print_url(&view, format)
        }
        BranchCommand::List { format } => list(bookkeeping, &store, format).await,
        BranchCommand::Delete { name, force } => {
            let branch = recorded(bookkeeping, &store, &name).await?;
            match branch.state {
                BranchState::Copied | BranchState::Ready => {
                    drop_branch_database(&store, &branch.name, force).await?;
                }
                BranchState::Requested => {
                    if !bookkeeping.withdraw_branch(&branch.name).await? {
                        return Err(being_cut(&branch.name));
                    }
                }
                BranchState::Cutting => return Err(being_cut(&branch.name)),
                // Its copy failed: there is no database of the branch's to drop.
                BranchState::Failed => {}
            }
            // Only a role tributary made for the branch; never an --owner role.
            if let BranchAccess::OwnRole(role) = &branch.access {
                branch_access::drop_role(&store, role).await?;
            }
            bookkeeping.forget_branch(&branch.name).await?;
            say!("✓ Deleted branch {}", branch.name);
            Ok(())
        }
        BranchCommand::Reset {
            name,
            force,
            show_password,
        } => {
            let branch = recorded(bookkeeping, &store, &name).await?;
            let connector = match branch.connector_id {
                Some(id) => bookkeeping.connector_by_id(id).await?,
                None => None,
            }
            .ok_or_else(|| {
                anyhow!(
                    "branch {} was cut from connector {}, which no longer exists: nothing to \
                     reset it from (delete it instead)",
                    branch.name,
                    branch.connector_name
                )
            })?;
            let cutter = ready_to_branch(bookkeeping, &store, &connector).await?;
            let started = Instant::now();
            // Held until the branch is requested again: no pipeline claims it meanwhile.
            let lock = bookkeeping
                .try_lock_branch(&branch.name)
                .await?
                .ok_or_else(|| being_cut(&branch.name))?;
            if matches!(branch.state, BranchState::Requested | BranchState::Cutting) {
                return Err(being_cut(&branch.name));
            }
            drop_branch_database(&store, &branch.name, force).await?;
            let cut = match cut(
                bookkeeping,
                &store,
                &connector,
                &branch.name,
                cutter,
                Duration::from_secs(300),
                Some(lock),
            )
            .await
            {
                Ok(cut) => cut,
                Err(e) => {
                    // A failed copy forgets the branch: its own role goes with it.
                    let _ = branch_access::drop_role_if_forgotten(
                        bookkeeping,
                        &store,
                        &branch.name,
                        &branch.access,
                    )
                    .await;
                    return Err(e);
                }
            };
            let mut finished = finish(
                bookkeeping,
                &store,
                &connector,
                &branch.name,
                cut,
                Handing::Kept(branch.access.clone()),
            )
            .await?;
            finished.given.password = bookkeeping.branch_password(&branch.name).await?;
            let view = UrlView::of(
                &store,
                &branch.name,
                &connector.name.to_string(),
                cut.0,
                &finished.given,
            );
            let shown = if show_password {
                ShowPassword::Shown
            } else {
                ShowPassword::Masked
            };
            report(&view, &connector, cut, started, shown);
            report_finished(&finished, Format::Text);
            Ok(())
        }
    }
}

/// `--connector`, else the active connector, else the only one.
async fn resolve_connector(
    bookkeeping: &Bookkeeping,
    name: Option<&str>,
) -> Result<Connector, Failure> {
    if let Some(name) = name {
        return find(bookkeeping, name).await;
    }
    let connectors = bookkeeping.connectors().await?;
    if let Some(active) = connectors.iter().find(|c| c.active) {
        return Ok(active.clone());
    }
    match connectors.as_slice() {
        [only] => Ok(only.clone()),
        [] => {
            Err(anyhow!("no connectors: create one with `tributary connector create` first").into())
        }
        _ => Err(Failure::usage(anyhow!(
            "several connectors and none is active: pass --connector, or choose one with \
             `tributary connector switch <name>`"
        ))),
    }
}

/// Refuses a connector a branch of which would not be current (`control/health.rs`),
/// unless `allow_stale`; then says how stale it is (on stderr, apart from the output) and
/// returns that, for the JSON output.
async fn check_current(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    allow_stale: bool,
) -> Result<Option<String>, Failure> {
    let leases = bookkeeping.leases().await?;
    let health = health::assess(bookkeeping, connector, &leases, &Slot::Unknown)
        .await?
        .health;
    let Some(stale) = health::staleness(connector.name.as_str(), &health) else {
        return Ok(None);
    };
    if allow_stale {
        eprintln!("warning: {stale} (--allow-stale)");
        return Ok(Some(stale));
    }
    let next = health
        .problem()
        .map_or_else(String::new, |p| format!(" Next step: {}.", p.next_step));
    Err(anyhow!("{stale}.{next} Or pass --allow-stale to create it anyway.").into())
}

/// Refuses the names of the control, replica and template databases (exit 2) and names
/// taken by a branch or any other database (exit 1).
async fn check_name(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &BranchName,
) -> Result<(), Failure> {
    // `<connector>_replica` is reserved also for connectors created later.
    let reserved = name.as_str() == store.dbname
        || matches!(name.as_str(), "template0" | "template1" | "postgres")
        || name.as_str().ends_with("_replica");
    if reserved {
        return Err(Failure::usage(anyhow!(
            "{name} is reserved: it is the bookkeeping's or a system database, or a name of \
             the form <connector>_replica; choose another branch name"
        )));
    }
    if bookkeeping.branch(name).await?.is_some() {
        let word = name.shell_word();
        return Err(anyhow!(
            "branch {name} exists: `tributary branch reset {word}` re-creates it, `tributary \
             branch delete {word}` removes it"
        )
        .into());
    }
    if database_exists(store, name.as_str()).await? {
        return Err(anyhow!(
            "a database named {name} exists on the branch store already: choose another name"
        )
        .into());
    }
    Ok(())
}

async fn database_exists(store: &ConnInfo, name: &str) -> anyhow::Result<bool> {
    let control = pg::connect(store).await?;
    Ok(control
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .is_some())
}

/// What the source has that no branch gets.
struct Missing {
    /// Logical decoding carries no large objects.
    large_objects: i64,
}

/// Who gets a branch being finished: asked for by `create`, or kept by `reset`.
enum Handing {
    New(AccessRequest),
    Kept(BranchAccess),
}

/// Who a branch's URL logs in as, and the password of a role of its own (`None` until read
/// from the bookkeeping, but right after the role is made).
struct Given {
    access: BranchAccess,
    password: Option<Password>,
}

/// A branch made ready.
struct Finished {
    missing: Missing,
    given: Given,
    /// Databases of tributary's that branch roles may still connect to, with what to run.
    advice: Vec<String>,
}

/// Makes a copied branch ready: extensions the connector drops, the triggers the replica
/// holds disabled enabled as on the source, sequences from the source, the branch's own
/// record (with what it lacks), then the branch given to its role and tributary's other
/// databases closed to it. A failure drops the branch, and the role made for it.
async fn finish(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    (lsn, _): (Lsn, Duration),
    handing: Handing,
) -> Result<Finished, Failure> {
    let finished = async {
        let branch = pg::connect(&store.with_dbname(name.as_str())).await?;
        for extension in &connector.drop_extensions {
            branch
                .batch_execute(&format!(
                    "DROP EXTENSION IF EXISTS {} CASCADE",
                    quote_ident(extension)
                ))
                .await
                .with_context(|| format!("dropping extension {extension}"))?;
        }
        sink::release_triggers(&branch)
            .await
            .context("enabling the triggers the source enables ALWAYS or REPLICA")?;
        let source = ConnInfo::parse(&bookkeeping.source_url(connector).await?)?;
        let source = pg::connect(&source).await?;
        set_sequences(&source, &branch, &connector.schemas).await?;
        let large_objects: i64 = source
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
                &[],
            )
            .await
            .context("counting the source's large objects")?
            .get(0);
        let size: i64 = branch
            .query_one(
                "SELECT pg_catalog.pg_database_size(current_database())",
                &[],
            )
            .await?
            .get(0);
        branch
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS tributary.branch (
                     name text NOT NULL, connector text NOT NULL, lsn pg_lsn NOT NULL,
                     size_bytes bigint NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now());
                 ALTER TABLE tributary.branch
                     ADD COLUMN IF NOT EXISTS source_large_objects_missing bigint;
                 COMMENT ON COLUMN tributary.branch.source_large_objects_missing IS
                     'large objects the source had when the branch was made: not replicated, not here';
                 TRUNCATE tributary.branch;
                 INSERT INTO tributary.branch
                     (name, connector, lsn, size_bytes, source_large_objects_missing)
                 VALUES ({}, {}, '{lsn}', {size}, {large_objects})",
                pg::quote_literal(name.as_str()),
                pg::quote_literal(connector.name.as_str()),
            ))
            .await
            .context("recording the branch in its own tributary.branch table")?;
        anyhow::Ok((size, Missing { large_objects }))
    };
    // The role of its own a failure forgets with the branch: made here, or kept by a reset.
    let mut own_role = match &handing {
        Handing::Kept(BranchAccess::OwnRole(role)) => Some(role.clone()),
        _ => None,
    };
    let new = matches!(handing, Handing::New(_));
    let finished = async {
        let done = finished.await?;
        let given = match handing {
            Handing::New(AccessRequest::OwnRole) => {
                let (role, password) = branch_access::create_role(store, name).await?;
                own_role = Some(role.clone());
                Given {
                    access: BranchAccess::OwnRole(role),
                    password: Some(password),
                }
            }
            Handing::New(AccessRequest::Owner(role)) => Given {
                access: BranchAccess::Owner(role),
                password: None,
            },
            Handing::Kept(access) => Given {
                access,
                password: None,
            },
        };
        if new {
            bookkeeping
                .set_branch_access(name, &given.access, given.password.as_ref())
                .await?;
        }
        branch_access::hand_over(store, name, &given.access).await?;
        let advice = branch_access::close_databases(bookkeeping, store).await?;
        anyhow::Ok((done, given, advice))
    };
    let ((size, missing), given, advice) = match finished.await {
        Ok(done) => done,
        Err(e) => {
            let _ = sink::drop_database(store, name.as_str(), true).await;
            if let Some(role) = &own_role {
                let _ = branch_access::drop_role(store, role).await;
            }
            let _ = bookkeeping.forget_branch(name).await;
            return Err(anyhow!("branch {name} was not created: {e:#}").into());
        }
    };
    bookkeeping.branch_ready(name, size).await?;
    Ok(Finished {
        missing,
        given,
        advice,
    })
}

/// Sets every sequence of `schemas` in the branch to the source's current value, so that
/// inserts using defaults never collide with copied rows (logical decoding carries no
/// sequence changes, so the replica's are behind).
async fn set_sequences(
    source: &PgClient,
    branch: &PgClient,
    schemas: &[String],
) -> anyhow::Result<()> {
    let rows = source
        .query(
            "SELECT schemaname::text, sequencename::text, last_value, start_value,
                    pg_catalog.has_sequence_privilege(
                        pg_catalog.format('%I.%I', schemaname, sequencename), 'SELECT, USAGE')
               FROM pg_catalog.pg_sequences WHERE schemaname = ANY($1)",
            &[&schemas],
        )
        .await
        .context("reading the source's sequences")?;
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let in_branch = branch
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                &[&schema, &name],
            )
            .await?
            .is_some();
        if !in_branch {
            continue; // of an excluded table
        }
        if !row.get::<_, bool>(4) {
            anyhow::bail!(
                "the source role may not read sequence {schema}.{name}: GRANT SELECT ON \
                 SEQUENCE {qualified} TO the connector's role (the preflight grant script \
                 includes it)"
            );
        }
        let (value, called) = match row.get::<_, Option<i64>>(2) {
            Some(last) => (last, true),
            None => (row.get::<_, i64>(3), false),
        };
        branch
            .query(
                &format!(
                    "SELECT pg_catalog.setval('{}'::regclass, $1, $2)",
                    qualified.replace('\'', "''")
                ),
                &[&value, &called],
            )
            .await
            .with_context(|| format!("setting sequence {schema}.{name}"))?;
    }
    Ok(())
}

/// The recorded branch called `name`; the replica and control databases are never one.
async fn recorded(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &str,
) -> Result<Branch, Failure> {
    let name = BranchName::new(name.to_owned()).map_err(Failure::usage)?;
    let protected = name.as_str() == store.dbname
        || bookkeeping
            .connectors()
            .await?
            .iter()
            .any(|c| c.replica_database == name.as_str());
    match bookkeeping.branch(&name).await? {
        Some(branch) if !protected => Ok(branch),
        _ => Err(anyhow!(
            "no branch named {name}; `tributary branch list` shows them (only branches \
             created by tributary can be deleted or reset here)"
        )
        .into()),
    }
}

/// Drops the branch's database; with clients connected only with `force`, which ends
/// their sessions and says how many.
async fn drop_branch_database(
    store: &ConnInfo,
    name: &BranchName,
    force: bool,
) -> Result<(), Failure> {
    let control = pg::connect(store).await?;
    let sessions: Vec<i32> = control
        .query(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = $1 ORDER BY pid",
            &[&name.as_str()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !sessions.is_empty() && !force {
        return Err(anyhow!(
            "{} client session{} connected to branch {name} (pid {}): disconnect {} or use \
             --force to end {}",
            sessions.len(),
            if sessions.len() == 1 { " is" } else { "s are" },
            sessions
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if sessions.len() == 1 { "it" } else { "them" },
            if sessions.len() == 1 { "it" } else { "them" },
        )
        .into());
    }
    // Without --force a client that connected since the look still makes this fail.
    sink::drop_database(store, name.as_str(), force).await?;
    if !sessions.is_empty() {
        say!(
            "! ended {} client session{} connected to {name} (--force)",
            sessions.len(),
            if sessions.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
