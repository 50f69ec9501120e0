//! Connecting: every authentication method, TLS modes, and clear errors for the usual
//! mistakes. Each test also checks that no password leaks into an error.

use tributary::source::{ConnInfo, Error, ReplicationClient};

use crate::harness::*;

async fn try_connect(url: &str) -> Result<ReplicationClient, Error> {
    ReplicationClient::connect(&ConnInfo::parse(url).unwrap()).await
}

/// Connects in replication mode and proves the session works.
async fn assert_connects(url: &str) -> ReplicationClient {
    let mut client = try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting with {url} failed: {e}"));
    let system = client.identify_system().await.unwrap();
    assert!(!system.system_id.is_empty());
    assert!(system.timeline >= 1);
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    client
}

async fn ssl_in_use(client: &mut ReplicationClient) -> bool {
    let rows = client
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    rows[0][0].as_deref() == Some("t")
}

#[tokio::test]
async fn every_password_method_authenticates() {
    let cluster = Cluster::builder()
        .password_auth()
        .setting("log_connections", "on")
        .start();
    assert_connects(&cluster.superuser_url("postgres")).await; // trust
    for (user, password) in [
        (SCRAM_USER, SCRAM_PASSWORD),
        (MD5_USER, MD5_PASSWORD),
        (CLEARTEXT_USER, CLEARTEXT_PASSWORD),
    ] {
        assert_connects(&cluster.url(user, Some(password), "postgres")).await;
    }
    // The methods really are the ones named: the server logs each authentication (from
    // PostgreSQL 14 on; 13 logs no method).
    let log = cluster.log_contents();
    let methods: &[&str] = if cluster.major() >= 14 {
        &["scram-sha-256", "md5", "password"]
    } else {
        &[]
    };
    for method in methods {
        assert!(
            log.contains(&format!("method={method} ")),
            "no {method} authentication in the server log:\n{}",
            cluster.log_tail()
        );
    }
}

#[tokio::test]
async fn wrong_password_names_the_cause_without_the_password() {
    let cluster = Cluster::builder().password_auth().start();
    for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER] {
        let err = try_connect(&cluster.url(user, Some("not-the-pw-s3cr3t"), "postgres"))
            .await
            .err()
            .expect("wrong password is refused");
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
        let text = err.to_string();
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(text.contains("check the user name and password"), "{text}");
        assert!(!text.contains("s3cr3t"), "password leaked: {text}");
        assert!(!err.kind().is_transient());
    }
    let missing = try_connect(&cluster.url(SCRAM_USER, None, "postgres"))
        .await
        .err()
        .expect("no password is refused");
    assert!(matches!(missing, Error::Auth { .. }), "{missing}");
    assert!(missing.to_string().contains("none was given"), "{missing}");
}

#[tokio::test]
async fn pg_hba_reject_names_the_cause() {
    let cluster = Cluster::builder()
        .hba("host all shunned 127.0.0.1/32 reject")
        .start();
    cluster.psql("postgres", "CREATE ROLE shunned LOGIN REPLICATION");
    let err = try_connect(&cluster.url("shunned", None, "postgres"))
        .await
        .err()
        .expect("pg_hba rejects");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    let text = err.to_string();
    assert!(text.contains("pg_hba.conf"), "{text}");
    assert!(text.contains("add a pg_hba.conf line"), "{text}");
}

#[tokio::test]
async fn require_tls_against_a_plain_server_is_refused_clearly() {
    let cluster = Cluster::start();
    let err = try_connect(&format!(
        "{}?sslmode=require",
        cluster.superuser_url("postgres")
    ))
    .await
    .err()
    .expect("no TLS, no connection");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("does not accept TLS"), "{err}");
    // prefer falls back to plain text.
    let mut client = assert_connects(&format!(
        "{}?sslmode=prefer",
        cluster.superuser_url("postgres")
    ))
    .await;
    assert!(!ssl_in_use(&mut client).await);
}

#[tokio::test]
async fn tls_require_and_verify_full_work_against_the_harness_certificate() {
    let cluster = Cluster::builder().tls().password_auth().start();
    let ca = cluster.ca_cert_path().unwrap().display().to_string();
    let base = cluster.url(SCRAM_USER, Some(SCRAM_PASSWORD), "postgres");

    let mut client = assert_connects(&format!("{base}?sslmode=require")).await;
    assert!(ssl_in_use(&mut client).await);

    // By IP address (the certificate names 127.0.0.1) and by host name.
    let mut client = assert_connects(&format!("{base}?sslmode=verify-full&sslrootcert={ca}")).await;
    assert!(ssl_in_use(&mut client).await);
    let by_name = base.replace("127.0.0.1", "localhost");
    assert_connects(&format!("{by_name}?sslmode=verify-full&sslrootcert={ca}")).await;
    assert_connects(&format!("{base}?sslmode=verify-ca&sslrootcert={ca}")).await;

    // A default prefer connection uses TLS when offered.
    let mut client = assert_connects(&base).await;
    assert!(ssl_in_use(&mut client).await);
}

#[tokio::test]
async fn tls_verification_failures_are_clear() {
    let cluster = Cluster::builder().tls().start();
    let other = Cluster::builder().tls().start();
    let base = cluster.superuser_url("postgres");

    let err = try_connect(&format!("{base}?sslmode=verify-full"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    // A CA that did not sign this server's certificate.
    let wrong_ca = other.ca_cert_path().unwrap().display().to_string();
    let err = try_connect(&format!(
        "{base}?sslmode=verify-full&sslrootcert={wrong_ca}"
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("handshake failed"), "{err}");
}

#[tokio::test]
async fn unreachable_server_and_unknown_database_are_explained() {
    let cluster = Cluster::start();
    let err = try_connect(&cluster.superuser_url("no_such_db"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), Some("3D000"), "{err}");
    assert!(err.to_string().contains("check the database name"), "{err}");

    // A port nobody listens on (the harness's cluster was just dropped there).
    let port = {
        let gone = Cluster::start();
        gone.port()
    };
    let err = try_connect(&format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.kind().is_transient());
    assert!(
        err.to_string().contains("check that the server is running"),
        "{err}"
    );
}

#[tokio::test]
async fn connects_over_the_unix_socket() {
    let cluster = Cluster::start();
    let url = format!(
        "postgresql://{SUPERUSER}@/postgres?host={}&port={}",
        cluster.socket_dir().display(),
        cluster.port()
    );
    assert_connects(&url).await;
}
