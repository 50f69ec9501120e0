//! Whether a failover keeps the slot, from the primary's and the standbys' settings.

use super::*;
use crate::pg::conninfo::Host;
use crate::pg::Endpoint;
use crate::source::preflight::failover::*;

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        host: Host::Tcp("10.0.0.2".into()),
        hostaddr: None,
        port,
    }
}

/// A standby on port 5433 that synchronizes slots through the physical slot `sb1`.
fn syncing() -> Standby {
    Standby {
        endpoint: endpoint(5433),
        sync_replication_slots: true,
        hot_standby_feedback: true,
        primary_slot_name: "sb1".into(),
        conninfo_has_dbname: Some(true),
    }
}

fn primary(standbys: Vec<StandbyLook>, synchronized: &[&str]) -> Failover {
    Failover {
        streaming: 1,
        synchronized_standby_slots: synchronized.iter().map(|s| (*s).to_owned()).collect(),
        physical_slots: vec![PhysicalSlot {
            name: "sb1".into(),
            active: true,
            feedback: true,
        }],
        standbys,
        own: None,
    }
}

fn outcome(check: &Check) -> (&'static str, String) {
    match &check.outcome {
        Outcome::Pass { value } => ("pass", value.clone()),
        Outcome::Warn { value, fix } => ("warn", format!("{value} | {fix}")),
        Outcome::Fail { value, fix } => ("fail", format!("{value} | {fix}")),
        Outcome::Skip { reason } => ("skip", reason.clone()),
    }
}

#[test]
fn a_failover_keeps_the_slot_only_with_a_synchronizing_standby_the_primary_waits_for() {
    let standby = |change: fn(&mut Standby)| {
        let mut s = syncing();
        change(&mut s);
        StandbyLook::Standby(s)
    };
    let alone = Failover::default();
    let with_slot = |active: bool, feedback: bool| {
        let mut failover = primary(vec![StandbyLook::Standby(syncing())], &["sb1"]);
        failover.physical_slots[0].active = active;
        failover.physical_slots[0].feedback = feedback;
        failover
    };
    #[rustfmt::skip]
    let cases: Vec<(u32, Failover, &str, &str)> = vec![
        // Nothing to fail over to.
        (16, alone.clone(), "pass", "no standby streams"),
        (17, alone.clone(), "pass", "created with the failover property"),
        // Before 17 a standby never has the slot.
        (16, primary(vec![], &[]), "warn", "does not synchronize logical slots"),
        // 17+: all set.
        (17, primary(vec![StandbyLook::Standby(syncing())], &["sb1"]), "pass", "kept: standby 10.0.0.2:5433"),
        // Each missing piece is named.
        (18, primary(vec![standby(|s| s.sync_replication_slots = false)], &["sb1"]), "warn", "lacks sync_replication_slots = on"),
        (17, primary(vec![standby(|s| s.hot_standby_feedback = false)], &["sb1"]), "warn", "lacks hot_standby_feedback = on"),
        (17, primary(vec![standby(|s| s.primary_slot_name.clear())], &[]), "warn", "lacks primary_slot_name"),
        (17, primary(vec![standby(|s| s.conninfo_has_dbname = Some(false))], &["sb1"]), "warn", "a dbname in primary_conninfo"),
        (17, primary(vec![standby(|s| s.conninfo_has_dbname = None)], &["sb1"]), "warn", "grant pg_read_all_settings"),
        // The primary does not wait for the standby: the replica could get ahead of it.
        (17, primary(vec![StandbyLook::Standby(syncing())], &[]), "warn", "synchronized_standby_slots names no"),
        (17, primary(vec![StandbyLook::Standby(syncing())], &["other"]), "warn", "synchronized_standby_slots names no"),
        // The physical slot the standby names: missing, unused, without feedback.
        (17, primary(vec![standby(|s| s.primary_slot_name = "sb2".into())], &["sb2"]), "warn", "primary_slot_name sb2 is no physical slot on the primary"),
        (17, with_slot(false, true), "warn", "slot sb1 is not in use"),
        (17, with_slot(true, false), "warn", "slot sb1 gets no hot_standby_feedback"),
        // Two synchronizing standbys, only one waited for.
        (17, primary(vec![StandbyLook::Standby(syncing()), standby(|s| { s.endpoint.port = 5434; s.primary_slot_name = "sb2".into(); })], &["sb1"]), "warn", "does not name the slot of standby 10.0.0.2:5434"),
        // Standbys stream, but the URL lists none: their settings are unknown.
        (17, primary(vec![], &["sb1"]), "warn", "1 standby connection(s) stream from this server (physical slots in use: sb1)"),
        (17, primary(vec![StandbyLook::Unreachable { server: "10.0.0.3:5432".into(), reason: "refused".into() }, StandbyLook::Standby(syncing())], &["sb1"]), "warn", "10.0.0.3:5432 could not be checked: refused"),
        (17, primary(vec![StandbyLook::NotAStandby { server: "10.0.0.3:5432".into() }], &["sb1"]), "warn", "10.0.0.3:5432 is not a standby"),
    ];
    for (major, failover, kind, needle) in cases {
        let check = failover::judge_failover(major, &failover);
        assert_eq!(check.name, "failover");
        let (got, text) = outcome(&check);
        assert_eq!(got, kind, "{major} {failover:?}: {text}");
        assert!(text.contains(needle), "{major} {failover:?}: {text}");
    }
}

