//! Secrets as an operator meets them, through the binary: one key location whatever the
//! working directory, no key made by a command that only reads (nor by `run`), a wrong or
//! missing key named before anything is written, and no password shown by an error about
//! input that did not parse.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::harness::{Cluster, Install};
use crate::support::PATIENCE;

/// A source with one replicable table.
fn source() -> Cluster {
    let source = Cluster::start();
    source.psql(
        "postgres",
        "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'a')",
    );
    source
}

/// `tributary` as run in a private mount namespace whose `/var/lib` is `state`: the built-in
/// default key file `/var/lib/tributary/tributary.key` is then
/// `state/tributary/tributary.key`, and the machine's own `/var/lib` is never touched.
/// (`unshare` keeps the process id through `exec`, so signals reach tributary.)
fn in_namespace(state: &Path, cwd: &Path, store: &Cluster) -> Command {
    let mut command = Command::new("unshare");
    command
        .current_dir(cwd)
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /var/lib && exec "$@""#)
        .arg(state)
        .arg(env!("CARGO_BIN_EXE_tributary"))
        .env_remove("TRIBUTARY__SECRETS__KEY_FILE")
        .env_remove("TRIBUTARY__SECRETS__KEY")
        .env("TRIBUTARY__STORE__URL", store.superuser_url("postgres"))
        .env("TRIBUTARY__METRICS__LISTEN", "127.0.0.1:0")
        .env("TRIBUTARY_PG_BINDIR", &Install::default().bindir)
        .env("RUST_LOG", "warn");
    command
}

fn run(mut command: Command, args: &[&str]) -> Output {
    let out = command.args(args).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("mount:"),
        "this test needs root (a mount namespace): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file below `dir` whose name ends in `.key`.
fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(key_files(&path));
        } else if path.extension().is_some_and(|e| e == "key") {
            found.push(path);
        }
    }
    found
}

