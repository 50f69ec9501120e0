//! Making a copied branch ready: what the connector leaves out, sequences from the source,
//! the branch's own record in `tributary.branch`, and the branch given to its role.

use std::time::Duration;

use super::decide::sequence_value;
use super::BranchError;
use crate::bookkeeping::{self, Bookkeeping, BranchAccess, Connector};
use crate::control::branch_access::{self, AccessError, AccessRequest};
use crate::pg::conninfo::Password;
use crate::pg::{self, quote_ident, ConnInfo, ConnectError, PgClient};
use crate::sink;
use crate::types::{BranchName, Lsn};

/// Why a copied branch could not be made ready (it is then dropped).
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{what}: {}", pg::error_message(.source))]
    Query {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "the source role may not read sequence {schema}.{name}: GRANT SELECT ON SEQUENCE \
         {qualified} TO the connector's role (the preflight grant script includes it)"
    )]
    SequenceUnreadable {
        schema: String,
        name: String,
        qualified: String,
    },
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// Names what a failed statement was doing.
fn doing(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> FinishError {
    let what = what.into();
    move |source| FinishError::Query { what, source }
}

/// What the source has that no branch gets.
#[derive(Debug)]
pub struct Missing {
    /// Logical decoding carries no large objects.
    pub large_objects: i64,
}

/// Who gets a branch being finished: asked for by `create`, or kept by `reset`.
pub(super) enum Handing {
    New(AccessRequest),
    Kept(BranchAccess),
}

/// Who a branch's URL logs in as, and the password of a role of its own (`None` until read
/// from the bookkeeping, but right after the role is made).
#[derive(Debug)]
pub struct Given {
    pub access: BranchAccess,
    pub password: Option<Password>,
}

/// A branch made ready.
#[derive(Debug)]
pub struct Finished {
    pub missing: Missing,
    pub given: Given,
    /// Databases of tributary's that branch roles may still connect to, with what to run.
    pub advice: Vec<String>,
}

/// Makes a copied branch ready: extensions the connector drops, the triggers the replica
/// holds disabled enabled as on the source, sequences from the source, the branch's own
/// record (with what it lacks), then the branch given to its role and tributary's other
/// databases closed to it. A failure drops the branch, and the role made for it.
pub(super) async fn finish(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    (lsn, _): (Lsn, Duration),
    handing: Handing,
) -> Result<Finished, BranchError> {
    // The role of its own a failure forgets with the branch: made here, or kept by a reset.
    let mut own_role = match &handing {
        Handing::Kept(BranchAccess::OwnRole(role)) => Some(role.clone()),
        _ => None,
    };
    let new = matches!(handing, Handing::New(_));
    let finished = async {
        let done = prepare(bookkeeping, store, connector, name, lsn).await?;
        let given = match handing {
            Handing::New(AccessRequest::OwnRole) => {
                let (role, password) = branch_access::create_role(store, name).await?;
                own_role = Some(role.clone());
                Given {
                    access: BranchAccess::OwnRole(role),
                    password: Some(password),
                }
            }
            Handing::New(AccessRequest::Owner(role)) => Given {
                access: BranchAccess::Owner(role),
                password: None,
            },
            Handing::Kept(access) => Given {
                access,
                password: None,
            },
        };
        if new {
            bookkeeping
                .set_branch_access(name, &given.access, given.password.as_ref())
                .await?;
        }
        branch_access::hand_over(store, name, &given.access).await?;
        let advice = branch_access::close_databases(bookkeeping, store).await?;
        Ok::<_, FinishError>((done, given, advice))
    };
    let ((size, missing), given, advice) = match finished.await {
        Ok(done) => done,
        Err(e) => {
            let _ = sink::drop_database(store, name.as_str(), true).await;
            if let Some(role) = &own_role {
                let _ = branch_access::drop_role(store, role).await;
            }
            let _ = bookkeeping.forget_branch(name).await;
            return Err(BranchError::NotCreated {
                name: name.clone(),
                reason: e.to_string(),
            });
        }
    };
    bookkeeping.branch_ready(name, size).await?;
    Ok(Finished {
        missing,
        given,
        advice,
    })
}

/// The branch's content made the source's: extensions, triggers, sequences, and its own
/// record. Returns its size and what it lacks.
async fn prepare(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    lsn: Lsn,
) -> Result<(i64, Missing), FinishError> {
    let branch = pg::connect(&store.with_dbname(name.as_str())).await?;
    for extension in &connector.drop_extensions {
        branch
            .batch_execute(&format!(
                "DROP EXTENSION IF EXISTS {} CASCADE",
                quote_ident(extension)
            ))
            .await
            .map_err(doing(format!("dropping extension {extension}")))?;
    }
    sink::release_triggers(&branch).await.map_err(doing(
        "enabling the triggers the source enables ALWAYS or REPLICA",
    ))?;
    let source = bookkeeping.source(connector).await?;
    let source = pg::connect(&source).await?;
    set_sequences(&source, &branch, &connector.schemas).await?;
    let large_objects: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(doing("counting the source's large objects"))?
        .get(0);
    let size: i64 = branch
        .query_one(
            "SELECT pg_catalog.pg_database_size(current_database())",
            &[],
        )
        .await
        .map_err(doing("reading the branch's size"))?
        .get(0);
    branch
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS tributary.branch (
                 name text NOT NULL, connector text NOT NULL, lsn pg_lsn NOT NULL,
                 size_bytes bigint NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE tributary.branch
                 ADD COLUMN IF NOT EXISTS source_large_objects_missing bigint;
             COMMENT ON COLUMN tributary.branch.source_large_objects_missing IS
                 'large objects the source had when the branch was made: not replicated, not here';
             TRUNCATE tributary.branch;
             INSERT INTO tributary.branch
                 (name, connector, lsn, size_bytes, source_large_objects_missing)
             VALUES ({}, {}, '{lsn}', {size}, {large_objects})",
            pg::quote_literal(name.as_str()),
            pg::quote_literal(connector.name.as_str()),
        ))
        .await
        .map_err(doing(
            "recording the branch in its own tributary.branch table",
        ))?;
    Ok((size, Missing { large_objects }))
}

/// Sets every sequence of `schemas` in the branch to the source's current value, so that
/// inserts using defaults never collide with copied rows (logical decoding carries no
/// sequence changes, so the replica's are behind).
async fn set_sequences(
    source: &PgClient,
    branch: &PgClient,
    schemas: &[String],
) -> Result<(), FinishError> {
    let rows = source
        .query(
            "SELECT schemaname::text, sequencename::text, last_value, start_value,
                    pg_catalog.has_sequence_privilege(
                        pg_catalog.format('%I.%I', schemaname, sequencename), 'SELECT, USAGE')
               FROM pg_catalog.pg_sequences WHERE schemaname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(doing("reading the source's sequences"))?;
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let in_branch = branch
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                &[&schema, &name],
            )
            .await
            .map_err(doing(format!(
                "looking for sequence {schema}.{name} in the branch"
            )))?
            .is_some();
        if !in_branch {
            continue; // of an excluded table
        }
        if !row.get::<_, bool>(4) {
            return Err(FinishError::SequenceUnreadable {
                schema,
                name,
                qualified,
            });
        }
        let (value, called) = sequence_value(row.get(2), row.get(3));
        branch
            .query(
                &format!(
                    "SELECT pg_catalog.setval('{}'::regclass, $1, $2)",
                    qualified.replace('\'', "''")
                ),
                &[&value, &called],
            )
            .await
            .map_err(doing(format!("setting sequence {schema}.{name}")))?;
    }
    Ok(())
}
