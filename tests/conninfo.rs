//! Connection strings as libpq users write them, against real servers: client certificates
//! that pg_hba.conf requires (`cert`, and a password plus `clientcert=verify-full`, with an
//! encrypted key), password files (and libpq's permission rule), service files, key=value
//! strings, and several hosts with `target_session_attrs`. Each of the three clients
//! (replication sessions, SQL sessions, pg_dump) is exercised: the end-to-end tests run a
//! connector from snapshot to streaming.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tributary::pg::ConnInfo;
use tributary::source::ReplicationClient;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

const PASSWORD: &str = "Conn-Secret-2718";
const KEY_PASSPHRASE: &str = "Key-Phrase-3141";

/// The source's tables and a role `role` (LOGIN REPLICATION, reads `app`; no superuser).
fn prepare_source(source: &Cluster, roles: &[&str]) {
    let mut sql = String::from(
        "CREATE SCHEMA app;
         CREATE TABLE app.items (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 50) g;",
    );
    for role in roles {
        sql.push_str(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PASSWORD}';
             GRANT CONNECT, CREATE ON DATABASE postgres TO {role};
             GRANT USAGE ON SCHEMA app TO {role};
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO {role};"
        ));
    }
    source.psql("postgres", &sql);
}

/// Creates `name` from `url`, runs the daemon until the replica holds the snapshot and
/// a change made afterwards (so both pg_dump and the replication stream connected).
async fn replicates(source: &Cluster, url: &str, name: &str) {
    let store = Cluster::start();
    let mut daemon = Daemon::new(&store);
    let out = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        url,
        "--name",
        name,
        "--schemas",
        "app",
    ]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "connector create {name}: {shown}");
    for secret in [PASSWORD, KEY_PASSPHRASE] {
        assert!(!shown.contains(secret), "a secret is shown: {shown}");
    }
    daemon.start();
    daemon.wait_for_state(name, "streaming").await;
    source.psql(
        "postgres",
        "INSERT INTO app.items SELECT max(id) + 1, 'after the snapshot' FROM app.items;
         UPDATE app.items SET label = 'changed' WHERE id = 7;",
    );
    wait_replica(source, &store, name, &["app"], &daemon).await;
    let log = fs::read_to_string(daemon.log_path()).unwrap_or_default();
    for secret in [PASSWORD, KEY_PASSPHRASE] {
        assert!(!log.contains(secret), "a secret is in the daemon's log");
    }
}

