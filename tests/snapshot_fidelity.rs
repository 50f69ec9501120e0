//! Values whose binary COPY form does not carry over to another server: object references
//! (`regclass` and its kin, raw OIDs in binary) and `tsquery` (an empty query's binary
//! form is not read back). The snapshot copies them so that the replica equals the source,
//! as the application's owner wrote them and as a least-privilege source role reads them.
//! And a snapshot held up by a prepared transaction says so, naming it.

use crate::daemon::{content, wait_converged, wait_replica, Daemon};
use crate::harness::Cluster;
use crate::support::eventually;

/// The application's objects, created and written by its owner role (not a superuser).
/// Throwaway tables first, so that the source's OIDs are not the replica's.
const APP: &str = r#"
CREATE TABLE public.filler_1 (a int); CREATE TABLE public.filler_2 (a int);
CREATE TABLE public.filler_3 (a int); CREATE TABLE public.filler_4 (a int);
CREATE ROLE app_owner NOLOGIN;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TYPE app.mood AS ENUM ('ok', 'meh');
CREATE FUNCTION app.same(a int, b int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT a = b';
CREATE OPERATOR app.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = app.same);
CREATE TEXT SEARCH DICTIONARY app.dict (TEMPLATE = simple);
CREATE TEXT SEARCH CONFIGURATION app.cfg (COPY = english);
CREATE COLLATION app.coll FROM "C";
CREATE TABLE app.refs (
    id int PRIMARY KEY,
    c_class regclass, c_type regtype, c_proc regproc, c_procedure regprocedure,
    c_oper regoper, c_operator regoperator, c_config regconfig, c_dictionary regdictionary,
    c_namespace regnamespace, c_role regrole, c_collation regcollation, c_classes regclass[],
    note text
);
CREATE TABLE app.queries (id int PRIMARY KEY, q tsquery, qs tsquery[], v tsvector);
CREATE TABLE app.plain (id int PRIMARY KEY, payload text);
INSERT INTO app.refs
SELECT g, 'app.queries', 'app.mood', 'app.same', 'app.same(integer,integer)',
       'app.===', 'app.===(integer,integer)', 'app.cfg', 'app.dict', 'app',
       'pg_monitor', 'app.coll', ARRAY['app.refs', 'app.plain']::regclass[],
       repeat('x', 100)
  FROM generate_series(1, 20000) g;
INSERT INTO app.refs (id, c_class, c_type, c_proc, c_procedure, c_oper, c_operator, c_config,
                      c_dictionary, c_namespace, c_role, c_collation)
VALUES (0, 'pg_class', 'int4', 'now', 'abs(integer)', '||/', '+(integer,integer)', 'english',
        'simple', 'pg_catalog', 'postgres', '"C"');
INSERT INTO app.queries VALUES
    (1, to_tsquery('english', 'the'), ARRAY[to_tsquery('english', 'a'), 'x & y'], ''),
    (2, 'fat & (rat | cat)', NULL, 'a fat cat'),
    (3, NULL, '{}', NULL);
INSERT INTO app.plain SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
RESET ROLE;
"#;

/// tributary's source role: REPLICATION and SELECT (and what preflight requires).
const SOURCE_ROLE: &str = "
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_references_and_empty_tsqueries_copy_as_the_source_has_them() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", APP);
    source.psql("postgres", SOURCE_ROLE);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some("repl pw"), "postgres"),
        "app",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;
    wait_replica(&source, &store, "app", &["app"], &daemon).await;
    // The names as the replica resolves them, not only their text.
    assert_eq!(
        store.psql(
            "app_replica",
            "SELECT c_class = 'app.queries'::regclass AND c_type = 'app.mood'::regtype
                    AND c_config = 'app.cfg'::regconfig AND c_classes[2] = 'app.plain'::regclass
               FROM app.refs WHERE id = 1"
        ),
        "t"
    );

    // Rows that arrive by streaming too.
    source.psql(
        "postgres",
        "SET ROLE app_owner;
         INSERT INTO app.refs (id, c_class, c_role) VALUES (-1, 'app.plain', 'pg_monitor');
         INSERT INTO app.queries VALUES (4, to_tsquery('english', 'an'), NULL, NULL);",
    );
    wait_replica(&source, &store, "app", &["app"], &daemon).await;
    assert_eq!(
        content(&source, "postgres", &["app"]).len(),
        3,
        "every table compared"
    );
}

