//! Opening the control database: connection options from [`ConnInfo`], migrations, the
//! pool, and LISTEN.

use std::fmt;
use std::path::Path;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgSslMode,
};
use sqlx::Connection as _;

use super::keys::Keys;
use super::secrets::Cipher;
use super::Error;
use crate::pg::conninfo::{Endpoint, Host, RootCert};
use crate::pg::hosts::{self, ServerRole};
use crate::pg::{ConnInfo, SslMode};
use crate::settings::SecretsSettings;
use crate::types::InstallationId;

/// The channel on which every insert, update and delete of a connector row is announced,
/// with the connector's id as payload (a trigger does it, whoever changes the row).
pub const NOTIFY_CHANNEL: &str = "tributary_connectors";
/// Where branch requests are announced; the payload is the connector's id.
pub const BRANCH_CHANNEL: &str = "tributary_branches";

/// The migrations in `migrations/`, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!();

/// Bookkeeping is short statements, plus one session held by each `listen()`.
const POOL_MAX_CONNECTIONS: u32 = 5;

/// Serializes the creation of the schema between daemons starting at the same moment
/// (the bytes of "tributar"); sqlx's migrator takes its own lock after that.
const SCHEMA_LOCK_ID: i64 = i64::from_be_bytes(*b"tributar");

/// The bookkeeping schema in the control database, and the key for the secrets in it.
///
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct Bookkeeping {
    pub(super) pool: PgPool,
    pub(super) keys: Keys,
    installation: InstallationId,
    /// `host:port` of the store, for messages.
    target: String,
}

impl fmt::Debug for Bookkeeping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bookkeeping")
            .field("store", &self.target)
            .field("installation", &self.installation)
            .field("key", &self.keys.source().to_string())
            .finish_non_exhaustive()
    }
}

impl Bookkeeping {
    /// Reads the key (`secrets`, else `default_key_file`; never creates one), connects (small
    /// pool), runs migrations, and checks the key against the bookkeeping before anything
    /// else is written (`keys.rs`): a wrong key, or none while source URLs are stored, is an
    /// error.
    pub async fn open(
        store: &ConnInfo,
        secrets: &SecretsSettings,
        default_key_file: &Path,
    ) -> Result<Bookkeeping, Error> {
        // First, so that an unusable key file fails before the store is touched.
        let found = Cipher::find(secrets, default_key_file)?;
        Bookkeeping::migrate(store).await?;
        let pool = open_pool(store, POOL_MAX_CONNECTIONS).await?;
        let installation = read_installation(&pool)
            .await?
            .ok_or_else(|| Error::Corrupt("tributary.installation has no row".to_owned()))?;
        let keys = Keys::open(&pool, secrets, default_key_file, found).await?;
        tracing::debug!(store = %store, key = %keys.source(), %installation, "bookkeeping opened");
        Ok(Bookkeeping {
            pool,
            keys,
            installation,
            target: store.target(),
        })
    }

    /// The bookkeeping with its key left unchecked, for `connector delete --force` when
    /// [`Bookkeeping::open`] refuses the key (lost or wrong), and for `branch delete`: opening a source URL then
    /// fails with the key error, and sealing one still checks the key, so nothing can be
    /// sealed with a key other than the recorded one.
    pub async fn open_without_key(
        store: &ConnInfo,
        secrets: &SecretsSettings,
        default_key_file: &Path,
    ) -> Result<Bookkeeping, Error> {
        Bookkeeping::migrate(store).await?;
        let pool = open_pool(store, POOL_MAX_CONNECTIONS).await?;
        let installation = read_installation(&pool)
            .await?
            .ok_or_else(|| Error::Corrupt("tributary.installation has no row".to_owned()))?;
        Ok(Bookkeeping {
            pool,
            keys: Keys::unchecked(secrets, default_key_file),
            installation,
            target: store.target(),
        })
    }

    /// This installation: the bookkeeping's id, part of its connectors' slot names.
    pub fn installation(&self) -> &InstallationId {
        &self.installation
    }

    /// The installation of the bookkeeping on `store`, read without migrating it (for
    /// `connector preflight`); `None` when its schema predates installations, or does not
    /// exist yet.
    pub async fn peek_installation(store: &ConnInfo) -> Result<Option<InstallationId>, Error> {
        let session = open_pool(store, 1).await?;
        let installation = read_installation(&session).await;
        session.close().await;
        installation
    }

