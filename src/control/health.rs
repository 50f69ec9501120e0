//! A connector's health: one verdict, from facts, that every place showing or relying on a
//! connector's condition uses, so that none shows it better than it is.
//!
//! ```text
//!  Facts: recorded state, enabled, lease (held? holder connected?), last error,
//!         slot (when the source was asked), the apply lag the daemon last recorded
//!    ──judge──► Health: verdict (streaming | setting up | disabled | unhealthy: reason,
//!               next step), the state to show, the apply lag if current, freshness
//!
//!  status          shown state and reason; exit 0 only when every enabled connector is
//!                  healthy
//!  connector list  shown state; READY = the verdict is `streaming`
//!  branch create   refuses unless `streaming` (a branch would be stale), or --allow-stale
//!  /readyz         503 when a connector this daemon holds is unhealthy
//!  /metrics        tributary_connector_unowned: an enabled connector without a live daemon
//! ```
//!
//! The recorded state is the pipeline's stage, written by the daemon that runs it. A daemon
//! that stops (SIGTERM) or dies leaves it as it was: the row still says `streaming`. So the
//! state alone never makes a connector healthy; a live daemon must hold its lease too (not
//! expired, and its holder's bookkeeping session still there: `bookkeeping/leases.rs`).
//! Likewise the apply lag the daemon records is current only while it streams; otherwise
//! it is unknown, and what is known is since when nothing has been applied
//! ([`Freshness`]), which grows with every look.

use chrono::{DateTime, Utc};

use crate::bookkeeping::{ApplyLag, Bookkeeping, Connector, Lease, TableStatus, TableSyncState};
use crate::source::slot::SlotInfo;
use crate::state::PipelineState;

/// Who runs the connector, from its lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// A daemon (`host:pid`) holds the lease and is connected to the bookkeeping; it took
    /// it `held_for` seconds ago, and has recorded a state since (`state_recorded`; until
    /// then the recorded state is its predecessor's and its pipeline is starting).
    Live {
        daemon: String,
        held_for: f64,
        state_recorded: bool,
    },
    /// The lease has not expired but its holder's bookkeeping session is gone: the daemon
    /// crashed or was killed.
    Gone(String),
    /// No lease is held: no daemon runs it (none runs, or none took it yet).
    Nobody,
}

impl Owner {
    pub fn from_lease(lease: Option<&Lease>) -> Owner {
        match lease {
            Some(l) if l.is_live() => Owner::Live {
                daemon: l.owner.clone(),
                held_for: l.held_for,
                state_recorded: l.state_recorded,
            },
            Some(l) if l.is_held() => Owner::Gone(l.owner.clone()),
            _ => Owner::Nobody,
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, Owner::Live { .. })
    }

    /// The holder of an unexpired lease, live or gone.
    pub fn name(&self) -> Option<&str> {
        match self {
            Owner::Live { daemon: name, .. } | Owner::Gone(name) => Some(name),
            Owner::Nobody => None,
        }
    }
}

/// `tributary_connector_unowned`: `Some(true)` when the connector is enabled and no live
/// daemon holds its lease (nothing applies its changes, and nothing else exports its
/// series), `Some(false)` when one does, `None` when it is disabled (not run on purpose:
/// no series).
pub fn unowned(enabled: bool, owner: &Owner) -> Option<bool> {
    enabled.then(|| !owner.is_live())
}

/// What the source says about the connector's slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// Not asked (`/readyz`, `branch create`), or the source did not answer.
    Unknown,
    Missing,
    /// Invalidated by the source: how it says so, and what keeps it from recurring.
    Invalidated {
        how: String,
        advice: &'static str,
    },
    Valid,
}

impl Slot {
    /// From the source's answer (`None`: it has no such slot).
    pub fn from_info(info: Option<&SlotInfo>) -> Slot {
        match info.map(SlotInfo::invalidation) {
            None => Slot::Missing,
            Some(Some(i)) => Slot::Invalidated {
                how: i.to_string(),
                advice: i.cause.advice(),
            },
            Some(None) => Slot::Valid,
        }
    }
}

