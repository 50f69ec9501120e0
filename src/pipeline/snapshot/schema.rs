//! The schema of a snapshot: dumped once with pg_dump under the exported snapshot, restored
//! as pre-data before the rows and post-data after them (see the parent module's doc).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::tools::{conninfo_quote, libpq_env, run_tool, run_watched};
use crate::change::TableName;
use crate::pg::{quote_ident, quote_literal, PgClient};
use crate::source::catalog::{self};

use super::{connect, import_error, query_error, Section, Side, SnapshotError, SnapshotJob};

/// The snapshot's schema, dumped once: [`SchemaDump::restore`] of pre-data before the
/// rows, of post-data after them.
#[derive(Debug)]
pub struct SchemaDump {
    /// Holds `schema.dump` (custom format) and `schema.list` (its filtered table of
    /// contents).
    scratch: ScratchDir,
    /// Restored from an archive of an interrupted snapshot: post-data may be half there.
    resumed: bool,
}

impl SchemaDump {
    /// Creates on the replica the extensions the schemas need, then runs `pg_dump
    /// --schema-only --snapshot=<name> -n <schema>… -T <excluded>… --format=custom` into a
    /// private temporary file and writes the table of contents to restore from it. The
    /// snapshot must stay alive until this returns; restoring no longer needs it.
    pub async fn create(job: &SnapshotJob<'_>) -> Result<SchemaDump, SnapshotError> {
        if job.schemas.is_empty() {
            // pg_dump without -n would dump the whole database.
            return Err(SnapshotError::InvalidJob {
                reason: "no schemas selected".into(),
            });
        }
        let started = Instant::now();
        let tools = job.tools;
        let source = connect(Side::Source, job.source).await?;
        // The catalog as the dump sees it: OIDs and names must match its table of contents.
        source
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(job.snapshot_name)
            ))
            .await
            .map_err(|e| import_error(job.snapshot_name, e))?;
        let replica = connect(Side::Replica, job.replica).await?;
        create_extensions(&source, &replica, job.schemas).await?;
        let exclude = expand_exclusions(&source, job.exclude).await?;
        let schema_oids = source_schema_oids(&source, job.schemas).await?;
        let mut skip = Vec::new();
        let keys = catalog::foreign_keys(&source, job.schemas).await?;
        let replicated: Vec<String> = job.schemas.iter().chain(job.replicated).cloned().collect();
        for key in keys.iter().filter(|k| k.dangles(&replicated, &exclude)) {
            tracing::warn!(
                table = %key.table,
                constraint = %key.name,
                references = %key.references,
                "foreign key left out of the replica: the table it references is not replicated"
            );
            skip.push(format!("; 2606 {} FK CONSTRAINT ", key.oid));
            skip.push(format!(
                " COMMENT {} CONSTRAINT {} ON {} ",
                toc_name(&key.table.schema),
                toc_name(&key.name),
                toc_name(&key.table.name)
            ));
        }
        drop(source);

        let scratch = ScratchDir::create()?;
        let dump = scratch.path().join("schema.dump");
        let mut pg_dump = tools.command("pg_dump");
        let _key_password =
            libpq_env(&mut pg_dump, job.source).map_err(|source| SnapshotError::Io {
                context: "writing the client key's password for pg_dump".into(),
                source,
            })?;
        pg_dump
            .args([
                "--schema-only",
                "--format=custom",
                "--no-sync",
                "--strict-names",
            ])
            .arg(format!("--snapshot={}", job.snapshot_name))
            .arg("--file")
            .arg(&dump);
        match job.only {
            Some(tables) => {
                for table in tables {
                    pg_dump.arg(format!(
                        "--table={}",
                        pattern(&[&table.schema, &table.name])
                    ));
                }
            }
            None => {
                for schema in job.schemas {
                    pg_dump.arg(format!("--schema={}", pattern(&[schema])));
                }
            }
        }
        for table in &exclude {
            pg_dump.arg(format!(
                "--exclude-table={}",
                pattern(&[&table.schema, &table.name])
            ));
        }
        run_watched(
            pg_dump,
            "pg_dump",
            (Side::Source, job.source),
            Some(job.snapshot_name),
        )
        .await?;

        // The replica's existing schemas (`public`, those extensions were just created in)
        // are there already: keep pg_restore from trying to create them.
        let existing: HashSet<String> = replica
            .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
            .await
            .map_err(|e| query_error(Side::Replica, "listing schemas", e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        drop(replica);
        for (oid, name) in schema_oids
            .iter()
            .filter(|(_, name)| existing.contains(name))
        {
            skip.push(format!("; 2615 {oid} SCHEMA "));
            skip.push(format!(" COMMENT - SCHEMA {name} "));
        }
        let mut list_cmd = tools.command("pg_restore");
        list_cmd.arg("--list").arg(&dump);
        let toc = run_tool(list_cmd, "pg_restore --list").await?;
        let schema = SchemaDump {
            scratch,
            resumed: false,
        };
        let list = schema.list();
        std::fs::write(&list, filter_toc(&String::from_utf8_lossy(&toc), &skip)).map_err(
            |source| SnapshotError::Io {
                context: format!("writing {}", list.display()),
                source,
            },
        )?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "schema dumped"
        );
        Ok(schema)
    }

    /// The dump and its filtered table of contents, to keep beside the replica until
    /// post-data is restored ([`SchemaDump::from_archive`]).
    pub fn archive(&self) -> Result<(Vec<u8>, String), SnapshotError> {
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| SnapshotError::Io {
                context: format!("reading {}", path.display()),
                source,
            })
        };
        let list = String::from_utf8_lossy(&read(self.list())?).into_owned();
        Ok((read(self.dump())?, list))
    }

    /// The dump of an interrupted snapshot, from its [`SchemaDump::archive`].
    pub fn from_archive(dump: &[u8], list: &str) -> Result<SchemaDump, SnapshotError> {
        let schema = SchemaDump {
            scratch: ScratchDir::create()?,
            resumed: true,
        };
        for (path, bytes) in [(schema.dump(), dump), (schema.list(), list.as_bytes())] {
            std::fs::write(&path, bytes).map_err(|source| SnapshotError::Io {
                context: format!("writing {}", path.display()),
                source,
            })?;
        }
        Ok(schema)
    }

    fn dump(&self) -> PathBuf {
        self.scratch.path().join("schema.dump")
    }

    fn list(&self) -> PathBuf {
        self.scratch.path().join("schema.list")
    }

    /// `pg_restore --section=<section> --no-owner --no-privileges --exit-on-error` into the
    /// replica database: pre-data in a single transaction, post-data (index builds) with
    /// `workers` parallel jobs.
    pub async fn restore(
        &self,
        job: &SnapshotJob<'_>,
        section: Section,
    ) -> Result<(), SnapshotError> {
        let started = Instant::now();
        let mut pg_restore = job.tools.command("pg_restore");
        let _key_password =
            libpq_env(&mut pg_restore, job.replica).map_err(|source| SnapshotError::Io {
                context: "writing the client key's password for pg_restore".into(),
                source,
            })?;
        pg_restore
            .args([
                "--no-owner",
                "--no-privileges",
                "--no-tablespaces",
                "--no-publications",
                "--no-subscriptions",
                "--no-security-labels",
                "--exit-on-error",
            ])
            .arg(format!("--section={}", section.as_arg()))
            .arg(format!(
                "--dbname=dbname={}",
                conninfo_quote(&job.replica.dbname)
            ))
            .arg("--use-list")
            .arg(self.list());
        match section {
            Section::PreData => {
                pg_restore.arg("--single-transaction");
            }
            Section::PostData if job.workers > 1 => {
                pg_restore.arg(format!("--jobs={}", job.workers));
            }
            Section::PostData => {}
        }
        if section == Section::PostData && self.resumed {
            // An interrupted restore may have built some of it already.
            pg_restore.args(["--clean", "--if-exists"]);
        }
        pg_restore.arg(self.dump());
        run_watched(pg_restore, "pg_restore", (Side::Replica, job.replica), None).await?;
        tracing::info!(
            section = section.as_arg(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "schema restored into the replica"
        );
        Ok(())
    }
}