/// A `regrole` naming a role the branch store lacks (roles belong to a server) cannot be
/// copied: the snapshot stops, and its error says which table and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_to_a_role_the_store_lacks_fails_saying_what_to_do() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql(
        "postgres",
        "CREATE ROLE app_owner NOLOGIN;
         CREATE SCHEMA app AUTHORIZATION app_owner;
         SET ROLE app_owner;
         CREATE TABLE app.grants (id int PRIMARY KEY, grantee regrole);
         INSERT INTO app.grants VALUES (1, 'app_owner');
         RESET ROLE;",
    );
    source.psql("postgres", SOURCE_ROLE);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some("repl pw"), "postgres"),
        "app",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("app", "failed").await;
    let connector = daemon.connector("app");
    let error = connector["last_error"].as_str().unwrap();
    assert!(
        error.contains("writing app.grants failed on a value"),
        "{error}"
    );
    assert!(
        error.contains("role \"app_owner\" does not exist"),
        "{error}"
    );
    assert!(
        error.contains("create the role on the branch-store server"),
        "{error}"
    );
}

/// A prepared transaction outlives its session: `pg_stat_activity` does not show it, yet
/// creating a slot waits for it. `connector create` (its preflight probe) and `status`
/// (while the daemon's slot waits) name it, with its owner and database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_prepared_transaction_is_named_by_create_and_status() {
    let source = Cluster::builder()
        .setting("max_prepared_transactions", 5)
        .start();
    let store = Cluster::start();
    source.psql(
        "postgres",
        "CREATE ROLE app_owner NOLOGIN;
         CREATE SCHEMA app AUTHORIZATION app_owner;
         SET ROLE app_owner;
         CREATE TABLE app.items (id int PRIMARY KEY);
         INSERT INTO app.items VALUES (1);",
    );
    source.psql("postgres", SOURCE_ROLE);
    let prepare = |gid: &str, id: i32| {
        source.psql(
            "postgres",
            &format!(
                "SET ROLE app_owner; BEGIN; INSERT INTO app.items VALUES ({id});
                 PREPARE TRANSACTION '{gid}';"
            ),
        );
    };
    let url = source.url("repl", Some("repl pw"), "postgres");
    let daemon = &mut Daemon::new(&store);

    prepare("checkout-42", 2);
    let create = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &url,
        "--name",
        "app",
        "--schemas",
        "app",
    ]);
    let out = String::from_utf8_lossy(&create.stdout).into_owned()
        + &String::from_utf8_lossy(&create.stderr);
    assert!(!create.status.success(), "{out}");
    for needle in [
        "pg_prepared_xacts",
        "'checkout-42' (owner app_owner, database postgres, prepared at ",
        "COMMIT PREPARED 'checkout-42' or ROLLBACK PREPARED 'checkout-42'",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    source.psql("postgres", "COMMIT PREPARED 'checkout-42'");

    // Created while nothing is pending; the daemon's slot then waits for one.
    daemon.create_connector(&url, "app", "app");
    prepare("refund-7", 3);
    daemon.start();
    let phase = eventually("status to say why the snapshot waits", || async {
        // Exit 1 until the daemon has taken the connector.
        let (_, status) = daemon.status();
        let phase = status[0]["phase"].as_str().unwrap_or_default().to_owned();
        phase
            .starts_with("waiting for the slot's consistent point")
            .then_some(phase)
    })
    .await;
    assert!(phase.contains("'refund-7' (owner app_owner"), "{phase}");
    assert!(!phase.contains("0 of 0"), "{phase}");
    assert_eq!(
        daemon.connector_state("app").as_deref(),
        Some("snapshotting")
    );

    source.psql("postgres", "COMMIT PREPARED 'refund-7'");
    daemon.wait_for_state("app", "streaming").await;
    wait_converged(&source, "postgres", &store, "app_replica", &["app"], daemon).await;
    assert_eq!(
        store.psql("app_replica", "SELECT count(*) FROM app.items"),
        "3"
    );
}
