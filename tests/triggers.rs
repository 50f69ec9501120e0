//! Triggers the source enables ALWAYS or REPLICA fire under `session_replication_role =
//! replica`: the replica holds them disabled (it must equal the source: no audit row twice,
//! no timestamp rewritten) and a branch has them as the source does, schema changes to
//! their states included.

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

/// The application's schema, created and written by its owner role: an audit trigger and
/// a timestamp trigger enabled ALWAYS, a REPLICA trigger, an ordinary and a disabled one.
const APP: &str = r#"
CREATE ROLE app_owner NOLOGIN;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TABLE app.accounts (id int PRIMARY KEY, balance int NOT NULL, stamped timestamptz);
CREATE TABLE app.audit (id bigserial PRIMARY KEY, account int NOT NULL, op text NOT NULL);
CREATE TABLE app.notes (id int PRIMARY KEY, note text NOT NULL);
CREATE FUNCTION app.audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.audit (account, op) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END $$;
CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.stamped := clock_timestamp();
    RETURN NEW;
END $$;
CREATE FUNCTION app.mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.note := NEW.note || ' [' || TG_NAME || ']';
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE ON app.accounts
    FOR EACH ROW EXECUTE FUNCTION app.audit_row();
CREATE TRIGGER accounts_stamp BEFORE INSERT OR UPDATE ON app.accounts
    FOR EACH ROW EXECUTE FUNCTION app.stamp();
ALTER TABLE app.accounts ENABLE ALWAYS TRIGGER accounts_audit;
ALTER TABLE app.accounts ENABLE ALWAYS TRIGGER accounts_stamp;
CREATE TRIGGER notes_replica BEFORE INSERT ON app.notes
    FOR EACH ROW EXECUTE FUNCTION app.mark();
ALTER TABLE app.notes ENABLE REPLICA TRIGGER notes_replica;
CREATE TRIGGER notes_plain BEFORE UPDATE ON app.notes
    FOR EACH ROW EXECUTE FUNCTION app.mark();
CREATE TRIGGER notes_off BEFORE UPDATE ON app.notes
    FOR EACH ROW EXECUTE FUNCTION app.mark();
ALTER TABLE app.notes DISABLE TRIGGER notes_off;
INSERT INTO app.accounts (id, balance) SELECT g, 100 FROM generate_series(1, 50) g;
UPDATE app.accounts SET balance = balance + 1 WHERE id <= 10;
INSERT INTO app.notes SELECT g, 'note ' || g FROM generate_series(1, 20) g;
RESET ROLE;
"#;

/// tributary's source role: REPLICATION and SELECT (and what preflight requires).
const SOURCE_ROLE: &str = "
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA app TO repl;
";

const STATES: &str =
    "SELECT string_agg(t.tgname || ' ' || t.tgenabled::text, ', ' ORDER BY t.tgname)
                        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                        JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE NOT t.tgisinternal AND n.nspname = 'app'";

/// Writes as the application does, in one transaction per statement.
fn write(source: &Cluster, sql: &str) {
    source.psql("postgres", &format!("SET ROLE app_owner; {sql}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_and_replica_triggers_do_not_fire_on_the_replica_and_branches_have_them() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", APP);
    source.psql("postgres", SOURCE_ROLE);
    let mut daemon = Daemon::new(&store);
    // Schema changes are captured: the operator installs the objects once as a superuser.
    let capture = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &capture);
    daemon.create_connector(
        &source.url("repl", Some("repl pw"), "postgres"),
        "app",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;
    wait_replica(&source, &store, "app", &["app"], &daemon).await;

    // Streamed rows: the source's triggers wrote the audit rows and stamps once.
    write(
        &source,
        "INSERT INTO app.accounts (id, balance) SELECT g, 5 FROM generate_series(51, 80) g;
         UPDATE app.accounts SET balance = balance - 1 WHERE id % 7 = 0;
         INSERT INTO app.notes VALUES (21, 'streamed');
         UPDATE app.notes SET note = 'changed' WHERE id = 1;",
    );
    wait_replica(&source, &store, "app", &["app"], &daemon).await;

    // Captured changes of trigger states, made by the tables' owner, are replayed, and
    // held in turn.
    write(
        &source,
        "ALTER TABLE app.notes ENABLE ALWAYS TRIGGER notes_plain;
         ALTER TABLE app.accounts DISABLE TRIGGER accounts_stamp;
         ALTER TABLE app.notes ENABLE REPLICA TRIGGER notes_off;",
    );
    write(
        &source,
        "UPDATE app.notes SET note = 'again' WHERE id <= 3;
         UPDATE app.accounts SET balance = 0 WHERE id <= 5;
         INSERT INTO app.notes VALUES (22, 'late');",
    );
    wait_replica(&source, &store, "app", &["app"], &daemon).await;
    let on_source = source.psql("postgres", STATES);
    assert_eq!(
        on_source,
        "accounts_audit A, accounts_stamp D, notes_off R, notes_plain A, notes_replica R"
    );
    // Held in the replica: nothing fires there.
    assert_eq!(
        store.psql("app_replica", STATES),
        "accounts_audit D, accounts_stamp D, notes_off D, notes_plain D, notes_replica D"
    );

    // A branch is the source, triggers as they are there, and they fire in it.
    daemon.cli_ok(&["branch", "create", "dev"]);
    assert_eq!(store.psql("dev", STATES), on_source);
    assert_eq!(
        store.psql(
            "dev",
            "INSERT INTO app.accounts (id, balance) VALUES (1000, 1);
             SELECT count(*) FROM app.audit WHERE account = 1000"
        ),
        "1"
    );
    // The replica is untouched by the branch and still holds them.
    assert_eq!(
        store.psql("app_replica", STATES),
        "accounts_audit D, accounts_stamp D, notes_off D, notes_plain D, notes_replica D"
    );
}
