//! Installing tributary on a source changes nothing for the source's own users. Played
//! with the roles of a real installation: a superuser installs the capture objects, the
//! application's owner (no superuser) runs migrations and grants, a reporting role reads,
//! tributary connects with REPLICATION + SELECT, and a native subscriber already follows a
//! `FOR ALL TABLES` publication.

use std::time::Duration;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;
use crate::schema_changes::definitions;
use crate::support::PATIENCE;

const ROLES: &str = "
CREATE ROLE app_owner LOGIN PASSWORD 'owner pw';
CREATE ROLE reporting LOGIN PASSWORD 'reporting pw';
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CREATE ON DATABASE postgres TO app_owner;
GRANT CREATE ON SCHEMA public TO app_owner;
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
";

/// Run by the application's owner: its schema, readable by tributary's role.
const APP: &str = "
CREATE SCHEMA app;
CREATE TABLE app.orders (id int PRIMARY KEY, amount numeric(10,2) NOT NULL);
INSERT INTO app.orders SELECT g, g * 1.25 FROM generate_series(1, 50) g;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO repl;
";

/// A migration as the application's owner runs it, one statement per query: every kind of
/// DDL a non-superuser runs, grants included.
const MIGRATION: &[&str] = &[
    "CREATE TEMP TABLE scratch (a int)",
    "CREATE FUNCTION app.double(x numeric) RETURNS numeric LANGUAGE sql AS 'SELECT x * 2'",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO reporting",
    "CREATE TABLE app.items (id int PRIMARY KEY, order_id int REFERENCES app.orders, qty int)",
    "GRANT SELECT ON app.orders TO reporting",
    "REVOKE SELECT ON app.orders FROM reporting",
    "GRANT SELECT, INSERT ON app.orders TO reporting",
    "GRANT USAGE ON SCHEMA app TO reporting",
    "ALTER TABLE app.orders ADD COLUMN note text",
    "CREATE INDEX orders_note ON app.orders (note)",
    "COMMENT ON TABLE app.orders IS 'customer orders'",
    "INSERT INTO app.items SELECT g, g, g % 7 FROM generate_series(1, 20) g",
    "UPDATE app.orders SET note = 'n' || id WHERE id % 3 = 0",
    "DROP FUNCTION app.double(numeric)",
    // A command of most tags of the event trigger matrix a non-superuser can run.
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok')",
    "ALTER TYPE app.mood ADD VALUE 'happy'",
    "CREATE TYPE app.pair AS (a int, b text)",
    "CREATE DOMAIN app.positive AS int CHECK (VALUE > 0)",
    "ALTER DOMAIN app.positive SET DEFAULT 1",
    "CREATE SEQUENCE app.ticket_seq START 100",
    "ALTER SEQUENCE app.ticket_seq INCREMENT BY 5",
    "CREATE TABLE app.tickets (id int PRIMARY KEY DEFAULT nextval('app.ticket_seq'),      mood app.mood, size app.positive, pair app.pair)",
    "INSERT INTO app.tickets (mood, size, pair) VALUES ('happy', 3, ROW(1, 'x'))",
    "CREATE VIEW app.big_orders AS SELECT id, amount FROM app.orders WHERE amount > 10",
    "ALTER VIEW app.big_orders RENAME TO large_orders",
    "CREATE MATERIALIZED VIEW app.order_count AS SELECT count(*) AS n FROM app.orders",
    "REFRESH MATERIALIZED VIEW app.order_count",
    "CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS      'BEGIN NEW.note := coalesce(NEW.note, ''touched''); RETURN NEW; END'",
    "CREATE TRIGGER orders_touch BEFORE INSERT ON app.orders FOR EACH ROW      EXECUTE FUNCTION app.touch()",
    "ALTER TRIGGER orders_touch ON app.orders RENAME TO orders_touched",
    "CREATE POLICY own_orders ON app.orders USING (amount > 0)",
    "ALTER POLICY own_orders ON app.orders RENAME TO positive_orders",
    "CREATE STATISTICS app.orders_stats ON id, amount FROM app.orders",
    "CREATE TEXT SEARCH CONFIGURATION app.english_copy (COPY = pg_catalog.english)",
    "CREATE AGGREGATE app.total(numeric) (SFUNC = numeric_add, STYPE = numeric)",
    "CREATE PROCEDURE app.noop() LANGUAGE sql AS 'SELECT 1'",
    "ALTER PROCEDURE app.noop() RENAME TO nothing",
    "CREATE RULE items_keep AS ON DELETE TO app.items WHERE old.qty < 0 DO INSTEAD NOTHING",
    "COMMENT ON COLUMN app.orders.note IS 'free text'",
    "ALTER TABLE app.items ADD CONSTRAINT qty_positive CHECK (qty >= 0) NOT VALID",
    "ALTER TABLE app.items VALIDATE CONSTRAINT qty_positive",
    "CREATE PUBLICATION app_pub FOR TABLE app.orders",
    "ALTER PUBLICATION app_pub ADD TABLE app.items",
    "DROP PUBLICATION app_pub",
    "INSERT INTO app.orders (id, amount) VALUES (1000, 5)",
    "DROP RULE items_keep ON app.items",
    "DROP STATISTICS app.orders_stats",
    "DROP POLICY positive_orders ON app.orders",
    "DROP VIEW app.large_orders",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_keeps_working_after_installation_and_nothing_it_does_stops_the_connector() {
    let source = Cluster::start();
    let store = Cluster::start();
    let subscriber = Cluster::start();
    source.psql("postgres", ROLES);
    let owner_url = source.url("app_owner", Some("owner pw"), "postgres");
    let reporting_url = source.url("reporting", Some("reporting pw"), "postgres");
    source.psql_conninfo(&owner_url, APP);

    // A native subscriber already follows every table of the source.
    source.psql("postgres", "CREATE PUBLICATION everything FOR ALL TABLES");
    subscriber.psql(
        "postgres",
        "CREATE SCHEMA app;
         CREATE TABLE app.orders (id int PRIMARY KEY, amount numeric(10,2) NOT NULL);",
    );
    subscriber.psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION follower CONNECTION 'host=127.0.0.1 port={} user=postgres \
             dbname=postgres' PUBLICATION everything",
            source.port()
        ),
    );
    wait_for(&subscriber, "SELECT count(*) FROM app.orders", "50").await;

    // A superuser installs the capture objects from the printed SQL.
    let mut daemon = Daemon::new(&store);
    let sql = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);

    // The publication publishes what it did before, and its subscriber keeps following.
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT string_agg(schemaname || '.' || tablename, ',') FROM pg_publication_tables \
              WHERE pubname = 'everything'"
        ),
        "app.orders"
    );
    source.psql("postgres", "INSERT INTO app.orders VALUES (51, 1), (52, 2)");
    wait_for(&subscriber, "SELECT count(*) FROM app.orders", "52").await;

    let url = source.url("repl", Some("repl pw"), "postgres");
    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;

    // The application's owner migrates, grants and revokes as before.
    let owner = source
        .try_connect_as("app_owner", Some("owner pw"), "postgres")
        .await
        .unwrap();
    for step in MIGRATION {
        owner
            .batch_execute(step)
            .await
            .unwrap_or_else(|e| panic!("as the application's owner, {step}: {e:?}"));
    }
    // Another role reads and writes what it was granted, with DDL of its own.
    source.psql_conninfo(
        &reporting_url,
        "SELECT count(*) FROM app.orders; INSERT INTO app.orders VALUES (53, 3);
         CREATE TEMP TABLE mine AS SELECT 1 AS one;",
    );

    // Nobody but superusers and tributary's role reads the signing key, and nobody makes
    // the capture function emit what it likes: not directly, not from inside a command.
    let key = source.try_psql_conninfo(&reporting_url, "SELECT key FROM tributary.capture_key");
    assert!(
        key.as_ref().is_err_and(|e| e.contains("permission denied")),
        "{key:?}"
    );
    let direct = source.try_psql_conninfo(
        &reporting_url,
        "SELECT tributary.emit('ddl_command_end', 'DROP TABLE', '[\"app\"]')",
    );
    assert!(
        direct
            .as_ref()
            .is_err_and(|e| e.contains("permission denied for function emit")),
        "{direct:?}"
    );
    let nested = source.try_psql_conninfo(
        &owner_url,
        "CREATE FUNCTION app.forge() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM tributary.emit('ddl_command_end', 'DROP TABLE', '[\"app\"]');
             RETURN 1;
         END $$;
         CREATE TABLE app.forged AS SELECT app.forge();",
    );
    assert!(
        nested
            .as_ref()
            .is_err_and(|e| e.contains("permission denied for function emit")),
        "{nested:?}"
    );
    source.psql_conninfo(&owner_url, "DROP FUNCTION app.forge()");

    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        definitions(&store, "shop_replica", &["app"]),
        definitions(&source, "postgres", &["app"])
    );
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_installation_upgrades_in_place_keeping_its_key_and_readers() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", ROLES);
    // What version 1 left: the signing key in a table, readable by tributary's role.
    source.psql(
        "postgres",
        "CREATE SCHEMA tributary;
         CREATE TABLE tributary.capture_key (key text NOT NULL);
         INSERT INTO tributary.capture_key VALUES ('the key of version 1');
         REVOKE ALL ON tributary.capture_key FROM PUBLIC;
         GRANT SELECT ON tributary.capture_key TO repl;",
    );
    let daemon = Daemon::new(&store);
    let sql = daemon.cli_ok(&["connector", "source-sql"]);
    source.psql("postgres", &sql);
    source.psql("postgres", &sql);
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT c.relkind::text || ' ' || k.key || ' ' \
                    || has_table_privilege('repl', c.oid, 'SELECT') \
                    || ' ' || has_table_privilege('reporting', c.oid, 'SELECT') \
               FROM tributary.capture_key k, pg_class c \
              WHERE c.oid = 'tributary.capture_key'::regclass"
        ),
        "m the key of version 1 true false"
    );
    // The key cannot be replaced by refreshing it.
    let refresh = source.try_psql_conninfo(
        &source.superuser_url("postgres"),
        "SET tributary.capture_seed = 'chosen'; REFRESH MATERIALIZED VIEW tributary.capture_key",
    );
    assert!(
        refresh
            .as_ref()
            .is_err_and(|e| e.contains("must not be refreshed")),
        "{refresh:?}"
    );

    // A dump of the source restores the key view empty (its REFRESH fails): everyone's
    // DDL still works there, and running the script again gives it a key.
    source.create_database("restored");
    let dump = std::process::Command::new(source.bindir().join("pg_dump"))
        .args(["-d", &source.superuser_url("postgres")])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let restore = source.try_psql_conninfo(
        &source.superuser_url("restored"),
        &format!(
            "\\set ON_ERROR_STOP 0\n{}",
            String::from_utf8_lossy(&dump.stdout)
        ),
    );
    assert!(restore.is_ok(), "{restore:?}");
    let restored = |sql: &str| {
        source.psql_conninfo(&source.url("app_owner", Some("owner pw"), "restored"), sql)
    };
    restored("CREATE TABLE app_table (id int PRIMARY KEY); DROP TABLE app_table;");
    source.psql("restored", &sql);
    assert_eq!(
        source.psql(
            "restored",
            "SELECT length(key) > 32 FROM tributary.capture_key"
        ),
        "t"
    );
    restored("CREATE TABLE app_table (id int PRIMARY KEY);");

    let uninstall = daemon.cli_ok(&["connector", "source-sql", "--uninstall"]);
    source.psql("postgres", &uninstall);
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tributary'"
        ),
        "0"
    );
}

/// Waits until `query` on `cluster` returns `expected`.
async fn wait_for(cluster: &Cluster, query: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = cluster.psql("postgres", query);
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{query} returned {got}, not {expected}; log:\n{}",
            cluster.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
