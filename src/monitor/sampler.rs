//! The sampler: every `metrics.slot_interval_secs`, whether each enabled connector has a
//! live lease holder, the slot and the tables' states of each connector exported here, and
//! this process's apply lags into the bookkeeping (for `status`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SOURCE_TIMEOUT;
use crate::bookkeeping::{Bookkeeping, Connector};
use crate::control::connectors::tables;
use crate::control::health;
use crate::metrics::METRICS;
use crate::pg;
use crate::source::slot;

/// Samples the slot of every connector exported here every `interval`, until `shutdown`.
pub async fn sample_slots(
    bookkeeping: Arc<Bookkeeping>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A slow source must not hold up the daemon's exit.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = sample(&bookkeeping) => {}
        }
    }
}

/// One look at every connector: whether a live daemon holds it; and the slot and the
/// tables of each exported here.
async fn sample(bookkeeping: &Bookkeeping) {
    let (connectors, leases) =
        match tokio::try_join!(bookkeeping.connectors(), bookkeeping.leases()) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("metrics: reading connectors and leases: {e}");
                // Unseen is not held: if no daemon can read the bookkeeping, none holds a
                // lease for long, and a last 0 kept would hide it.
                METRICS.unowned_unknown();
                return;
            }
        };
    METRICS.set_unowned(
        connectors
            .iter()
            .filter_map(|c| {
                let owner = health::Owner::from_lease(leases.get(&c.id));
                Some((c.name.to_string(), health::unowned(c.enabled, &owner)?))
            })
            .collect(),
    );
    for connector in &connectors {
        if let Some(lag) = METRICS.apply_lag(connector.name.as_str()) {
            let changes = METRICS.changes_applied(connector.name.as_str());
            if let Err(e) = bookkeeping
                .record_apply_lag(connector.id, lag, changes)
                .await
            {
                tracing::debug!(connector = %connector.name, "metrics: recording the apply lag: {e}");
            }
        }
        if !METRICS.exports(connector.id) {
            continue;
        }
        let slot = tokio::time::timeout(SOURCE_TIMEOUT, inspect(bookkeeping, connector))
            .await
            .map_err(|_| "no answer".to_owned())
            .and_then(|r| r);
        if let Err(e) = &slot {
            tracing::debug!(connector = %connector.name, "metrics: reading the slot: {e}");
        }
        METRICS.set_slot(connector.id, slot.map_err(drop));
        match tables::list(bookkeeping, connector).await {
            Ok(listed) => {
                let counts: Vec<_> = tables::Counts::of(&listed).iter().collect();
                METRICS.set_tables(connector.id, &counts);
            }
            // The last counts stay; the next look tries again.
            Err(e) => {
                tracing::debug!(connector = %connector.name, "metrics: reading the tables: {e}")
            }
        }
    }
}

async fn inspect(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<Option<slot::SlotInfo>, String> {
    let source = bookkeeping
        .source(connector)
        .await
        .map_err(|e| e.to_string())?;
    let client = pg::connect(&source).await.map_err(|e| e.to_string())?;
    slot::inspect(&client, &connector.slot_name)
        .await
        .map_err(|e| pg::error_message(&e))
}
