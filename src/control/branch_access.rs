//! Who may use a branch: a login role of its own, which owns the branch's database and
//! every object in it, and may connect to nothing else tributary keeps.
//!
//! ```text
//!  branch create             check: the store's role may create roles (CREATEROLE), the
//!                            role's name is free (or the --owner role exists)
//!  after the copy            CREATE ROLE tributary_branch_<name> LOGIN PASSWORD <SCRAM
//!                            verifier of 32 random characters>; the password sealed in the
//!                            bookkeeping ─► hand_over ─► close_databases
//!  hand_over                 the store's role made a member of the branch's role (to give
//!                            it away and still drop it), PUBLIC's CONNECT and TEMPORARY on
//!                            the branch revoked, ALTER DATABASE … OWNER TO, then each object
//!                            in it (ALTER … OWNER TO, one transaction)
//!  close_databases           PUBLIC's CONNECT revoked on the replicas, the branches and the
//!                            bookkeeping database: a branch's role reaches only its branch
//!  branch delete             DROP DATABASE, then DROP ROLE (only a role tributary created)
//! ```
//!
//! Why not `REASSIGN OWNED BY <store role> TO <branch role>` in the branch: it reassigns
//! the role's shared objects too, which are every database it owns (replicas, other
//! branches, the bookkeeping's), and it refuses the bootstrap superuser altogether. So the
//! objects the store's role owns in the branch are read from the catalogs and given away
//! one by one; see [`OWNED_SQL`].
//!
//! Once `CONNECT` is revoked, what else `PUBLIC` holds inside those databases (`CREATE` on
//! the `public` schema before PostgreSQL 15, `EXECUTE` on functions) is out of a branch
//! role's reach; inside its own branch the role is the only one (with the store's role and
//! superusers) that connects. Databases tributary does not keep (`postgres` when it is not
//! the bookkeeping's, `template1`) are left as their owners set them.
//!
//! The password reaches the server only as a SCRAM verifier, so that it is in no
//! statement a server logs (`log_statement = ddl`) or a view shows.

use std::fmt;

use rand::distributions::{Alphanumeric, DistString};

use crate::bookkeeping::{self, Bookkeeping, BranchAccess, BranchState};
use crate::pg::conninfo::Password;
use crate::pg::{self, error_message, quote_ident, quote_literal, ConnInfo, ConnectError};
use crate::types::{BranchName, RoleName};

/// Characters in a branch role's password: 32 alphanumerics from the OS's CSPRNG, about
/// 190 bits.
const PASSWORD_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(
        "the branch store's role {store_role} may not create roles, and each branch gets a \
         login role of its own: as a superuser run ALTER ROLE {} CREATEROLE; (or pass \
         --owner ROLE to have an existing role own the branch)",
        quote_ident(store_role)
    )]
    NoCreateRole { store_role: String },
    #[error(
        "a role named {role} exists on the branch store already, and tributary did not create \
         it for this branch: choose another branch name, or drop that role"
    )]
    RoleTaken { role: RoleName },
    #[error(
        "role {role} does not exist on the branch store: create it first, or leave out --owner"
    )]
    NoSuchOwner { role: RoleName },
    #[error(
        "--owner {role} is the branch store's own role: its URL would reach every replica, \
         branch and the bookkeeping; leave out --owner to give the branch a role of its own"
    )]
    OwnerIsStoreRole { role: RoleName },
    #[error(
        "--owner {role} is a superuser: to give it the branch, the branch store's role would \
         have to become a member of it, and with it a superuser. Give the branch to a role \
         without SUPERUSER, or leave out --owner to give the branch a role of its own"
    )]
    OwnerIsSuperuser { role: RoleName },
    #[error(
        "the branch store's role {store_role} cannot act as role {role} ({reason}): as a \
         superuser, or a role with ADMIN on {role}, run {}",
        membership_sql(role, store_role, *server_version_num)
    )]
    Membership {
        store_role: String,
        role: RoleName,
        server_version_num: i32,
        reason: String,
    },
    #[error("{doing} in database {database}: {message}")]
    Sql {
        doing: String,
        database: String,
        message: String,
    },
}

/// What `branch create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRequest {
    /// A login role created for the branch.
    OwnRole,
    /// An existing role the operator manages (`--owner`).
    Owner(RoleName),
}

