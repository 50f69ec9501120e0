//! The bookkeeping schema against a real server: migrations, connectors, encryption of
//! source URLs at rest, the key file and its fingerprint, states and history, table
//! progress, notifications.
//! What is stored is checked with plain SQL, not only through the API.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tempfile::TempDir;
use tributary::bookkeeping::{
    Bookkeeping, Connector, Error, Failure, StateChange, TableSyncState, NOTIFY_CHANNEL,
};
use tributary::change::TableName;
use tributary::pg::{ConnInfo, ShowPassword};
use tributary::pipeline::PipelineState;
use tributary::settings::{Secret, SecretsSettings};
use tributary::types::{ConnectorId, ConnectorName, FencingToken};

use crate::harness::*;

const CONTROL_DB: &str = "control";
const SOURCE_PASSWORD: &str = "hunter2-Sou:rce";
const SOURCE_URL: &str =
    "postgresql://app:hunter2-Sou%3Arce@db.example.com:6543/sales?sslmode=require";
const PATIENCE: Duration = Duration::from_secs(30);

/// A cluster with an empty control database, and a directory for key files.
struct Store {
    cluster: Cluster,
    info: ConnInfo,
    keys: TempDir,
}

impl Store {
    fn start() -> Store {
        Store::on(Cluster::start())
    }

    fn on(cluster: Cluster) -> Store {
        cluster.create_database(CONTROL_DB);
        let info = ConnInfo::parse(&cluster.superuser_url(CONTROL_DB)).unwrap();
        Store {
            cluster,
            info,
            keys: tempfile::tempdir().unwrap(),
        }
    }

    /// The default key file; tests that pass a key setting check it is never created.
    fn default_key_file(&self) -> PathBuf {
        self.keys.path().join("tributary.key")
    }

    async fn open_with(&self, secrets: &SecretsSettings) -> Result<Bookkeeping, Error> {
        Bookkeeping::open(&self.info, secrets, &self.default_key_file()).await
    }

    async fn open(&self) -> Bookkeeping {
        self.open_with(&key(1)).await.unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        self.cluster.psql(CONTROL_DB, sql)
    }
}

fn key(byte: u8) -> SecretsSettings {
    SecretsSettings {
        key_file: None,
        key: Some(Secret::new(format!("{byte:02x}").repeat(32))),
    }
}

fn name(text: &str) -> ConnectorName {
    ConnectorName::new(text).unwrap()
}

fn table(schema: &str, name: &str) -> TableName {
    TableName {
        schema: schema.into(),
        name: name.into(),
    }
}

fn schemas(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn migrations_create_the_schema_and_are_idempotent() {
    let store = Store::start();
    Bookkeeping::migrate(&store.info).await.unwrap();
    let tables = store.sql(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
         WHERE schemaname = 'tributary'",
    );
    assert_eq!(
        tables,
        "_sqlx_migrations,apply_lag,branches,connector_tables,connectors,daemons,installation,\
         lease_history,leases,state_history,table_decisions,timeline_changes"
    );
    // sqlx's own table sits in our schema, not in public.
    assert_eq!(
        store.sql("SELECT to_regclass('public._sqlx_migrations') IS NULL"),
        "t"
    );
    let applied = store.sql("SELECT count(*) FROM tributary._sqlx_migrations WHERE success");
    assert!(applied.parse::<u32>().unwrap() >= 1, "{applied}");

    // Opening runs them again: nothing is applied twice, nothing is lost.
    let bookkeeping = store.open().await;
    bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &schemas(&["public"]))
        .await
        .unwrap();
    // The installation id is drawn once, at the first migration.
    let installation = bookkeeping.installation().clone();
    assert_eq!(
        store.sql("SELECT id FROM tributary.installation"),
        installation.as_str()
    );
    drop(bookkeeping);
    let again = store.open().await;
    Bookkeeping::migrate(&store.info).await.unwrap();
    assert_eq!(
        store.sql("SELECT count(*) FROM tributary._sqlx_migrations"),
        applied
    );
    assert_eq!(again.connectors().await.unwrap().len(), 1);
    assert_eq!(again.installation(), &installation);
}