#[test]
fn the_script_sets_what_is_missing_on_the_primary_then_on_each_standby() {
    let mut lacking = syncing();
    lacking.sync_replication_slots = false;
    lacking.primary_slot_name.clear();
    lacking.conninfo_has_dbname = Some(false);
    let failover = primary(vec![StandbyLook::Standby(lacking)], &[]);
    let script = failover::failover_script(17, "shop", &failover).join("\n");
    let expected = [
        "pg_create_physical_replication_slot('standby_10_0_0_2_5433')",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby_10_0_0_2_5433';",
        "\\connect -reuse-previous=on 'host=10.0.0.2 port=5433'",
        "ALTER SYSTEM SET sync_replication_slots = on;",
        "ALTER SYSTEM SET primary_slot_name = 'standby_10_0_0_2_5433';",
        "add dbname=shop to it",
        "SELECT pg_catalog.pg_reload_conf();",
    ];
    let mut at = 0;
    for line in expected {
        let found = script[at..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} missing or out of order in:\n{script}"));
        at += found;
    }
    assert!(!script.contains("hot_standby_feedback"), "{script}");

    // Nothing missing, or a version without failover slots: no lines.
    let set = primary(vec![StandbyLook::Standby(syncing())], &["sb1"]);
    assert!(failover::failover_script(17, "shop", &set).is_empty());
    assert!(failover::failover_script(16, "shop", &failover).is_empty());
    // A standby already synchronizing, but not waited for: only the primary's setting,
    // keeping what it lists.
    let unguarded = primary(vec![StandbyLook::Standby(syncing())], &["other"]);
    let script = failover::failover_script(17, "shop", &unguarded).join("\n");
    assert!(
        script.contains("synchronized_standby_slots = 'other, sb1';")
            && !script.contains("\\connect"),
        "{script}"
    );
}

#[test]
fn a_standby_is_a_source_from_16_on_with_feedback_and_a_physical_slot() {
    let standby = |num: u32, own: Option<(bool, &str)>| {
        let mut server = healthy();
        server.version.num = num;
        server.in_recovery = true;
        server.failover.own = own.map(|(feedback, slot)| (feedback, slot.to_owned()));
        server
    };
    #[rustfmt::skip]
    let cases = [
        (healthy(), "pass", "yes"),
        (standby(150_004, Some((true, "sb1"))), "fail", "PostgreSQL 15 decodes only on a primary"),
        (standby(160_002, Some((true, "sb1"))), "pass", "a standby, which decodes from PostgreSQL 16 on"),
        (standby(170_000, Some((false, "sb1"))), "fail", "without hot_standby_feedback = on"),
        (standby(180_000, Some((true, ""))), "fail", "without primary_slot_name"),
        (standby(170_000, Some((false, ""))), "fail", "hot_standby_feedback = on and primary_slot_name"),
    ];
    for (server, kind, needle) in cases {
        let check = judge_primary(&server);
        let (got, text) = outcome(&check);
        assert_eq!(
            (got, check.name.as_str()),
            (kind, "primary or standby"),
            "{text}"
        );
        assert!(text.contains(needle), "{text}");
    }
}
