//! `tributary connector tables NAME`: every table of a connector with its state, copy
//! position, copies and rows copied; and the tables summary that `connector list` and
//! `status` show. The tables and their counts come from `control::connectors::tables`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::args::find;
use super::render::Format;
use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::control::connectors::tables::{self, Counts, Table};
use crate::state::TableState;

/// The contract of `connector tables --format json`: one object per table.
#[derive(Serialize)]
struct TableView<'a> {
    /// `schema.name`, unquoted.
    table: String,
    schema: &'a str,
    name: &'a str,
    /// `pending`, `copying`, `copied`, `streaming`, `needs_decision`, `failed` or
    /// `excluded`.
    state: &'static str,
    /// `include`, or why it is excluded: `exclude`, `add_pk`, `replica_identity_full`,
    /// `unlogged`.
    decision: &'a str,
    /// The source position (LSN) its last complete copy is exact at.
    copied_at: Option<String>,
    copies: u32,
    rows_copied: u64,
    bytes_copied: u64,
    problem: Option<&'a str>,
    next_step: Option<&'a str>,
}

pub async fn run(bookkeeping: &Bookkeeping, name: &str, format: Format) -> Result<(), Failure> {
    let connector = find(bookkeeping, name).await?;
    let tables = tables::list(bookkeeping, &connector).await?;
    if format == Format::Json {
        let views: Vec<TableView<'_>> = tables.iter().map(view).collect();
        say!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if tables.is_empty() {
        say!(
            "{} has no tables yet: its first snapshot lists them (`tributary status` shows \
             where it is)",
            connector.name
        );
        return Ok(());
    }
    let width = tables
        .iter()
        .map(|t| t.table.to_string().chars().count())
        .max()
        .unwrap_or(0)
        .max("TABLE".len());
    say!(
        "{:<width$}  {:<34}  {:<18}  {:>6}  {:>12}",
        "TABLE",
        "STATE",
        "COPIED AT",
        "COPIES",
        "ROWS COPIED"
    );
    for t in &tables {
        let copied_at = t
            .copied_at
            .map_or_else(|| "-".to_owned(), |l| l.to_string());
        say!(
            "{:<width$}  {:<34}  {:<18}  {:>6}  {:>12}",
            t.table.to_string(),
            shown_state(t),
            copied_at,
            t.copies,
            t.rows_copied
        );
        if let Some(problem) = &t.problem {
            say!("    problem: {problem}");
        }
        if let Some(next) = &t.next_step {
            say!("    next step: {next}");
        }
    }
    say!();
    say!("{}", summary(&Counts::of(&tables)));
    Ok(())
}

fn view(t: &Table) -> TableView<'_> {
    TableView {
        table: t.table.to_string(),
        schema: &t.table.schema,
        name: &t.table.name,
        state: t.state.as_str(),
        decision: &t.decision,
        copied_at: t.copied_at.map(|l| l.to_string()),
        copies: t.copies,
        rows_copied: t.rows_copied,
        bytes_copied: t.bytes_copied,
        problem: t.problem.as_deref(),
        next_step: t.next_step.as_deref(),
    }
}

/// The state column: an excluded table with its decision (`excluded (add_pk)`), an
/// unlogged one as `unlogged`.
fn shown_state(t: &Table) -> String {
    match t.state {
        TableState::Excluded if t.decision == crate::bookkeeping::UNLOGGED_TABLE => {
            t.decision.clone()
        }
        TableState::Excluded => format!("excluded ({})", t.decision),
        state => state.as_str().to_owned(),
    }
}

/// `N tables: 3 streaming, 1 copying, 2 excluded`: the states that have tables.
fn summary(counts: &Counts) -> String {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    format!(
        "{total} table{}: {}",
        if total == 1 { "" } else { "s" },
        by_state(counts)
    )
}

/// `1 copying, 2 pending`: the states that have tables, `only` those.
fn by_state_of(counts: &Counts, only: impl Fn(TableState) -> bool) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|&(state, n)| n > 0 && only(state))
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    parts.join(", ")
}

fn by_state(counts: &Counts) -> String {
    by_state_of(counts, |_| true)
}

/// The tables of a connector in `connector list --format json` and `status --format
/// json`.
#[derive(Serialize)]
pub struct TablesView {
    /// Tables per state, every state present (`excluded`: not replicated).
    by_state: BTreeMap<&'static str, usize>,
    /// Replicated tables that are not streaming.
    not_streaming: usize,
    /// `status` only: the first of them (at most 10), each with its state.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_streaming_tables: Option<Vec<NamedTable>>,
    /// The text line (`None`: every replicated table streams).
    #[serde(skip)]
    line: Option<String>,
}