/// Since when the replica has been known to hold everything: the daemon measured apply
/// lag `L` at time `T`, so the replica then held every source transaction committed
/// before `T - L`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freshness {
    /// That time, `T - L`.
    pub current_as_of: DateTime<Utc>,
    /// How long ago, by the bookkeeping server's clock: `L` plus the measurement's age.
    pub age_seconds: f64,
}

impl Freshness {
    pub fn from_lag(lag: &ApplyLag) -> Freshness {
        let at = lag.measured_at - lag.seconds;
        // The bookkeeping's timestamps are well within chrono's range; the epoch otherwise.
        let current_as_of =
            DateTime::from_timestamp_micros((at * 1e6) as i64).unwrap_or(DateTime::UNIX_EPOCH);
        Freshness {
            current_as_of,
            age_seconds: lag.seconds + lag.age_seconds,
        }
    }
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:.0} s ago)",
            self.current_as_of.format("%Y-%m-%d %H:%M:%S UTC"),
            self.age_seconds
        )
    }
}

/// The connector's tables held out of the stream (`failed`): the replica no longer equals
/// the source there, whatever the pipeline's state says.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub count: usize,
    /// The first by name, with its problem and next step as the daemon recorded them.
    pub first: String,
    pub problem: Option<String>,
    pub next_step: Option<String>,
}

impl HeldOut {
    /// From the bookkeeping's tables; `None` when none is held out.
    pub fn of(tables: &[TableStatus]) -> Option<HeldOut> {
        let mut failed = tables.iter().filter(|t| t.state == TableSyncState::Failed);
        let first = failed.next()?;
        Some(HeldOut {
            count: 1 + failed.count(),
            first: first.table.to_string(),
            problem: first.problem.clone(),
            next_step: first.next_step.clone(),
        })
    }
}

/// What is known about one connector.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub name: &'a str,
    pub state: PipelineState,
    pub enabled: bool,
    /// `connector retry-setup --resnapshot` was asked and the snapshot has not started.
    pub resnapshot_requested: bool,
    pub last_error: Option<&'a str>,
    pub next_step: Option<&'a str>,
    pub owner: &'a Owner,
    pub slot: &'a Slot,
    /// The apply lag its daemon last recorded.
    pub lag: Option<ApplyLag>,
    pub held_out: Option<&'a HeldOut>,
}

impl<'a> Facts<'a> {
    pub fn of(
        connector: &'a Connector,
        owner: &'a Owner,
        slot: &'a Slot,
        lag: Option<ApplyLag>,
        held_out: Option<&'a HeldOut>,
    ) -> Facts<'a> {
        Facts {
            name: connector.name.as_str(),
            state: connector.state,
            enabled: connector.enabled,
            resnapshot_requested: connector.resnapshot_requested,
            last_error: connector.last_error.as_deref(),
            next_step: connector.next_step.as_deref(),
            owner,
            slot,
            lag,
            held_out,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Streaming under a live daemon: the replica follows the source, branches are current.
    Streaming,
    /// Being set up by a live daemon (pending, validating, snapshotting, or a new snapshot
    /// asked for): on its way to streaming; no branch yet.
    SettingUp,
    /// Disabled (an interrupted `connector delete`): not run on purpose, not judged.
    Disabled,
    Unhealthy(Problem),
}

/// Why a connector is not healthy, and what the operator does about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub reason: String,
    pub next_step: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub verdict: Verdict,
    /// The state to show: the recorded one, qualified when it is not what happens
    /// (`streaming (no daemon)`, `streaming (retrying)`).
    pub shown_state: String,
    /// The apply lag, only while it is current (a live daemon streams the connector).
    pub apply_lag_seconds: Option<f64>,
    /// Since when the replica is known to hold everything; `None` when never measured.
    pub freshness: Option<Freshness>,
}

