//! The branch commands' work: create, reset, delete, the URL and the list.

use std::time::{Duration, Instant};

use super::cut::{cut, ready_to_branch, Order, Progress};
use super::decide::{self, Choice, DeleteStep};
use super::finish::{finish, Finished, Given, Handing};
use super::{store_error, BranchError};
use crate::bookkeeping::{Bookkeeping, Branch, BranchAccess, BranchLock, BranchState, Connector};
use crate::control::branch_access::{self, AccessRequest};
use crate::control::health::{self, Slot};
use crate::pg::{self, ConnInfo};
use crate::sink;
use crate::types::{BranchName, ConnectorName, Lsn};

/// What `branch create` asks for.
pub struct CreateRequest {
    pub name: BranchName,
    /// `None`: the active connector, else the only one.
    pub connector: Option<String>,
    pub access: AccessRequest,
    /// How long to wait for the pipeline to reach a source commit boundary.
    pub timeout: Duration,
    /// Create it also from a connector that is not current.
    pub allow_stale: bool,
}

/// A branch created or reset, ready.
pub struct Created {
    pub name: BranchName,
    pub connector: Connector,
    pub lsn: Lsn,
    /// How long replication paused for the copy.
    pub paused: Duration,
    pub started: Instant,
    pub finished: Finished,
    /// With `allow_stale`: why the branch does not hold the source as it is.
    pub stale: Option<String>,
}