/// Checks, before anything is copied, that the role the request needs can be had.
pub async fn check(
    store: &ConnInfo,
    branch: &BranchName,
    request: &AccessRequest,
) -> Result<(), AccessError> {
    let control = pg::connect(store).await?;
    let sql = |doing: &str| sql_error(doing, &store.dbname);
    let row = control
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole FROM pg_catalog.pg_roles r
              WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the store role's attributes"))?;
    let exists = |role: &RoleName| {
        let role = role.as_str().to_owned();
        let control = &control;
        async move {
            control
                .query_opt(
                    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[&role],
                )
                .await
                .map(|row| row.is_some())
        }
    };
    match request {
        AccessRequest::OwnRole => {
            may_create_roles(&store.user, row.get(0), row.get(1))?;
            let role = RoleName::for_branch(branch);
            if exists(&role).await.map_err(sql("looking up the role"))? {
                return Err(AccessError::RoleTaken { role });
            }
        }
        AccessRequest::Owner(role) => {
            if role.as_str() == store.user {
                return Err(AccessError::OwnerIsStoreRole { role: role.clone() });
            }
            if !exists(role).await.map_err(sql("looking up the role"))? {
                return Err(AccessError::NoSuchOwner { role: role.clone() });
            }
            let superuser: bool = control
                .query_one(
                    "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[&role.as_str()],
                )
                .await
                .map_err(sql("looking up the role"))?
                .get(0);
            // Membership in a superuser makes one (16+: SET ROLE; before: inherited).
            if superuser && !row.get::<_, bool>(0) {
                return Err(AccessError::OwnerIsSuperuser { role: role.clone() });
            }
            // Before the copy, so that a role the store's may not become is refused early.
            act_as(&control, store, role).await?;
        }
    }
    Ok(())
}

/// Makes the store's role able to give objects to `role` and to drop what it owns (see
/// [`acts_as_sql`]), unless it is already.
async fn act_as(
    control: &pg::PgClient,
    store: &ConnInfo,
    role: &RoleName,
) -> Result<(), AccessError> {
    let sql = |doing: &str| sql_error(doing, &store.dbname);
    let version: i32 = control
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(sql("reading the server's version"))?
        .get(0);
    let acts_as: bool = control
        .query_one(&acts_as_sql(version), &[&role.as_str()])
        .await
        .map_err(sql("looking up the store role's membership"))?
        .get(0);
    if acts_as {
        return Ok(());
    }
    control
        .batch_execute(&membership_sql(role, &store.user, version))
        .await
        .map_err(|e| AccessError::Membership {
            store_role: store.user.clone(),
            role: role.clone(),
            server_version_num: version,
            reason: error_message(&e),
        })
}

/// A superuser, or a role with CREATEROLE, may create (and drop) branch roles.
fn may_create_roles(
    store_role: &str,
    superuser: bool,
    createrole: bool,
) -> Result<(), AccessError> {
    if superuser || createrole {
        Ok(())
    } else {
        Err(AccessError::NoCreateRole {
            store_role: store_role.to_owned(),
        })
    }
}

/// Creates the branch's login role with a new random password, and returns both. The
/// role has no attribute beyond LOGIN: no CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS.
pub async fn create_role(
    store: &ConnInfo,
    branch: &BranchName,
) -> Result<(RoleName, Password), AccessError> {
    let role = RoleName::for_branch(branch);
    let password = Password::new(Alphanumeric.sample_string(&mut rand::rngs::OsRng, PASSWORD_LEN));
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    let control = pg::connect(store).await?;
    control
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(role.as_str()),
            quote_literal(&verifier)
        ))
        .await
        .map_err(|e| match e.code() {
            Some(code) if code == &tokio_postgres::error::SqlState::DUPLICATE_OBJECT => {
                AccessError::RoleTaken { role: role.clone() }
            }
            _ => sql_error("creating the branch's role", &store.dbname)(e),
        })?;
    tracing::info!(branch = %branch, role = %role, "created the branch's role");
    Ok((role, password))
}

