//! The comparison proper: each table's ranges summarized on both servers by a few
//! workers in parallel, each with a session on the source's snapshot and one on the
//! branch; a range that differs is read row by row on both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;

use super::plan::{self, Range, RowDifference, Shape};
use super::{Progress, Side, TableReport, VerifyError};
use crate::pg::PgClient;
use crate::types::TableName;

/// Ranges of one table that differ and are read row by row, at most: beyond, a range is
/// only named.
const ROW_READ_RANGES: usize = 16;

/// Row differences kept per table, at most.
pub const ROWS_SHOWN: usize = 50;

/// Rows of a range as read: each one's key (as text) and hash.
type Rows = Vec<(String, i64)>;

/// One worker's two sessions.
pub struct Sessions {
    pub source: PgClient,
    pub branch: PgClient,
}

/// A table as planned: its shape and ranges, or the side it is on alone.
pub struct Planned {
    shape: Shape,
    ranges: Vec<Range>,
    only_in: Option<Side>,
}

/// Where the source's tables are cut, read in the snapshot: each table's shape and ranges;
/// a table on one side only has none.
pub async fn plan(
    source: &PgClient,
    branch: &PgClient,
    tables: &[TableName],
) -> Result<Vec<Planned>, VerifyError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let name = plan::regclass(table);
        let only_in = match (
            exists(source, Side::Source, table).await?,
            exists(branch, Side::Replica, table).await?,
        ) {
            (true, true) => None,
            (true, false) => Some(Side::Source),
            (false, true) => Some(Side::Replica),
            (false, false) => continue, // dropped on both since it was listed
        };
        if only_in.is_some() {
            out.push(Planned {
                shape: plan::shape(table.clone(), Vec::new()),
                ranges: Vec::new(),
                only_in,
            });
            continue;
        }
        let query = |e| VerifyError::query(Side::Source, table, e);
        let rows = source
            .query(plan::shape_sql(), &[&name])
            .await
            .map_err(query)?;
        let rows = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let shape = plan::shape(table.clone(), rows);
        let estimate = source
            .query_one(plan::estimate_sql(), &[&name])
            .await
            .map_err(query)?;
        let (rows, pages): (f64, f64) = (estimate.get(0), estimate.get(1));
        let ranges = match plan::sampling(rows, pages, !shape.key.is_empty()) {
            None => vec![Range::default()],
            Some((wanted, percent)) => {
                let sample: Vec<plan::Key> = source
                    .query(&plan::sample_sql(&shape, percent), &[])
                    .await
                    .map_err(query)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                plan::ranges(&sample, wanted)
            }
        };
        out.push(Planned {
            shape,
            ranges,
            only_in: None,
        });
    }
    Ok(out)
}

async fn exists(client: &PgClient, side: Side, table: &TableName) -> Result<bool, VerifyError> {
    client
        .query_one(plan::exists_sql(), &[&plan::regclass(table)])
        .await
        .map(|r| r.get(0))
        .map_err(|e| VerifyError::query(side, table, e))
}

/// How many key ranges `planned` has in all.
pub fn range_count(planned: &[Planned]) -> usize {
    planned.iter().map(|p| p.ranges.len()).sum()
}

/// What one range came to on both servers.
struct Outcome {
    table: usize,
    range: Range,
    source_rows: u64,
    replica_rows: u64,
    /// Whether the sums differed; with the rows of both when they were read.
    differs: bool,
    rows: Option<(Rows, Rows)>,
}

/// Compares every range of `planned` with `workers` (one per pair of sessions).
pub async fn compare(
    planned: &[Planned],
    workers: Vec<Sessions>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<TableReport>, VerifyError> {
    let work: Vec<(usize, &Range)> = planned
        .iter()
        .enumerate()
        .flat_map(|(t, p)| p.ranges.iter().map(move |r| (t, r)))
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let read = Mutex::new(vec![0usize; planned.len()]);
    let total = work.len();
    let worker = |sessions: Sessions| {
        let (work, next, done, read) = (&work, &next, &done, &read);
        async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(table, range)) = work.get(i) else {
                    return Ok::<_, VerifyError>(outcomes);
                };
                let shape = &planned[table].shape;
                let mut outcome = summarize(&sessions, shape, range).await?;
                outcome.table = table;
                if outcome.differs {
                    let may_read = {
                        let mut read = read.lock().expect("never poisoned: no panics inside");
                        read[table] += 1;
                        read[table] <= ROW_READ_RANGES
                    };
                    if may_read {
                        outcome.rows = Some(read_rows(&sessions, shape, range).await?);
                    }
                }
                outcomes.push(outcome);
                let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(Progress::Compared { done, total });
            }
        }
    };
    let outcomes: Vec<Outcome> = try_join_all(workers.into_iter().map(worker))
        .await?
        .into_iter()
        .flatten()
        .collect();
    Ok(reports(planned, outcomes))
}

