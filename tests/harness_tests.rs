//! Tests of the test harness itself: if these fail, every other integration test is suspect.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio_postgres::error::SqlState;

use crate::harness::{
    Cluster, CLEARTEXT_PASSWORD, CLEARTEXT_USER, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER,
};

#[tokio::test]
async fn default_cluster_is_logical_and_decodes_with_wal2json() {
    let cluster = Cluster::start();
    assert_eq!(cluster.psql("postgres", "SHOW wal_level"), "logical");
    assert_eq!(cluster.psql("postgres", "SELECT 1; SELECT 2"), "1\n2");

    let client = cluster.connect("postgres").await;
    let row = client
        .query_one("SELECT current_user::text, inet_server_port()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, i32>(1), i32::from(cluster.port()));

    let changes = cluster.psql(
        "postgres",
        "SELECT slot_name FROM pg_create_logical_replication_slot('probe', 'wal2json');
         CREATE TABLE probe_table (id int PRIMARY KEY);
         INSERT INTO probe_table VALUES (42);
         SELECT data FROM pg_logical_slot_get_changes('probe', NULL, NULL, 'format-version', '2')
          WHERE data LIKE '{\"action\":\"I\"%';
         SELECT pg_drop_replication_slot('probe');",
    );
    let mut lines = changes.lines();
    assert_eq!(lines.next(), Some("probe"));
    let insert = lines.next().expect("wal2json emitted the insert");
    assert!(insert.contains("\"table\":\"probe_table\""), "{insert}");
    assert!(insert.contains("\"value\":42"), "{insert}");
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

#[tokio::test]
async fn builder_settings_override_defaults() {
    let cluster = Cluster::builder()
        .setting("wal_sender_timeout", "2s")
        .setting("max_replication_slots", 7)
        .setting("application_name", "'quoted already'")
        .start();
    let client = cluster.connect("postgres").await;
    for (setting, expected) in [
        ("wal_sender_timeout", "2s"),
        ("max_replication_slots", "7"),
        ("wal_level", "logical"),
    ] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), expected, "{setting}");
    }
    // tokio-postgres sends no application_name, so the server's setting shows.
    let row = client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "quoted already");
}

#[tokio::test]
async fn password_roles_log_in_with_their_method_only_with_the_right_password() {
    let cluster = Cluster::builder().password_auth().start();
    let stored = cluster.psql(
        "postgres",
        &format!(
            "SELECT rolname, rolreplication, split_part(rolpassword, '$', 1) LIKE 'SCRAM-SHA-256%', \
                    rolpassword LIKE 'md5%' \
             FROM pg_authid WHERE rolname IN ('{SCRAM_USER}', '{MD5_USER}', '{CLEARTEXT_USER}') \
             ORDER BY rolname"
        ),
    );
    assert_eq!(
        stored,
        format!("{CLEARTEXT_USER}|t|t|f\n{MD5_USER}|t|f|t\n{SCRAM_USER}|t|t|f")
    );

    for (user, password, method) in [
        (SCRAM_USER, SCRAM_PASSWORD, "scram-sha-256"),
        (MD5_USER, MD5_PASSWORD, "md5"),
        (CLEARTEXT_USER, CLEARTEXT_PASSWORD, "password"),
    ] {
        let client = cluster
            .try_connect_as(user, Some(password), "postgres")
            .await
            .unwrap_or_else(|e| panic!("{user} with the right password: {e}"));
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);

        let err = match cluster
            .try_connect_as(user, Some("wrong password"), "postgres")
            .await
        {
            Ok(_) => panic!("{user} logged in with a wrong password"),
            Err(err) => err,
        };
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
        let log = cluster.log_contents();
        assert!(
            log.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{log}"
        );
        assert!(
            cluster
                .try_connect_as(user, None, "postgres")
                .await
                .is_err(),
            "{user} logged in without a password"
        );
        let rule = cluster.psql(
            "postgres",
            &format!(
                "SELECT auth_method FROM pg_hba_file_rules \
                 WHERE '{user}' = ANY(user_name) AND 'all' = ANY(database)"
            ),
        );
        assert_eq!(rule, method, "{user}");
    }
}