#[tokio::test]
async fn daemons_starting_together_on_an_empty_database_all_open() {
    let store = Store::start();
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let info = store.info.clone();
        let default_key_file = store.default_key_file();
        starts.spawn(async move { Bookkeeping::open(&info, &key(1), &default_key_file).await });
    }
    while let Some(opened) = starts.join_next().await {
        opened.unwrap().unwrap();
    }
    assert_eq!(
        store.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'tributary'"),
        "1"
    );
}

#[tokio::test]
async fn connectors_are_created_listed_found_and_deleted() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let sales = bookkeeping
        .create_connector(&name("sales"), SOURCE_URL, &schemas(&["public", "billing"]))
        .await
        .unwrap();
    let audit = bookkeeping
        .create_connector(&name("audit"), SOURCE_URL, &[])
        .await
        .unwrap();

    assert_eq!(sales.name, name("sales"));
    assert_eq!(sales.schemas, schemas(&["public", "billing"]));
    assert!(sales.enabled);
    assert_eq!(sales.state, PipelineState::Pending);
    assert_eq!(
        sales.slot_name,
        name("sales").slot_name(bookkeeping.installation(), sales.id)
    );
    assert_eq!(sales.replica_database, "sales_replica");
    assert_eq!(
        (sales.last_error.as_ref(), sales.next_step.as_ref()),
        (None, None)
    );
    assert_eq!(sales.system_id, None);
    assert!(sales.updated_at >= sales.created_at);
    assert_ne!(sales.id, audit.id);
    assert_ne!(sales.slot_name, audit.slot_name);

    let all = bookkeeping.connectors().await.unwrap();
    assert_eq!(all, vec![audit.clone(), sales.clone()], "ordered by name");
    assert_eq!(
        bookkeeping.connector(&name("sales")).await.unwrap(),
        Some(sales.clone())
    );
    assert_eq!(
        bookkeeping.connector_by_id(audit.id).await.unwrap(),
        Some(audit.clone())
    );
    assert_eq!(bookkeeping.connector(&name("nope")).await.unwrap(), None);

    // Creation is itself the first entry of the history.
    let history = bookkeeping.history(sales.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].from, history[0].to),
        (None, PipelineState::Pending)
    );

    let lease = lease(&bookkeeping, sales.id).await;
    bookkeeping
        .set_snapshot_tables(sales.id, lease, &[table("public", "t")])
        .await
        .unwrap();
    bookkeeping
        .set_state(sales.id, lease, PipelineState::Validating, None)
        .await
        .unwrap();
    bookkeeping.delete_connector(sales.id).await.unwrap();
    assert_eq!(bookkeeping.connector_by_id(sales.id).await.unwrap(), None);
    let id = sales.id.0;
    assert_eq!(
        store.sql(&format!(
            "SELECT (SELECT count(*) FROM tributary.connectors WHERE id = {id}) \
                  + (SELECT count(*) FROM tributary.connector_tables WHERE connector_id = {id}) \
                  + (SELECT count(*) FROM tributary.state_history WHERE connector_id = {id})"
        )),
        "0",
        "every row of the deleted connector is gone"
    );
    assert!(matches!(
        bookkeeping.delete_connector(sales.id).await,
        Err(Error::NotFound(id)) if id == sales.id
    ));
    assert_eq!(bookkeeping.connectors().await.unwrap(), vec![audit]);
}

#[tokio::test]
async fn a_taken_name_is_refused_and_can_be_reused_after_delete() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let first = bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap();
    let err = bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NameTaken(n) if *n == name("orders")),
        "{err}"
    );
    assert!(err.to_string().contains("pick another"), "{err}");
    assert_eq!(bookkeeping.connectors().await.unwrap().len(), 1);

    // A connector created again under an old name gets a new slot.
    bookkeeping.delete_connector(first.id).await.unwrap();
    let second = bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap();
    assert_ne!(second.slot_name, first.slot_name);
}

