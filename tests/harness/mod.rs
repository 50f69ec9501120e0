//! Test harness: every integration test runs against real PostgreSQL clusters with wal2json,
//! started by the test itself and thrown away when it ends. Never mocks.
//!
//! A [`Cluster`] is `initdb` + `pg_ctl start` in a fresh temporary directory:
//!
//! ```text
//! /tmp/tributary-pg-XXXXXX/        0700, owned by the server's OS user
//!   data/                          the data directory (postgresql.conf, pg_hba.conf, …)
//!   server.log                     the server's log
//!   .s.PGSQL.<port>                the unix socket
//!   ca.crt server.crt server.key   only with ClusterBuilder::tls()
//!   client-<role>.crt/.key         ClusterBuilder::client_certificate(role), owned by the tests
//! ```
//!
//! The server listens on 127.0.0.1 at a port chosen at random (never one this process has
//! handed out before), with `wal_level = logical`. Dropping the `Cluster` stops the server in
//! immediate mode and removes the directory — also when the test panics, since `Drop` runs
//! while unwinding.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (as in CI), the server
//! programs (`initdb`, `pg_ctl`, hence `postgres`) run as the `postgres` OS user through
//! `runuser`, and the directory belongs to that user. Clients (`psql`, tokio-postgres, the
//! daemon under test) keep running as the test's own user.
//!
//! Which PostgreSQL: an [`Install`]. A cluster uses [`Install::default`] unless its builder
//! names a major ([`ClusterBuilder::major`]): `$TRIBUTARY_PG_BINDIR` if set, else
//! `$TRIBUTARY_PG_MAJOR` (run the whole suite on one other version), else the newest
//! `/usr/lib/postgresql/<N>` with wal2json (the distribution's, from
//! `scripts/install-deps.sh`). The other majors of the version matrix are under
//! `$TRIBUTARY_PG_ROOT` (default `/opt/tributary-pg`), from `scripts/install-pg-versions.sh`;
//! some run their server programs in a chroot, through wrappers started as root.

// Each test module uses its own part of the harness.
#![allow(dead_code)]

mod tls;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// The bootstrap superuser of every cluster (`initdb -U postgres`); trusted, no password.
pub const SUPERUSER: &str = "postgres";

/// With [`ClusterBuilder::password_auth`]: a LOGIN REPLICATION role whose password is stored
/// as SCRAM-SHA-256 and checked with `scram-sha-256`. The password needs percent-encoding in
/// a URL, which [`Cluster::url`] does.
pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = r#"scram pw:with@special/chars%?#&'"\ end"#;
/// With [`ClusterBuilder::password_auth`]: a LOGIN REPLICATION role whose password is stored
/// as MD5 and checked with `md5`.
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-pw-4f1c9a";
/// With [`ClusterBuilder::password_auth`]: a LOGIN REPLICATION role checked with `password`
/// (sent in clear text).
pub const CLEARTEXT_USER: &str = "cleartext_user";
pub const CLEARTEXT_PASSWORD: &str = "cleartext-pw-9b2e7d";

/// The OS user that runs the server when the tests run as root.
const SERVER_OS_USER: &str = "postgres";
/// Attempts at starting a new cluster when its port was taken in the meantime.
const START_ATTEMPTS: usize = 5;
/// Seconds `pg_ctl` waits for a start or stop to complete.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Lines of the server log quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// Options for a cluster; [`Cluster::builder`] makes one, [`ClusterBuilder::start`] uses it.
#[derive(Debug, Default, Clone)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    tls: bool,
    /// Roles that get a client certificate (implies `tls`).
    client_certificates: Vec<String>,
    password_auth: bool,
    /// Leave `output_plugin_libraries` at the server's default, which refuses wal2json.
    refuse_wal2json: bool,
    /// `None`: [`Install::default`].
    install: Option<&'static Install>,
    /// The data directory on a loop-mounted XFS made with reflink=1.
    reflink_storage: bool,
}

