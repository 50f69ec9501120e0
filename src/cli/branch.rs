//! `tributary branch create|list|delete|reset|url`: the arguments, and what is printed
//! (`render.rs`); the work is `control/branches/`.

use std::io::IsTerminal as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use self::render::{list, print_url, report, report_finished, UrlView};
use super::render::Format;
use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::control::branch_access::AccessRequest;
use crate::control::branches::{self, BranchError, CreateRequest, Progress};
use crate::pg::ShowPassword;
use crate::settings::Settings;
use crate::types::{BranchName, RoleName};

mod render;

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
    let spinner = Spinner::default();
    let progress = |p: Progress| spinner.show(p);
    match command {
        BranchCommand::Create(args) => {
            let name = BranchName::new(args.name).map_err(Failure::usage)?;
            let access = match args.owner {
                Some(role) => AccessRequest::Owner(RoleName::new(role).map_err(Failure::usage)?),
                None => AccessRequest::OwnRole,
            };
            let request = CreateRequest {
                name,
                connector: args.connector,
                access,
                timeout: Duration::from_secs(args.timeout),
                allow_stale: args.allow_stale,
            };
            let created = branches::create(bookkeeping, store, request, &progress).await;
            spinner.clear();
            let created = created.map_err(failure)?;
            let view = UrlView::of(
                store,
                &created.name,
                created.connector.name.as_str(),
                created.lsn,
                &created.finished.given,
            )
            .stale(created.stale.clone());
            if args.format == Format::Json {
                print_url(&view, Format::Json)?;
            } else {
                report(&view, &created, ShowPassword::Shown);
            }
            report_finished(&created.finished, args.format);
            Ok(())
        }
        BranchCommand::Url { name, format } => {
            let url = branches::url(bookkeeping, store, &name)
                .await
                .map_err(failure)?;
            let view = UrlView::of(
                store,
                &url.branch.name,
                &url.branch.connector_name,
                url.lsn,
                &url.given,
            );
            print_url(&view, format)
        }
        BranchCommand::List { format } => {
            let listed = branches::list(bookkeeping, store).await.map_err(failure)?;
            list(listed, format)
        }
        BranchCommand::Delete { name, force } => {
            let deleted = branches::delete(bookkeeping, store, &name, force, &progress)
                .await
                .map_err(failure)?;
            say!("✓ Deleted branch {}", deleted.name);
            Ok(())
        }
        BranchCommand::Reset {
            name,
            force,
            show_password,
        } => {
            let created = branches::reset(bookkeeping, store, &name, force, &progress).await;
            spinner.clear();
            let created = created.map_err(failure)?;
            let view = UrlView::of(
                store,
                &created.name,
                created.connector.name.as_str(),
                created.lsn,
                &created.finished.given,
            );
            let shown = if show_password {
                ShowPassword::Shown
            } else {
                ShowPassword::Masked
            };
            report(&view, &created, shown);
            report_finished(&created.finished, Format::Text);
            Ok(())
        }
    }
}

/// Exit 2 for a mistake in the arguments, 1 for a refused or failed operation.
fn failure(error: BranchError) -> Failure {
    if error.is_usage() {
        Failure::usage(error)
    } else {
        error.into()
    }
}

/// What a person waiting sees: warnings and ended sessions as lines, and on a terminal a
/// spinner saying what the pipeline does while the branch is cut.
#[derive(Default)]
struct Spinner(std::sync::OnceLock<indicatif::ProgressBar>);

impl Spinner {
    fn show(&self, progress: Progress) {
        let message = match progress {
            Progress::Stale(stale) => {
                eprintln!("warning: {stale} (--allow-stale)");
                return;
            }
            Progress::CleanedUp { branch } => {
                eprintln!(
                    "warning: an earlier `branch create` or `reset` of {branch} did not finish \
                     (its process ended): what it left is dropped, the branch is made anew"
                );
                return;
            }
            Progress::EndedSessions { count, branch } => {
                say!(
                    "! ended {count} client session{} connected to {branch} (--force)",
                    if count == 1 { "" } else { "s" }
                );
                return;
            }
            Progress::WaitingForBoundary { connector } => {
                format!("waiting for {connector}'s pipeline to reach a commit boundary")
            }
            Progress::Copying { connector, branch } => {
                format!("copying the replica of {connector} into {branch}")
            }
        };
        if !std::io::stderr().is_terminal() {
            return;
        }
        self.0
            .get_or_init(|| {
                let spinner = indicatif::ProgressBar::new_spinner();
                spinner.enable_steady_tick(Duration::from_millis(120));
                spinner
            })
            .set_message(message);
    }

    fn clear(&self) {
        if let Some(spinner) = self.0.get() {
            spinner.finish_and_clear();
        }
    }
}
