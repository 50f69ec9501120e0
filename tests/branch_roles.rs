//! A branch URL grants only that branch: each branch is owned by a login role of its own,
//! which can read, write and change its branch, and reaches no replica, no other branch and
//! not the bookkeeping. Played with a store role that is no superuser (CREATEDB,
//! CREATEROLE), logging in as the branch's role with its password (SCRAM), on PostgreSQL
//! 15, and on 16 and 17 (where role membership works differently).

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

const STORE_ROLE: &str = "tributary_store";
const STORE_PASSWORD: &str = "store pw";

/// The branch roles the tests make, which must log in with their password.
const BRANCH_ROLES: &str = "tributary_branch_dev,tributary_branch_other";

fn store_cluster(major: u32) -> Cluster {
    Cluster::builder()
        .major(major)
        .hba(&format!(
            "host all {BRANCH_ROLES} 127.0.0.1/32 scram-sha-256"
        ))
        .start()
}

/// A daemon whose branch-store role owns the control database `control` and has CREATEDB
/// and the right to set session_replication_role, but not (yet) CREATEROLE.
fn store_role_daemon(source: &Cluster, store: &Cluster) -> Daemon {
    store.psql(
        "postgres",
        &format!(
            "CREATE ROLE {STORE_ROLE} LOGIN CREATEDB PASSWORD '{STORE_PASSWORD}';
             CREATE DATABASE control OWNER {STORE_ROLE};
             GRANT SET ON PARAMETER session_replication_role TO {STORE_ROLE};"
        ),
    );
    let mut daemon = Daemon::new(store);
    daemon
        .set(
            "TRIBUTARY__STORE__URL",
            &store.url(STORE_ROLE, Some(STORE_PASSWORD), "control"),
        )
        .set(
            "TRIBUTARY_PG_BINDIR",
            &source.bindir().display().to_string(),
        );
    daemon
}