impl Health {
    /// `Some(true)` streaming or setting up under a live daemon, `Some(false)` unhealthy,
    /// `None` disabled.
    pub fn healthy(&self) -> Option<bool> {
        match self.verdict {
            Verdict::Streaming | Verdict::SettingUp => Some(true),
            Verdict::Disabled => None,
            Verdict::Unhealthy(_) => Some(false),
        }
    }

    /// Whether a branch cut now holds the source as it is (less the apply lag).
    pub fn is_current(&self) -> bool {
        self.verdict == Verdict::Streaming
    }

    pub fn problem(&self) -> Option<&Problem> {
        match &self.verdict {
            Verdict::Unhealthy(problem) => Some(problem),
            _ => None,
        }
    }
}

/// A connector's health with the facts read for it.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub owner: Owner,
    pub lag: Option<ApplyLag>,
    pub health: Health,
}

/// Reads what the bookkeeping knows about `connector` besides its row (its lease from
/// `leases`, its last apply lag) and judges it, with `slot` as the caller found it.
pub async fn assess(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    leases: &std::collections::HashMap<crate::types::ConnectorId, Lease>,
    slot: &Slot,
) -> Result<Assessment, crate::bookkeeping::Error> {
    let owner = Owner::from_lease(leases.get(&connector.id));
    let lag = bookkeeping.apply_lag(connector.id).await?;
    let held_out = HeldOut::of(&bookkeeping.tables(connector.id).await?);
    let health = judge(&Facts::of(connector, &owner, slot, lag, held_out.as_ref()));
    Ok(Assessment { owner, lag, health })
}

/// Why a branch cut from the connector now would not be current, and as of when it would
/// hold the source; `None` when it would be (streaming under a live daemon). `branch
/// create` refuses such a connector unless `--allow-stale`.
pub fn staleness(name: &str, health: &Health) -> Option<String> {
    let why = match &health.verdict {
        Verdict::Streaming => return None,
        Verdict::SettingUp => format!("it is being set up ({})", health.shown_state),
        Verdict::Disabled => "it is disabled".to_owned(),
        Verdict::Unhealthy(problem) => problem.reason.clone(),
    };
    let as_of = health.freshness.map_or_else(
        || "from a time unknown (no apply lag was ever recorded)".to_owned(),
        |f| format!("at least as of {f}"),
    );
    Some(format!(
        "connector {name} is not streaming under a live daemon ({why}): a branch would hold \
         the source {as_of}"
    ))
}

/// The connectors that are not healthy, of `(name, health)`; disabled ones are not judged.
/// `tributary status` exits 0 only when there are none.
pub fn unhealthy<'h>(healths: impl IntoIterator<Item = (&'h str, &'h Health)>) -> Vec<&'h str> {
    healths
        .into_iter()
        .filter(|(_, h)| h.healthy() == Some(false))
        .map(|(name, _)| name)
        .collect()
}