/// Extensions that live in the selected schemas, or that objects in them depend on (a
/// column of an extension's type, an index with its operator class, …). plpgsql is
/// always there.
const EXTENSIONS: &str = "
SELECT e.extname::text, n.nspname::text
  FROM pg_catalog.pg_extension e
  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname <> 'plpgsql'
   AND (n.nspname = ANY($1)
        OR EXISTS (
            SELECT 1
              FROM pg_catalog.pg_depend member
              JOIN pg_catalog.pg_depend used
                ON used.refclassid = member.classid AND used.refobjid = member.objid
             WHERE member.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
               AND member.refobjid = e.oid
               AND member.deptype = 'e'
               AND used.deptype IN ('n', 'a')
               AND (pg_catalog.pg_identify_object(used.classid, used.objid, 0)).schema
                   = ANY($1)))
 ORDER BY e.extname";

async fn create_extensions(
    source: &PgClient,
    replica: &PgClient,
    schemas: &[String],
) -> Result<(), SnapshotError> {
    let rows = source
        .query(EXTENSIONS, &[&schemas])
        .await
        .map_err(|e| query_error(Side::Source, "listing the extensions the schemas use", e))?;
    for row in rows {
        let (name, schema): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {schema} CASCADE",
            schema = quote_ident(&schema),
            name = quote_ident(&name),
        );
        replica.batch_execute(&sql).await.map_err(|e| {
            query_error(
                Side::Replica,
                &format!(
                    "creating extension {name} in schema {schema} (the replicated schemas \
                     use it; the branch-store server needs it installed)"
                ),
                e,
            )
        })?;
        tracing::info!(extension = %name, schema = %schema, "extension created on the replica");
    }
    Ok(())
}