    /// Runs migrations only (for `tributary migrate`); no key needed.
    ///
    /// Safe at every start and from several daemons at once: applied migrations are
    /// skipped, and sqlx holds an advisory lock while it applies the others. Its own table,
    /// `_sqlx_migrations`, lives in the `tributary` schema too: the migration session's
    /// `search_path` is that schema, which therefore has to exist first.
    pub async fn migrate(store: &ConnInfo) -> Result<(), Error> {
        // A pool of one rather than a bare connection: `Migrator::run` on a `&mut
        // PgConnection` makes the future of every caller not `Send` (sqlx's "Acquire is
        // not general enough"), so `open` could not run in a spawned task.
        // sqlx's own `CREATE TABLE IF NOT EXISTS` would otherwise log a notice at every
        // start.
        let options = |options: PgConnectOptions| {
            options.options([
                ("search_path", "tributary"),
                ("client_min_messages", "warning"),
            ])
        };
        let session = pool_with(store, options, 1).await?;
        create_schema(&session).await?;
        MIGRATOR.run(&session).await.map_err(Error::migrate)?;
        session.close().await;
        tracing::debug!(store = %store, "bookkeeping schema is up to date");
        Ok(())
    }

    /// The session of daemon `name`: listening on [`NOTIFY_CHANNEL`], and holding for as
    /// long as it lives [`DAEMON_LOCK`] (shared: commands count the daemons) and the lock
    /// of the daemon's own name (the leases of a daemon whose session is gone may be taken
    /// before they expire, see `leases.rs`). It takes one of the pool's connections and
    /// reconnects by itself after a lost connection, but without the locks (and
    /// notifications sent meanwhile are lost): replace it after an error, and poll as well.
    pub async fn listen(&self, name: &str) -> Result<PgListener, Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([NOTIFY_CHANNEL, BRANCH_CHANNEL])
            .await?;
        self.hold_daemon_locks(&mut listener, name).await?;
        Ok(listener)
    }

    /// Takes the daemon's locks on `listener`'s session unless it holds them already. The
    /// listener reconnects by itself after the bookkeeping restarted, silently and without
    /// them, so the supervisor calls this at every renewal: until then the daemon would
    /// look gone to `status` and to the other daemons.
    pub async fn hold_daemon_locks(
        &self,
        listener: &mut PgListener,
        name: &str,
    ) -> Result<(), Error> {
        // Conditional, so that calling it again does not stack lock counts. The name's
        // lock not taken (another name with the same hash holds it): that daemon's lock
        // then vouches for this one too, which only makes others wait for expiry.
        sqlx::query(
            "WITH mine AS (
                 SELECT classid, objid, objsubid FROM pg_catalog.pg_locks
                  WHERE locktype = 'advisory' AND granted AND pid = pg_catalog.pg_backend_pid())
             SELECT (SELECT pg_catalog.pg_advisory_lock_shared($1)
                      WHERE NOT EXISTS (SELECT FROM mine WHERE objsubid = 1
                                           AND classid = ($1 >> 32)::oid
                                           AND objid = ($1 & 4294967295)::oid)),
                    (SELECT pg_catalog.pg_try_advisory_lock($2, pg_catalog.hashtext($3))
                      WHERE NOT EXISTS (SELECT FROM mine WHERE objsubid = 2
                                           AND classid = $2::oid
                                           AND objid = pg_catalog.hashtext($3)::oid))",
        )
        .bind(DAEMON_LOCK)
        .bind(DAEMON_NAME_LOCK_CLASS)
        .bind(name)
        .execute(&mut *listener)
        .await?;
        Ok(())
    }

    /// How many daemons are running on this bookkeeping: sessions holding [`DAEMON_LOCK`].
    /// Commands that need a daemon to act (or to stop acting) ask this first.
    pub async fn daemons_running(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar(
            "SELECT count(DISTINCT pid) FROM pg_catalog.pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_catalog.pg_database
                                 WHERE datname = pg_catalog.current_database())
                AND classid = ($1 >> 32)::oid AND objid = ($1 & 4294967295)::oid",
        )
        .bind(DAEMON_LOCK)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// The advisory lock key ("trib") of [`Bookkeeping::listen`]; below 2^32, so `pg_locks`
/// shows it in `objid`.
const DAEMON_LOCK: i64 = 0x7472_6962;

/// The first key of a daemon's own lock, whose second is the hash of its name: `pg_locks`
/// shows it as `classid`, with `objsubid = 2`. See [`super::leases`]'s `OWNER_GONE`.
pub(super) const DAEMON_NAME_LOCK_CLASS: i32 = 0x7472_6962;

/// sqlx connection options with the meaning `ConnInfo` gives each field (libpq's). Built
/// field by field, so the password never passes through a URL string.
/// A pool of at most `max_connections` sessions to the control database.
pub(crate) async fn open_pool(store: &ConnInfo, max_connections: u32) -> Result<PgPool, Error> {
    pool_with(store, |options| options, max_connections).await
}