#[tokio::test]
async fn an_invalid_source_url_is_refused_without_showing_its_password() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let err = bookkeeping
        .create_connector(
            &name("bad"),
            "postgresql://app:hunter2@db/sales?sslmode=sometimes",
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSourceUrl(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(bookkeeping.connectors().await.unwrap().is_empty());
}

#[tokio::test]
async fn source_urls_are_encrypted_at_rest_and_never_shown() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let connector = create_sales(&bookkeeping).await;

    // What the database holds: neither the URL nor the password, in any column.
    let client = store.cluster.connect(CONTROL_DB).await;
    let row = client
        .query_one(
            "SELECT source_url_ciphertext, row_to_json(c)::text FROM tributary.connectors c",
            &[],
        )
        .await
        .unwrap();
    let ciphertext: Vec<u8> = row.get(0);
    let whole_row: String = row.get(1);
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    for secret in [SOURCE_URL, SOURCE_PASSWORD, "hunter2", "db.example.com"] {
        assert!(
            !contains(&ciphertext, secret),
            "ciphertext contains {secret:?}"
        );
    }
    assert!(!whole_row.contains("hunter2"), "{whole_row}");
    assert_eq!(ciphertext.len(), 12 + SOURCE_URL.len() + 16);

    assert_eq!(
        bookkeeping
            .source(&connector)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );
    assert_eq!(
        connector.source_display,
        "postgresql://app:****@db.example.com:6543/sales?sslmode=require"
    );
    let debug = format!(
        "{connector:?} {:?}",
        bookkeeping.connectors().await.unwrap()
    );
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        !format!("{bookkeeping:?}").contains("01010101"),
        "the key never prints"
    );

    // The same URL sealed twice gives different ciphertexts (a fresh nonce each time).
    let other = bookkeeping
        .create_connector(&name("sales2"), SOURCE_URL, &[])
        .await
        .unwrap();
    assert_eq!(
        store.sql("SELECT count(DISTINCT source_url_ciphertext) FROM tributary.connectors"),
        "2"
    );
    assert_eq!(
        bookkeeping
            .source(&other)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );
}

fn fingerprint(store: &Store) -> String {
    store.sql("SELECT coalesce(key_fingerprint, 'none') FROM tributary.installation")
}

#[tokio::test]
async fn a_wrong_key_is_named_at_open_and_a_missing_one_is_never_replaced() {
    let store = Store::start();
    let connector = store
        .open_with(&key(1))
        .await
        .unwrap()
        .create_connector(&name("sales"), SOURCE_URL, &[])
        .await
        .unwrap();
    let recorded = fingerprint(&store);
    assert_eq!(
        recorded.len(),
        16,
        "recorded with the first URL: {recorded}"
    );

    let err = store.open_with(&key(2)).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("this is not the key this bookkeeping was written with"),
        "{message}"
    );
    assert!(
        message.contains(&format!("expected {recorded})")),
        "{message}"
    );
    assert!(message.contains("TRIBUTARY__SECRETS__KEY"), "{message}");
    assert!(!message.contains("0202"), "the key never prints: {message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        !store.default_key_file().exists(),
        "no key file when the key is configured"
    );

    // A key file that is not there is an error naming it and the key wanted, and is not
    // created: a new key could not open what is stored.
    let key_file = store.keys.path().join("lost.key");
    let by_file = SecretsSettings {
        key_file: Some(key_file.clone()),
        key: None,
    };
    let err = store.open_with(&by_file).await.unwrap_err();
    assert!(matches!(err, Error::NoKey { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&key_file.display().to_string()),
        "{message}"
    );
    assert!(message.contains(&recorded), "{message}");
    assert!(message.contains("No key was created"), "{message}");
    assert!(!key_file.exists(), "no key file was created");

    // The right key, from a file this time.
    fs::write(&key_file, format!("{}\n", "01".repeat(32))).unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    let by_file = store.open_with(&by_file).await.unwrap();
    assert_eq!(
        by_file
            .source(&connector)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );
    assert_eq!(fingerprint(&store), recorded);
}