/// The user an SQL session (tokio-postgres, as preflight and the pipeline open them) of
/// `conninfo` logs in as.
async fn sql_session_user(conninfo: &str) -> String {
    let sql = tributary::pg::connect(&ConnInfo::parse(conninfo).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sql.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Writes `text` to a fresh file in a directory of its own, with `mode`.
fn private_file(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `key`'s PKCS#8 PEM, encrypted with `passphrase` (PBES2, AES-256-CBC), as
/// `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it.
fn encrypt_key(key_pem: &str, passphrase: &str) -> String {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::{PrivateKeyInfo, SecretDocument};
    let (_, document) = SecretDocument::from_pem(key_pem).expect("a PKCS#8 PEM key");
    let info = PrivateKeyInfo::try_from(document.as_bytes()).expect("a PKCS#8 key");
    let (salt, iv): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
    // OpenSSL's default for -v2: PBKDF2 with HMAC-SHA256, 2048 iterations.
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &salt, &iv)
        .expect("PBES2 parameters");
    let encrypted = info
        .encrypt_with_params(params, passphrase)
        .expect("encrypting the key");
    encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .expect("PEM")
        .to_string()
}

/// pg_hba.conf asks `certonly` for a certificate alone (`cert`) and `certpw` for a
/// password and a certificate naming it (`clientcert=verify-full`); both replicate.
#[tokio::test]
async fn client_certificates_required_by_pg_hba_are_presented_by_every_client() {
    let source = Cluster::builder()
        .client_certificate("certonly")
        .client_certificate("certpw")
        .hba("hostssl all certonly 127.0.0.1/32 cert")
        .hba("hostssl replication certonly 127.0.0.1/32 cert")
        .hba("hostssl all certpw 127.0.0.1/32 scram-sha-256 clientcert=verify-full")
        .hba("hostssl replication certpw 127.0.0.1/32 scram-sha-256 clientcert=verify-full")
        .hba("host all certonly,certpw 127.0.0.1/32 reject")
        .hba("host replication certonly,certpw 127.0.0.1/32 reject")
        .start();
    prepare_source(&source, &["certonly", "certpw"]);
    let ca = path_text(source.ca_cert_path().unwrap()).to_owned();
    let (cert, key) = source.client_certificate("certonly");

    // Without the certificate, the server refuses, and the error says why.
    let without = format!(
        "postgresql://certonly@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        source.port()
    );
    let err = ReplicationClient::connect(&ConnInfo::parse(&without).unwrap())
        .await
        .err()
        .expect("no certificate, no session");
    assert!(err.to_string().contains("certificate"), "{err}");

    // URL form: the certificate alone.
    let url = format!(
        "{without}&sslcert={}&sslkey={}",
        path_text(&cert),
        path_text(&key)
    );
    let mut client = ReplicationClient::connect(&ConnInfo::parse(&url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = client
        .simple_query("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("/CN=certonly"));
    drop(client);
    assert_eq!(sql_session_user(&url).await, "certonly");
    replicates(&source, &url, "cert_only").await;

    // key=value form: a password, and a certificate whose key is encrypted (sslpassword).
    let (cert, key) = source.client_certificate("certpw");
    let keys = tempfile::tempdir().unwrap();
    let encrypted = private_file(
        &keys,
        "certpw.key",
        &encrypt_key(&fs::read_to_string(&key).unwrap(), KEY_PASSPHRASE),
        0o600,
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=postgres user=certpw password='{PASSWORD}' \
         sslmode=verify-full sslrootcert='{ca}' sslcert='{}' sslkey='{}' \
         sslpassword='{KEY_PASSPHRASE}'",
        source.port(),
        path_text(&cert),
        path_text(&encrypted)
    );
    let wrong = conninfo.replace(KEY_PASSPHRASE, "not-the-phrase");
    let err = ReplicationClient::connect(&ConnInfo::parse(&wrong).unwrap())
        .await
        .err()
        .expect("a key that does not decrypt");
    let text = err.to_string();
    assert!(
        text.contains("sslpassword") || text.contains("decrypt"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-phrase") && !text.contains(PASSWORD),
        "{text}"
    );
    replicates(&source, &conninfo, "cert_and_password").await;
}

/// The password from a password file (`passfile=`), chosen by host, port and user, and the
/// whole connection from a service file (`servicefile=`, `service=`); a password file that
/// others can read is ignored, as libpq ignores it.
#[tokio::test]
async fn password_files_and_service_files_supply_what_the_string_leaves_out() {
    let source = Cluster::builder()
        .hba("host all repl 127.0.0.1/32 scram-sha-256")
        .hba("host replication repl 127.0.0.1/32 scram-sha-256")
        .start();
    prepare_source(&source, &["repl"]);
    let dir = tempfile::tempdir().unwrap();
    let port = source.port();
    // The first line is for another port: the file is read per server.
    let entries = format!(
        "127.0.0.1:{}:*:repl:wrong-for-another-port\n127.0.0.1:{port}:*:repl:{PASSWORD}\n",
        port + 1
    );
    let open = private_file(&dir, "open.pgpass", &entries, 0o644);
    let passfile = private_file(&dir, "pgpass", &entries, 0o600);

    let with = |file: &Path| {
        format!(
            "host=127.0.0.1 port={port} user=repl dbname=postgres passfile={}",
            path_text(file)
        )
    };
    let err = ReplicationClient::connect(&ConnInfo::parse(&with(&open)).unwrap())
        .await
        .err()
        .expect("a world-readable password file is ignored");
    assert!(err.to_string().contains("password"), "{err}");
    let mut client = ReplicationClient::connect(&ConnInfo::parse(&with(&passfile)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    client.identify_system().await.unwrap();
    drop(client);

    let services = private_file(
        &dir,
        "pg_service.conf",
        &format!(
            "# the operator's services\n[other]\nhost=192.0.2.1\n\n[shop]\nhost=127.0.0.1\n\
             port={port}\nuser=repl\ndbname=postgres\npassfile={}\n",
            path_text(&passfile)
        ),
        0o644,
    );
    let conninfo = format!("service=shop servicefile={}", path_text(&services));
    assert_eq!(sql_session_user(&conninfo).await, "repl");
    replicates(&source, &conninfo, "from_service").await;
}

/// A URL with two hosts, the standby first: each `target_session_attrs` picks the server
/// libpq would pick, and a connector on `read-write` snapshots and streams from the primary.
#[tokio::test]
async fn several_hosts_are_tried_in_order_until_one_has_the_wanted_role() {
    let primary = Cluster::start();
    prepare_source(&primary, &["repl"]);
    let standby = primary.start_standby();
    let hosts = |attrs: &str| {
        format!(
            "postgresql://repl@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs={attrs}",
            standby.port(),
            primary.port()
        )
    };
    for (attrs, expected) in [
        ("any", &standby),
        ("read-write", &primary),
        ("primary", &primary),
        ("read-only", &standby),
        ("standby", &standby),
        ("prefer-standby", &standby),
    ] {
        let info = ConnInfo::parse(&hosts(attrs)).unwrap();
        let client = ReplicationClient::connect(&info)
            .await
            .unwrap_or_else(|e| panic!("{attrs}: {e}"));
        assert_eq!(
            client.endpoint().port,
            expected.port(),
            "{attrs} (replication)"
        );
        let (_, endpoint) = tributary::pg::connect_endpoint(&info)
            .await
            .unwrap_or_else(|e| panic!("{attrs}: {e}"));
        assert_eq!(endpoint.port, expected.port(), "{attrs} (SQL)");
    }
    // prefer-standby falls back to the primary when there is no standby.
    let only_primary = format!(
        "postgresql://repl@127.0.0.1:{}/postgres?target_session_attrs=prefer-standby",
        primary.port()
    );
    let client = ReplicationClient::connect(&ConnInfo::parse(&only_primary).unwrap())
        .await
        .unwrap();
    assert_eq!(client.endpoint().port, primary.port());
    drop(client);

    replicates(&primary, &hosts("read-write"), "two_hosts").await;

    // With the primary gone, read-write finds no server and says what each one was.
    primary.stop();
    let err = ReplicationClient::connect(&ConnInfo::parse(&hosts("read-write")).unwrap())
        .await
        .err()
        .expect("no primary left");
    let text = err.to_string();
    for port in [standby.port(), primary.port()] {
        assert!(text.contains(&port.to_string()), "{port} not named: {text}");
    }
    assert!(
        text.contains("standby") || text.contains("recovery"),
        "{text}"
    );
}
