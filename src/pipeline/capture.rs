//! The source's schema change capture objects at setup: installed or upgraded where the
//! source role may (never over a newer version), and their signing key, or why schema
//! changes are not captured.

use crate::bookkeeping::Connector;
use crate::pg::PgClient;
use crate::pipeline::PipelineError;
use crate::source::capture::{self, CaptureKey, CaptureStatus};

/// Makes sure the source's schema change capture objects are current where this role may
/// install them; returns the key their messages are signed with when schema changes are
/// captured. Without it the pipeline still streams: changes that no longer fit the replica
/// are reconciled as drift.
pub(super) async fn prepare(
    source: &PgClient,
    connector: &Connector,
) -> Result<Option<CaptureKey>, PipelineError> {
    let mut facts = capture::inspect(source).await?;
    // Never over a newer version: another tributary on this source installed it.
    let newer = matches!(facts.status, CaptureStatus::Outdated { found: Some(v) } if v > capture::CAPTURE_VERSION);
    if facts.status != CaptureStatus::Installed && facts.can_install && !newer {
        capture::install(source).await?;
        tracing::info!(
            version = capture::CAPTURE_VERSION,
            "installed the schema change capture objects on the source"
        );
        facts = capture::inspect(source).await?;
    }
    match facts.status {
        CaptureStatus::Installed if facts.key.is_none() => tracing::warn!(
            "the source's schema change capture objects are installed, but this role may not \
             read their signing key: schema changes are not captured; run `GRANT SELECT ON \
             tributary.capture_key TO <role>` as a superuser on the source"
        ),
        CaptureStatus::Installed => return Ok(facts.key),
        CaptureStatus::Outdated { found } => tracing::warn!(
            found = ?found,
            wanted = capture::CAPTURE_VERSION,
            "the source's schema change capture objects are outdated and this role cannot \
             upgrade them: schema changes are not captured; run the SQL of `tributary connector \
             source-sql {}` as a superuser on the source",
            connector.name
        ),
        CaptureStatus::Missing => tracing::info!(
            "schema changes are not captured (the source role cannot create event triggers): \
             changes that no longer fit the replica are reconciled from the source's catalog; \
             to capture DDL, run the SQL of `tributary connector source-sql {}` as a superuser \
             on the source",
            connector.name
        ),
    }
    Ok(None)
}
