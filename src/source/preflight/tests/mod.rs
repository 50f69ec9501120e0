//! Preflight judged without a server: fixtures here, the checks by area below.

use super::*;
use crate::source::identity::Missing;

fn info() -> ConnInfo {
    ConnInfo::parse("postgresql://app:s3cret@db.example.com:5432/shop").unwrap()
}

fn table(schema: &str, name: &str) -> TableName {
    TableName {
        schema: schema.into(),
        name: name.into(),
    }
}

/// A source that passes every check: tributary's role is a superuser-free replication
/// role with every grant.
fn healthy() -> Server {
    Server {
        version: Version {
            num: 150_004,
            text: "15.4".into(),
        },
        in_recovery: false,
        wal_level: "logical".into(),
        max_slots: 10,
        slots: vec![Slot {
            name: "other".into(),
            active: true,
            temporary: false,
            here: true,
        }],
        max_senders: 10,
        active_senders: 1,
        role: Role {
            name: "app".into(),
            superuser: false,
            replication: true,
            on_rds: false,
            rds_replication: false,
        },
        database: "shop".into(),
        can_create: true,
        capture: CaptureStatus::Missing,
        capture_key_readable: false,
        slot_wal_keep_mb: 10_240,
        max_wal_size_mb: 1024,
        wal_sender_timeout: "1min".into(),
        large_objects: 0,
        prepared: Vec::new(),
        schemas: vec![Schema {
            name: "public".into(),
            exists: true,
            usage: true,
        }],
        relations: vec![
            Relation {
                name: table("public", "orders"),
                kind: RelationKind::Table,
                owner: "owner".into(),
                can_select: true,
                unlogged: false,
            },
            Relation {
                name: table("public", "orders_id_seq"),
                kind: RelationKind::Sequence,
                owner: "owner".into(),
                can_select: true,
                unlogged: false,
            },
        ],
        tables: vec![Table {
            name: table("public", "orders"),
            identity: ReplicaIdentity::PrimaryKey,
            usable_index: None,
        }],
        numeric_columns: vec!["public.orders.total (numeric(10,2))".into()],
        foreign_keys: vec![],
        plugins: PluginList::from_setting(Some("pgoutput, test_decoding, wal2json")).unwrap(),
        failover: Default::default(),
    }
}

/// What `gather` makes of `server`: the probe blocked for `probe_blocker`'s reason, or
/// run successfully, with `numeric_as_string` as its answer.
fn ready_with(server: Server, numeric_as_string: bool) -> Gathered {
    let probe = match probe_blocker(&server) {
        Some(reason) => Probe::Blocked(reason),
        None => Probe::Ran {
            system_id: "7301".into(),
            slot: SlotName::new("tributary_preflight_1_2").unwrap(),
            dropped: Ok(()),
            numeric_as_string: Ok(numeric_as_string),
        },
    };
    Gathered::Ready {
        encryption: Encryption::Tls("TLSv1.3"),
        server: Box::new(server),
        probe,
    }
}

fn ready(server: Server) -> Gathered {
    ready_with(server, true)
}

fn judged(gathered: &Gathered) -> Report {
    judge(
        &info(),
        &["public".to_owned()],
        gathered,
        &KnownSources::Known {
            installation: None,
            slots: vec![],
            connectors: vec![],
        },
    )
}

fn check<'a>(report: &'a Report, name: &str) -> &'a Outcome {
    &report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {:#?}", report.checks))
        .outcome
}

fn failed(report: &Report) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
        .map(|c| c.name.as_str())
        .collect()
}

#[track_caller]
fn assert_fails(outcome: &Outcome, value: &str, fix: &str) {
    let Outcome::Fail { value: v, fix: f } = outcome else {
        panic!("expected a failure, got {outcome:?}")
    };
    assert!(v.contains(value), "{v:?} lacks {value:?}");
    assert!(f.contains(fix), "{f:?} lacks {fix:?}");
}

mod failover;
mod plugins;
mod server;
mod tables;