#[test]
fn only_the_first_connector_create_makes_a_key_at_the_one_default_location() {
    let store = Cluster::start();
    let source = source();
    let state = tempfile::tempdir().unwrap();
    let default_key = state.path().join("tributary/tributary.key");
    let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // An operator's checkout, with its configuration beside where releases before kept the key.
    fs::create_dir(here.path().join("config")).unwrap();
    fs::write(
        here.path().join("config/tributary.toml"),
        format!("[store]\nurl = \"{}\"\n", store.superuser_url("postgres")),
    )
    .unwrap();

    // Commands that only read make no key, at the default location or at a configured one.
    let list = ok(&run(
        in_namespace(state.path(), here.path(), &store),
        &["connector", "list"],
    ));
    assert!(list.contains("no connectors"), "{list}");
    let configured = there.path().join("configured.key");
    let mut command = in_namespace(state.path(), here.path(), &store);
    command.env("TRIBUTARY__SECRETS__KEY_FILE", &configured);
    ok(&run(command, &["status"]));
    ok(&run(
        in_namespace(state.path(), here.path(), &store),
        &["branch", "list"],
    ));
    assert!(!state.path().join("tributary").exists());
    assert!(!configured.exists());

    // Neither does the daemon: with nothing stored it starts without a key.
    let log = there.path().join("run.log");
    let mut daemon = in_namespace(state.path(), here.path(), &store)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !fs::read_to_string(&log)
        .unwrap()
        .contains("tributary started")
    {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "{}",
            fs::read_to_string(&log).unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "{}",
            fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(!state.path().join("tributary").exists(), "run made no key");

    // The first `connector create` makes it, at the default location, not beside the
    // configuration nor in the working directory.
    let out = run(
        in_namespace(state.path(), here.path(), &store),
        &[
            "--config",
            "config/tributary.toml",
            "connector",
            "create",
            "postgresql",
            &source.superuser_url("postgres"),
            "--name",
            "shop",
            "--schemas",
            "public",
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("created a new key"), "{stderr}");
    assert!(
        stderr.contains("/var/lib/tributary/tributary.key"),
        "{stderr}"
    );
    let mode = fs::metadata(&default_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(key_files(here.path()), Vec::<PathBuf>::new());

    // From another directory, without the configuration file: the same key opens the URL.
    let json = ok(&run(
        in_namespace(state.path(), there.path(), &store),
        &["connector", "list", "--format", "json"],
    ));
    let connectors: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(connectors[0]["name"], "shop");
    assert_eq!(
        connectors[0]["source_error"],
        serde_json::Value::Null,
        "{json}"
    );
    assert_eq!(key_files(state.path()), vec![default_key.clone()]);
    assert_eq!(key_files(there.path()), Vec::<PathBuf>::new());

    // Once a URL is stored, a missing key is an error naming where it looked (and where
    // releases before kept it), never a new key.
    fs::rename(&default_key, here.path().join("config/tributary.key")).unwrap();
    let out = run(
        in_namespace(state.path(), here.path(), &store),
        &["--config", "config/tributary.toml", "connector", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "no key to open the stored source URLs with",
        "/var/lib/tributary/tributary.key",
        "default location",
        "config/tributary.key exists: move it to /var/lib/tributary/tributary.key",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!default_key.exists(), "no new key");
}

/// The bookkeeping, as far as commands could change it.
fn bookkeeping(store: &Cluster) -> String {
    store.psql(
        "postgres",
        "SELECT concat_ws(' | ',
            (SELECT string_agg(concat_ws(',', name, state, active, enabled, resnapshot_requested),
                               ';' ORDER BY name) FROM tributary.connectors),
            (SELECT count(*) FROM tributary.state_history),
            (SELECT count(*) FROM tributary.lease_history),
            (SELECT count(*) FROM tributary.branches),
            (SELECT count(*) FROM tributary.daemons),
            (SELECT key_fingerprint FROM tributary.installation))",
    )
}

#[test]
fn a_wrong_or_missing_key_is_named_before_anything_is_written() {
    let store = Cluster::start();
    let source = source();
    let daemon = Daemon::new(&store);
    daemon.create_connector(&source.superuser_url("postgres"), "shop", "public");
    let before = bookkeeping(&store);
    let expected = store.psql(
        "postgres",
        "SELECT key_fingerprint FROM tributary.installation",
    );
    assert_eq!(expected.len(), 16, "{before}");

    let dir = tempfile::tempdir().unwrap();
    let wrong_key = dir.path().join("other.key");
    fs::write(&wrong_key, format!("{}\n", "ab".repeat(32))).unwrap();
    fs::set_permissions(&wrong_key, fs::Permissions::from_mode(0o600)).unwrap();
    let mut wrong = daemon.sibling();
    wrong.set(
        "TRIBUTARY__SECRETS__KEY_FILE",
        &wrong_key.display().to_string(),
    );
    for args in [
        &["connector", "list"][..],
        &["status"],
        &["connector", "switch", "shop"],
        &["connector", "retry-setup", "shop", "--resnapshot"],
        // (`connector delete --force` deletes without the source: `credentials.rs`.)
        &["connector", "delete", "shop"],
        &["branch", "create", "dev"],
    ] {
        let out = wrong.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        for needle in [
            "this is not the key this bookkeeping was written with",
            &format!(", expected {expected})"),
            &wrong_key.display().to_string(),
            "Nothing was written",
        ] {
            assert!(stderr.contains(needle), "{args:?}: {needle}: {stderr}");
        }
    }
    // The daemon refuses to start, too.
    wrong.start();
    assert_eq!(wrong.wait_exit().code(), Some(1));
    assert!(
        wrong.log_tail().contains("this is not the key"),
        "{}",
        wrong.log_tail()
    );
    assert_eq!(bookkeeping(&store), before);

    // A key file that is missing: named with the key wanted, and not created, by any
    // command, `connector create` included.
    let missing = dir.path().join("missing.key");
    wrong.set(
        "TRIBUTARY__SECRETS__KEY_FILE",
        &missing.display().to_string(),
    );
    for args in [
        &["connector", "list"][..],
        &[
            "connector",
            "create",
            "postgresql",
            &source.superuser_url("postgres"),
            "--name",
            "shop2",
            "--schemas",
            "public",
        ],
    ] {
        let out = wrong.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        for needle in [
            "no key to open the stored source URLs with",
            &missing.display().to_string(),
            &format!("fingerprint {expected}"),
            "No key was created",
        ] {
            assert!(stderr.contains(needle), "{args:?}: {needle}: {stderr}");
        }
    }
    assert!(!missing.exists());
    assert_eq!(bookkeeping(&store), before);
    // And the right key still works.
    assert_eq!(
        daemon.connector("shop")["source_error"],
        serde_json::Value::Null
    );
}

/// The malformed inputs operators were seen to type, each with the password `hunter2`.
const MALFORMED: [(&str, &str); 8] = [
    (
        "repl:hunter2@127.0.0.1/db",
        "did you mean postgresql://repl:****@127.0.0.1/db?",
    ),
    (
        "postgres//repl:hunter2@127.0.0.1/db",
        "did you mean postgresql://repl:****@",
    ),
    (
        "postgresql:/repl:hunter2@127.0.0.1/db",
        "did you mean postgresql://repl:****@",
    ),
    (
        "host=127.0.0.1 user=repl password='hunter2 dbname=db",
        "key=value connection string",
    ),
    ("postgresql://repl:hunter2/x@127.0.0.1/db", "%2F"),
    ("postgresql://repl:hunter2#x@127.0.0.1/db", "%23"),
    ("postgresql://repl:hunter2?x@127.0.0.1/db", "%3F"),
    ("postgresql://repl:hun@ter2@127.0.0.1/db", "%40"),
];

#[test]
fn malformed_urls_never_show_their_password_wherever_they_are_given() {
    // `connector create` reads its URL once the bookkeeping is open.
    let store = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let tributary = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
        command
            .current_dir(dir.path())
            .env_remove("TRIBUTARY__STORE__URL");
        command
    };
    for (url, advice) in MALFORMED {
        let runs = [
            ("tail", tributary().args(["tail", url]).output().unwrap()),
            (
                "preflight",
                tributary()
                    .args(["connector", "preflight", "postgresql", url])
                    .output()
                    .unwrap(),
            ),
            (
                "create",
                tributary()
                    .env("TRIBUTARY__STORE__URL", store.superuser_url("postgres"))
                    .args(["connector", "create", "postgresql", url, "--name", "x"])
                    .output()
                    .unwrap(),
            ),
            (
                "update --url",
                tributary()
                    .env("TRIBUTARY__STORE__URL", store.superuser_url("postgres"))
                    .args(["connector", "update", "x", "--url", url])
                    .output()
                    .unwrap(),
            ),
            (
                "store.url",
                tributary()
                    .env("TRIBUTARY__STORE__URL", url)
                    .args(["connector", "list"])
                    .output()
                    .unwrap(),
            ),
        ];
        for (how, out) in runs {
            let shown = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{how} {url}: {shown}");
            for secret in ["hunter2", "hun", "ter2"] {
                assert!(!shown.contains(secret), "{how} {url}: {shown}");
            }
            assert!(shown.contains(advice), "{how} {url}: {shown}");
        }
    }
}

#[test]
fn a_toml_syntax_error_in_store_url_is_reported_once_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tributary.toml");
    for text in [
        "[store]\nurl = \"postgresql://u:hunter2@h/db\n",
        "[store]\nurl = postgresql://u:hunter2@h/db\n",
    ] {
        fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .env_remove("TRIBUTARY__STORE__URL")
            .args([
                "--config",
                &config.display().to_string(),
                "connector",
                "list",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(stderr.contains("line 2, column"), "{stderr}");
        assert_eq!(stderr.matches("not valid TOML").count(), 1, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
