//! Schema changes while streaming: captured with tributary's event triggers and replayed
//! in WAL order (installed by a superuser source role itself, or once by an operator for a
//! role without superuser), and reconciled as drift when nothing captures them. Each test
//! ends with the replica equal to the source: content checksums and column definitions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::{wait_converged, wait_replica, Daemon};
use crate::harness::Cluster;

/// Column definitions (type, nullability, default), indexes, views and functions of the
/// `schemas`, one line each, sorted.
pub(crate) fn definitions(cluster: &Cluster, db: &str, schemas: &[&str]) -> String {
    let list = schemas
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    cluster.psql(
        db,
        &format!(
            "SELECT x FROM (
               SELECT format('column %I.%I.%I %s %s %s', table_schema, table_name, column_name,
                             data_type, is_nullable, coalesce(column_default, '-')) AS x
                 FROM information_schema.columns WHERE table_schema IN ({list})
               UNION ALL
               SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('view %I.%I %s', schemaname, viewname, definition)
                 FROM pg_views WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('function %s', p.oid::regprocedure) FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ({list})
               UNION ALL
               SELECT format('constraint %I %s', conname, pg_get_constraintdef(c.oid))
                 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                -- PostgreSQL 18 records NOT NULL as constraints too; nullability is
                -- compared with the columns, on every version.
                WHERE n.nspname IN ({list}) AND c.contype <> 'n'
               UNION ALL
               SELECT format('trigger %s %s %s', tgname, tgenabled, pg_get_triggerdef(g.oid))
                 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname IN ({list}) AND NOT tgisinternal
               UNION ALL
               SELECT format('policy %I.%I %s %s', schemaname, tablename, policyname, qual)
                 FROM pg_policies WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('rule %I.%I %s', schemaname, tablename, definition)
                 FROM pg_rules WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('matview %I.%I %s', schemaname, matviewname, definition)
                 FROM pg_matviews WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('sequence %I.%I %s %s', schemaname, sequencename, start_value, increment_by)
                 FROM pg_sequences WHERE schemaname IN ({list})
               UNION ALL
               SELECT format('type %I.%I %s', n.nspname, t.typname, t.typtype)
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname IN ({list}) AND t.typtype IN ('c', 'd', 'e')
                  AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
               UNION ALL
               SELECT format('enum %s %s', t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder))
                 FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                 JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname IN ({list}) GROUP BY t.typname
             ) d ORDER BY x"
        ),
    )
}

/// Waits for `connector` to fail; its `connector list --format json` entry as text (the
/// error and the next step).
async fn failure(daemon: &Daemon, connector: &str) -> String {
    daemon.wait_for_state(connector, "failed").await;
    daemon.connector(connector).to_string()
}