#[derive(Serialize)]
struct NamedTable {
    table: String,
    state: &'static str,
}

impl TablesView {
    /// For `connector list`: the counts, and a line when a replicated table is not
    /// streaming.
    pub fn counted(connector: &str, tables: &[Table]) -> TablesView {
        TablesView::new(connector, tables, false)
    }

    /// For `status`: also the first tables not streaming, by name.
    pub fn named(connector: &str, tables: &[Table]) -> TablesView {
        TablesView::new(connector, tables, true)
    }

    fn new(connector: &str, tables: &[Table], named: bool) -> TablesView {
        let counts = Counts::of(tables);
        let first = tables::not_streaming(tables, tables::NOT_STREAMING_NAMED);
        let not_streaming = counts.not_streaming();
        let line = (not_streaming > 0).then(|| {
            let replicated =
                counts.iter().map(|(_, n)| n).sum::<usize>() - counts.get(TableState::Excluded);
            let states = by_state_of(&counts, |s| {
                !matches!(s, TableState::Streaming | TableState::Excluded)
            });
            let which = if named {
                let mut names: Vec<String> = first
                    .iter()
                    .map(|t| format!("{} ({})", t.table, t.state))
                    .collect();
                if not_streaming > names.len() {
                    names.push(format!("and {} more", not_streaming - names.len()));
                }
                format!(": {}", names.join(", "))
            } else {
                String::new()
            };
            format!(
                "tables not streaming: {not_streaming} of {replicated} ({states}){which}; \
                 `tributary connector tables {connector}` lists them"
            )
        });
        TablesView {
            by_state: counts.iter().map(|(s, n)| (s.as_str(), n)).collect(),
            not_streaming,
            not_streaming_tables: named.then(|| {
                first
                    .iter()
                    .map(|t| NamedTable {
                        table: t.table.to_string(),
                        state: t.state.as_str(),
                    })
                    .collect()
            }),
            line,
        }
    }

    /// The text line, when a replicated table is not streaming.
    pub fn line(&self) -> Option<&str> {
        self.line.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::TableName;

    fn table(name: &str, state: TableState, decision: &str) -> Table {
        let name = TableName {
            schema: "public".to_owned(),
            name: name.to_owned(),
        };
        Table::new(name, state, decision)
    }

    #[test]
    fn excluded_tables_show_why() {
        let cases = [
            (TableState::Streaming, "include", "streaming"),
            (TableState::NeedsDecision, "include", "needs_decision"),
            (TableState::Excluded, "add_pk", "excluded (add_pk)"),
            (TableState::Excluded, "exclude", "excluded (exclude)"),
            (TableState::Excluded, "unlogged", "unlogged"),
        ];
        for (state, decision, shown) in cases {
            assert_eq!(shown_state(&table("t", state, decision)), shown);
        }
    }

    #[test]
    fn the_summary_names_the_states_that_have_tables() {
        let mut tables = vec![
            table("a", TableState::Streaming, "include"),
            table("b", TableState::Streaming, "include"),
            table("c", TableState::Copying, "include"),
            table("d", TableState::Excluded, "exclude"),
        ];
        assert_eq!(
            summary(&Counts::of(&tables)),
            "4 tables: 1 copying, 2 streaming, 1 excluded"
        );
        assert_eq!(summary(&Counts::of(&tables[..1])), "1 table: 1 streaming");

        // Every replicated table streams: no line, whatever is excluded.
        let streaming = TablesView::named("shop", &[tables[0].clone(), tables[3].clone()]);
        assert_eq!(streaming.line(), None);
        assert_eq!(streaming.not_streaming, 0);

        let counted = TablesView::counted("shop", &tables);
        assert_eq!(
            counted.line(),
            Some(
                "tables not streaming: 1 of 3 (1 copying); `tributary connector tables shop` \
                 lists them"
            )
        );
        assert!(counted.not_streaming_tables.is_none());
        assert_eq!(counted.by_state.len(), TableState::ALL.len());

        // Past the cap, status names the first ones and counts the rest.
        for i in 0..11 {
            tables.push(table(&format!("p{i:02}"), TableState::Pending, "include"));
        }
        let named = TablesView::named("shop", &tables);
        let line = named.line().unwrap();
        assert!(
            line.starts_with(
                "tables not streaming: 12 of 14 (11 pending, 1 copying): public.c (copying), \
                 public.p00 (pending),"
            ),
            "{line}"
        );
        assert!(line.contains("public.p08 (pending), and 2 more;"), "{line}");
        assert_eq!(named.not_streaming_tables.as_ref().unwrap().len(), 10);
    }
}