fn run(daemon: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let output = daemon.cli(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn create_json(daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["branch", "create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    serde_json::from_str(&daemon.cli_ok(&all)).unwrap()
}

/// The same URL for another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{database}?{query}")
}

/// Runs `sql` logged in with `url`: psql's output, or its error.
fn as_url(store: &Cluster, url: &str, sql: &str) -> Result<String, String> {
    store.try_psql_conninfo(url, sql)
}

#[track_caller]
fn refused(store: &Cluster, url: &str, sql: &str, says: &str) {
    let err = as_url(store, url, sql).expect_err(sql);
    assert!(err.contains(says), "{sql}: {err}");
}

async fn a_branch_url_grants_only_that_branch(major: u32) {
    let source = Cluster::start();
    let store = store_cluster(major);
    source.psql(
        "postgres",
        "CREATE TABLE t (id serial PRIMARY KEY, v text);
         INSERT INTO t (v) SELECT 'v' || g FROM generate_series(1, 100) g;
         CREATE SCHEMA sales;
         CREATE TYPE sales.mood AS ENUM ('ok', 'bad');
         CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                    mood sales.mood);
         CREATE VIEW sales.recent AS SELECT * FROM sales.orders;
         CREATE FUNCTION sales.twice(int) RETURNS int LANGUAGE sql AS 'SELECT 2 * $1';",
    );
    let mut daemon = store_role_daemon(&source, &store);
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("postgres"),
        "--name",
        "app",
        "--schemas",
        "public,sales",
    ]);
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;
    wait_replica(&source, &store, "app", &["public", "sales"], &daemon).await;

    // Without CREATEROLE: what is wrong, and the statement that fixes it; nothing made.
    let (code, _, err) = run(&daemon, &["branch", "create", "dev"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("may not create roles")
            && err.contains(&format!("ALTER ROLE \"{STORE_ROLE}\" CREATEROLE;")),
        "{err}"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'dev'"
        ),
        "0"
    );
    store.psql("postgres", &format!("ALTER ROLE {STORE_ROLE} CREATEROLE"));

    let dev = create_json(&daemon, &["dev"]);
    for key in ["name", "connector", "database", "lsn", "url"] {
        assert!(dev[key].is_string(), "{key}: {dev}");
    }
    assert_eq!(dev["name"], "dev");
    assert_eq!(dev["connector"], "app");
    assert_eq!(dev["database"], "dev");
    assert_eq!(dev["role"], "tributary_branch_dev");
    assert_eq!(dev["access"], "own_role");
    let url = dev["url"].as_str().unwrap().to_owned();
    let prefix = "postgresql://tributary_branch_dev:";
    assert!(url.starts_with(prefix), "{url}");
    let password = url[prefix.len()..].split('@').next().unwrap().to_owned();
    assert_eq!(password.len(), 32, "{url}");
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()), "{url}");
    assert_eq!(
        dev["lsn"].as_str().unwrap(),
        store.psql("dev", "SELECT lsn FROM tributary.branch")
    );

    // The password is needed (SCRAM), and the right one works.
    refused(
        &store,
        &url.replace(&password, "wrong"),
        "SELECT 1",
        "password authentication failed",
    );
    // Read, write, change the schema: every object of the branch is the role's.
    assert_eq!(
        as_url(
            &store,
            &url,
            "SELECT current_user, count(*) FROM t;
             INSERT INTO t (v) VALUES ('mine');
             INSERT INTO sales.orders (mood) VALUES ('ok');
             SELECT sales.twice(21);
             ALTER TABLE t ADD COLUMN extra int;
             CREATE TABLE scratch (x int);
             CREATE SCHEMA play;
             DROP VIEW sales.recent;
             TRUNCATE tributary.applied;
             SELECT count(*) FROM t;"
        )
        .unwrap(),
        "tributary_branch_dev|100\n42\n101"
    );
    assert_eq!(
        store.psql(
            "dev",
            &format!(
                "SELECT coalesce(string_agg(c.relname, ', '), 'none') FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relowner = '{STORE_ROLE}'::regrole AND n.nspname !~ '^pg_'
                   AND n.nspname <> 'information_schema'"
            ),
        ),
        "none",
        "objects the store's role still owns in the branch"
    );
    assert_eq!(
        store.psql(
            "dev",
            "SELECT datdba::regrole::text FROM pg_database WHERE datname = 'dev'"
        ),
        "tributary_branch_dev"
    );

    // Another branch, and a branch as made before branches had roles (the store's role
    // owns it): neither is reachable with dev's URL.
    let other = create_json(&daemon, &["other"]);
    let other_url = other["url"].as_str().unwrap().to_owned();
    assert!(as_url(&store, &other_url, "SELECT 1").is_ok());
    for database in ["other", "app_replica", "control", "dev_missing"] {
        let says = if database == "dev_missing" {
            "does not exist"
        } else {
            "permission denied for database"
        };
        refused(&store, &with_database(&url, database), "SELECT 1", says);
    }
    refused(
        &store,
        &with_database(&other_url, "dev"),
        "SELECT 1",
        "permission denied",
    );
    // Nor can it drop another branch, or make itself more.
    refused(&store, &url, "DROP DATABASE other", "must be owner");
    refused(&store, &url, "DROP DATABASE app_replica", "must be owner");
    refused(&store, &url, "CREATE ROLE sneaky", "permission denied");
    refused(&store, &url, "CREATE DATABASE sneaky", "permission denied");
    refused(
        &store,
        &url,
        &format!("SET ROLE {STORE_ROLE}"),
        "permission denied",
    );

    // `branch url` prints the same URL again; `branch list` never a password; the
    // bookkeeping holds it sealed only.
    assert_eq!(
        daemon
            .cli_ok(&["branch", "url", "dev"])
            .lines()
            .next()
            .unwrap(),
        url
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["branch", "url", "dev", "--format", "json"]))
            .unwrap();
    assert_eq!(json["url"], url.as_str());
    for format in ["text", "json"] {
        let list = daemon.cli_ok(&["branch", "list", "--format", format]);
        assert!(!list.contains(&password), "{list}");
        assert!(list.contains("tributary_branch_dev"), "{list}");
    }
    assert_eq!(
        store.psql(
            "control",
            &format!(
                "SELECT count(*) FROM tributary.branches
                  WHERE position(convert_to('{password}', 'UTF8') IN password_ciphertext) > 0
                     OR row(tributary.branches.*)::text LIKE '%{password}%'"
            ),
        ),
        "0"
    );
    assert_eq!(
        store.psql(
            "control",
            "SELECT count(*) FROM tributary.branches WHERE password_ciphertext IS NOT NULL"
        ),
        "2"
    );

    // Reset: a new copy, the same role and URL.
    source.psql("postgres", "INSERT INTO t (v) VALUES ('after')");
    wait_replica(&source, &store, "app", &["public", "sales"], &daemon).await;
    daemon.cli_ok(&["branch", "reset", "dev", "--force"]);
    assert_eq!(
        as_url(
            &store,
            &url,
            "SELECT count(*) FROM t WHERE v = 'after'; CREATE TABLE again (x int)"
        )
        .unwrap(),
        "1"
    );
    refused(
        &store,
        &with_database(&url, "other"),
        "SELECT 1",
        "permission denied",
    );

    // A branch from before branch roles: kept working with the store's role, and said so.
    store.psql(
        "control",
        "UPDATE tributary.branches
            SET role_name = NULL, role_created = NULL, password_ciphertext = NULL
          WHERE name = 'other'",
    );
    let legacy = daemon.cli_ok(&["branch", "url", "other"]);
    assert!(
        legacy.contains(&format!("postgresql://{STORE_ROLE}:****@"))
            && legacy.contains("made before branches had roles of their own"),
        "{legacy}"
    );
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.cli_ok(&["branch", "list", "--format", "json"])).unwrap();
    let entry = listed.iter().find(|b| b["name"] == "other").unwrap();
    assert!(
        entry["role"].is_null() && entry["access"] == "store_role",
        "{entry}"
    );
    // As such a branch was made: the store's role owns it and PUBLIC may connect. The next
    // branch created closes it.
    store.psql(
        "postgres",
        &format!(
            "ALTER DATABASE other OWNER TO {STORE_ROLE}; GRANT CONNECT ON DATABASE other TO PUBLIC"
        ),
    );

    // --owner: a role the team manages owns the branch; no password is known or printed,
    // and the role outlives the branch.
    store.psql("postgres", "CREATE ROLE team LOGIN");
    if major >= 16 {
        // The store's role needs SET and INHERIT on a role it did not create.
        let (code, _, err) = run(&daemon, &["branch", "create", "shared", "--owner", "team"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "GRANT \"team\" TO \"{STORE_ROLE}\" WITH INHERIT TRUE, SET TRUE;"
            )),
            "{err}"
        );
        store.psql(
            "postgres",
            &format!("GRANT team TO {STORE_ROLE} WITH INHERIT TRUE, SET TRUE"),
        );
    }
    let shared = create_json(&daemon, &["shared", "--owner", "team"]);
    assert_eq!(shared["access"], "owner");
    let shared_url = shared["url"].as_str().unwrap();
    assert!(
        shared_url.starts_with(&format!(
            "postgresql://team@127.0.0.1:{}/shared?",
            store.port()
        )),
        "{shared_url}"
    );
    assert_eq!(
        store.psql(
            "shared",
            "SELECT datdba::regrole::text || ' ' || (SELECT relowner::regrole::text FROM pg_class WHERE relname = 't')
               FROM pg_database WHERE datname = 'shared'"
        ),
        "team team"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT has_database_privilege('public', 'other', 'CONNECT')"
        ),
        "f",
        "a branch made before branch roles is closed to PUBLIC"
    );
    daemon.cli_ok(&["branch", "delete", "shared"]);
    // The bookkeeping does not know `other`'s role as tributary's any more: kept.
    daemon.cli_ok(&["branch", "delete", "other", "--force"]);
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'tributary_branch_other'"
        ),
        "1"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'team'"
        ),
        "1"
    );
    let (code, _, err) = run(
        &daemon,
        &["branch", "create", "mine", "--owner", STORE_ROLE],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the branch store's own role"), "{err}");
    // A superuser owner would make the store's role one: refused, nothing granted.
    let (code, _, err) = run(
        &daemon,
        &[
            "branch",
            "create",
            "mine",
            "--owner",
            crate::harness::SUPERUSER,
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is a superuser"), "{err}");
    assert_eq!(
        store.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                  WHERE r.rolname = '{STORE_ROLE}'
                    AND m.roleid = (SELECT oid FROM pg_roles WHERE rolname = '{}')",
                crate::harness::SUPERUSER
            )
        ),
        "0"
    );

    // Delete drops the branch's role: the URL logs in no more.
    daemon.cli_ok(&["branch", "delete", "dev", "--force"]);
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'tributary_branch_dev'"
        ),
        "0"
    );
    assert!(as_url(&store, &url, "SELECT 1").is_err());
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    assert!(
        !log.contains(&password),
        "the password is in the daemon's log"
    );
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_url_grants_only_that_branch_on_15() {
    a_branch_url_grants_only_that_branch(15).await;
}