/// Gives the branch's database, and every object in it the store's role owns, to the
/// access's role, and closes the database to PUBLIC. A branch made before branches had
/// roles of their own stays the store role's, closed to PUBLIC all the same.
pub async fn hand_over(
    store: &ConnInfo,
    branch: &BranchName,
    access: &BranchAccess,
) -> Result<(), AccessError> {
    let control = pg::connect(store).await?;
    let database = quote_ident(branch.as_str());
    let sql = |doing: &str| sql_error(doing, &store.dbname);
    // Before the owner changes: REVOKE by the owner itself.
    control
        .batch_execute(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC"
        ))
        .await
        .map_err(sql("revoking PUBLIC's access to the branch"))?;
    let Some(role) = access.role() else {
        return Ok(());
    };
    act_as(&control, store, role).await?;
    control
        .batch_execute(&format!(
            "ALTER DATABASE {database} OWNER TO {}",
            quote_ident(role.as_str())
        ))
        .await
        .map_err(sql("giving the branch's database to its role"))?;
    drop(control);

    let mut inside = pg::connect(&store.with_dbname(branch.as_str())).await?;
    let sql = |doing: &str| sql_error(doing, branch.as_str());
    // An empty search_path makes every reg* name below schema-qualified.
    inside
        .batch_execute("SET search_path = ''")
        .await
        .map_err(sql("clearing search_path"))?;
    let owned = inside
        .query(OWNED_SQL, &[])
        .await
        .map_err(sql("listing the objects the store's role owns"))?;
    let mut statements = Vec::with_capacity(owned.len());
    for row in owned {
        let (kind, identity): (String, String) = (row.get(0), row.get(1));
        let kind = Owned::parse(&kind).ok_or_else(|| AccessError::Sql {
            doing: "listing the objects the store's role owns".into(),
            database: branch.to_string(),
            message: format!("unexpected kind {kind:?}"),
        })?;
        statements.push((kind, identity));
    }
    // Schemas first: the new owner of an object must have CREATE on its schema.
    statements.sort_by_key(|(kind, _)| *kind != Owned::Schema);
    let tx = inside
        .client_mut()
        .transaction()
        .await
        .map_err(sql("starting the transfer of ownership"))?;
    for (kind, identity) in &statements {
        tx.batch_execute(&kind.alter(identity, role))
            .await
            .map_err(sql(&format!("ALTER {kind} {identity} OWNER TO {role}")))?;
    }
    tx.commit()
        .await
        .map_err(sql("committing the transfer of ownership"))?;
    tracing::info!(
        branch = %branch,
        role = %role,
        objects = statements.len(),
        "gave the branch to its role"
    );
    Ok(())
}

/// Whether the session's role already has the privileges of `$1` and may become it: to
/// give objects to a role, PostgreSQL 16 and later want SET on it, and to drop what it
/// owns, INHERIT (the USAGE of `pg_has_role`); before 16 membership gives both. Always
/// true for a superuser.
fn acts_as_sql(server_version_num: i32) -> String {
    let set = if server_version_num >= 160_000 {
        "SET"
    } else {
        "MEMBER"
    };
    format!("SELECT pg_catalog.pg_has_role($1, 'USAGE') AND pg_catalog.pg_has_role($1, '{set}')")
}

/// Makes `store_role` (the session's) a member of `role` that may become it and use its
/// privileges.
/// From PostgreSQL 16 a CREATEROLE role gets ADMIN on the roles it creates but neither
/// SET nor INHERIT (unless `createrole_self_grant` says so): it grants them to itself.
/// Before 16, CREATEROLE may grant any role that is not a superuser, and a plain
/// membership inherits (the store's role has the default INHERIT).
fn membership_sql(role: &RoleName, store_role: &str, server_version_num: i32) -> String {
    let options = if server_version_num >= 160_000 {
        " WITH INHERIT TRUE, SET TRUE"
    } else {
        ""
    };
    format!(
        "GRANT {} TO {}{options};",
        quote_ident(role.as_str()),
        quote_ident(store_role)
    )
}

/// The kinds of objects a branch's role is given, as `ALTER <kind> … OWNER TO` spells them.
///
/// Not given: objects of extensions (they follow their extension, which has no OWNER TO),
/// indexes, TOAST tables and sequences of identity and serial columns (they follow their
/// table), implicit array and multirange types (they follow their type); event triggers,
/// procedural languages and foreign-data wrappers need a superuser owner and are not in
/// replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    Schema,
    Table,
    View,
    MaterializedView,
    ForeignTable,
    Sequence,
    Type,
    Domain,
    Routine,
    Operator,
    OperatorClass,
    OperatorFamily,
    Collation,
    Conversion,
    TextSearchConfiguration,
    TextSearchDictionary,
    Statistics,
    Server,
}

