//! The process's Prometheus metrics: their declarations and the handles the pipelines,
//! the supervisor and the slot sampler record into (`METRICS`, one registry per process).
//! Serving them (`/metrics`, `/healthz`, `/readyz`) and sampling the sources' slots is
//! `monitor/`'s: this module names nothing above the source's slot model, so every layer
//! may record into it without an import cycle.
//!
//! Every series is labelled `connector` (never with a URL: no secret reaches a label).
//! A connector's state and slot series come from the daemon holding its lease only, so
//! that several daemons on one bookkeeping export each connector once and its alerts fire
//! once; counters stay with the process that counted. The one exception,
//! `tributary_connector_unowned`, is what a holder cannot say: every daemon exports it for
//! every enabled connector, the same value, so that a connector nobody runs still alerts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::source::slot::{self, Cause, WalStatus};
use crate::state::{PipelineState, TableState};
use crate::types::{ConnectorId, ConnectorName};

const WAL_STATUSES: [WalStatus; 4] = [
    WalStatus::Reserved,
    WalStatus::Extended,
    WalStatus::Unreserved,
    WalStatus::Lost,
];

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    slot_lag_bytes: IntGaugeVec,
    slot_retained_wal_bytes: IntGaugeVec,
    slot_wal_status: IntGaugeVec,
    slot_safe_wal_size_bytes: IntGaugeVec,
    slot_invalidated: IntGaugeVec,
    source_up: IntGaugeVec,
    pipeline_state: IntGaugeVec,
    connector_unowned: IntGaugeVec,
    /// The connectors `connector_unowned` has a series for: those enabled at the last look.
    unowned_exported: Mutex<HashSet<String>>,
    apply_lag_seconds: prometheus::GaugeVec,
    changes_applied: IntCounterVec,
    transactions_applied: IntCounterVec,
    applied_bytes: IntCounterVec,
    snapshot_rows: IntCounterVec,
    snapshot_tables_remaining: IntGaugeVec,
    tables: IntGaugeVec,
    schema_changes_applied: IntCounterVec,
    schema_drift: IntCounterVec,
    pipeline_errors: IntCounterVec,
    pipeline_restarts: IntCounterVec,
    branch_cut_seconds: HistogramVec,
    /// Per connector: the commit time (µs since 1970) of the oldest transaction read but
    /// not yet durable on the replica; 0 when there is none.
    oldest_unapplied: Mutex<HashMap<String, Arc<AtomicI64>>>,
    /// The connectors whose lease this process holds, with their names: only their state
    /// and slot series are exported. Gauges of a connector are set and removed under this lock, so
    /// that a pipeline recording late cannot bring back the series of a lost lease.
    exported: Mutex<HashMap<ConnectorId, String>>,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let c = &["connector"];
        let apply_lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "tributary_apply_lag_seconds",
                "Seconds since the commit of the oldest source transaction not yet applied \
                 (0 when caught up)",
            ),
            c,
        )
        .expect("valid metric");
        registry
            .register(Box::new(apply_lag_seconds.clone()))
            .expect("unique metric");
        let branch_cut_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tributary_branch_cut_duration_seconds",
                "How long replication paused to copy the replica into a branch",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            c,
        )
        .expect("valid metric");
        registry
            .register(Box::new(branch_cut_seconds.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new("tributary_build_info", "The running tributary's version"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Metrics {
            slot_lag_bytes: gauge(
                &registry,
                "tributary_slot_lag_bytes",
                "WAL bytes between the source's current position and the slot's confirmed flush",
                c,
            ),
            slot_retained_wal_bytes: gauge(
                &registry,
                "tributary_slot_retained_wal_bytes",
                "WAL bytes the slot keeps on the source (current position - restart LSN)",
                c,
            ),
            slot_wal_status: gauge(
                &registry,
                "tributary_slot_wal_status",
                "The slot's wal_status: 1 for the current one (reserved, extended, unreserved, lost)",
                &["connector", "status"],
            ),
            slot_safe_wal_size_bytes: gauge(
                &registry,
                "tributary_slot_safe_wal_size_bytes",
                "WAL bytes that can still be written before the slot is invalidated \
                 (absent without max_slot_wal_keep_size)",
                c,
            ),
            slot_invalidated: gauge(
                &registry,
                "tributary_slot_invalidated",
                "1 for why the source invalidated the slot (wal_removed, rows_removed, \
                 wal_level_insufficient, idle_timeout: PostgreSQL 17+'s invalidation_reason; \
                 recovery_conflict: 16's conflicting; other), 0 for the rest",
                &["connector", "cause"],
            ),
            source_up: gauge(
                &registry,
                "tributary_source_up",
                "1 when the last look at the source's slot succeeded",
                c,
            ),
            pipeline_state: gauge(
                &registry,
                "tributary_pipeline_state",
                "The connector's state: 1 for the current one",
                &["connector", "state"],
            ),
            connector_unowned: gauge(
                &registry,
                "tributary_connector_unowned",
                "1 when the connector is enabled and no live daemon holds its lease (nothing \
                 runs it) or this daemon cannot read the bookkeeping, 0 when one does; every \
                 daemon exports it for every enabled connector",
                c,
            ),
            unowned_exported: Mutex::new(HashSet::new()),
            apply_lag_seconds,
            changes_applied: counter(
                &registry,
                "tributary_changes_applied_total",
                "Row changes applied to the replica, by operation",
                &["connector", "op"],
            ),
            transactions_applied: counter(
                &registry,
                "tributary_transactions_applied_total",
                "Source transactions applied to the replica",
                c,
            ),
            applied_bytes: counter(
                &registry,
                "tributary_applied_bytes_total",
                "Approximate bytes of row data applied to the replica",
                c,
            ),
            snapshot_rows: counter(
                &registry,
                "tributary_snapshot_rows_total",
                "Rows copied by snapshots",
                c,
            ),
            snapshot_tables_remaining: gauge(
                &registry,
                "tributary_snapshot_tables_remaining",
                "Tables the running snapshot has still to copy",
                c,
            ),
            tables: gauge(
                &registry,
                "tributary_tables",
                "The connector's tables in each state: pending, copying, copied (ahead of the \
                 stream), streaming, needs_decision, failed, excluded (never replicated)",
                &["connector", "state"],
            ),
            schema_changes_applied: counter(
                &registry,
                "tributary_schema_changes_applied_total",
                "Schema changes captured on the source and replayed on the replica",
                c,
            ),
            schema_drift: counter(
                &registry,
                "tributary_schema_drift_total",
                "Replica tables brought in line with the source after a change did not fit \
                 them (schema changes not captured)",
                c,
            ),
            pipeline_errors: counter(
                &registry,
                "tributary_pipeline_errors_total",
                "Pipeline runs that ended with an error, by kind (transient: retried; \
                 definite: failed)",
                &["connector", "kind"],
            ),
            pipeline_restarts: counter(
                &registry,
                "tributary_pipeline_restarts_total",
                "Pipeline runs started (the first, and each reconnect or retry)",
                c,
            ),
            branch_cut_seconds,
            oldest_unapplied: Mutex::new(HashMap::new()),
            exported: Mutex::new(HashMap::new()),
            registry,
        }
    }

    /// The handles a pipeline updates, resolved once per run.
    pub fn connector(&self, name: &str) -> ConnectorMetrics {
        let op = |op: &str| self.changes_applied.with_label_values(&[name, op]);
        let oldest = self
            .oldest_unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone();
        oldest.store(0, Ordering::Relaxed);
        ConnectorMetrics {
            inserts: op("insert"),
            updates: op("update"),
            deletes: op("delete"),
            truncates: op("truncate"),
            transactions: self.transactions_applied.with_label_values(&[name]),
            bytes: self.applied_bytes.with_label_values(&[name]),
            snapshot_rows: self.snapshot_rows.with_label_values(&[name]),
            snapshot_tables_remaining: self.snapshot_tables_remaining.with_label_values(&[name]),
            branch_cut: self.branch_cut_seconds.with_label_values(&[name]),
            schema_changes: self.schema_changes_applied.with_label_values(&[name]),
            schema_drift: self.schema_drift.with_label_values(&[name]),
            oldest_unapplied: oldest,
        }
    }

    pub fn pipeline_ended(&self, connector: &str, transient: bool) {
        let kind = if transient { "transient" } else { "definite" };
        self.pipeline_errors
            .with_label_values(&[connector, kind])
            .inc();
    }

    pub fn pipeline_started(&self, connector: &str) {
        self.pipeline_restarts.with_label_values(&[connector]).inc();
    }

    /// The connector's pipeline has ended: its apply lag is unknown until it runs again.
    pub fn pipeline_stopped(&self, connector: &str) {
        self.oldest_unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(connector);
        let _ = self.apply_lag_seconds.remove_label_values(&[connector]);
    }

    /// This daemon took the connector's lease: it exports the connector's series from now
    /// on, starting with `state`, the one the bookkeeping holds.
    pub fn export(&self, id: ConnectorId, name: &ConnectorName, state: PipelineState) {
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        exported.insert(id, name.to_string());
        self.record_state(name.as_str(), state);
    }

    /// This daemon released or lost the connector's lease: the new holder (if any) exports
    /// the connector's series.
    pub fn unexport(&self, id: ConnectorId) {
        let mut exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = exported.remove(&id) {
            self.remove_series(&name);
        }
    }

    /// Whether this daemon exports the connector's series.
    pub fn exports(&self, id: ConnectorId) -> bool {
        self.exported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    /// The connector's pipeline entered `state` (as recorded in the bookkeeping).
    pub fn set_state(&self, id: ConnectorId, state: PipelineState) {
        let exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = exported.get(&id) {
            self.record_state(name, state);
        }
    }

    /// A look at the connector's slot: `Err` when the source could not be asked.
    pub fn set_slot(&self, id: ConnectorId, slot: Result<Option<slot::SlotInfo>, ()>) {
        let exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = exported.get(&id) {
            self.record_slot(name, slot);
        }
    }

    /// A look at the connector's tables: how many are in each state (every state).
    pub fn set_tables(&self, id: ConnectorId, counts: &[(TableState, usize)]) {
        let exported = self.exported.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = exported.get(&id) {
            for (state, n) in counts {
                self.tables
                    .with_label_values(&[name.as_str(), state.as_str()])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Whether each enabled connector has no live lease holder, by name; the series of
    /// connectors not in `unowned` (deleted or disabled since) go.
    pub fn set_unowned(&self, unowned: HashMap<String, bool>) {
        let mut exported = self
            .unowned_exported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for gone in exported.iter().filter(|name| !unowned.contains_key(*name)) {
            let _ = self.connector_unowned.remove_label_values(&[gone]);
        }
        for (name, value) in &unowned {
            self.connector_unowned
                .with_label_values(&[name])
                .set(i64::from(*value));
        }
        *exported = unowned.into_keys().collect();
    }

    /// The bookkeeping could not be read: every connector last seen enabled says 1.
    pub fn unowned_unknown(&self) {
        let exported = self
            .unowned_exported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for name in exported.iter() {
            self.connector_unowned.with_label_values(&[name]).set(1);
        }
    }

    /// Removes the connector's state and slot series (and its apply lag: no pipeline of it
    /// runs here any more).
    fn remove_series(&self, connector: &str) {
        self.pipeline_stopped(connector);
        for vec in [
            &self.slot_lag_bytes,
            &self.slot_retained_wal_bytes,
            &self.slot_safe_wal_size_bytes,
            &self.source_up,
            &self.snapshot_tables_remaining,
        ] {
            let _ = vec.remove_label_values(&[connector]);
        }
        self.forget_slot_states(connector);
        for state in PipelineState::ALL {
            let _ = self
                .pipeline_state
                .remove_label_values(&[connector, state.as_str()]);
        }
        for state in TableState::ALL {
            let _ = self
                .tables
                .remove_label_values(&[connector, state.as_str()]);
        }
    }

    /// The apply lag of the connector's pipeline in this process, now; `None` when none
    /// ran here.
    pub fn apply_lag(&self, connector: &str) -> Option<f64> {
        let since = self
            .oldest_unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(connector)?
            .load(Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_micros();
        Some(if since == 0 {
            0.0
        } else {
            (now - since).max(0) as f64 / 1e6
        })
    }

    /// Changes applied for the connector in this process, all operations.
    pub fn changes_applied(&self, connector: &str) -> u64 {
        ["insert", "update", "delete", "truncate"]
            .iter()
            .map(|op| {
                self.changes_applied
                    .with_label_values(&[connector, op])
                    .get()
            })
            .sum()
    }

    /// The text exposition, with the apply lag computed now.
    pub fn render(&self) -> String {
        let connectors: Vec<String> = self
            .oldest_unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        for connector in connectors {
            if let Some(lag) = self.apply_lag(&connector) {
                self.apply_lag_seconds
                    .with_label_values(&[&connector])
                    .set(lag);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn record_state(&self, name: &str, current: PipelineState) {
        for state in PipelineState::ALL {
            self.pipeline_state
                .with_label_values(&[name, state.as_str()])
                .set(i64::from(current == state));
        }
    }

    fn record_slot(&self, name: &str, slot: Result<Option<slot::SlotInfo>, ()>) {
        let up = self.source_up.with_label_values(&[name]);
        let info = match slot {
            Ok(info) => {
                up.set(1);
                info
            }
            Err(()) => {
                up.set(0);
                return; // the last known values stay, with source_up saying they are old
            }
        };
        let bytes = |v: Option<u64>| v.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        match info {
            Some(info) => {
                self.slot_lag_bytes
                    .with_label_values(&[name])
                    .set(bytes(info.lag_bytes));
                self.slot_retained_wal_bytes
                    .with_label_values(&[name])
                    .set(bytes(info.retained_bytes));
                for status in WAL_STATUSES {
                    self.slot_wal_status
                        .with_label_values(&[name, status.as_str()])
                        .set(i64::from(info.wal_status == status));
                }
                let cause = info.invalidation().map(|i| i.cause);
                for each in Cause::ALL {
                    self.slot_invalidated
                        .with_label_values(&[name, each.as_str()])
                        .set(i64::from(cause == Some(each)));
                }
                match info.safe_wal_size {
                    Some(size) => self
                        .slot_safe_wal_size_bytes
                        .with_label_values(&[name])
                        .set(size),
                    None => {
                        let _ = self.slot_safe_wal_size_bytes.remove_label_values(&[name]);
                    }
                }
            }
            None => {
                // No slot (before the first snapshot, or lost and dropped): nothing pinned.
                for vec in [
                    &self.slot_lag_bytes,
                    &self.slot_retained_wal_bytes,
                    &self.slot_safe_wal_size_bytes,
                ] {
                    let _ = vec.remove_label_values(&[name]);
                }
                self.forget_slot_states(name);
            }
        }
    }

    /// Removes the connector's series of the slot's states (`wal_status`, invalidation).
    fn forget_slot_states(&self, connector: &str) {
        for status in WAL_STATUSES {
            let _ = self
                .slot_wal_status
                .remove_label_values(&[connector, status.as_str()]);
        }
        for cause in Cause::ALL {
            let _ = self
                .slot_invalidated
                .remove_label_values(&[connector, cause.as_str()]);
        }
    }
}

/// One pipeline run's handles.
#[derive(Clone)]
pub struct ConnectorMetrics {
    pub inserts: IntCounter,
    pub updates: IntCounter,
    pub deletes: IntCounter,
    pub truncates: IntCounter,
    pub transactions: IntCounter,
    pub bytes: IntCounter,
    pub snapshot_rows: IntCounter,
    pub snapshot_tables_remaining: IntGauge,
    pub branch_cut: Histogram,
    pub schema_changes: IntCounter,
    pub schema_drift: IntCounter,
    /// See [`Metrics`]: set by the reader, read at scrape time.
    pub oldest_unapplied: Arc<AtomicI64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines<'a>(text: &'a str, connector: &str) -> Vec<&'a str> {
        let label = format!("connector=\"{connector}\"");
        text.lines().filter(|l| l.contains(&label)).collect()
    }

    #[test]
    fn only_exported_connectors_have_state_and_slot_series() {
        let metrics = Metrics::new();
        let (a, b) = (ConnectorId(1), ConnectorId(2));
        let name = ConnectorName::new("a").unwrap();
        metrics.export(a, &name, PipelineState::Pending);
        let text = metrics.render();
        assert!(text.contains(r#"tributary_pipeline_state{connector="a",state="pending"} 1"#));

        // Entered states show at once; another daemon's connector shows nothing.
        metrics.set_state(a, PipelineState::Streaming);
        metrics.set_slot(a, Err(()));
        metrics.set_state(b, PipelineState::Failed);
        metrics.set_slot(b, Err(()));
        let tables = [(TableState::Streaming, 3), (TableState::Excluded, 1)];
        metrics.set_tables(a, &tables);
        metrics.set_tables(b, &tables);
        let text = metrics.render();
        for line in [
            r#"tributary_pipeline_state{connector="a",state="pending"} 0"#,
            r#"tributary_pipeline_state{connector="a",state="streaming"} 1"#,
            r#"tributary_source_up{connector="a"} 0"#,
            r#"tributary_tables{connector="a",state="streaming"} 3"#,
            r#"tributary_tables{connector="a",state="excluded"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(lines(&text, "b").is_empty(), "{text}");
        assert!(metrics.exports(a) && !metrics.exports(b));

        // Lease gone: the series go, and a pipeline recording late brings none back.
        let counted = metrics.connector("a");
        counted.inserts.inc();
        metrics.unexport(a);
        metrics.set_state(a, PipelineState::Failed);
        metrics.set_slot(a, Ok(None));
        metrics.set_tables(a, &tables);
        let text = metrics.render();
        let left = lines(&text, "a");
        assert!(
            left.contains(&r#"tributary_changes_applied_total{connector="a",op="insert"} 1"#),
            "{text}"
        );
        assert!(
            left.iter()
                .all(|l| ["_total{", "_bucket{", "_sum{", "_count{"]
                    .iter()
                    .any(|kind| l.contains(kind))),
            "only counters and histograms stay:\n{text}"
        );
        assert!(!metrics.exports(a));
    }

    #[test]
    fn unowned_series_follow_the_enabled_connectors() {
        let metrics = Metrics::new();
        let look = |pairs: &[(&str, bool)]| {
            metrics.set_unowned(pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect());
            let text = metrics.render();
            let mut seen: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("tributary_connector_unowned{"))
                .collect();
            seen.sort_unstable();
            seen.join("\n")
        };
        assert_eq!(
            look(&[("a", true), ("b", false)]),
            "tributary_connector_unowned{connector=\"a\"} 1\n\
             tributary_connector_unowned{connector=\"b\"} 0"
        );
        // a taken, b deleted or disabled: its series goes.
        assert_eq!(
            look(&[("a", false)]),
            "tributary_connector_unowned{connector=\"a\"} 0"
        );
        // The bookkeeping unreadable: no daemon is seen holding a.
        metrics.unowned_unknown();
        assert!(metrics
            .render()
            .contains("tributary_connector_unowned{connector=\"a\"} 1\n"));
        assert_eq!(look(&[]), "");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_metrics_are_exported() {
        let text = Metrics::new().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in\n{text}");
        }
    }
}