#[tokio::test]
async fn urls_stored_before_fingerprints_were_recorded_adopt_the_key_that_opens_them() {
    let store = Store::start();
    let bookkeeping = store.open_with(&key(1)).await.unwrap();
    let sales = create_sales(&bookkeeping).await;
    let orders = bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap();
    let recorded = fingerprint(&store);
    // As a bookkeeping migrated from a release without fingerprints.
    store.sql("UPDATE tributary.installation SET key_fingerprint = NULL");

    let err = store.open_with(&key(2)).await.unwrap_err();
    assert!(
        matches!(err, Error::WrongKey { expected: None, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("was not recorded"), "{err}");
    assert_eq!(fingerprint(&store), "none", "a wrong key is not recorded");

    let adopted = store.open_with(&key(1)).await.unwrap();
    assert_eq!(fingerprint(&store), recorded);
    assert_eq!(
        adopted
            .source(&orders)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );

    // A key that opens some of them only (one was stored with another key): nothing is
    // recorded, and the one that does not open says so by name.
    store.sql("UPDATE tributary.installation SET key_fingerprint = NULL");
    store.sql(
        "UPDATE tributary.connectors SET source_url_ciphertext = \
         set_byte(source_url_ciphertext, 20, get_byte(source_url_ciphertext, 20) # 1) \
         WHERE name = 'sales'",
    );
    let partly = store.open_with(&key(1)).await.unwrap();
    assert_eq!(fingerprint(&store), "none");
    let err = partly.source(&sales).await.unwrap_err();
    assert!(matches!(err, Error::Decrypt { .. }), "{err}");
    assert!(err.to_string().contains("sales"), "{err}");
    assert_eq!(
        partly
            .source(&orders)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );
}

#[tokio::test]
async fn two_first_connectors_sealed_with_different_keys_at_once_keep_one_key() {
    let store = Store::start();
    // Both open: nothing is sealed yet to tell which key is right.
    let one = store.open_with(&key(1)).await.unwrap();
    let two = store.open_with(&key(2)).await.unwrap();
    assert_eq!(fingerprint(&store), "none");
    let (sales, orders) = (name("sales"), name("orders"));
    let (a, b) = tokio::join!(
        one.create_connector(&sales, SOURCE_URL, &[]),
        two.create_connector(&orders, SOURCE_URL, &[]),
    );
    let ((bookkeeping, kept), refused) = match (a, b) {
        (Ok(kept), Err(refused)) => ((one, kept), refused),
        (Err(refused), Ok(kept)) => ((two, kept), refused),
        other => panic!("exactly one may be created: {other:?}"),
    };
    assert!(matches!(refused, Error::WrongKey { .. }), "{refused}");
    assert_eq!(store.sql("SELECT count(*) FROM tributary.connectors"), "1");
    assert_eq!(
        bookkeeping
            .source(&kept)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );
}

#[tokio::test]
async fn a_daemon_started_without_a_key_reads_the_one_the_first_connector_brought() {
    let store = Store::start();
    let none = SecretsSettings::default();
    // Nothing sealed yet: the daemon starts without a key, and makes none.
    let daemon = store.open_with(&none).await.unwrap();
    assert!(!store.default_key_file().exists());
    // `connector create` makes the key at the same place.
    let created = create_sales(&store.open_with(&none).await.unwrap()).await;
    assert_eq!(mode(&store.default_key_file()), 0o600);
    assert_eq!(
        daemon
            .source(&created)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );

    // A daemon that found another key before anything was sealed is told, by fingerprint,
    // once a URL sealed with the recorded key does not open.
    let other_store = Store::start();
    let early = other_store.open_with(&key(2)).await.unwrap();
    let sealed = other_store
        .open_with(&key(1))
        .await
        .unwrap()
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap();
    let err = early.source(&sealed).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
}

#[tokio::test]
async fn the_key_file_is_created_by_the_first_seal_only_private_then_reused() {
    let store = Store::start();
    let none = SecretsSettings::default();
    let path = store.default_key_file();
    let first = store.open_with(&none).await.unwrap();
    first.connectors().await.unwrap();
    assert!(!path.exists(), "opening and reading create no key");
    let connector = create_sales(&first).await;
    assert_eq!(mode(&path), 0o600);
    let contents = fs::read_to_string(&path).unwrap();
    assert_eq!(contents.trim().len(), 64);

    // The next start reads the same key.
    let second = store.open_with(&none).await.unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), contents);
    assert_eq!(
        second
            .source(&connector)
            .await
            .unwrap()
            .url(ShowPassword::Shown),
        SOURCE_URL
    );

    // A configured key file that does not exist is not created once URLs are stored.
    let configured = store.keys.path().join("conf/secret.key");
    let settings = SecretsSettings {
        key_file: Some(configured.clone()),
        key: None,
    };
    let err = store.open_with(&settings).await.unwrap_err();
    assert!(matches!(err, Error::NoKey { .. }), "{err}");
    assert!(!configured.exists());

    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.open_with(&none).await.unwrap_err();
    assert!(matches!(err, Error::KeyFilePermissions { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(!err.to_string().contains(contents.trim()), "{err}");

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&path, "0123\n").unwrap();
    let err = store.open_with(&none).await.unwrap_err();
    assert!(matches!(err, Error::Key { .. }), "{err}");
}

#[tokio::test]
async fn set_state_writes_history_and_sets_or_clears_the_error() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let created = create_sales(&bookkeeping).await;
    let id = created.id;
    let failure = Failure {
        error: "table public.t has no replica identity".into(),
        next_step: "ALTER TABLE public.t REPLICA IDENTITY FULL, then retry".into(),
    };

    let token = lease(&bookkeeping, id).await;
    bookkeeping
        .set_state(id, token, PipelineState::Validating, None)
        .await
        .unwrap();
    bookkeeping
        .set_state(id, token, PipelineState::Failed, Some(&failure))
        .await
        .unwrap();
    let failed = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(failed.state, PipelineState::Failed);
    assert_eq!(failed.last_error.as_deref(), Some(failure.error.as_str()));
    assert_eq!(
        failed.next_step.as_deref(),
        Some(failure.next_step.as_str())
    );
    assert!(failed.updated_at > created.updated_at);

    bookkeeping
        .set_state(id, token, PipelineState::Pending, None)
        .await
        .unwrap();
    let pending = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(pending.state, PipelineState::Pending);
    assert_eq!((pending.last_error, pending.next_step), (None, None));

    // A retried error is recorded without a state change or a history entry.
    bookkeeping.record_error(id, token, &failure).await.unwrap();
    let retried = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(retried.state, PipelineState::Pending);
    assert_eq!(retried.last_error.as_deref(), Some(failure.error.as_str()));
    // The run that retries it starts in validating still showing the error, so that the
    // connector never looks healthy between two attempts.
    assert!(bookkeeping.begin_run(&retried).await.unwrap());
    let rerun = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(rerun.state, PipelineState::Validating);
    assert_eq!(
        (rerun.last_error.as_deref(), rerun.next_step.as_deref()),
        (
            Some(failure.error.as_str()),
            Some(failure.next_step.as_str())
        )
    );

    // Once the lease is gone, its holder can neither change the state nor record errors.
    bookkeeping.release_lease(id, token).await.unwrap();
    let newer = lease(&bookkeeping, id).await;
    assert!(newer > token);
    assert!(matches!(
        bookkeeping
            .set_state(id, token, PipelineState::Streaming, None)
            .await,
        Err(Error::LeaseLost(_))
    ));
    let other = Failure {
        error: "stale".into(),
        next_step: "none".into(),
    };
    assert!(matches!(
        bookkeeping.record_error(id, token, &other).await,
        Err(Error::LeaseLost(_))
    ));
    assert!(matches!(
        bookkeeping
            .set_snapshot_tables(id, token, &[table("public", "stale")])
            .await,
        Err(Error::LeaseLost(_))
    ));
    assert!(bookkeeping.tables(id).await.unwrap().is_empty());
    let unchanged = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(unchanged.state, PipelineState::Validating);
    assert_eq!(
        unchanged.last_error.as_deref(),
        Some(failure.error.as_str())
    );
    bookkeeping.release_lease(id, newer).await.unwrap();
    let token = lease(&bookkeeping, id).await;

    let history = bookkeeping.history(id).await.unwrap();
    let steps: Vec<_> = history
        .iter()
        .map(
            |StateChange {
                 from, to, error, ..
             }| (*from, *to, error.clone()),
        )
        .collect();
    use PipelineState::*;
    assert_eq!(
        steps,
        vec![
            (None, Pending, None),
            (Some(Pending), Validating, None),
            (Some(Validating), Failed, Some(failure.error.clone())),
            (Some(Failed), Pending, None),
            (Some(Pending), Validating, None),
        ]
    );
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        store.sql("SELECT count(*) FROM tributary.state_history"),
        "5"
    );

    let missing = ConnectorId(id.0 + 1000);
    assert!(matches!(
        bookkeeping.set_state(missing, token, Streaming, None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        bookkeeping.set_enabled(missing, false).await,
        Err(Error::NotFound(_))
    ));
    bookkeeping.set_enabled(id, false).await.unwrap();
    assert!(
        !bookkeeping
            .connector_by_id(id)
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
}

#[tokio::test]
async fn table_progress_accumulates_and_a_new_snapshot_starts_over() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let id = create_sales(&bookkeeping).await.id;
    let (orders, items) = (table("public", "orders"), table("shop", "items"));
    let token = lease(&bookkeeping, id).await;
    bookkeeping
        .set_snapshot_tables(id, token, &[items.clone(), orders.clone()])
        .await
        .unwrap();
    let tables = bookkeeping.tables(id).await.unwrap();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[0].table, orders, "ordered by schema, then name");
    for status in &tables {
        assert_eq!(status.decision, "include");
        assert_eq!(status.state, TableSyncState::Pending);
        assert_eq!((status.rows, status.bytes), (0, 0));
    }

    bookkeeping
        .table_progress(id, token, &orders, 1000, 64_000, TableSyncState::Copying)
        .await
        .unwrap();
    bookkeeping
        .table_progress(id, token, &orders, 500, 36_000, TableSyncState::Copied)
        .await
        .unwrap();
    let tables = bookkeeping.tables(id).await.unwrap();
    assert_eq!(tables[0].state, TableSyncState::Copied);
    assert_eq!((tables[0].rows, tables[0].bytes), (1500, 100_000));
    assert_eq!(tables[1].state, TableSyncState::Pending);
    assert_eq!(
        store.sql(
            "SELECT sync_state || ' ' || rows_copied FROM tributary.connector_tables \
             WHERE table_name = 'orders'"
        ),
        "copied 1500"
    );

    let err = bookkeeping
        .table_progress(
            id,
            token,
            &table("public", "ghost"),
            1,
            1,
            TableSyncState::Copying,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownTable { .. }), "{err}");

    bookkeeping
        .set_snapshot_tables(id, token, std::slice::from_ref(&orders))
        .await
        .unwrap();
    let tables = bookkeeping.tables(id).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (tables[0].state, tables[0].rows, tables[0].bytes),
        (TableSyncState::Pending, 0, 0)
    );

    bookkeeping
        .record_source(id, "7412345678901234567", 3, "sales")
        .await
        .unwrap();
    let connector = bookkeeping.connector_by_id(id).await.unwrap().unwrap();
    assert_eq!(connector.system_id.as_deref(), Some("7412345678901234567"));
    assert_eq!(connector.timeline, Some(3));
    assert_eq!(connector.source_database.as_deref(), Some("sales"));
}