impl Owned {
    const ALL: [Owned; 18] = [
        Owned::Schema,
        Owned::Table,
        Owned::View,
        Owned::MaterializedView,
        Owned::ForeignTable,
        Owned::Sequence,
        Owned::Type,
        Owned::Domain,
        Owned::Routine,
        Owned::Operator,
        Owned::OperatorClass,
        Owned::OperatorFamily,
        Owned::Collation,
        Owned::Conversion,
        Owned::TextSearchConfiguration,
        Owned::TextSearchDictionary,
        Owned::Statistics,
        Owned::Server,
    ];

    fn keyword(self) -> &'static str {
        match self {
            Owned::Schema => "SCHEMA",
            Owned::Table => "TABLE",
            Owned::View => "VIEW",
            Owned::MaterializedView => "MATERIALIZED VIEW",
            Owned::ForeignTable => "FOREIGN TABLE",
            Owned::Sequence => "SEQUENCE",
            Owned::Type => "TYPE",
            Owned::Domain => "DOMAIN",
            Owned::Routine => "ROUTINE",
            Owned::Operator => "OPERATOR",
            Owned::OperatorClass => "OPERATOR CLASS",
            Owned::OperatorFamily => "OPERATOR FAMILY",
            Owned::Collation => "COLLATION",
            Owned::Conversion => "CONVERSION",
            Owned::TextSearchConfiguration => "TEXT SEARCH CONFIGURATION",
            Owned::TextSearchDictionary => "TEXT SEARCH DICTIONARY",
            Owned::Statistics => "STATISTICS",
            Owned::Server => "SERVER",
        }
    }

    /// The kind [`OWNED_SQL`] names.
    fn parse(keyword: &str) -> Option<Owned> {
        Owned::ALL
            .into_iter()
            .find(|kind| kind.keyword() == keyword)
    }

    /// `identity` is the object's name as the server wrote it (quoted, qualified, with its
    /// arguments where the kind needs them).
    fn alter(self, identity: &str, role: &RoleName) -> String {
        format!(
            "ALTER {} {identity} OWNER TO {}",
            self.keyword(),
            quote_ident(role.as_str())
        )
    }
}

impl fmt::Display for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// Every object of the database the session's role owns and can give away: its kind (as
/// [`Owned`] spells it) and its name, quoted and qualified by the server (run with an empty
/// search_path). Objects made by initdb (OIDs below 16384) are left out, but for the
/// `public` schema, which before PostgreSQL 15 belongs to the bootstrap superuser (when
/// that is the store's role, the branch's role gets it; from 15 on it belongs to
/// `pg_database_owner`, that is to the branch's role already).
const OWNED_SQL: &str = "
WITH me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user),
     extension_members AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e')
