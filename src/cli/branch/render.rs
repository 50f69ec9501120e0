//! What `branch` commands print: a branch's URL and who it logs in as, the warnings of a
//! new branch, and the list.

use bytesize::ByteSize;
use serde::Serialize;

use crate::bookkeeping::BranchAccess;
use crate::cli::render::Format;
use crate::cli::Failure;
use crate::control::branch_access;
use crate::control::branches::{Created, Finished, Given, Listed};
use crate::pg::{ConnInfo, ShowPassword};
use crate::types::{BranchName, Lsn, RoleName};

/// The warnings of a finished branch: after the text on standard output, or on standard
/// error beside JSON, which must stay one document.
pub(super) fn report_finished(finished: &Finished, format: Format) {
    use std::io::Write as _;
    let missing = &finished.missing;
    let mut warnings: Vec<String> = finished.advice.clone();
    if missing.large_objects > 0 {
        warnings.push(format!(
            "the source has {} large object{}, which are not replicated: the branch has none \
             (lo_get and lo_open fail on their OIDs)",
            missing.large_objects,
            if missing.large_objects == 1 { "" } else { "s" }
        ));
    }
    for warning in warnings {
        if format == Format::Json {
            let _ = writeln!(std::io::stderr(), "warning: {warning}");
        } else {
            say!("  warning: {warning}");
        }
    }
}

/// What `branch create --format json` and `branch url` print: the fields the README documents
/// (`name`, `connector`, `database`, `lsn`, `url`), and who the URL logs in as.
#[derive(Serialize)]
pub(super) struct UrlView {
    name: String,
    connector: String,
    database: String,
    lsn: String,
    /// With the password of the branch's own role; without one for an `--owner` role; the
    /// store's role, password masked, for a branch made before branches had roles.
    url: String,
    /// The role the URL logs in as.
    role: String,
    /// `own_role` (created for the branch, dropped with it), `owner` (`--owner`) or
    /// `store_role` (made before branches had roles of their own).
    access: &'static str,
    /// With `--allow-stale`: why the branch does not hold the source as it is, and as of
    /// when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    stale: Option<String>,
    #[serde(skip)]
    info: ConnInfo,
    #[serde(skip)]
    given: BranchAccess,
    /// The name as one word of a shell command, for hints.
    #[serde(skip)]
    word: String,
}

impl UrlView {
    /// The view of a branch cut with `--allow-stale` from a connector that was not current.
    pub(super) fn stale(self, stale: Option<String>) -> UrlView {
        UrlView { stale, ..self }
    }

    pub(super) fn of(
        store: &ConnInfo,
        name: &BranchName,
        connector: &str,
        lsn: Lsn,
        given: &Given,
    ) -> UrlView {
        let info = branch_access::branch_url(store, name, &given.access, given.password.clone());
        // Never the store's password unasked.
        let shown = match given.access {
            BranchAccess::StoreRole => ShowPassword::Masked,
            _ => ShowPassword::Shown,
        };
        UrlView {
            name: name.to_string(),
            connector: connector.to_owned(),
            database: name.to_string(),
            lsn: lsn.to_string(),
            url: info.url(shown),
            role: info.user.clone(),
            access: access_word(&given.access),
            stale: None,
            info,
            given: given.access.clone(),
            word: name.shell_word(),
        }
    }
}

pub(super) fn report(view: &UrlView, created: &Created, shown: ShowPassword) {
    say!(
        "✓ Branch {} of connector {} at source LSN {}, ready in {:.1} s (replication \
         paused {:.1} s)",
        view.name,
        created.connector.name,
        created.lsn,
        created.started.elapsed().as_secs_f64(),
        created.paused.as_secs_f64()
    );
    say!("  url:  {}", view.info.url(shown));
    say!(
        "  psql: psql '{}'",
        view.info.url(match shown {
            ShowPassword::Masked => ShowPassword::Omitted,
            other => other,
        })
    );
    say_access(view);
}

