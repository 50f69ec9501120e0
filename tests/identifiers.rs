//! Names that need quoting everywhere: schema, table and column names with quotes (single
//! and double), spaces, mixed case, unicode, a dot, and SQL keywords go through the
//! snapshot (pg_dump patterns, the table of contents, COPY), the stream (wal2json's table
//! filter, the sink's statements) and a branch, and come out equal.

use crate::daemon::{content, wait_converged, Daemon};
use crate::harness::Cluster;

const SCHEMAS: &[&str] = &["Mixed Case ü", "select", "it's"];

const SOURCE_SCHEMA: &str = r#"
CREATE SCHEMA "Mixed Case ü";
CREATE SCHEMA "select";
CREATE SCHEMA "it's";
CREATE TABLE "Mixed Case ü"."Order Lines" (
    "Id" int PRIMARY KEY,
    "the ""quoted"" one" text,
    "ß ü 名前" int,
    "from" text,
    "a.b" text
);
CREATE INDEX "idx ""odd"" name" ON "Mixed Case ü"."Order Lines" ("from");
CREATE TABLE "select"."table" ("group" int, "where" text, PRIMARY KEY ("group"));
CREATE TABLE "select"."Keyless Ü" ("user" text, "limit" int);
ALTER TABLE "select"."Keyless Ü" REPLICA IDENTITY FULL;
CREATE TABLE "it's"."it's" ("it's" int PRIMARY KEY, "v" text);
CREATE SEQUENCE "select"."seq ""n"" ü";
CREATE TABLE "it's"."child" (
    id int PRIMARY KEY,
    parent int REFERENCES "select"."table" ("group"),
    "check" text
);
"#;

const WORKLOAD: &str = r#"
INSERT INTO "Mixed Case ü"."Order Lines"
    SELECT g, 'q"' || g || '''', g, 'f' || g, 'a.b' FROM generate_series(1, 200) g;
UPDATE "Mixed Case ü"."Order Lines" SET "from" = 'changed', "ß ü 名前" = -1 WHERE "Id" % 3 = 0;
UPDATE "Mixed Case ü"."Order Lines" SET "Id" = "Id" + 1000 WHERE "Id" % 7 = 0;
DELETE FROM "Mixed Case ü"."Order Lines" WHERE "Id" % 5 = 0;
INSERT INTO "select"."table" SELECT g, 'w' || g FROM generate_series(1, 50) g;
UPDATE "select"."table" SET "where" = 'moved' WHERE "group" < 10;
INSERT INTO "select"."Keyless Ü" SELECT 'u' || (g % 4), g % 4 FROM generate_series(1, 40) g;
UPDATE "select"."Keyless Ü" SET "limit" = 9 WHERE "user" = 'u1';
DELETE FROM "select"."Keyless Ü" WHERE "user" = 'u2';
INSERT INTO "it's"."it's" SELECT g, 'x''' || g FROM generate_series(1, 30) g;
DELETE FROM "it's"."it's" WHERE "it's" > 25;
INSERT INTO "it's"."child" SELECT g, g, 'c' FROM generate_series(1, 20) g;
SELECT nextval('"select"."seq ""n"" ü"') FROM generate_series(1, 42);
"#;

#[tokio::test]
async fn names_that_need_quoting_replicate_and_branch() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SOURCE_SCHEMA);
    // Some rows before the snapshot, the rest streamed.
    source.psql(
        "postgres",
        r#"INSERT INTO "Mixed Case ü"."Order Lines" VALUES (-1, 'before', 0, 'snap', 'x');
           INSERT INTO "select"."Keyless Ü" VALUES ('before', 1), ('before', 1);"#,
    );
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(&source.superuser_url("postgres"), "odd", &SCHEMAS.join(","));
    daemon.start();
    daemon.wait_for_state("odd", "streaming").await;
    source.psql("postgres", WORKLOAD);
    wait_converged(&source, "postgres", &store, "odd_replica", SCHEMAS, &daemon).await;
    let tables = content(&store, "odd_replica", SCHEMAS);
    assert_eq!(tables.len(), 5, "{tables:?}");
    assert!(
        tables.contains(&format!(
            "\"Mixed Case ü\".\"Order Lines\" {}",
            source.psql(
                "postgres",
                r#"SELECT count(*) || ' ' || md5(string_agg(md5(t::text), '' ORDER BY md5(t::text)))
                     FROM "Mixed Case ü"."Order Lines" t"#
            )
        )),
        "{tables:?}"
    );

    // The index with a quoted name came with post-data, the foreign key too.
    let replica_objects = store.psql(
        "odd_replica",
        r#"SELECT count(*) FROM pg_indexes WHERE indexname = 'idx "odd" name';
           SELECT count(*) FROM pg_constraint WHERE contype = 'f'
              AND conrelid = '"it''s"."child"'::regclass"#,
    );
    assert_eq!(replica_objects, "1\n1");

    // A branch of it, under a name with quotes, a space, upper case, non-ASCII letters and
    // a keyword: content equal, and the sequence set from the source.
    const BRANCH: &str = r#"Ünïcode "Branch" it's SELECT"#;
    let out = daemon.cli_ok(&["branch", "create", BRANCH, "--connector", "odd"]);
    wait_converged(&source, "postgres", &store, BRANCH, SCHEMAS, &daemon).await;
    assert_eq!(
        store.psql(BRANCH, r#"SELECT last_value FROM "select"."seq ""n"" ü""#),
        "42"
    );
    assert_eq!(
        store.psql(BRANCH, "SELECT name FROM tributary.branch"),
        BRANCH
    );
    // The printed URL leads to it.
    let url = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("url:"))
        .expect("create prints the branch's URL")
        .trim();
    assert_eq!(
        store.psql_conninfo(url, "SELECT current_database(); SELECT current_user"),
        format!("{BRANCH}\ntributary_branch_{BRANCH}"),
        "{out}"
    );
    let listed = daemon.cli_ok(&["branch", "list", "--format", "json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(listed.iter().any(|b| b["name"] == BRANCH), "{listed:?}");
    let again = daemon.cli(&["branch", "create", BRANCH, "--connector", "odd"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains(r#"`tributary branch reset 'Ünïcode "Branch" it'\''s SELECT'`"#),
        "{err}"
    );
    daemon.cli_ok(&["branch", "reset", BRANCH, "--force"]);
    assert_eq!(
        store.psql(BRANCH, r#"SELECT last_value FROM "select"."seq ""n"" ü""#),
        "42"
    );
    daemon.cli_ok(&["branch", "delete", BRANCH, "--force"]);
    assert_eq!(
        store.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                BRANCH.replace('\'', "''")
            )
        ),
        "0"
    );
}