async fn next_notification(listener: &mut PgListener) -> String {
    let notification = tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .expect("a notification within the time allowed")
        .unwrap();
    assert_eq!(notification.channel(), NOTIFY_CHANNEL);
    notification.payload().to_owned()
}

#[tokio::test]
async fn connector_changes_are_notified() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let mut listener = bookkeeping.listen("test:1").await.unwrap();
    // Another daemon (another pool) makes the changes.
    let other = store.open().await;
    let id = create_sales(&other).await.id;
    assert_eq!(next_notification(&mut listener).await, id.to_string());
    let token = lease(&other, id).await;
    other
        .set_state(id, token, PipelineState::Validating, None)
        .await
        .unwrap();
    assert_eq!(next_notification(&mut listener).await, id.to_string());
    other.set_enabled(id, false).await.unwrap();
    assert_eq!(next_notification(&mut listener).await, id.to_string());
    // Progress is not a connector change: no notification for it.
    other
        .set_snapshot_tables(id, token, &[table("public", "t")])
        .await
        .unwrap();
    other
        .table_progress(
            id,
            token,
            &table("public", "t"),
            1,
            1,
            TableSyncState::Copying,
        )
        .await
        .unwrap();
    other.delete_connector(id).await.unwrap();
    assert_eq!(next_notification(&mut listener).await, id.to_string());
    let extra = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(extra.is_err(), "one notification per change: {extra:?}");
}