/// Each table's report from its ranges' outcomes.
fn reports(planned: &[Planned], outcomes: Vec<Outcome>) -> Vec<TableReport> {
    let mut reports: Vec<TableReport> = planned
        .iter()
        .map(|p| TableReport {
            table: p.shape.table.clone(),
            only_in: p.only_in,
            keyed: !p.shape.key.is_empty(),
            ranges: p.ranges.len(),
            source_rows: 0,
            replica_rows: 0,
            differing_ranges: Vec::new(),
            rows: Vec::new(),
            more_rows: 0,
        })
        .collect();
    let mut rows: Vec<(Rows, Rows)> = vec![Default::default(); planned.len()];
    let mut unread: Vec<Vec<Range>> = vec![Vec::new(); planned.len()];
    let mut read: Vec<Vec<Range>> = vec![Vec::new(); planned.len()];
    for outcome in outcomes {
        let report = &mut reports[outcome.table];
        report.source_rows += outcome.source_rows;
        report.replica_rows += outcome.replica_rows;
        if !outcome.differs {
            continue;
        }
        match outcome.rows {
            Some((source, replica)) => {
                rows[outcome.table].0.extend(source);
                rows[outcome.table].1.extend(replica);
                read[outcome.table].push(outcome.range);
            }
            None => unread[outcome.table].push(outcome.range),
        }
    }
    for (t, report) in reports.iter_mut().enumerate() {
        let (source, replica) = std::mem::take(&mut rows[t]);
        let mut differences: Vec<RowDifference> = plan::diff_rows(source, replica);
        // Ranges read row by row are named only when rows in them differ: alone, a sum
        // may differ because the servers order text keys differently.
        if !differences.is_empty() {
            report.differing_ranges.append(&mut read[t]);
        }
        report.differing_ranges.append(&mut unread[t]);
        report.more_rows = differences.len().saturating_sub(ROWS_SHOWN);
        differences.truncate(ROWS_SHOWN);
        report.rows = differences;
    }
    reports
}

async fn summarize(
    sessions: &Sessions,
    shape: &Shape,
    range: &Range,
) -> Result<Outcome, VerifyError> {
    let (sql, params) = plan::summary_sql(shape, range);
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let table = &shape.table;
    let (source, replica) = tokio::join!(
        sessions.source.query_one(&sql, &params),
        sessions.branch.query_one(&sql, &params),
    );
    let source = source.map_err(|e| VerifyError::query(Side::Source, table, e))?;
    let replica = replica.map_err(|e| VerifyError::query(Side::Replica, table, e))?;
    let (source_rows, source_sum): (i64, String) = (source.get(0), source.get(1));
    let (replica_rows, replica_sum): (i64, String) = (replica.get(0), replica.get(1));
    Ok(Outcome {
        table: 0,
        range: range.clone(),
        source_rows: source_rows.unsigned_abs(),
        replica_rows: replica_rows.unsigned_abs(),
        differs: source_rows != replica_rows || source_sum != replica_sum,
        rows: None,
    })
}

async fn read_rows(
    sessions: &Sessions,
    shape: &Shape,
    range: &Range,
) -> Result<(Rows, Rows), VerifyError> {
    let (sql, params) = plan::rows_sql(shape, range);
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let table = &shape.table;
    let (source, replica) = tokio::join!(
        sessions.source.query(&sql, &params),
        sessions.branch.query(&sql, &params),
    );
    let rows = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok((
        rows(source.map_err(|e| VerifyError::query(Side::Source, table, e))?),
        rows(replica.map_err(|e| VerifyError::query(Side::Replica, table, e))?),
    ))
}