// 16: the first with CREATEROLE's new rules (ADMIN, but neither SET nor INHERIT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_url_grants_only_that_branch_on_16() {
    a_branch_url_grants_only_that_branch(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_url_grants_only_that_branch_on_17() {
    a_branch_url_grants_only_that_branch(17).await;
}

/// A superuser store role whose bookkeeping lives in a database it does not own (`postgres`,
/// the bootstrap superuser's): that database is left open, with the statement for its owner
/// named; even connected there, a branch's role cannot read or touch the bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookkeeping_database_the_store_role_does_not_own_is_named_not_closed() {
    let source = Cluster::start();
    let store = store_cluster(crate::harness::Install::default().major);
    source.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
    );
    store.psql(
        "postgres",
        "CREATE ROLE admin LOGIN SUPERUSER PASSWORD 'admin pw'",
    );
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY__STORE__URL",
        &store.url("admin", Some("admin pw"), "postgres"),
    );
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("postgres"),
        "--name",
        "app",
    ]);
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;

    let out = daemon.cli_ok(&["branch", "create", "dev"]);
    assert!(
        out.contains("warning: every role may connect to database postgres")
            && out.contains("REVOKE CONNECT, TEMPORARY ON DATABASE \"postgres\" FROM PUBLIC;"),
        "{out}"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT has_database_privilege('public', 'postgres', 'CONNECT')"
        ),
        "t"
    );
    let url = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("url:"))
        .expect("create prints the branch's URL")
        .trim()
        .to_owned();
    assert_eq!(as_url(&store, &url, "SELECT count(*) FROM t").unwrap(), "1");
    let bookkeeping = with_database(&url, "postgres");
    for sql in [
        "SELECT count(*) FROM tributary.leases",
        "DELETE FROM tributary.leases",
        "UPDATE tributary.branches SET state = 'failed'",
    ] {
        refused(
            &store,
            &bookkeeping,
            sql,
            "permission denied for schema tributary",
        );
    }
    refused(
        &store,
        &with_database(&url, "app_replica"),
        "SELECT 1",
        "permission denied for database",
    );
    daemon.terminate();
}