SELECT kind, identity FROM (
    SELECT 'SCHEMA' AS kind, pg_catalog.quote_ident(n.nspname) AS identity, n.tableoid, n.oid
      FROM pg_catalog.pg_namespace n
     WHERE n.nspowner = (SELECT oid FROM me)
       AND (n.oid >= 16384 OR n.nspname = 'public') AND n.nspname !~ '^pg_'
    UNION ALL
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                          WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE'
                          WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
           c.oid::pg_catalog.regclass::text, c.tableoid, c.oid
      FROM pg_catalog.pg_class c
     WHERE c.relowner = (SELECT oid FROM me) AND c.oid >= 16384
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')
       AND NOT (c.relkind = 'S' AND EXISTS (
               SELECT FROM pg_catalog.pg_depend d
                WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT 'ROUTINE', p.oid::pg_catalog.regprocedure::text, p.tableoid, p.oid
      FROM pg_catalog.pg_proc p WHERE p.proowner = (SELECT oid FROM me) AND p.oid >= 16384
    UNION ALL
    SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           t.oid::pg_catalog.regtype::text, t.tableoid, t.oid
      FROM pg_catalog.pg_type t
     WHERE t.typowner = (SELECT oid FROM me) AND t.oid >= 16384 AND t.typrelid = 0
       AND t.typtype IN ('b', 'd', 'e', 'r')
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)
    UNION ALL
    SELECT 'OPERATOR', o.oid::pg_catalog.regoperator::text, o.tableoid, o.oid
      FROM pg_catalog.pg_operator o WHERE o.oprowner = (SELECT oid FROM me) AND o.oid >= 16384
    UNION ALL
    SELECT 'OPERATOR CLASS', pg_catalog.format('%I.%I USING %I', n.nspname, c.opcname, a.amname),
           c.tableoid, c.oid
      FROM pg_catalog.pg_opclass c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.opcnamespace
      JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod
     WHERE c.opcowner = (SELECT oid FROM me) AND c.oid >= 16384
    UNION ALL
    SELECT 'OPERATOR FAMILY', pg_catalog.format('%I.%I USING %I', n.nspname, f.opfname, a.amname),
           f.tableoid, f.oid
      FROM pg_catalog.pg_opfamily f
      JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace
      JOIN pg_catalog.pg_am a ON a.oid = f.opfmethod
     WHERE f.opfowner = (SELECT oid FROM me) AND f.oid >= 16384
    UNION ALL
    SELECT 'COLLATION', pg_catalog.format('%I.%I', n.nspname, c.collname), c.tableoid, c.oid
      FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
     WHERE c.collowner = (SELECT oid FROM me) AND c.oid >= 16384
    UNION ALL
    SELECT 'CONVERSION', pg_catalog.format('%I.%I', n.nspname, c.conname), c.tableoid, c.oid
      FROM pg_catalog.pg_conversion c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
     WHERE c.conowner = (SELECT oid FROM me) AND c.oid >= 16384
    UNION ALL
    SELECT 'TEXT SEARCH CONFIGURATION', c.oid::pg_catalog.regconfig::text, c.tableoid, c.oid
      FROM pg_catalog.pg_ts_config c WHERE c.cfgowner = (SELECT oid FROM me) AND c.oid >= 16384
    UNION ALL
    SELECT 'TEXT SEARCH DICTIONARY', d.oid::pg_catalog.regdictionary::text, d.tableoid, d.oid
      FROM pg_catalog.pg_ts_dict d WHERE d.dictowner = (SELECT oid FROM me) AND d.oid >= 16384
    UNION ALL
    SELECT 'STATISTICS', pg_catalog.format('%I.%I', n.nspname, s.stxname), s.tableoid, s.oid
      FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
     WHERE s.stxowner = (SELECT oid FROM me)
    UNION ALL
    SELECT 'SERVER', pg_catalog.quote_ident(s.srvname), s.tableoid, s.oid
      FROM pg_catalog.pg_foreign_server s WHERE s.srvowner = (SELECT oid FROM me)
) owned
WHERE NOT EXISTS (SELECT FROM extension_members m
                   WHERE m.classid = owned.tableoid AND m.objid = owned.oid)";

/// Closes to PUBLIC every database a branch's role must not reach: the replicas, the
/// branches made before branches had roles (the store's role owns them) and the
/// bookkeeping's. Branches with roles were closed when they were handed over; who else may
/// connect to them is their owners' business since. Returns what it could not close itself,
/// as advice: a database the store's role does not own (it would have to decide for the
/// other users of, say, a `postgres` database a superuser owns).
pub async fn close_databases(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
) -> Result<Vec<String>, AccessError> {
    let mut ours = vec![store.dbname.clone()];
    ours.extend(
        bookkeeping
            .connectors()
            .await?
            .into_iter()
            .map(|c| c.replica_database),
    );
    ours.extend(
        bookkeeping
            .branches(None)
            .await?
            .into_iter()
            .filter(|b| {
                b.access == BranchAccess::StoreRole
                    && matches!(b.state, BranchState::Copied | BranchState::Ready)
            })
            .map(|b| b.name.to_string()),
    );
    let control = pg::connect(store).await?;
    let sql = |doing: &str| sql_error(doing, &store.dbname);
    let rows = control
        .query(
            "SELECT d.datname::text,
                    d.datdba = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user),
                    pg_catalog.has_database_privilege('public', d.oid, 'CONNECT')
               FROM pg_catalog.pg_database d WHERE d.datname = ANY($1)",
            &[&ours],
        )
        .await
        .map_err(sql("reading who may connect to tributary's databases"))?;
    let mut advice = Vec::new();
    for row in rows {
        let database: String = row.get(0);
        match closing(&database, row.get(1), row.get(2)) {
            Closing::Closed => {}
            Closing::Revoke(statement) => control
                .batch_execute(&statement)
                .await
                .map_err(sql(&format!("closing database {database} to PUBLIC")))?,
            Closing::Advise(statement) => advice.push(format!(
                "every role may connect to database {database}, which the store's role does \
                 not own: to keep branch roles out, its owner (or a superuser) runs \
                 {statement} (and grants CONNECT to the roles that use it)"
            )),
        }
    }
    Ok(advice)
}

