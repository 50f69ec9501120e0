use super::*;
use crate::types::{ConnectorId, ConnectorName, SlotName};

fn connector(state: PipelineState, enabled: bool) -> Connector {
    Connector {
        id: ConnectorId(1),
        name: ConnectorName::new("shop").unwrap(),
        source_display: "postgresql://repl@source/shop".into(),
        schemas: vec!["public".into()],
        enabled,
        slot_name: SlotName::new("tributary_shop").unwrap(),
        slot_created: true,
        replica_database: "shop_replica".into(),
        state,
        last_error: None,
        next_step: None,
        system_id: None,
        timeline: None,
        source_database: None,
        resnapshot_requested: false,
        active: true,
        drop_extensions: Vec::new(),
        include_new_tables: true,
        nan_as_null: false,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}

fn slot(wal_status: WalStatus, lag_bytes: u64) -> SlotInfo {
    SlotInfo {
        wal_status,
        active_pid: None,
        confirmed_flush: None,
        lag_bytes: Some(lag_bytes),
        retained_bytes: Some(2048),
        safe_wal_size: None,
        conflicting: None,
        invalidation_reason: None,
        inactive_seconds: None,
    }
}

#[test]
fn each_fact_that_needs_attention_is_one_sentence() {
    let streaming = connector(PipelineState::Streaming, true);
    let disabled = connector(PipelineState::Stopped, false);
    let healthy = slot(WalStatus::Reserved, 10);
    let excluded = [("public.t".to_owned(), "exclude")];
    let rows: [(Facts<'_>, &[&str]); 8] = [
        (
            Facts {
                connector: &streaming,
                slot: Some(&healthy),
                source_error: None,
                excluded: &[],
            },
            &[],
        ),
        (
            Facts {
                connector: &disabled,
                slot: Some(&healthy),
                source_error: None,
                excluded: &[],
            },
            &["disabled: an interrupted `connector delete`?"],
        ),
        (
            Facts {
                connector: &streaming,
                slot: None,
                source_error: None,
                excluded: &[],
            },
            &["replication slot tributary_shop is missing on the source"],
        ),
        // Not asked: nothing said about the slot but that.
        (
            Facts {
                connector: &streaming,
                slot: None,
                source_error: Some("timeout"),
                excluded: &[],
            },
            &["source not reachable: timeout"],
        ),
        (
            Facts {
                connector: &streaming,
                slot: Some(&slot(WalStatus::Lost, 10)),
                source_error: None,
                excluded: &[],
            },
            &["slot was invalidated by the source (wal_status = lost)"],
        ),
        (
            Facts {
                connector: &streaming,
                slot: Some(&slot(WalStatus::Extended, 10)),
                source_error: None,
                excluded: &[],
            },
            &["slot keeps WAL beyond max_wal_size (wal_status extended) (2.0 KiB retained)"],
        ),
        (
            Facts {
                connector: &streaming,
                slot: Some(&slot(WalStatus::Unreserved, 2 << 30)),
                source_error: None,
                excluded: &[],
            },
            &[
                "slot is past max_slot_wal_keep_size",
                "slot lag 2.0 GiB: is the daemon running and keeping up?",
            ],
        ),
        (
            Facts {
                connector: &streaming,
                slot: Some(&healthy),
                source_error: None,
                excluded: &excluded,
            },
            &["1 table not replicated: public.t (exclude)"],
        ),
    ];
    for (facts, expected) in rows {
        let said = warnings(&facts);
        assert_eq!(said.len(), expected.len(), "{said:?}");
        for (said, expected) in said.iter().zip(expected) {
            assert!(
                said.starts_with(expected),
                "{said:?} must start with {expected:?}"
            );
        }
    }
}