#[tokio::test]
async fn tls_cluster_serves_a_certificate_signed_by_its_ca() {
    let cluster = Cluster::builder().tls().start();
    assert_eq!(cluster.psql("postgres", "SHOW ssl"), "on");
    let ca = cluster
        .ca_cert_path()
        .expect("a TLS cluster has a CA")
        .to_owned();
    assert!(ca.is_file());

    for host in ["localhost", "127.0.0.1"] {
        let conninfo = format!(
            "host={host} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            cluster.port(),
            ca.display()
        );
        let ssl = cluster.psql_conninfo(
            &conninfo,
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert!(ssl.starts_with("t|TLS"), "{host}: {ssl}");
    }

    // Another CA does not vouch for this server.
    let other = Cluster::builder().tls().start();
    let conninfo = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
        cluster.port(),
        other.ca_cert_path().unwrap().display()
    );
    let err = cluster
        .try_psql_conninfo(&conninfo, "SELECT 1")
        .expect_err("verified against the wrong CA");
    assert!(err.contains("certificate verify failed"), "{err}");

    assert!(Cluster::start().ca_cert_path().is_none());
}

#[tokio::test]
async fn hba_lines_come_before_the_defaults() {
    let cluster = Cluster::builder()
        .hba("host all nobody_allowed 127.0.0.1/32 reject")
        .start();
    cluster.psql("postgres", "CREATE ROLE nobody_allowed LOGIN");
    let err = match cluster
        .try_connect_as("nobody_allowed", None, "postgres")
        .await
    {
        Ok(_) => panic!("the reject line did not win over trust"),
        Err(err) => err,
    };
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_clusters_get_their_own_port_and_directory() {
    let starts: Vec<_> = (0..3)
        .map(|_| tokio::task::spawn_blocking(Cluster::start))
        .collect();
    let mut clusters = Vec::new();
    for start in starts {
        clusters.push(start.await.unwrap());
    }
    for (i, cluster) in clusters.iter().enumerate() {
        cluster.create_database(&format!("db {i}"));
        for other in &clusters[i + 1..] {
            assert_ne!(cluster.port(), other.port());
            assert_ne!(cluster.dir(), other.dir());
        }
    }
    for (i, cluster) in clusters.iter().enumerate() {
        let databases = cluster.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'db %'",
        );
        assert_eq!(databases, format!("db {i}"));
        let client = cluster.connect(&format!("db {i}")).await;
        client.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test]
async fn restart_keeps_port_and_data() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE TABLE kept AS SELECT 1 AS one");
    cluster.restart();
    assert_eq!(cluster.psql("postgres", "SELECT one FROM kept"), "1");
    cluster.crash();
    assert!(TcpStream::connect(("127.0.0.1", cluster.port())).is_err());
    cluster.start_again();
    assert_eq!(cluster.psql("postgres", "SELECT one FROM kept"), "1");
    assert!(cluster
        .log_contents()
        .contains("database system was interrupted"));
}

/// Checks that the cluster that had `dir` and `port` is gone.
fn assert_gone(dir: &Path, port: u16) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections"
    );
}

#[test]
fn drop_stops_the_server_and_removes_the_directory() {
    let cluster = Cluster::start();
    let (dir, port) = (cluster.dir().to_owned(), cluster.port());
    assert!(dir.join("data/postmaster.pid").is_file());
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    drop(cluster);
    assert_gone(&dir, port);
}

#[test]
fn a_panicking_test_still_removes_its_cluster() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::start();
        seen = Some((cluster.dir().to_owned(), cluster.port()));
        panic!("a test fails while its cluster runs");
    }));
    assert!(result.is_err());
    let (dir, port) = seen.expect("the cluster started");
    assert_gone(&dir, port);

    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let cluster = Cluster::start();
        sender
            .send((cluster.dir().to_owned(), cluster.port()))
            .unwrap();
        panic!("a test thread fails while its cluster runs");
    });
    assert!(thread.join().is_err());
    let (dir, port) = receiver.recv().unwrap();
    assert_gone(&dir, port);
}

#[test]
fn a_server_that_cannot_start_is_reported_with_its_log() {
    let result = std::panic::catch_unwind(|| {
        Cluster::builder()
            .setting("shared_buffers", "plenty")
            .start()
    });
    let payload = result.err().expect("the cluster did not start");
    let message = payload
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("starting the server failed"), "{message}");
    assert!(
        message.contains("invalid value for parameter \"shared_buffers\""),
        "{message}"
    );
    let dir = message
        .split_once(" in ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(dir, _)| Path::new(dir).to_owned())
        .expect("the message names the directory");
    assert!(!dir.exists(), "{} still exists", dir.display());
}