/// The verdict. The order of the checks is the order of what the operator must fix first:
/// a definite error outlives a daemon restart, no daemon means nothing else can change, a
/// lost slot makes a streaming pipeline fail at its next read (during setup the pipeline
/// replaces it, and records an error if it cannot), a table held out of the stream stays
/// out until the operator acts.
pub fn judge(facts: &Facts<'_>) -> Health {
    let Facts {
        name, state, owner, ..
    } = *facts;
    let freshness = facts.lag.as_ref().map(Freshness::from_lag);
    let live = owner.is_live();
    let problem =
        |reason: String, next_step: String| Verdict::Unhealthy(Problem { reason, next_step });
    let verdict = if !facts.enabled {
        Verdict::Disabled
    } else if state == PipelineState::Failed {
        problem(
            format!(
                "stopped by an error: {}",
                facts.last_error.unwrap_or("(not recorded)")
            ),
            facts.next_step.map_or_else(
                || format!("fix the cause, then run `tributary connector retry-setup {name}`"),
                str::to_owned,
            ),
        )
    } else if !live {
        let who = match owner {
            Owner::Gone(daemon) => {
                format!("its daemon {daemon} is gone (its bookkeeping session ended)")
            }
            _ => "no daemon runs it".to_owned(),
        };
        problem(
            format!("{who}: nothing is applied"),
            "start the daemon (`tributary run`); its log says why it stopped".to_owned(),
        )
    } else if let (Slot::Missing, PipelineState::Streaming) = (facts.slot, state) {
        problem(
            "its replication slot is missing on the source".to_owned(),
            format!("run `tributary connector retry-setup {name}` for a new snapshot"),
        )
    } else if let (Slot::Invalidated { how, advice }, PipelineState::Streaming) =
        (facts.slot, state)
    {
        problem(
            format!("the source invalidated its replication slot ({how})"),
            format!(
                "run `tributary connector retry-setup {name}` for a new snapshot; then {advice}"
            ),
        )
    } else if let Some(error) = facts.last_error {
        problem(
            format!("retrying after an error: {error}"),
            facts.next_step.map_or_else(
                || "none while it retries by itself; act on the error if it stays".to_owned(),
                str::to_owned,
            ),
        )
    } else if let Some(held) = facts.held_out {
        let more = match held.count {
            1 => String::new(),
            n => format!(
                " ({} more: `tributary connector tables {name}` lists them)",
                n - 1
            ),
        };
        problem(
            format!(
                "table {} is held out of the stream{more}: {}",
                held.first,
                held.problem.as_deref().unwrap_or("(cause not recorded)")
            ),
            held.next_step.clone().unwrap_or_else(|| {
                format!(
                    "fix the cause, then run `tributary connector resync {name} --table {}`",
                    held.first
                )
            }),
        )
    } else {
        match state {
            PipelineState::Streaming
                if !facts.resnapshot_requested
                    && matches!(
                        owner,
                        Owner::Live {
                            state_recorded: true,
                            ..
                        }
                    ) =>
            {
                Verdict::Streaming
            }
            PipelineState::Streaming
            | PipelineState::Pending
            | PipelineState::Validating
            | PipelineState::Snapshotting => Verdict::SettingUp,
            PipelineState::Stopped | PipelineState::Failed => problem(
                "stopped although enabled".to_owned(),
                format!("run `tributary connector retry-setup {name}`"),
            ),
        }
    };
    let shown_state = match (&verdict, facts.enabled) {
        (_, false) if state != PipelineState::Stopped => format!("{state} (disabled)"),
        (_, true) if !live => format!("{state} (no daemon)"),
        (Verdict::SettingUp, true)
            if matches!(
                owner,
                Owner::Live {
                    state_recorded: false,
                    ..
                }
            ) =>
        {
            format!("{state} (starting)")
        }
        (Verdict::Unhealthy(_), true)
            if facts.last_error.is_some() && state != PipelineState::Failed =>
        {
            format!("{state} (retrying)")
        }
        (Verdict::Unhealthy(_), true) if facts.last_error.is_none() => match facts.held_out {
            Some(HeldOut { count: 1, .. }) => format!("{state} (1 table held out)"),
            Some(held) => format!("{state} ({} tables held out)", held.count),
            None => state.to_string(),
        },
        _ => state.to_string(),
    };
    // A lag measured before this daemon took the lease is its predecessor's last word.
    let apply_lag_seconds = match (&verdict, owner) {
        (Verdict::Streaming, Owner::Live { held_for, .. }) => facts
            .lag
            .filter(|l| l.age_seconds <= *held_for)
            .map(|l| l.seconds),
        _ => None,
    };
    Health {
        verdict,
        shown_state,
        apply_lag_seconds,
        freshness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineState::*;

    const LAG: ApplyLag = ApplyLag {
        seconds: 2.0,
        age_seconds: 40.0,
        changes: 7,
        measured_at: 1_000_000_000.0,
    };

    struct Case {
        state: PipelineState,
        enabled: bool,
        error: Option<&'static str>,
        owner: Owner,
        slot: Slot,
        held_out: Option<HeldOut>,
        /// Expected: healthy, shown state, reason (start), next step (start), lag shown.
        healthy: Option<bool>,
        shown: &'static str,
        reason: &'static str,
        next: &'static str,
        lag: Option<f64>,
    }

    /// A daemon that took the lease before the lag was measured (`LAG`'s age is 40 s).
    fn live() -> Owner {
        Owner::Live {
            daemon: "host:1".into(),
            held_for: 60.0,
            state_recorded: true,
        }
    }

    /// A daemon that took the lease a moment ago; its pipeline has recorded no state yet.
    fn starting() -> Owner {
        Owner::Live {
            daemon: "host:2".into(),
            held_for: 0.1,
            state_recorded: false,
        }
    }

    fn held_out(count: usize) -> HeldOut {
        HeldOut {
            count,
            first: "app.log".into(),
            problem: Some("wal2json skipped a change".into()),
            next_step: Some("run `tributary connector resync shop --table app.log`".into()),
        }
    }

    fn case(state: PipelineState, owner: Owner) -> Case {
        Case {
            state,
            enabled: true,
            error: None,
            owner,
            slot: Slot::Unknown,
            held_out: None,
            healthy: Some(true),
            shown: state.as_str(),
            reason: "",
            next: "",
            lag: None,
        }
    }

    #[test]
    fn verdicts() {
        let invalidated = Slot::Invalidated {
            how: "wal_status = lost".into(),
            advice: "raise max_slot_wal_keep_size",
        };
        let cases = [
            Case {
                lag: Some(2.0),
                ..case(Streaming, live())
            },
            Case {
                slot: Slot::Valid,
                lag: Some(2.0),
                ..case(Streaming, live())
            },
            // The reported case: a clean SIGTERM released the lease; the row says streaming.
            Case {
                healthy: Some(false),
                shown: "streaming (no daemon)",
                reason: "no daemon runs it: nothing is applied",
                next: "start the daemon (`tributary run`)",
                ..case(Streaming, Owner::Nobody)
            },
            // Killed: the lease has not expired, its holder's session is gone.
            Case {
                healthy: Some(false),
                shown: "streaming (no daemon)",
                reason: "its daemon host:9 is gone (its bookkeeping session ended)",
                next: "start the daemon",
                ..case(Streaming, Owner::Gone("host:9".into()))
            },
            Case {
                healthy: Some(false),
                reason: "stopped by an error: boom",
                next: "do this",
                error: Some("boom"),
                ..case(Failed, live())
            },
            // Failed beats no daemon: restarting one does not fix it.
            Case {
                healthy: Some(false),
                shown: "failed (no daemon)",
                reason: "stopped by an error: boom",
                error: Some("boom"),
                next: "do this",
                ..case(Failed, Owner::Nobody)
            },
            Case {
                healthy: Some(false),
                shown: "streaming (retrying)",
                reason: "retrying after an error: source down",
                error: Some("source down"),
                next: "do this",
                ..case(Streaming, live())
            },
            Case {
                healthy: Some(false),
                reason: "its replication slot is missing on the source",
                next: "run `tributary connector retry-setup shop` for a new snapshot",
                slot: Slot::Missing,
                ..case(Streaming, live())
            },
            // Before the first snapshot there is no slot yet; setup replaces a lost one.
            Case {
                slot: Slot::Missing,
                ..case(Pending, live())
            },
            Case {
                slot: Slot::Invalidated {
                    how: "wal_status = lost".into(),
                    advice: "",
                },
                ..case(Snapshotting, live())
            },
            Case {
                healthy: Some(false),
                reason: "the source invalidated its replication slot (wal_status = lost)",
                next: "run `tributary connector retry-setup shop` for a new snapshot; then \
                       raise max_slot_wal_keep_size",
                slot: invalidated,
                ..case(Streaming, live())
            },
            // A restarted daemon took the lease; `streaming` is its predecessor's word.
            Case {
                shown: "streaming (starting)",
                ..case(Streaming, starting())
            },
            Case {
                shown: "snapshotting (starting)",
                ..case(Snapshotting, starting())
            },
            case(Snapshotting, live()),
            case(Validating, live()),
            case(Pending, live()),
            Case {
                healthy: Some(false),
                shown: "pending (no daemon)",
                reason: "no daemon runs it",
                ..case(Pending, Owner::Nobody)
            },
            Case {
                enabled: false,
                healthy: None,
                ..case(Stopped, Owner::Nobody)
            },
            Case {
                enabled: false,
                healthy: None,
                shown: "streaming (disabled)",
                ..case(Streaming, live())
            },
            Case {
                healthy: Some(false),
                reason: "stopped although enabled",
                ..case(Stopped, live())
            },
            // One table held out: the others stream, but the replica is not the source.
            Case {
                healthy: Some(false),
                shown: "streaming (1 table held out)",
                reason: "table app.log is held out of the stream: wal2json skipped a change",
                next: "run `tributary connector resync shop --table app.log`",
                held_out: Some(held_out(1)),
                ..case(Streaming, live())
            },
            Case {
                healthy: Some(false),
                shown: "streaming (3 tables held out)",
                reason: "table app.log is held out of the stream (2 more: `tributary connector \
                         tables shop` lists them): wal2json",
                held_out: Some(held_out(3)),
                ..case(Streaming, live())
            },
            // An error outranks it: the error is what stops everything.
            Case {
                healthy: Some(false),
                reason: "stopped by an error: boom",
                error: Some("boom"),
                next: "do this",
                held_out: Some(held_out(1)),
                ..case(Failed, live())
            },
        ];
        for c in cases {
            let facts = Facts {
                name: "shop",
                state: c.state,
                enabled: c.enabled,
                resnapshot_requested: false,
                last_error: c.error,
                next_step: c.error.map(|_| "do this"),
                owner: &c.owner,
                slot: &c.slot,
                lag: Some(LAG),
                held_out: c.held_out.as_ref(),
            };
            let health = judge(&facts);
            let context = format!("{:?} {:?} {:?}: {health:?}", c.state, c.owner, c.slot);
            assert_eq!(health.healthy(), c.healthy, "{context}");
            assert_eq!(health.shown_state, c.shown, "{context}");
            assert_eq!(health.apply_lag_seconds, c.lag, "{context}");
            assert_eq!(health.is_current(), c.lag.is_some(), "{context}");
            let (reason, next) = health
                .problem()
                .map_or(("", ""), |p| (p.reason.as_str(), p.next_step.as_str()));
            assert!(reason.starts_with(c.reason), "{context}");
            assert!(next.starts_with(c.next), "{context}");
            assert_eq!(reason.is_empty(), c.healthy != Some(false), "{context}");
        }
    }

    #[test]
    fn a_connector_is_unowned_when_enabled_and_no_live_daemon_holds_it() {
        let gone = Owner::Gone("host:9".into());
        for (enabled, owner, expected) in [
            (true, live(), Some(false)),
            (true, starting(), Some(false)),
            (true, gone.clone(), Some(true)),
            (true, Owner::Nobody, Some(true)),
            (false, live(), None),
            (false, gone, None),
            (false, Owner::Nobody, None),
        ] {
            assert_eq!(unowned(enabled, &owner), expected, "{enabled} {owner:?}");
        }
    }

    #[test]
    fn a_branch_is_stale_unless_streaming_under_a_live_daemon() {
        let facts = |state, owner| Facts {
            name: "shop",
            state,
            enabled: true,
            resnapshot_requested: false,
            last_error: None,
            next_step: None,
            owner,
            slot: &Slot::Unknown,
            lag: Some(LAG),
            held_out: None,
        };
        let (live, nobody) = (live(), Owner::Nobody);
        assert_eq!(staleness("shop", &judge(&facts(Streaming, &live))), None);
        assert_eq!(
            staleness("shop", &judge(&facts(Streaming, &nobody))).as_deref(),
            Some(
                "connector shop is not streaming under a live daemon (no daemon runs it: \
                 nothing is applied): a branch would hold the source at least as of 2001-09-09 \
                 01:46:38 UTC (42 s ago)"
            )
        );
        let snapshotting = judge(&Facts {
            lag: None,
            ..facts(Snapshotting, &live)
        });
        assert_eq!(
            staleness("shop", &snapshotting).as_deref(),
            Some(
                "connector shop is not streaming under a live daemon (it is being set up \
                 (snapshotting)): a branch would hold the source from a time unknown (no \
                 apply lag was ever recorded)"
            )
        );
    }

    #[test]
    fn a_lag_measured_before_the_lease_was_taken_is_not_shown() {
        let facts = |owner| Facts {
            name: "shop",
            state: Streaming,
            enabled: true,
            resnapshot_requested: false,
            last_error: None,
            next_step: None,
            owner,
            slot: &Slot::Valid,
            lag: Some(LAG),
            held_out: None,
        };
        let taken_over = Owner::Live {
            daemon: "other:2".into(),
            held_for: 5.0,
            state_recorded: true,
        };
        let health = judge(&facts(&taken_over));
        assert_eq!(health.verdict, Verdict::Streaming);
        assert_eq!(health.apply_lag_seconds, None);
        assert_eq!(health.freshness.map(|f| f.age_seconds), Some(42.0));
        assert_eq!(judge(&facts(&live())).apply_lag_seconds, Some(2.0));
    }

    #[test]
    fn a_new_snapshot_asked_for_is_not_current() {
        let owner = live();
        let facts = Facts {
            name: "shop",
            state: Streaming,
            enabled: true,
            resnapshot_requested: true,
            last_error: None,
            next_step: None,
            owner: &owner,
            slot: &Slot::Valid,
            lag: None,
            held_out: None,
        };
        let health = judge(&facts);
        assert_eq!(health.verdict, Verdict::SettingUp);
        assert!(!health.is_current());
    }

    #[test]
    fn freshness_grows_with_the_measurement_age() {
        let f = Freshness::from_lag(&LAG);
        assert_eq!(f.age_seconds, 42.0);
        assert_eq!(f.to_string(), "2001-09-09 01:46:38 UTC (42 s ago)");
        let older = Freshness::from_lag(&ApplyLag {
            age_seconds: 100.0,
            ..LAG
        });
        assert_eq!(older.current_as_of, f.current_as_of);
        assert_eq!(older.age_seconds, 102.0);
    }

    #[test]
    fn status_is_healthy_only_when_every_enabled_connector_is() {
        let owner = live();
        let nobody = Owner::Nobody;
        let health = |state, enabled, owner| {
            judge(&Facts {
                name: "c",
                state,
                enabled,
                resnapshot_requested: false,
                last_error: None,
                next_step: None,
                owner,
                slot: &Slot::Unknown,
                lag: None,
                held_out: None,
            })
        };
        let streaming = health(Streaming, true, &owner);
        let snapshotting = health(Snapshotting, true, &owner);
        let disabled = health(Stopped, false, &nobody);
        let unowned = health(Streaming, true, &nobody);
        assert_eq!(unhealthy([]), Vec::<&str>::new());
        assert_eq!(
            unhealthy([("a", &streaming), ("b", &snapshotting), ("c", &disabled)]),
            Vec::<&str>::new()
        );
        assert_eq!(
            unhealthy([("a", &streaming), ("b", &unowned), ("c", &unowned)]),
            ["b", "c"]
        );
    }
}