fn access_word(access: &BranchAccess) -> &'static str {
    match access {
        BranchAccess::OwnRole(_) => "own_role",
        BranchAccess::Owner(_) => "owner",
        BranchAccess::StoreRole => "store_role",
    }
}

/// `branch url`: the URL and who it logs in as, or the JSON object.
pub(super) fn print_url(view: &UrlView, format: Format) -> Result<(), Failure> {
    if format == Format::Json {
        say!("{}", serde_json::to_string_pretty(view)?);
    } else {
        say!("{}", view.url);
        say_access(view);
    }
    Ok(())
}

/// Who the URL logs in as, and what that means.
fn say_access(view: &UrlView) {
    match &view.given {
        BranchAccess::OwnRole(role) => say!(
            "  role: {role}, made for this branch: it owns the branch and reaches no other \
             database of tributary's; `tributary branch url {}` prints this URL again",
            view.word
        ),
        BranchAccess::Owner(role) => say!(
            "  role: {role} (--owner): tributary does not know its password, so the URL has none"
        ),
        BranchAccess::StoreRole => say!(
            "  role: the branch store's own, which reaches every replica and branch: this branch \
             was made before branches had roles of their own; delete it and create it again \
             to give it one"
        ),
    }
}
/// The contract of `branch list --format json`: one object per branch.
#[derive(Serialize)]
struct BranchView {
    name: String,
    connector: String,
    database: String,
    state: &'static str,
    /// The source commit position the branch's data represents.
    lsn: Option<String>,
    created_at: Option<String>,
    age_seconds: Option<i64>,
    /// The database's current size; `null` when it does not exist.
    size_bytes: Option<i64>,
    /// How long replication paused for the copy.
    pause_ms: Option<u128>,
    error: Option<String>,
    /// The role its URL logs in as; `null` for a branch made before branches had roles of
    /// their own (the store's role). Never a password: `branch url` prints that.
    role: Option<String>,
    /// `own_role`, `owner` or `store_role`, as in `branch url`.
    access: &'static str,
}

pub(super) fn list(listed: Vec<Listed>, format: Format) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    let views: Vec<BranchView> = listed
        .into_iter()
        .map(
            |Listed {
                 branch: b,
                 size_bytes,
             }| BranchView {
                name: b.name.to_string(),
                connector: b.connector_name.clone(),
                database: b.name.to_string(),
                state: b.state.as_str(),
                lsn: b.lsn.map(|l| l.to_string()),
                created_at: b.created_at.map(|t| t.to_rfc3339()),
                age_seconds: b.created_at.map(|t| (now - t).num_seconds()),
                size_bytes,
                pause_ms: b.pause.map(|p| p.as_millis()),
                error: b.error,
                role: b.access.role().map(RoleName::to_string),
                access: access_word(&b.access),
            },
        )
        .collect();
    if format == Format::Json {
        say!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        say!("no branches; create one with `tributary branch create <name>`");
        return Ok(());
    }
    say!(
        "{:<24} {:<20} {:<9} {:<14} {:>10} {:>10}  {}",
        "NAME",
        "CONNECTOR",
        "STATE",
        "LSN",
        "AGE",
        "SIZE",
        "ROLE"
    );
    for v in &views {
        say!(
            "{:<24} {:<20} {:<9} {:<14} {:>10} {:>10}  {}",
            v.name,
            v.connector,
            v.state,
            v.lsn.as_deref().unwrap_or("-"),
            v.age_seconds.map_or_else(|| "-".into(), age),
            v.size_bytes
                .and_then(|b| u64::try_from(b).ok())
                .map_or_else(|| "-".into(), |b| ByteSize(b).display().iec().to_string()),
            match (&v.role, v.access) {
                (Some(role), "owner") => format!("{role} (--owner)"),
                (Some(role), _) => role.clone(),
                (None, _) => "(the store's: made before branch roles)".to_owned(),
            },
        );
    }
    Ok(())
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}