#[derive(Debug, PartialEq, Eq)]
enum Closing {
    Closed,
    Revoke(String),
    Advise(String),
}

/// What to do about a database of tributary's that PUBLIC may (`open`) connect to.
fn closing(database: &str, owned: bool, open: bool) -> Closing {
    let statement = format!(
        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC;",
        quote_ident(database)
    );
    match (open, owned) {
        (false, _) => Closing::Closed,
        (true, true) => Closing::Revoke(statement),
        (true, false) => Closing::Advise(statement),
    }
}

/// Drops the role tributary created for a branch, once its database is gone. Its
/// membership grants go with it. A role someone granted privileges elsewhere meanwhile is
/// refused by the server, with what it still has.
pub async fn drop_role(store: &ConnInfo, role: &RoleName) -> Result<(), AccessError> {
    let control = pg::connect(store).await?;
    control
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {}",
            quote_ident(role.as_str())
        ))
        .await
        .map_err(|e| AccessError::Sql {
            doing: format!(
                "dropping the branch's role {role} (revoke what it was granted outside its \
                 branch, then run `tributary branch delete` again)"
            ),
            database: store.dbname.clone(),
            message: error_message(&e),
        })?;
    tracing::info!(role = %role, "dropped the branch's role");
    Ok(())
}

/// After a failed `branch reset`: drops the branch's own role if the branch is no longer
/// recorded (a failed copy forgets it), since its record is the only thing that names the
/// role as tributary's. An --owner role, or the role of a branch still recorded, is kept.
pub async fn drop_role_if_forgotten(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    branch: &BranchName,
    access: &BranchAccess,
) -> Result<(), AccessError> {
    match access {
        BranchAccess::OwnRole(role) if bookkeeping.branch(branch).await?.is_none() => {
            drop_role(store, role).await
        }
        _ => Ok(()),
    }
}

/// The URL a branch's user connects with: the store's server and settings, the branch's
/// database, and its role with `password` (the role's own; `None` for an --owner role,
/// whose password tributary does not know). A branch made before branches had roles keeps
/// the store's role and its password.
pub fn branch_url(
    store: &ConnInfo,
    branch: &BranchName,
    access: &BranchAccess,
    password: Option<Password>,
) -> ConnInfo {
    let info = store.with_dbname(branch.as_str());
    match access.role() {
        None => info,
        Some(role) => ConnInfo {
            user: role.as_str().to_owned(),
            password,
            ..info
        },
    }
}