/// Creates a branch: the name, the connector's currency and the role checked, the replica
/// cut and the branch finished. `progress` hears what a person waiting may want to see.
pub async fn create(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    request: CreateRequest,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Created, BranchError> {
    let name = request.name;
    let connector = resolve_connector(bookkeeping, request.connector.as_deref()).await?;
    let _making = making(bookkeeping, &name).await?;
    check_name(bookkeeping, store, &name, progress).await?;
    let stale = check_current(bookkeeping, &connector, request.allow_stale).await?;
    if let Some(stale) = &stale {
        progress(Progress::Stale(stale.clone()));
    }
    branch_access::check(store, &name, &request.access).await?;
    let started = Instant::now();
    let cutter = ready_to_branch(bookkeeping, store, &connector).await?;
    let (lsn, paused) = cut(
        bookkeeping,
        store,
        &connector,
        &name,
        Order {
            cutter,
            timeout: request.timeout,
            reset: None,
        },
        progress,
    )
    .await?;
    let finished = finish(
        bookkeeping,
        store,
        &connector,
        &name,
        (lsn, paused),
        Handing::New(request.access),
    )
    .await?;
    Ok(Created {
        name,
        connector,
        lsn,
        paused,
        started,
        finished,
        stale,
    })
}

/// Re-creates a branch from the replica's current state, keeping its name and its role.
pub async fn reset(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &str,
    force: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Created, BranchError> {
    let branch = recorded(bookkeeping, store, name).await?;
    let _making = making(bookkeeping, &branch.name).await?;
    let connector = match branch.connector_id {
        Some(id) => bookkeeping.connector_by_id(id).await?,
        None => None,
    }
    .ok_or_else(|| BranchError::ConnectorGone {
        name: branch.name.clone(),
        connector: branch.connector_name.clone(),
    })?;
    let cutter = ready_to_branch(bookkeeping, store, &connector).await?;
    let started = Instant::now();
    let being_cut = || BranchError::BeingCut {
        name: branch.name.clone(),
    };
    // Held until the branch is requested again: no pipeline claims it meanwhile.
    let lock = bookkeeping
        .try_lock_branch(&branch.name)
        .await?
        .ok_or_else(being_cut)?;
    // Holding both its locks: nobody makes or cuts it, whoever asked for it has ended.
    if matches!(branch.state, BranchState::Requested | BranchState::Cutting) {
        return Err(BranchError::Abandoned { name: branch.name });
    }
    drop_branch_database(store, &branch.name, force, progress).await?;
    let (lsn, paused) = match cut(
        bookkeeping,
        store,
        &connector,
        &branch.name,
        Order {
            cutter,
            timeout: Duration::from_secs(300),
            reset: Some(lock),
        },
        progress,
    )
    .await
    {
        Ok(cut) => cut,
        Err(e) => {
            // A failed copy forgets the branch: its own role goes with it.
            let _ = branch_access::drop_role_if_forgotten(
                bookkeeping,
                store,
                &branch.name,
                &branch.access,
            )
            .await;
            return Err(e);
        }
    };
    let mut finished = finish(
        bookkeeping,
        store,
        &connector,
        &branch.name,
        (lsn, paused),
        Handing::Kept(branch.access.clone()),
    )
    .await?;
    finished.given.password = bookkeeping.branch_password(&branch.name).await?;
    Ok(Created {
        name: branch.name,
        connector,
        lsn,
        paused,
        started,
        finished,
        stale: None,
    })
}

/// A branch deleted.
pub struct Deleted {
    pub name: BranchName,
}

/// Deletes a branch's database (with clients connected only with `force`), the role
/// tributary made for it, and its record.
pub async fn delete(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &str,
    force: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Deleted, BranchError> {
    let branch = recorded(bookkeeping, store, name).await?;
    let being_cut = || BranchError::BeingCut {
        name: branch.name.clone(),
    };
    // Held while deleting: a cut whose holder died is not taken up again meanwhile.
    let lock = bookkeeping.try_lock_branch(&branch.name).await?;
    match decide::delete_step(branch.state, lock.is_some()) {
        DeleteStep::DropDatabase => {
            drop_branch_database(store, &branch.name, force, progress).await?;
        }
        DeleteStep::Withdraw => {
            if !bookkeeping.withdraw_branch(&branch.name).await? {
                return Err(being_cut());
            }
        }
        DeleteStep::BeingCut => return Err(being_cut()),
        DeleteStep::Forget => {}
    }
    // Only a role tributary made for the branch; never an --owner role.
    if let BranchAccess::OwnRole(role) = &branch.access {
        branch_access::drop_role(store, role).await?;
    }
    bookkeeping.forget_branch(&branch.name).await?;
    Ok(Deleted { name: branch.name })
}

/// What a branch's URL is made of.
pub struct UrlFacts {
    pub branch: Branch,
    pub lsn: Lsn,
    pub given: Given,
}

/// A ready branch's URL, with its role's password.
pub async fn url(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &str,
) -> Result<UrlFacts, BranchError> {
    let branch = recorded(bookkeeping, store, name).await?;
    let lsn = match (branch.state, branch.lsn) {
        (BranchState::Ready, Some(lsn)) => lsn,
        (state, _) => {
            return Err(BranchError::NoUrlYet {
                name: branch.name,
                state: state.as_str(),
            })
        }
    };
    let password = bookkeeping.branch_password(&branch.name).await?;
    let given = Given {
        access: branch.access.clone(),
        password,
    };
    Ok(UrlFacts { branch, lsn, given })
}

/// A recorded branch and its database's current size (`None` when it does not exist).
pub struct Listed {
    pub branch: Branch,
    pub size_bytes: Option<i64>,
}

pub async fn list(bookkeeping: &Bookkeeping, store: &ConnInfo) -> Result<Vec<Listed>, BranchError> {
    let branches = bookkeeping.branches(None).await?;
    let control = pg::connect(store).await?;
    let mut listed = Vec::with_capacity(branches.len());
    for branch in branches {
        // A database dropped between the look and the size has none.
        let size_bytes = control
            .query_opt(
                "SELECT pg_catalog.pg_database_size(oid) FROM pg_catalog.pg_database
                  WHERE datname = $1",
                &[&branch.name.as_str()],
            )
            .await
            .ok()
            .flatten()
            .map(|row| row.get(0));
        listed.push(Listed { branch, size_bytes });
    }
    Ok(listed)
}

/// `--connector`, else the active connector, else the only one.
async fn resolve_connector(
    bookkeeping: &Bookkeeping,
    name: Option<&str>,
) -> Result<Connector, BranchError> {
    if let Some(name) = name {
        let name = ConnectorName::new(name.to_owned())?;
        return bookkeeping
            .connector(&name)
            .await?
            .ok_or(BranchError::NoSuchConnector { name });
    }
    let mut connectors = bookkeeping.connectors().await?;
    let active: Vec<bool> = connectors.iter().map(|c| c.active).collect();
    match decide::default_connector(&active) {
        Choice::Chosen(i) => Ok(connectors.swap_remove(i)),
        Choice::NoConnectors => Err(BranchError::NoConnectors),
        Choice::NoneActive => Err(BranchError::NoneActive),
    }
}

/// Refuses a connector a branch of which would not be current (`control/health.rs`),
/// unless `allow_stale`; then returns how stale it is.
async fn check_current(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    allow_stale: bool,
) -> Result<Option<String>, BranchError> {
    let leases = bookkeeping.leases().await?;
    let health = health::assess(bookkeeping, connector, &leases, &Slot::Unknown)
        .await?
        .health;
    let Some(stale) = health::staleness(connector.name.as_str(), &health) else {
        return Ok(None);
    };
    if allow_stale {
        return Ok(Some(stale));
    }
    let next = health
        .problem()
        .map_or_else(String::new, |p| format!(" Next step: {}.", p.next_step));
    Err(BranchError::Stale { stale, next })
}

/// Refuses the names of the control, replica and template databases and names taken by a
/// branch or any other database. A branch of the name that a command which died left
/// unfinished is cleaned up instead (`decide::abandoned`): its database, the role made for
/// it and its record dropped. The caller holds the name's making lock.
async fn check_name(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &BranchName,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), BranchError> {
    if decide::reserved(name.as_str(), &store.dbname) {
        return Err(BranchError::Reserved { name: name.clone() });
    }
    if let Some(branch) = bookkeeping.branch(name).await? {
        let lock = bookkeeping.try_lock_branch(name).await?;
        if !decide::abandoned(branch.state, lock.is_some()) {
            return Err(match branch.state {
                BranchState::Ready => BranchError::Exists { name: name.clone() },
                _ => BranchError::BeingCut { name: name.clone() },
            });
        }
        // Holding its lock: no pipeline claims or cuts it meanwhile.
        sink::drop_database(store, name.as_str(), true).await?;
        if let BranchAccess::OwnRole(role) = &branch.access {
            branch_access::drop_role(store, role).await?;
        }
        bookkeeping.forget_branch(name).await?;
        progress(Progress::CleanedUp {
            branch: name.clone(),
        });
    }
    if database_exists(store, name.as_str()).await? {
        return Err(BranchError::DatabaseExists { name: name.clone() });
    }
    Ok(())
}

/// The making lock of the branch `name`, held by whoever creates or resets it until it is
/// ready.
async fn making(bookkeeping: &Bookkeeping, name: &BranchName) -> Result<BranchLock, BranchError> {
    bookkeeping
        .try_lock_branch_making(name)
        .await?
        .ok_or_else(|| BranchError::BeingCut { name: name.clone() })
}

async fn database_exists(store: &ConnInfo, name: &str) -> Result<bool, BranchError> {
    let control = pg::connect(store).await?;
    Ok(control
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(store_error("looking for the database"))?
        .is_some())
}

/// The recorded branch called `name`; the replica and control databases are never one.
async fn recorded(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &str,
) -> Result<Branch, BranchError> {
    let name = BranchName::new(name.to_owned())?;
    let protected = name.as_str() == store.dbname
        || bookkeeping
            .connectors()
            .await?
            .iter()
            .any(|c| c.replica_database == name.as_str());
    match bookkeeping.branch(&name).await? {
        Some(branch) if !protected => Ok(branch),
        _ => Err(BranchError::NoSuchBranch { name }),
    }
}

/// Drops the branch's database; with clients connected only with `force`, which ends
/// their sessions and says how many.
async fn drop_branch_database(
    store: &ConnInfo,
    name: &BranchName,
    force: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), BranchError> {
    let control = pg::connect(store).await?;
    let pids: Vec<i32> = control
        .query(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = $1 ORDER BY pid",
            &[&name.as_str()],
        )
        .await
        .map_err(store_error("looking for the branch's client sessions"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !pids.is_empty() && !force {
        return Err(BranchError::SessionsConnected {
            name: name.clone(),
            pids,
        });
    }
    // Without --force a client that connected since the look still makes this fail.
    sink::drop_database(store, name.as_str(), force).await?;
    if !pids.is_empty() {
        progress(Progress::EndedSessions {
            count: pids.len(),
            branch: name.clone(),
        });
    }
    Ok(())
}