/// The excluded tables and, for partitioned ones, all their partitions: `pg_dump -T` on
/// a parent alone would still dump its partitions, whose `ATTACH` then fails.
async fn expand_exclusions(
    source: &PgClient,
    exclude: &[TableName],
) -> Result<Vec<TableName>, SnapshotError> {
    let mut all: Vec<TableName> = exclude.to_vec();
    if exclude.is_empty() {
        return Ok(all);
    }
    let schemas: Vec<&str> = exclude.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = exclude.iter().map(|t| t.name.as_str()).collect();
    let rows = source
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM unnest($1::text[], $2::text[]) x(s, t)
              CROSS JOIN LATERAL pg_catalog.pg_partition_tree(
                    pg_catalog.to_regclass(pg_catalog.quote_ident(x.s) || '.'
                                           || pg_catalog.quote_ident(x.t))) p
               JOIN pg_catalog.pg_class c ON c.oid = p.relid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| query_error(Side::Source, "listing partitions of excluded tables", e))?;
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if !all.contains(&table) {
            all.push(table);
        }
    }
    Ok(all)
}

async fn source_schema_oids(
    source: &PgClient,
    schemas: &[String],
) -> Result<Vec<(u32, String)>, SnapshotError> {
    Ok(source
        .query(
            "SELECT oid, nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(|e| query_error(Side::Source, "listing schemas", e))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Comments out (`;`) the table-of-contents entries that contain one of `skip`. Entries
/// read `<id>; <catalog oid> <oid> <kind> <schema> <tag> <owner>`: the schemas the replica
/// has already (`; 2615 <oid> SCHEMA `) and their comments (which need their owner, and
/// are only comments), and foreign keys into tables that are not replicated
/// (`; 2606 <oid> FK CONSTRAINT `) with their comments.
fn filter_toc(toc: &str, skip: &[String]) -> String {
    let mut out = String::with_capacity(toc.len());
    for line in toc.lines() {
        let drop = !line.starts_with(';') && skip.iter().any(|s| line.contains(s.as_str()));
        if drop {
            out.push(';');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A name as pg_dump writes it in a table-of-contents tag: bare when it is a plain
/// lower-case identifier, else quoted (pg_dump also quotes keywords, which constraint and
/// table names rarely are).
fn toc_name(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// A psql-style name pattern matching exactly these name parts: quoted, so that
/// `* ? . $` and capitals are taken literally.
fn pattern(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A private (0700) temporary directory, removed with everything in it on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    const PREFIX: &'static str = "tributary-schema-";

    fn create() -> Result<ScratchDir, SnapshotError> {
        use std::os::unix::fs::DirBuilderExt;
        ScratchDir::remove_orphans();
        let path = std::env::temp_dir().join(format!(
            "{}{}-{:016x}",
            ScratchDir::PREFIX,
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| SnapshotError::Io {
                context: format!("creating {}", path.display()),
                source,
            })?;
        Ok(ScratchDir(path))
    }

    /// Removes the directories of processes that no longer run: a killed daemon never
    /// runs `Drop`. A directory is named after its process id; without `/proc` (not
    /// Linux) nothing is removed.
    fn remove_orphans() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(ScratchDir::PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_filter_comments_out_existing_schemas_and_dangling_foreign_keys() {
        let toc = "; Archive created at 2024-01-01\n\
                   6; 2615 2200 SCHEMA - public pg_database_owner\n\
                   3545; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
                   9; 2615 16620 SCHEMA - s2 postgres\n\
                   218; 1259 16627 TABLE public t postgres\n\
                   224; 2606 16700 FK CONSTRAINT public t t_code_fkey postgres\n\
                   225; 2606 16701 FK CONSTRAINT public t t_other_fkey postgres\n\
                   3354; 0 0 COMMENT public CONSTRAINT t_code_fkey ON t postgres\n";
        let skip = [
            "; 2615 2200 SCHEMA ".to_owned(),
            " COMMENT - SCHEMA public ".to_owned(),
            "; 2606 16700 FK CONSTRAINT ".to_owned(),
            format!(
                " COMMENT public CONSTRAINT {} ON t ",
                toc_name("t_code_fkey")
            ),
        ];
        let filtered = filter_toc(toc, &skip);
        assert_eq!(
            filtered,
            "; Archive created at 2024-01-01\n\
             ;6; 2615 2200 SCHEMA - public pg_database_owner\n\
             ;3545; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
             9; 2615 16620 SCHEMA - s2 postgres\n\
             218; 1259 16627 TABLE public t postgres\n\
             ;224; 2606 16700 FK CONSTRAINT public t t_code_fkey postgres\n\
             225; 2606 16701 FK CONSTRAINT public t t_other_fkey postgres\n\
             ;3354; 0 0 COMMENT public CONSTRAINT t_code_fkey ON t postgres\n"
        );
        assert_eq!(toc_name("Mixed Case"), "\"Mixed Case\"");
    }

    #[test]
    fn patterns_quote_every_part() {
        assert_eq!(pattern(&["My*Schema", "t\"x"]), "\"My*Schema\".\"t\"\"x\"");
    }
}