fn sql_error(doing: &str, database: &str) -> impl FnOnce(tokio_postgres::Error) -> AccessError {
    let (doing, database) = (doing.to_owned(), database.to_owned());
    move |e| AccessError::Sql {
        doing,
        database,
        message: error_message(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> RoleName {
        RoleName::new(name).unwrap()
    }

    #[test]
    fn roles_are_created_by_superusers_or_createrole() {
        for (superuser, createrole, allowed) in [
            (true, false, true),
            (false, true, true),
            (true, true, true),
            (false, false, false),
        ] {
            let decided = may_create_roles("store", superuser, createrole);
            assert_eq!(decided.is_ok(), allowed, "{superuser} {createrole}");
        }
        let refused = may_create_roles("Store \"A\"", false, false)
            .unwrap_err()
            .to_string();
        for needle in [
            "may not create roles",
            "ALTER ROLE \"Store \"\"A\"\"\" CREATEROLE;",
            "--owner ROLE",
        ] {
            assert!(refused.contains(needle), "{needle}: {refused}");
        }
    }

    #[test]
    fn the_store_role_joins_a_branch_role_as_its_server_version_wants() {
        let dev = role("tributary_branch_dev \"x\"");
        for (version, grant, privilege) in [
            (130_023, "GRANT \"tributary_branch_dev \"\"x\"\"\" TO \"store\";", "MEMBER"),
            (150_020, "GRANT \"tributary_branch_dev \"\"x\"\"\" TO \"store\";", "MEMBER"),
            (
                160_000,
                "GRANT \"tributary_branch_dev \"\"x\"\"\" TO \"store\" WITH INHERIT TRUE, SET TRUE;",
                "SET",
            ),
            (
                180_001,
                "GRANT \"tributary_branch_dev \"\"x\"\"\" TO \"store\" WITH INHERIT TRUE, SET TRUE;",
                "SET",
            ),
        ] {
            assert_eq!(membership_sql(&dev, "store", version), grant, "{version}");
            let check = acts_as_sql(version);
            assert!(check.contains("'USAGE'"), "{check}");
            assert!(check.contains(&format!("'{privilege}'")), "{version}: {check}");
        }
    }

    #[test]
    fn owned_objects_are_altered_by_kind_schemas_first() {
        let dev = role("tributary_branch_dev");
        for (kind, identity, statement) in [
            (
                "SCHEMA",
                "\"Sales\"",
                "ALTER SCHEMA \"Sales\" OWNER TO \"tributary_branch_dev\"",
            ),
            (
                "MATERIALIZED VIEW",
                "s.m",
                "ALTER MATERIALIZED VIEW s.m OWNER TO \"tributary_branch_dev\"",
            ),
            (
                "ROUTINE",
                "s.f(integer)",
                "ALTER ROUTINE s.f(integer) OWNER TO \"tributary_branch_dev\"",
            ),
            (
                "OPERATOR CLASS",
                "s.c USING btree",
                "ALTER OPERATOR CLASS s.c USING btree OWNER TO \"tributary_branch_dev\"",
            ),
        ] {
            let owned = Owned::parse(kind).unwrap();
            assert_eq!(owned.alter(identity, &dev), statement);
        }
        // Every kind the query can name is known, and no other.
        for kind in Owned::ALL {
            assert_eq!(Owned::parse(kind.keyword()), Some(kind));
            assert!(
                OWNED_SQL.contains(&format!("'{}'", kind.keyword())),
                "{kind}"
            );
        }
        assert_eq!(Owned::parse("EVENT TRIGGER"), None);
        assert_eq!(Owned::parse("schema"), None);
    }

    #[test]
    fn databases_open_to_public_are_closed_when_ours_else_named() {
        let revoke = "REVOKE CONNECT, TEMPORARY ON DATABASE \"a \"\"b\"\"\" FROM PUBLIC;";
        for (owned, open, expected) in [
            (true, false, Closing::Closed),
            (false, false, Closing::Closed),
            (true, true, Closing::Revoke(revoke.to_owned())),
            (false, true, Closing::Advise(revoke.to_owned())),
        ] {
            assert_eq!(closing("a \"b\"", owned, open), expected, "{owned} {open}");
        }
    }

    #[test]
    fn a_branch_url_logs_in_as_the_branch_role() {
        let store =
            ConnInfo::parse("postgresql://store:s3cret@db.example.com:5433/control").unwrap();
        let branch = BranchName::new("dev 1").unwrap();
        let own = BranchAccess::OwnRole(role("tributary_branch_dev 1"));
        let password = Password::new("abc".into());
        for (access, password, expected) in [
            (
                own,
                Some(password),
                "postgresql://tributary_branch_dev%201:abc@db.example.com:5433/dev%201?sslmode=prefer",
            ),
            (
                BranchAccess::Owner(role("team")),
                None,
                "postgresql://team@db.example.com:5433/dev%201?sslmode=prefer",
            ),
            (
                BranchAccess::StoreRole,
                None,
                "postgresql://store:****@db.example.com:5433/dev%201?sslmode=prefer",
            ),
        ] {
            let url = branch_url(&store, &branch, &access, password);
            let shown = if matches!(access, BranchAccess::StoreRole) {
                pg::ShowPassword::Masked
            } else {
                pg::ShowPassword::Shown
            };
            assert_eq!(url.url(shown), expected, "{access:?}");
        }
    }
}