impl ClusterBuilder {
    /// Any postgresql.conf setting. Applied after the harness's own, so it overrides them.
    /// The value may be bare (`2s`) or already quoted (`'2s'`).
    pub fn setting(mut self, name: &str, value: impl ToString) -> Self {
        self.settings.push((name.to_owned(), value.to_string()));
        self
    }

    /// An extra pg_hba.conf line, placed before the harness's lines so that it wins.
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_owned());
        self
    }

    /// Serve TLS (`ssl = on`) with a server certificate for `localhost` and `127.0.0.1`,
    /// signed by a fresh CA whose certificate is at [`Cluster::ca_cert_path`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// [`ClusterBuilder::tls`], with the CA also trusted for client certificates
    /// (`ssl_ca_file`), and a certificate whose common name is `role` at
    /// [`Cluster::client_certificate`].
    pub fn client_certificate(mut self, role: &str) -> Self {
        self.tls = true;
        self.client_certificates.push(role.to_owned());
        self
    }

    /// Create [`SCRAM_USER`], [`MD5_USER`] and [`CLEARTEXT_USER`], each authenticated over
    /// TCP with its own method (databases and replication), before the trust defaults.
    pub fn password_auth(mut self) -> Self {
        self.password_auth = true;
        self
    }

    /// Leave `output_plugin_libraries` (current minor releases) at its default, which
    /// refuses wal2json to every role, as on a source whose operator has not allowed it.
    /// Without this, the harness allows wal2json wherever the server has the setting.
    pub fn refuse_wal2json(mut self) -> Self {
        self.refuse_wal2json = true;
        self
    }

    /// The data directory on a loop-mounted XFS image made with `mkfs.xfs -m reflink=1`
    /// (xfsprogs), where PostgreSQL 18's `file_copy_method = clone` clones files. Needs
    /// root (to mount); the image is unmounted when the cluster is dropped.
    pub fn reflink_storage(mut self) -> Self {
        self.reflink_storage = true;
        self
    }

    /// A server of PostgreSQL `major` (see [`install`]) instead of the default one.
    pub fn major(mut self, major: u32) -> Self {
        self.install = Some(install(major));
        self
    }

    /// Creates and starts the cluster; panics with the reason (and server log) if it cannot.
    #[must_use = "dropping the Cluster stops the server"]
    pub fn start(self) -> Cluster {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("tributary-pg-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap_or_else(|e| panic!("harness: creating a temporary directory failed: {e}"));
        // From here on, a panic drops the Cluster, which stops whatever was started.
        let mut cluster = Cluster {
            port: 0,
            data_dir: dir.path().join("data"),
            ca_cert: None,
            server_user: server_user(),
            install: self.install.unwrap_or_else(Install::default),
            mount: None,
            dir,
        };
        cluster.give_to_server_user(cluster.dir());
        if self.reflink_storage {
            cluster.mount_reflink_storage();
        }
        cluster.initdb();

        let conf_path = cluster.data_dir.join("postgresql.conf");
        let initdb_conf = fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("harness: reading {}: {e}", conf_path.display()));
        if self.tls {
            cluster.write_certificates(&self.client_certificates);
        }
        cluster.write_file(&cluster.data_dir.join("pg_hba.conf"), &self.pg_hba(), 0o600);

        for attempt in 1..=START_ATTEMPTS {
            cluster.port = pick_port();
            let conf = initdb_conf.clone() + &self.harness_conf(&cluster);
            cluster.write_file(&conf_path, &conf, 0o600);
            let log_len = fs::metadata(cluster.log_path()).map_or(0, |m| m.len() as usize);
            let Err(err) = cluster.pg_ctl_start() else {
                break;
            };
            let log = cluster.log_contents();
            let new_log = log.get(log_len..).unwrap_or(&log);
            let port_taken = new_log.contains("could not bind")
                || new_log.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < START_ATTEMPTS {
                eprintln!("harness: port {} was taken, trying another", cluster.port);
                continue;
            }
            cluster.fail("starting the server", &err);
        }

        if self.password_auth {
            cluster.create_password_roles();
        }
        eprintln!(
            "harness: PostgreSQL {} on port {} in {} started in {} ms",
            cluster.install.version,
            cluster.port,
            cluster.dir().display(),
            started.elapsed().as_millis()
        );
        cluster
    }

    /// The harness's settings for `cluster`, then the builder's.
    fn harness_conf(&self, cluster: &Cluster) -> String {
        let dir = cluster
            .dir()
            .to_str()
            .expect("temporary directory path is UTF-8");
        let mut settings: Vec<(&str, String)> = vec![
            ("listen_addresses", "127.0.0.1".into()),
            ("port", cluster.port.to_string()),
            ("unix_socket_directories", dir.into()),
            ("wal_level", "logical".into()),
            ("max_wal_senders", "20".into()),
            ("max_replication_slots", "20".into()),
            // A test server need not survive an OS crash. Crashes of the server process
            // (pg_ctl -m immediate, SIGKILL) lose nothing: the written WAL is in the page cache.
            // synchronous_commit stays on, or an immediate stop would lose commits.
            ("fsync", "off".into()),
            ("shared_buffers", "32MB".into()),
            ("log_line_prefix", "%m [%p] %q%u@%d ".into()),
            // The default from PostgreSQL 14 on; 13's is md5.
            ("password_encryption", "scram-sha-256".into()),
        ];
        if !self.refuse_wal2json && cluster.install.has_setting("output_plugin_libraries") {
            // In postgresql.conf a list is one string, split at commas (unlike ALTER
            // SYSTEM, which takes one quoted string as one element).
            settings.push((
                "output_plugin_libraries",
                "pgoutput, test_decoding, wal2json".into(),
            ));
        }
        if self.tls {
            settings.push(("ssl", "on".into()));
            settings.push(("ssl_cert_file", format!("{dir}/server.crt")));
            settings.push(("ssl_key_file", format!("{dir}/server.key")));
            settings.push(("ssl_ca_file", format!("{dir}/ca.crt")));
        }
        let mut conf = String::from("\n# Added by tributary's test harness.\n");
        let builder_settings = self.settings.iter().map(|(n, v)| (n.as_str(), v.clone()));
        for (name, value) in settings.into_iter().chain(builder_settings) {
            let value = if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
                value
            } else {
                format!("'{}'", value.replace('\'', "''"))
            };
            writeln!(conf, "{name} = {value}").unwrap();
        }
        conf
    }

    /// First match wins: the builder's lines, the password roles, then trust for everyone
    /// over the socket and 127.0.0.1.
    fn pg_hba(&self) -> String {
        let mut hba = String::from("# Written by tributary's test harness; first match wins.\n");
        for line in &self.hba {
            writeln!(hba, "{line}").unwrap();
        }
        if self.password_auth {
            for (user, method) in [
                (SCRAM_USER, "scram-sha-256"),
                (MD5_USER, "md5"),
                (CLEARTEXT_USER, "password"),
            ] {
                for database in ["all", "replication"] {
                    writeln!(hba, "host {database} {user} 127.0.0.1/32 {method}").unwrap();
                }
            }
        }
        hba.push_str(
            "local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        );
        hba
    }
}