/// The value of a counter of `connector` on the daemon's `/metrics`.
async fn counter(daemon: &Daemon, name: &str, connector: &str) -> u64 {
    let (_, metrics) = crate::metrics::get(daemon.metrics_addr().await, "/metrics");
    let series = format!("{name}{{connector=\"{connector}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Inserts into and updates `app.events` in a loop until stopped; returns how many
/// transactions it ran.
fn start_dml(
    source: &Cluster,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<u64>,
    Arc<AtomicU64>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let url = source.superuser_url("postgres");
    let (stop_flag, counter) = (stop.clone(), count.clone());
    let task = tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut n = 0u64;
        while !stop_flag.load(Ordering::Relaxed) {
            client
                .batch_execute(
                    "INSERT INTO app.events (kind, amount) VALUES ('tick', 1);
                     UPDATE app.events SET amount = amount + 1
                      WHERE id = (SELECT max(id) - 3 FROM app.events);",
                )
                .await
                .unwrap();
            n += 1;
            counter.store(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });
    (stop, task, count)
}

const SCHEMA: &str = "
CREATE SCHEMA app;
CREATE SCHEMA extra;
CREATE SCHEMA other;
CREATE TABLE app.events (id bigserial PRIMARY KEY, kind text NOT NULL, amount int NOT NULL);
CREATE TABLE app.accounts (id int PRIMARY KEY, name text, balance numeric(10,2));
INSERT INTO app.accounts SELECT g, 'acct ' || g, g * 1.5 FROM generate_series(1, 100) g;
INSERT INTO app.events (kind, amount) SELECT 'seed', g FROM generate_series(1, 50) g;
CREATE TABLE extra.notes (id int PRIMARY KEY, body text);
CREATE SCHEMA archive;
CREATE TABLE archive.old (id int PRIMARY KEY);
CREATE TABLE other.ignored (id int PRIMARY KEY);
";

/// Each step runs as one query string (several statements in one string are one
/// transaction, as a client sending them that way gets).
const STEPS: &[&str] = &[
    // Columns: add with a default (existing rows take it), rename, retype with USING,
    // defaults, NOT NULL, constraints; DDL and DML in one transaction.
    "ALTER TABLE app.accounts ADD COLUMN status text NOT NULL DEFAULT 'open'",
    "ALTER TABLE app.accounts RENAME COLUMN name TO display_name",
    "ALTER TABLE app.accounts ALTER COLUMN balance TYPE bigint USING (balance * 100)::bigint",
    "BEGIN; ALTER TABLE app.accounts ADD COLUMN tier int; \
     UPDATE app.accounts SET tier = id % 3; ALTER TABLE app.accounts ALTER COLUMN tier SET NOT NULL; \
     ALTER TABLE app.accounts ALTER COLUMN tier SET DEFAULT 1; COMMIT",
    "ALTER TABLE app.accounts ADD CONSTRAINT balance_positive CHECK (balance >= 0)",
    "ALTER TABLE app.accounts ADD CONSTRAINT display_name_unique UNIQUE (display_name)",
    "INSERT INTO app.accounts (id, display_name, balance) VALUES (101, 'late', 5)",
    "ALTER TABLE app.accounts DROP COLUMN status",
    // The table the DML loop writes to changes under it.
    "ALTER TABLE app.events ADD COLUMN note text DEFAULT 'n/a'",
    "CREATE INDEX events_kind ON app.events (kind)",
    "CREATE INDEX CONCURRENTLY events_note ON app.events (note)",
    "DROP INDEX CONCURRENTLY app.events_note",
    "DROP INDEX app.events_kind",
    // New tables replicate from their first row; renamed and re-created tables.
    "CREATE TABLE app.orders (id int PRIMARY KEY, account int REFERENCES app.accounts, total numeric)",
    "INSERT INTO app.orders SELECT g, g, g * 2.5 FROM generate_series(1, 40) g",
    "ALTER TABLE app.orders RENAME TO purchases",
    "UPDATE app.purchases SET total = total + 1 WHERE id < 10",
    "CREATE TABLE app.scratch (id int PRIMARY KEY, v text); INSERT INTO app.scratch VALUES (1, 'a')",
    "DROP TABLE app.scratch",
    "CREATE TABLE app.scratch (id text PRIMARY KEY, w int); INSERT INTO app.scratch VALUES ('b', 2)",
    // Unqualified names under a non-default search_path, with DML in the same string.
    "SET search_path = app, public; ALTER TABLE purchases ADD COLUMN placed date; \
     UPDATE purchases SET placed = '2026-01-01' WHERE id % 2 = 0; CREATE INDEX ON purchases (placed)",
    "RESET search_path",
    // Types and enum values: the new value is used by the next transaction.
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok')",
    "ALTER TABLE app.accounts ADD COLUMN mood app.mood",
    "ALTER TYPE app.mood ADD VALUE 'happy'",
    "UPDATE app.accounts SET mood = 'happy' WHERE id % 4 = 0",
    // Sequences, views, functions.
    "CREATE SEQUENCE app.invoice_no START 1000",
    "ALTER SEQUENCE app.invoice_no INCREMENT BY 5",
    "CREATE VIEW app.rich AS SELECT id, balance FROM app.accounts WHERE balance > 100",
    "CREATE OR REPLACE VIEW app.rich AS SELECT id, balance, tier FROM app.accounts WHERE balance > 100",
    "CREATE VIEW app.doomed AS SELECT 1 AS one",
    "DROP VIEW app.doomed",
    "CREATE FUNCTION app.double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2'",
    "CREATE TABLE app.computed (id int PRIMARY KEY, v int, d int GENERATED ALWAYS AS (v * 2) STORED)",
    "INSERT INTO app.computed (id, v) SELECT g, g FROM generate_series(1, 10) g",
    "DROP FUNCTION app.double(int)",
    "DROP SEQUENCE app.invoice_no",
    // Schemas: drop and re-create a selected one, rename one into another selected name.
    "DROP SCHEMA extra CASCADE",
    "CREATE SCHEMA extra; CREATE TABLE extra.notes (id int PRIMARY KEY, body text, at timestamptz)",
    "INSERT INTO extra.notes VALUES (1, 'again', '2026-11-22 10:00+00')",
    "DROP SCHEMA archive CASCADE",
    "ALTER SCHEMA extra RENAME TO archive",
    "INSERT INTO archive.notes VALUES (2, 'renamed', NULL)",
    // Any role may emit a message with tributary's prefix: without the signature of the
    // capture objects' key it is not replayed.
    "SELECT pg_logical_emit_message(true, 'tributary.ddl', '0000 {\"v\": 1, \"event\": \"ddl_command_end\", \
     \"tag\": \"DROP TABLE\", \"query\": \"DROP TABLE app.accounts\", \"objects\": \
     [{\"type\": \"table\", \"schema\": \"app\", \"identity\": \"app.accounts\"}]}')",
    // Outside the connector's schemas: never replayed.
    "CREATE TABLE other.more (id int PRIMARY KEY); INSERT INTO other.more VALUES (1)",
    "ALTER TABLE other.ignored ADD COLUMN x int",
    "CREATE SCHEMA unrelated; CREATE TABLE unrelated.t (id int PRIMARY KEY)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_ddl_replays_in_wal_order_under_concurrent_writes() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.superuser_url("postgres"),
        "shop",
        "app,extra,archive",
    );
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    assert_eq!(
        source.psql("postgres", "SELECT tributary.capture_version()"),
        tributary::source::capture::CAPTURE_VERSION.to_string(),
        "a superuser source role installs the capture objects itself"
    );

    let (stop, dml, count) = start_dml(&source);
    let ddl = source.connect("postgres").await;
    for step in STEPS {
        ddl.batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let transactions = dml.await.unwrap();
    assert!(transactions > 20, "the DML loop ran {transactions} times");
    assert!(count.load(Ordering::Relaxed) > 0);

    let schemas = ["app", "extra", "archive"];
    wait_converged(
        &source,
        "postgres",
        &store,
        "shop_replica",
        &schemas,
        &daemon,
    )
    .await;
    assert_eq!(
        definitions(&store, "shop_replica", &schemas),
        definitions(&source, "postgres", &schemas)
    );
    let replica_schemas = store.psql(
        "shop_replica",
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace \
          WHERE nspname IN ('other', 'unrelated', 'extra', 'archive', 'tributary')",
    );
    assert_eq!(
        replica_schemas, "archive,tributary",
        "DDL outside the connector's schemas is not replayed"
    );
    let replayed = counter(&daemon, "tributary_schema_changes_applied_total", "shop").await;
    assert!(replayed >= 35, "{replayed} schema changes replayed");

    // Deleting the last connector of that source removes the capture objects.
    daemon.cli_ok(&["connector", "delete", "shop"]);
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'tributary%'"
        ),
        "0"
    );
    assert_eq!(
        source.psql("postgres", "SELECT to_regnamespace('tributary') IS NULL"),
        "t"
    );
}