/// A pool of sessions to the first server of `store` that `target_session_attrs`
/// allows, `adjust` applied to their options. One session is opened by itself first,
/// within the URL's `connect_timeout`: the pool retries a refused connection until its
/// acquire timeout and then says only "pool timed out", where one attempt fails at once
/// with the reason. The pool stays on that server; a new pool (the daemon's next start)
/// looks again.
async fn pool_with(
    store: &ConnInfo,
    adjust: impl Fn(PgConnectOptions) -> PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, Error> {
    let timeout = store.connect_timeout;
    let (first, endpoint) = hosts::first_accepted(store, |endpoint, check| {
        let options = adjust(connect_options(store, &endpoint));
        async move {
            let mut session = tokio::time::timeout(timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|e| e.to_string())?;
            let role = match check {
                false => None,
                true => {
                    let (in_recovery, read_only): (bool, bool) = sqlx::query_as(hosts::ROLE_QUERY)
                        .fetch_one(&mut session)
                        .await
                        .map_err(|e| e.to_string())?;
                    Some(ServerRole {
                        in_recovery,
                        read_only,
                    })
                }
            };
            Ok::<_, String>((session, role))
        }
    })
    .await
    .map_err(|none| Error::Connect {
        target: store.target(),
        reason: match none.into_single() {
            Ok(single) => single,
            Err(none) => none.reasons(),
        },
    })?;
    // Only a probe: its close is of no consequence.
    let _ = first.close().await;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_with(adjust(connect_options(store, &endpoint)))
        .await
        .map_err(|e| Error::Connect {
            target: endpoint.target(),
            reason: e.to_string(),
        })
}

/// The options of one server of `info`, its password found for that server.
pub(crate) fn connect_options(info: &ConnInfo, endpoint: &Endpoint) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .port(endpoint.port)
        .username(&info.user)
        .database(&info.dbname)
        .application_name(&info.application_name);
    options = match &endpoint.host {
        Host::Tcp(host) => options.host(host),
        Host::Unix(dir) => options.socket(dir),
    };
    if let Some(password) = info.password_for(endpoint) {
        options = options.password(password.expose());
    }
    let tls = &info.tls;
    let ssl_mode = match (info.sslmode, &tls.rootcert) {
        (SslMode::Disable, _) => PgSslMode::Disable,
        (SslMode::Prefer, _) => PgSslMode::Prefer,
        // libpq (and pg/tls.rs) check the chain under `require` when a root is given.
        (SslMode::Require, Some(RootCert::File(_))) => PgSslMode::VerifyCa,
        (SslMode::Require, _) => PgSslMode::Require,
        (SslMode::VerifyCa, _) => PgSslMode::VerifyCa,
        (SslMode::VerifyFull, _) => PgSslMode::VerifyFull,
    };
    options = options.ssl_mode(ssl_mode);
    // `sslrootcert=system` leaves sqlx's default roots (webpki's, built in).
    if let Some(RootCert::File(path)) = &tls.rootcert {
        options = options.ssl_root_cert(path);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.ssl_client_cert(cert);
        // Read (and decrypted) here, under libpq's permission rule; a key that cannot be
        // read is left to the handshake, whose error names the file.
        options = match crate::pg::tls::key_pem(key, tls.key_password.as_ref()) {
            Ok(pem) => options.ssl_client_key_from_pem(pem),
            Err(reason) => {
                tracing::warn!("{reason}");
                options.ssl_client_key(key)
            }
        };
    }
    if !info.options.is_empty() {
        options = options.options(info.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    options
}

/// Creates the `tributary` schema if it is missing. Checked first, so a role that owns
/// the schema but may not create others in the database still starts.
async fn create_schema(session: &PgPool) -> Result<(), Error> {
    let as_migration = |e: sqlx::Error| match Error::from(e) {
        Error::Query(e) => Error::migrate(MigrateError::Execute(e)),
        lost => lost,
    };
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'tributary')",
    )
    .fetch_one(session)
    .await?;
    if exists {
        return Ok(());
    }
    let mut tx = session.begin().await?;
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_ID)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS tributary")
        .execute(&mut *tx)
        .await
        .map_err(as_migration)?;
    tx.commit().await?;
    Ok(())
}

/// The installation's id, `None` when its table does not exist (yet).
async fn read_installation(pool: &PgPool) -> Result<Option<InstallationId>, Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT pg_catalog.to_regclass('tributary.installation') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(None);
    }
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM tributary.installation")
        .fetch_optional(pool)
        .await?;
    id.map(|id| InstallationId::new(id).map_err(|e| Error::Corrupt(e.to_string())))
        .transpose()
}