/// A running PostgreSQL cluster in its own temporary directory; see the module docs.
/// Dropping it stops the server and removes the directory.
pub struct Cluster {
    port: u16,
    data_dir: PathBuf,
    ca_cert: Option<PathBuf>,
    /// `Some` when the tests run as root and the server runs as [`SERVER_OS_USER`].
    server_user: Option<OsUser>,
    install: &'static Install,
    /// A filesystem mounted for the data directory, unmounted after the server stops.
    mount: Option<PathBuf>,
    /// Declared last: removed only after `Drop::drop` has stopped the server.
    dir: TempDir,
}

impl Cluster {
    /// A cluster with the harness's defaults.
    #[must_use = "dropping the Cluster stops the server"]
    pub fn start() -> Cluster {
        Cluster::builder().start()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding everything of this cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the unix socket (`host=<this> port=<port>` in libpq terms).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of `postgres`, `psql`, `pg_dump`, … used for this cluster. Its client
    /// programs run on this host whatever the server runs in.
    pub fn bindir(&self) -> &'static Path {
        &self.install.bindir
    }

    /// The PostgreSQL installation this cluster runs.
    pub fn install(&self) -> &'static Install {
        self.install
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.install.major
    }

    /// The CA certificate (PEM) that signed the server's certificate; `None` without TLS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// Where [`ClusterBuilder::client_certificate`] put `role`'s certificate and key (PEM).
    pub fn client_certificate(&self, role: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        (
            dir.join(format!("client-{role}.crt")),
            dir.join(format!("client-{role}.key")),
        )
    }

    /// `postgresql://user:password@127.0.0.1:<port>/dbname`, percent-encoded.
    pub fn url(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        let password = password.map_or(String::new(), |p| format!(":{}", percent_encode(p)));
        format!(
            "postgresql://{}{password}@127.0.0.1:{}/{}",
            percent_encode(user),
            self.port,
            percent_encode(dbname)
        )
    }

    /// The URL of [`SUPERUSER`] (trusted, no password) for `dbname`.
    pub fn superuser_url(&self, dbname: &str) -> String {
        self.url(SUPERUSER, None, dbname)
    }

    /// A superuser connection over TCP without TLS; its connection task is spawned on the
    /// current tokio runtime.
    pub async fn connect(&self, dbname: &str) -> Client {
        match connect_url(&self.superuser_url(dbname)).await {
            Ok(client) => client,
            Err(err) => self.fail(
                &format!("connecting to database {dbname}"),
                &err.to_string(),
            ),
        }
    }

    /// Connects over TCP without TLS as `user`, for tests that expect failures.
    pub async fn try_connect_as(
        &self,
        user: &str,
        password: Option<&str>,
        dbname: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect_url(&self.url(user, password, dbname)).await
    }

    /// Runs `sql` (any psql script) as the superuser over the unix socket and returns its
    /// trimmed output: unaligned, tuples only, no command tags. Panics on any error.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            conninfo_quote(&self.socket_dir().to_string_lossy()),
            self.port,
            conninfo_quote(dbname)
        );
        self.try_psql_conninfo(&conninfo, sql)
            .unwrap_or_else(|err| self.fail(&format!("psql on database {dbname}"), &err))
    }

    /// Like [`Cluster::psql`], connecting with a libpq connection string or URL of the
    /// caller's choosing (TLS options, other users, …). Panics on any error.
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> String {
        self.try_psql_conninfo(conninfo, sql)
            .unwrap_or_else(|err| self.fail("psql", &err))
    }

    /// Like [`Cluster::psql_conninfo`], returning psql's failure instead of panicking.
    pub fn try_psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String, String> {
        let mut child = Command::new(self.bindir().join("psql"))
            // No psqlrc, no command tags, unaligned tuples only; script from stdin.
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-f", "-", "-d", conninfo])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running psql: {e}"))?;
        // A writer thread, so a large script cannot deadlock against a large output.
        let mut stdin = child.stdin.take().expect("psql stdin is piped");
        let script = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let output = child
            .wait_with_output()
            .map_err(|e| format!("waiting for psql: {e}"))?;
        // psql stops reading at the first error; that broken pipe is reported below.
        let _ = writer.join();
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server has logged so far.
    pub fn log_contents(&self) -> String {
        fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// A physical standby of this cluster, as an operator makes one (`pg_basebackup -R`,
    /// streaming), started in its own directory on its own port.
    #[must_use = "dropping the Cluster stops the server"]
    pub fn start_standby(&self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tributary-pg-standby-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .unwrap_or_else(|e| panic!("harness: creating a temporary directory failed: {e}"));
        let standby = Cluster {
            port: pick_port(),
            data_dir: dir.path().join("data"),
            ca_cert: None,
            server_user: server_user(),
            install: self.install,
            mount: None,
            dir,
        };
        standby.give_to_server_user(standby.dir());
        let mut cmd = standby.server_command("pg_basebackup");
        cmd.arg("-D")
            .arg(&standby.data_dir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ])
            .arg(format!("--port={}", self.port));
        if let Err(err) = run(&mut cmd) {
            self.fail("pg_basebackup for a standby", &err);
        }
        // The copied configuration names the primary's port and directory: later lines win.
        let conf_path = standby.data_dir.join("postgresql.conf");
        let conf = fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("harness: reading {}: {e}", conf_path.display()));
        let builder = ClusterBuilder {
            install: Some(self.install),
            ..ClusterBuilder::default()
        };
        let conf = conf + &builder.harness_conf(&standby);
        standby.write_file(&conf_path, &conf, 0o600);
        if let Err(err) = standby.pg_ctl_start() {
            standby.fail("starting the standby", &err);
        }
        standby
    }

    /// Shuts the server down cleanly (`pg_ctl -m fast stop`); [`Cluster::start_again`]
    /// brings it back on the same port.
    pub fn stop(&self) {
        if let Err(err) = self.pg_ctl_stop("fast") {
            self.fail("stopping the server", &err);
        }
    }

    /// Stops the server the way a crash would (`pg_ctl -m immediate stop`): no checkpoint,
    /// crash recovery at the next start.
    pub fn crash(&self) {
        if let Err(err) = self.pg_ctl_stop("immediate") {
            self.fail("crashing the server", &err);
        }
    }

    /// Promotes a standby to a primary on a new timeline (`pg_ctl promote`), waiting until
    /// it accepts writes.
    pub fn promote(&self) {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["promote", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
            .arg(&self.data_dir);
        if let Err(err) = run(&mut cmd) {
            self.fail("promoting the standby", &err);
        }
    }

    /// Kills the postmaster and every server process with SIGKILL, as a machine or
    /// container dying would: no shutdown, no checkpoint, connections cut.
    pub fn kill9(&self) {
        self.signal_all("KILL");
        // Nothing is left to stop: `Drop` must not wait for a shutdown that cannot come.
        let _ = fs::remove_file(self.data_dir.join("postmaster.pid"));
    }

    /// Starts a stopped server again, with the same port and data.
    pub fn start_again(&self) {
        if let Err(err) = self.pg_ctl_start() {
            self.fail("starting the server again", &err);
        }
    }

    /// Freezes every process of the server (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung server or a network path cut without a trace.
    pub fn pause(&self) {
        self.signal_all("STOP");
    }

    /// Undoes [`Cluster::pause`].
    pub fn resume(&self) {
        self.signal_all("CONT");
    }

    /// Sends `signal` to the postmaster and its children; best effort.
    fn signal_all(&self, signal: &str) {
        let pid = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|pids| pids.lines().next()?.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            return;
        };
        let _ = Command::new("pkill")
            .args([&format!("-{signal}"), "-P", &pid.to_string()])
            .status();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
    }

    /// [`Cluster::stop`] then [`Cluster::start_again`].
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Panics saying what failed, with the tail of the server log.
    fn fail(&self, what: &str, detail: &str) -> ! {
        panic!(
            "harness: {what} failed (cluster on port {} in {}): {detail}\n\
             --- last lines of {} ---\n{}",
            self.port,
            self.dir().display(),
            self.log_path().display(),
            self.log_tail()
        )
    }

    /// A 4 GB sparse image, `mkfs.xfs -m reflink=1`, loop-mounted at `<dir>/xfs`, which
    /// then holds the data directory.
    fn mount_reflink_storage(&mut self) {
        let image = self.dir().join("xfs.img");
        let mount = self.dir().join("xfs");
        fs::create_dir(&mount).expect("creating the mount point");
        let steps: [(&str, Vec<&std::ffi::OsStr>); 3] = [
            (
                "truncate",
                vec!["-s".as_ref(), "4G".as_ref(), image.as_os_str()],
            ),
            (
                "mkfs.xfs",
                vec![
                    "-q".as_ref(),
                    "-m".as_ref(),
                    "reflink=1".as_ref(),
                    image.as_os_str(),
                ],
            ),
            (
                "mount",
                vec![
                    "-o".as_ref(),
                    "loop".as_ref(),
                    image.as_os_str(),
                    mount.as_os_str(),
                ],
            ),
        ];
        for (program, args) in steps {
            if let Err(err) = run(Command::new(program).args(args)) {
                panic!("harness: reflink storage (needs root and xfsprogs): {err}");
            }
            if program == "mount" {
                self.mount = Some(mount.clone());
            }
        }
        self.give_to_server_user(&mount);
        self.data_dir = mount.join("data");
    }

    fn initdb(&self) {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        if let Err(err) = run(&mut cmd) {
            panic!("harness: initdb failed: {err}");
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["start", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path());
        run(&mut cmd).map(drop)
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", mode, "-D"])
            .arg(&self.data_dir);
        run(&mut cmd).map(drop)
    }

    /// A command running one of the server programs as the server's OS user.
    fn server_command(&self, program: &str) -> Command {
        let path = self.install.bindir.join(program);
        // A chroot's wrapper starts as root and becomes the server's user itself.
        let mut cmd = if self.server_user.is_some() && !self.install.chroot {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", SERVER_OS_USER, "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        // The server user may not be allowed into the test's working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn write_certificates(&mut self, clients: &[String]) {
        let certificates = tls::generate(clients);
        let dir = self.dir.path();
        self.write_file(&dir.join("ca.crt"), &certificates.ca_cert, 0o644);
        self.write_file(&dir.join("server.crt"), &certificates.server_cert, 0o644);
        // PostgreSQL refuses a key that others may read.
        self.write_file(&dir.join("server.key"), &certificates.server_key, 0o600);
        self.ca_cert = Some(dir.join("ca.crt"));
        // Read by the client (the tests, the daemon and pg_dump), which refuses a key that
        // others may read: owned by whoever runs the tests.
        for (role, cert, key) in &certificates.clients {
            let (cert_path, key_path) = self.client_certificate(role);
            fs::write(&cert_path, cert).expect("writing a client certificate");
            fs::write(&key_path, key).expect("writing a client key");
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                .expect("restricting a client key");
        }
    }

    fn create_password_roles(&self) {
        let sql = format!(
            "SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD {};\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD {};\n\
             RESET password_encryption;\n\
             CREATE ROLE {CLEARTEXT_USER} LOGIN REPLICATION PASSWORD {};\n",
            quote_literal(SCRAM_PASSWORD),
            quote_literal(MD5_PASSWORD),
            quote_literal(CLEARTEXT_PASSWORD),
        );
        self.psql("postgres", &sql);
    }

    /// Writes a file the server reads, owned by the server's OS user.
    fn write_file(&self, path: &Path, contents: &str, mode: u32) {
        fs::write(path, contents)
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .unwrap_or_else(|e| panic!("harness: writing {}: {e}", path.display()));
        self.give_to_server_user(path);
    }

    fn give_to_server_user(&self, path: &Path) {
        if let Some(user) = &self.server_user {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap_or_else(|e| {
                panic!("harness: chown {} to {SERVER_OS_USER}: {e}", path.display())
            });
        }
    }
}

impl Drop for Cluster {
    /// Stops the server if it runs. Must not panic: it also runs while a test unwinds.
    fn drop(&mut self) {
        self.stop_for_good();
        if let Some(mount) = &self.mount {
            // Lazily: a server process still dying keeps files open.
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

impl Cluster {
    fn stop_for_good(&self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        // A test that failed while the server was paused.
        self.signal_all("CONT");
        let Err(err) = self.pg_ctl_stop("immediate") else {
            return;
        };
        eprintln!("harness: stopping the server failed, killing it: {err}");
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pids| pids.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// One PostgreSQL installation the suite can start servers from; see the module docs.
#[derive(Debug)]
pub struct Install {
    pub major: u32,
    /// The server's full version, e.g. `17.12`.
    pub version: String,
    /// Server and client programs; the clients always run on this host.
    pub bindir: PathBuf,
    /// wal2json's version, where the server has it.
    pub wal2json: Option<String>,
    /// The server programs are wrappers that enter a chroot (started as root).
    chroot: bool,
    /// `postgres --describe-config`, read once.
    settings: OnceLock<String>,
}

impl Install {
    /// The installation clusters use unless their builder names a major.
    pub fn default() -> &'static Install {
        static DEFAULT: OnceLock<&'static Install> = OnceLock::new();
        DEFAULT.get_or_init(|| {
            if let Some(dir) = std::env::var_os("TRIBUTARY_PG_BINDIR") {
                let bindir = PathBuf::from(dir);
                return Box::leak(Box::new(Install::at(bindir, false)));
            }
            if let Some(major) = std::env::var("TRIBUTARY_PG_MAJOR").ok().filter(|m| !m.is_empty()) {
                let major = major.parse().unwrap_or_else(|_| {
                    panic!("harness: TRIBUTARY_PG_MAJOR must be a major version such as 17, got {major:?}")
                });
                return install(major);
            }
            distribution_majors()
                .into_iter()
                .map(install)
                .find(|install| install.wal2json.is_some())
                .unwrap_or_else(|| {
                    panic!(
                        "harness: no PostgreSQL server with wal2json found (looked for \
                         /usr/lib/postgresql/<N>/bin/postgres with /usr/lib/postgresql/<N>/lib/wal2json.so). \
                         Run scripts/install-deps.sh as root, or set TRIBUTARY_PG_BINDIR to the bin \
                         directory of a PostgreSQL that has wal2json."
                    )
                })
        })
    }

    /// Reads what is in `bindir` (server version, wal2json beside it).
    fn at(bindir: PathBuf, chroot: bool) -> Install {
        assert!(
            bindir.join("postgres").is_file(),
            "harness: {} has no `postgres` program",
            bindir.display()
        );
        let mut version_cmd = Command::new(bindir.join("postgres"));
        version_cmd.arg("--version");
        // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" → 15.20
        let version = run(&mut version_cmd)
            .ok()
            .and_then(|out| out.split_whitespace().nth(2).map(str::to_owned))
            .unwrap_or_else(|| panic!("harness: `{} --version` failed", bindir.display()));
        let major = version
            .split(['.', 'b', 'r'])
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("harness: unreadable server version {version:?}"));
        let prefix = bindir.parent().unwrap_or(&bindir);
        let wal2json = fs::read_to_string(prefix.join("wal2json"))
            .ok()
            .map(|v| v.trim().to_owned())
            .or_else(|| {
                prefix
                    .join("lib/wal2json.so")
                    .is_file()
                    .then(|| "installed".to_owned())
            });
        Install {
            major,
            version,
            bindir,
            wal2json,
            chroot,
            settings: OnceLock::new(),
        }
    }

    /// Whether the server knows the setting `name`.
    pub fn has_setting(&self, name: &str) -> bool {
        let config = self.settings.get_or_init(|| {
            let mut cmd = Command::new(self.bindir.join("postgres"));
            cmd.arg("--describe-config");
            run(&mut cmd).unwrap_or_else(|e| panic!("harness: listing the server's settings: {e}"))
        });
        config
            .lines()
            .any(|line| line.split('\t').next() == Some(name))
    }
}

/// The installation of PostgreSQL `major`: the distribution's when it has wal2json, else the
/// version matrix's under `$TRIBUTARY_PG_ROOT`. Panics saying how to install it.
pub fn install(major: u32) -> &'static Install {
    static INSTALLS: Mutex<Vec<&'static Install>> = Mutex::new(Vec::new());
    let mut installs = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = installs.iter().find(|i| i.major == major) {
        return found;
    }
    let distribution = PathBuf::from(format!("/usr/lib/postgresql/{major}"));
    let matrix = matrix_root().join(major.to_string());
    let found = if distribution.join("bin/postgres").is_file()
        && distribution.join("lib/wal2json.so").is_file()
    {
        Install::at(distribution.join("bin"), false)
    } else if matrix.join("bin/postgres").exists() {
        Install::at(matrix.join("bin"), matrix.join("chroot").exists())
    } else {
        panic!(
            "harness: PostgreSQL {major} is not installed (looked in {} and {}). Run \
             scripts/install-deps.sh as root, which installs every major of the version matrix.",
            distribution.display(),
            matrix.display()
        )
    };
    assert_eq!(
        found.major,
        major,
        "harness: {} holds another major",
        found.bindir.display()
    );
    let found: &'static Install = Box::leak(Box::new(found));
    installs.push(found);
    found
}

fn matrix_root() -> PathBuf {
    std::env::var_os("TRIBUTARY_PG_ROOT")
        .map_or_else(|| PathBuf::from("/opt/tributary-pg"), PathBuf::from)
}

/// Majors under /usr/lib/postgresql, newest first.
fn distribution_majors() -> Vec<u32> {
    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|major| Path::new(&format!("/usr/lib/postgresql/{major}/bin/postgres")).is_file())
        .collect();
    majors.sort_unstable_by(|a, b| b.cmp(a));
    majors
}

#[derive(Debug, Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// `Some(postgres)` when this process runs as root, so the server must run as `postgres`.
fn server_user() -> Option<OsUser> {
    static USER: OnceLock<Option<OsUser>> = OnceLock::new();
    *USER.get_or_init(|| {
        if effective_uid() != 0 {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let output = Command::new("id").args([flag, SERVER_OS_USER]).output();
            output
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "harness: the tests run as root, so PostgreSQL must run as the \
                         `{SERVER_OS_USER}` OS user, which does not exist. Run \
                         scripts/install-deps.sh as root (the PostgreSQL packages create it)."
                    )
                })
        };
        Some(OsUser {
            uid: id("-u"),
            gid: id("-g"),
        })
    })
}

/// The effective user id, from /proc/self/status (`Uid: real effective saved fs`).
fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let from_proc = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok());
    from_proc.unwrap_or_else(|| {
        let output = Command::new("id")
            .arg("-u")
            .output()
            .expect("harness: running `id -u`");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("harness: `id -u` prints a number")
    })
}

/// A free port on 127.0.0.1 that no cluster of this process has had before, so parallel
/// tests never pick the same one. Another process may still take it before the server binds
/// it; the caller retries then.
fn pick_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap_or_else(|e| panic!("harness: finding a free port on 127.0.0.1: {e}"));
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Runs `cmd` to completion; its stdout, or what went wrong.
fn run(cmd: &mut Command) -> Result<String, String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited with {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

async fn connect_url(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("harness: connection ended with an error: {err}");
        }
    });
    Ok(client)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            write!(encoded, "%{byte:02X}").unwrap();
        }
    }
    encoded
}

/// A value in a libpq key=value connection string.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