/// A replication role without superuser, as the issue's least-privilege setup has it.
const LEAST_PRIVILEGE: &str = "
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
GRANT USAGE ON SCHEMA app, extra, archive TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app, extra, archive TO repl;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA app, extra, archive TO repl;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_installed_once_by_a_superuser_serves_a_role_without_it() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    source.psql("postgres", LEAST_PRIVILEGE);
    let mut daemon = Daemon::new(&store);
    // The operator installs the objects once, as a superuser, from the printed SQL.
    let sql = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);
    source.psql("postgres", &sql); // idempotent
    let url = source.url("repl", Some("repl pw"), "postgres");
    let preflight = daemon.cli_ok(&[
        "connector",
        "preflight",
        "postgresql",
        &url,
        "--schemas",
        "app",
    ]);
    assert!(
        preflight.contains(&format!(
            "schema change capture installed (version {})",
            tributary::source::capture::CAPTURE_VERSION
        )),
        "{preflight}"
    );
    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;

    let (stop, dml, _) = start_dml(&source);
    let ddl = source.connect("postgres").await;
    for step in [
        "ALTER TABLE app.accounts ADD COLUMN status text NOT NULL DEFAULT 'open'",
        "CREATE TABLE app.orders (id int PRIMARY KEY, total numeric(8,2))",
        "INSERT INTO app.orders SELECT g, g / 3.0 FROM generate_series(1, 30) g",
        "ALTER TABLE app.events ALTER COLUMN amount TYPE bigint",
        "UPDATE app.events SET amount = 5000000000 WHERE id = 1",
        "ALTER TABLE app.accounts DROP COLUMN name",
    ] {
        ddl.batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    dml.await.unwrap();
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        definitions(&store, "shop_replica", &["app"]),
        definitions(&source, "postgres", &["app"])
    );
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'repl'"
        ),
        "f"
    );

    // An outdated version is reported with the SQL to upgrade it.
    source.psql(
        "postgres",
        "CREATE OR REPLACE FUNCTION tributary.capture_version() RETURNS integer \
         LANGUAGE sql IMMUTABLE AS 'SELECT 0'",
    );
    let out = daemon.cli(&["connector", "source-sql", "shop"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "installed at version 0, this tributary installs {}",
            tributary::source::capture::CAPTURE_VERSION
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("CREATE OR REPLACE FUNCTION tributary.capture_ddl()"));

    // The role cannot remove what a superuser installed: delete says what to run.
    let deleted = daemon.cli_ok(&["connector", "delete", "shop"]);
    assert!(
        deleted.contains("connector source-sql --uninstall"),
        "{deleted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_capture_added_and_dropped_columns_are_reconciled_as_drift() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    source.psql("postgres", LEAST_PRIVILEGE);
    let mut daemon = Daemon::new(&store);
    let url = source.url("repl", Some("repl pw"), "postgres");
    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    assert_eq!(
        source.psql("postgres", "SELECT to_regnamespace('tributary') IS NULL"),
        "t",
        "a role without superuser installs nothing"
    );

    let (stop, dml, _) = start_dml(&source);
    for step in [
        // Old rows read the ADD COLUMN's default; the current default differs.
        "ALTER TABLE app.accounts ADD COLUMN status text NOT NULL DEFAULT 'open'",
        "ALTER TABLE app.accounts ALTER COLUMN status SET DEFAULT 'new'",
        "INSERT INTO app.accounts (id, name, balance) VALUES (101, 'late', 7)",
        "UPDATE app.accounts SET status = 'closed' WHERE id < 5",
        // A column the source drops: INSERTs lack it.
        "ALTER TABLE app.accounts DROP COLUMN name",
        "INSERT INTO app.accounts (id, balance) VALUES (102, 8)",
        // The DML loop's table gains a column under it.
        "ALTER TABLE app.events ADD COLUMN note text",
        "UPDATE app.events SET note = 'x' WHERE id % 10 = 0",
    ] {
        source.psql("postgres", step);
    }
    stop.store(true, Ordering::Relaxed);
    dml.await.unwrap();
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let columns = |cluster: &Cluster, db: &str| {
        cluster.psql(
            db,
            "SELECT string_agg(format('%s.%s %s %s %s', table_name, column_name, data_type, \
             is_nullable, column_default), ', ' ORDER BY table_name, ordinal_position) \
             FROM information_schema.columns WHERE table_schema = 'app'",
        )
    };
    assert_eq!(
        columns(&store, "shop_replica"),
        columns(&source, "postgres")
    );
    let drift = counter(&daemon, "tributary_schema_drift_total", "shop").await;
    assert!(drift >= 3, "{drift} tables reconciled");

    // A type change alone leaves every change fitting (a wider scale would be rounded):
    // the connector stops and names the statement.
    source.psql(
        "postgres",
        "ALTER TABLE app.accounts ALTER COLUMN balance TYPE numeric(12,3);
         INSERT INTO app.accounts (id, balance) VALUES (104, 1.234);",
    );
    let text = failure(&daemon, "shop").await;
    assert!(
        text.contains("is numeric(12,3) on the source and numeric(10,2) in the replica"),
        "{text}"
    );
    assert!(text.contains("retry-setup shop --resnapshot"), "{text}");
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--resnapshot", "--wait"]);
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;

    // A rename cannot be told from a drop and an add: the connector stops and names the
    // statement, and nothing after it is applied.
    source.psql(
        "postgres",
        "ALTER TABLE app.accounts RENAME COLUMN balance TO amount;
         INSERT INTO app.accounts (id, amount) VALUES (103, 9);",
    );
    let error = failure(&daemon, "shop").await;
    assert!(
        error.contains(r#"RENAME COLUMN \"balance\" TO \"amount\""#),
        "{error}"
    );
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM app.accounts WHERE id = 103"
        ),
        "0"
    );
    // The operator runs it, retries, and the connector converges.
    store.psql(
        "shop_replica",
        r#"ALTER TABLE "app"."accounts" RENAME COLUMN "balance" TO "amount""#,
    );
    daemon.cli_ok(&["connector", "retry-setup", "shop"]);
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;

    // A table dropped and re-created with the same columns: its changes would fit the
    // replica's old table, so the source's OIDs are watched.
    source.psql(
        "postgres",
        "DROP TABLE app.events;
         CREATE TABLE app.events (id bigserial PRIMARY KEY, kind text NOT NULL,
                                  amount int NOT NULL, note text);
         INSERT INTO app.events (id, kind, amount) VALUES (1000000, 'fresh', 1);",
    );
    let text = failure(&daemon, "shop").await;
    assert!(
        text.contains("app.events was dropped and re-created"),
        "{text}"
    );
    assert!(text.contains("retry-setup"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_stops_where_a_replay_would_lose_changes() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(&source.superuser_url("postgres"), "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;

    // A table without a key: wal2json would drop its UPDATEs and DELETEs unseen. A key
    // added in the same transaction is fine.
    source.psql(
        "postgres",
        "BEGIN; CREATE TABLE app.keyed_later (id int, v text);
         ALTER TABLE app.keyed_later ADD PRIMARY KEY (id); COMMIT;
         INSERT INTO app.keyed_later VALUES (1, 'a');",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let state = |table: &str| {
        store.psql(
            "postgres",
            &format!(
                "SELECT sync_state || ' ' || coalesce(problem, '') || ' / ' || \
                 coalesce(next_step, '') FROM tributary.connector_tables \
                 WHERE schema_name = 'app' AND table_name = '{table}'"
            ),
        )
    };
    let daemon_ref = &daemon;
    let wait_state = |table: &'static str, wanted: &'static str| {
        let state = &state;
        let daemon = daemon_ref;
        async move {
            let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
            loop {
                let now = state(table);
                if now.starts_with(wanted) {
                    return now;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "app.{table} never {wanted}: {now}\n{}",
                    daemon.log_tail()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };

    // A key added by a later transaction, before any UPDATE or DELETE: the table needs a
    // decision for a while, then is fine again, and nothing was lost.
    source.psql(
        "postgres",
        "CREATE TABLE app.keyed_after (id int, v text);
         INSERT INTO app.keyed_after VALUES (1, 'a');",
    );
    let text = wait_state("keyed_after", "needs_decision").await;
    assert!(
        text.contains("app.keyed_after without a primary key or replica identity"),
        "{text}"
    );
    source.psql(
        "postgres",
        "ALTER TABLE app.keyed_after ADD PRIMARY KEY (id);
         UPDATE app.keyed_after SET v = 'b';",
    );
    wait_state("keyed_after", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;

    // A table without a key that is updated: wal2json drops the UPDATE (with a warning).
    // That table alone is held out of the stream; the others stream on.
    source.psql(
        "postgres",
        "CREATE TABLE app.log (at timestamptz, line text);
         INSERT INTO app.log VALUES (now(), 'kept');",
    );
    wait_state("log", "needs_decision").await;
    source.psql(
        "postgres",
        "BEGIN; UPDATE app.log SET line = 'lost'; INSERT INTO app.accounts VALUES (300, 'in the same transaction', 1); COMMIT;
         INSERT INTO app.accounts VALUES (301, 'after', 1);",
    );
    let text = wait_state("log", "failed").await;
    assert!(text.contains("app.log"), "{text}");
    assert!(text.contains("connector resync"), "{text}");
    let accounts = "SELECT count(*) FROM app.accounts WHERE id IN (300, 301)";
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while store.psql("shop_replica", accounts) != "2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            daemon.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
    assert_eq!(
        store.psql("shop_replica", "SELECT line FROM app.log"),
        "kept",
        "held as it was before the lost change"
    );
    // Operators see it everywhere they look: the table list, status (not healthy, exit
    // 1), connector wait (exit 1 rather than waiting forever), /readyz and the metric.
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.cli_ok(&["connector", "tables", "shop", "--format", "json"]))
            .unwrap();
    let state_of = |name: &str| {
        let t = listed.iter().find(|t| t["table"] == name).unwrap();
        (t["state"].as_str().unwrap().to_owned(), t.clone())
    };
    let (log_state, log) = state_of("app.log");
    assert_eq!(log_state, "failed", "{log}");
    assert!(
        log["problem"].as_str().unwrap().contains("app.log"),
        "{log}"
    );
    assert!(
        log["next_step"]
            .as_str()
            .unwrap()
            .contains("connector resync"),
        "{log}"
    );
    let (accounts_state, accounts_row) = state_of("app.accounts");
    assert_eq!(accounts_state, "streaming", "{accounts_row}");
    assert!(accounts_row["copied_at"].is_string(), "{accounts_row}");
    let (healthy, views) = daemon.status();
    assert!(!healthy, "{views:?}");
    let view = &views[0];
    assert_eq!(view["tables"]["by_state"]["failed"], 1, "{view}");
    assert_eq!(
        view["tables"]["not_streaming_tables"][0]["table"], "app.log",
        "{view}"
    );
    assert!(
        view["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("app.log"),
        "{view}"
    );
    let text = daemon.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("tables not streaming: 1 of"), "{text}");
    let waited = daemon.cli(&["connector", "wait", "shop", "--timeout", "20"]);
    assert_eq!(waited.status.code(), Some(1), "{waited:?}");
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains("app.log"),
        "{waited:?}"
    );
    let addr = daemon.metrics_addr().await;
    crate::support::eventually("tributary_tables to count app.log failed", || async {
        let (_, body) = crate::metrics::get(addr, "/metrics");
        (crate::metrics::value(
            &body,
            r#"tributary_tables{connector="shop",state="failed"}"#,
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(crate::metrics::get(addr, "/readyz").0, 503);

    // A branch would hold app.log as it was: refused, naming it and the fix.
    let refused = daemon.cli(&["branch", "create", "during_trouble"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.contains("app.log"), "{refused}");
    assert!(refused.contains("connector resync"), "{refused}");

    // Fixed on the source, and copied again alone: it rejoins, the others untouched.
    source.psql("postgres", "ALTER TABLE app.log REPLICA IDENTITY FULL");
    let usage = daemon.cli(&["connector", "resync", "shop", "--table", "app.nope"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    daemon.cli_ok(&["connector", "resync", "shop", "--table", "app.log"]);
    daemon.cli_ok(&["connector", "wait", "shop"]);
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    wait_state("log", "streaming").await;
    let copies = store.psql(
        "shop_replica",
        "SELECT string_agg(table_name || ':' || copies, ',' ORDER BY table_name) \
           FROM tributary.table_sync",
    );
    assert_eq!(
        copies, "accounts:1,events:1,log:1",
        "only app.log copied again"
    );

    // DDL run from a DO block is not a statement of the query: the connector stops rather
    // than guess, and nothing after it is applied.
    source.psql(
        "postgres",
        "DO $$ BEGIN EXECUTE 'ALTER TABLE app.accounts ADD COLUMN hidden int'; END $$;
         INSERT INTO app.accounts VALUES (500, 'after', 1, 2);",
    );
    let text = failure(&daemon, "shop").await;
    assert!(text.contains("DO block"), "{text}");
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM app.accounts WHERE id = 500"
        ),
        "0"
    );
}