#[tokio::test]
async fn the_store_is_reached_over_a_unix_socket_and_over_verified_tls() {
    let cluster = Cluster::builder().tls().start();
    let store = Store::on(cluster);
    let socket_url = format!(
        "postgresql://{SUPERUSER}@/{CONTROL_DB}?host={}&port={}&application_name=bk_socket",
        store.cluster.socket_dir().display(),
        store.cluster.port()
    );
    let ca = store.cluster.ca_cert_path().unwrap().display().to_string();
    let tls_url = format!(
        "postgresql://{SUPERUSER}@localhost:{}/{CONTROL_DB}?sslmode=verify-full&sslrootcert={ca}\
         &application_name=bk_tls",
        store.cluster.port()
    );
    let mut open = Vec::new();
    for url in [socket_url, tls_url] {
        let info = ConnInfo::parse(&url).unwrap();
        let bookkeeping = Bookkeeping::open(&info, &key(1), &store.default_key_file())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        bookkeeping.connectors().await.unwrap();
        open.push(bookkeeping);
    }
    assert_eq!(
        store.sql(
            "SELECT string_agg(DISTINCT a.application_name || '=' || \
                    coalesce(s.ssl::text, 'n/a') || '/' || (a.client_addr IS NULL)::text, ',' \
                    ORDER BY a.application_name || '=' || coalesce(s.ssl::text, 'n/a') || '/' \
                    || (a.client_addr IS NULL)::text) \
             FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'bk_%'"
        ),
        "bk_socket=false/true,bk_tls=true/false",
        "the socket session is local, the TLS session encrypted"
    );

    // A certificate that does not verify is refused under verify-full.
    let unverified = format!(
        "postgresql://{SUPERUSER}@localhost:{}/{CONTROL_DB}?sslmode=verify-full",
        store.cluster.port()
    );
    let err = Bookkeeping::migrate(&ConnInfo::parse(&unverified).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_store_is_a_transient_error_without_the_password() {
    let cluster = Cluster::start();
    let port = cluster.port();
    drop(cluster); // nothing listens on that port any more
    let info = ConnInfo::parse(&format!(
        "postgresql://u:hunter2@127.0.0.1:{port}/{CONTROL_DB}?connect_timeout=2"
    ))
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let default_key_file = keys.path().join("tributary.key");
    let err = Bookkeeping::open(&info, &SecretsSettings::default(), &default_key_file)
        .await
        .unwrap_err();
    assert!(err.kind().is_transient(), "{err}");
    let message = err.to_string();
    assert!(message.contains("check store.url"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(
        !default_key_file.exists(),
        "no key is created before the store is reached"
    );
}

/// A connector's lease: one holder at a time, a larger token for every new holder, no
/// renewal of a lease that expired, taken at once from a holder whose session is gone,
/// and a history of who held it when.
#[tokio::test]
async fn a_lease_has_one_holder_and_every_new_holder_a_larger_token() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    // The daemons' sessions, which say they are alive.
    let _a1 = bookkeeping.listen("host-a:1").await.unwrap();
    let _b2 = bookkeeping.listen("host-b:2").await.unwrap();
    let _a3 = bookkeeping.listen("host-a:3").await.unwrap();
    let orders = bookkeeping
        .create_connector(&name("orders"), SOURCE_URL, &[])
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let a = bookkeeping
        .acquire_lease(orders.id, "host-a:1", ttl)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert_eq!(
        bookkeeping
            .acquire_lease(orders.id, "host-b:2", ttl)
            .await
            .unwrap(),
        None,
        "a held lease is not taken"
    );
    assert_eq!(bookkeeping.renew_leases(&[a], ttl).await.unwrap(), [a]);
    assert!(bookkeeping.holds_lease(orders.id, a).await.unwrap());
    let leases = bookkeeping.leases().await.unwrap();
    assert_eq!(leases[&orders.id].owner, "host-a:1");
    assert!(leases[&orders.id].is_held());

    // Released: taken at once, with a larger token; the old one renews nothing.
    bookkeeping.release_lease(orders.id, a).await.unwrap();
    let b = bookkeeping
        .acquire_lease(orders.id, "host-b:2", ttl)
        .await
        .unwrap()
        .expect("a released lease is taken");
    assert!(b > a, "{b} after {a}");
    assert!(!bookkeeping.holds_lease(orders.id, a).await.unwrap());
    assert_eq!(bookkeeping.renew_leases(&[a], ttl).await.unwrap(), []);

    // Expired (its holder stopped renewing): taken too, and never renewed again.
    store.sql("UPDATE tributary.leases SET expires_at = now() - interval '1 second'");
    assert_eq!(
        bookkeeping.renew_leases(&[b], ttl).await.unwrap(),
        Vec::<FencingToken>::new()
    );
    let c = bookkeeping
        .acquire_lease(orders.id, "host-a:3", ttl)
        .await
        .unwrap()
        .expect("an expired lease is taken");
    assert!(c > b);

    // Its holder's session ends (the process died, and the server with it ended the
    // session): taken at once, long before it expires.
    store.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND objsubid = 2 AND objid = hashtext('host-a:3')::oid",
    );
    let d = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(token) = bookkeeping
                .acquire_lease(orders.id, "host-b:2", ttl)
                .await
                .unwrap()
            {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the lease of a holder without a session is taken");
    assert!(d > c);
    assert_eq!(
        store.sql(
            "SELECT string_agg(owner || ' ' || (ended_at IS NOT NULL), ', ' ORDER BY token) \
               FROM tributary.lease_history"
        ),
        "host-a:1 true, host-b:2 true, host-a:3 true, host-b:2 false"
    );
    assert_eq!(
        store.sql(
            "SELECT count(*) FROM (SELECT ended_at, lead(acquired_at) OVER (ORDER BY token) AS next \
               FROM tributary.lease_history) h WHERE ended_at > next"
        ),
        "0"
    );

    // Daemons seen alive: recently, and with their session.
    assert_eq!(bookkeeping.heartbeat("host-a:1", ttl).await.unwrap(), 1);
    assert_eq!(bookkeeping.heartbeat("host-b:2", ttl).await.unwrap(), 2);
    bookkeeping.sign_off("host-b:2").await.unwrap();
    assert_eq!(bookkeeping.heartbeat("host-a:1", ttl).await.unwrap(), 1);
    assert_eq!(bookkeeping.heartbeat("host-a:3", ttl).await.unwrap(), 2);
    assert_eq!(
        bookkeeping.heartbeat("host-a:1", ttl).await.unwrap(),
        1,
        "a daemon without its session counts"
    );
}

/// A failure recorded while the connector is being deleted (`connector delete --force`
/// ends the pipeline) waits for the delete and finds the connector gone: the two lock the
/// connector before its lease, in the same order, so neither is chosen as a deadlock victim.
#[tokio::test(flavor = "multi_thread")]
async fn recording_under_the_lease_queues_behind_a_delete() {
    let store = Store::start();
    let bookkeeping = store.open().await;
    let id = create_sales(&bookkeeping).await.id;
    let token = lease(&bookkeeping, id).await;
    let deleting = store.cluster.connect(CONTROL_DB).await;
    deleting
        .batch_execute(&format!(
            "BEGIN; SELECT FROM tributary.connectors WHERE id = {} FOR UPDATE",
            id.0
        ))
        .await
        .unwrap();
    let failure = Failure {
        error: "the source went away".into(),
        next_step: "none".into(),
    };
    let recording = {
        let bookkeeping = bookkeeping.clone();
        tokio::spawn(async move {
            bookkeeping
                .set_state(id, token, PipelineState::Failed, Some(&failure))
                .await
        })
    };
    // The recording is now queued on the connector's row; the delete goes on to the lease.
    tokio::time::sleep(Duration::from_millis(300)).await;
    deleting
        .batch_execute(&format!(
            "DELETE FROM tributary.connectors WHERE id = {}; COMMIT",
            id.0
        ))
        .await
        .unwrap();
    let recorded = recording.await.unwrap();
    assert!(matches!(recorded, Err(Error::NotFound(_))), "{recorded:?}");
}

/// Takes connector `id`'s lease for a minute, as daemon `test:1`.
async fn lease(bookkeeping: &Bookkeeping, id: ConnectorId) -> FencingToken {
    bookkeeping
        .acquire_lease(id, "test:1", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the connector's lease is free")
}

/// Creates connector `sales` on [`SOURCE_URL`].
async fn create_sales(bookkeeping: &Bookkeeping) -> Connector {
    bookkeeping
        .create_connector(&name("sales"), SOURCE_URL, &[])
        .await
        .unwrap()
}
