//! libpq's two files: the password file (`~/.pgpass`, `passfile`) and the connection
//! service file (`~/.pg_service.conf`, `pg_service.conf`).

use std::path::{Path, PathBuf};

use super::Password;

/// The password the file at `path` holds for this connection, as libpq finds it: the first
/// line `host:port:database:user:password` whose fields match, `*` matching anything and
/// `\` taking the next character literally. A file that others may read (group or world
/// permissions) is ignored with a warning, as libpq ignores it; so is a missing one.
pub(super) fn passfile_password(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<Password> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            passfile = %path.display(),
            "the password file has group or world access and is ignored (as libpq does): \
             chmod 0600 it"
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = passfile_fields(line);
            let [h, p, d, u, password] = fields.as_slice() else {
                return None;
            };
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(h, host) && matches(p, &port) && matches(d, dbname) && matches(u, user))
                .then(|| Password::new(password.clone()))
        })
}

/// A password file line's five fields, unescaped; a line of other shape gives fewer or more.
fn passfile_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            // As libpq: an unescaped colon ends the password.
            ':' => break,
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Where the password file is when no `passfile` or `PGPASSFILE` names one.
pub(super) fn default_passfile(home: Option<&str>) -> Option<PathBuf> {
    home.map(|home| Path::new(home).join(".pgpass"))
}

/// The system-wide service file of Debian's libpq (`PGSYSCONFDIR` replaces the directory).
const SYSTEM_SERVICE_DIR: &str = "/etc/postgresql-common";

/// Why a service's parameters cannot be had.
#[derive(Debug)]
pub(super) struct ServiceError(pub String);

/// The parameters of service `name`: from `file` if given (the `servicefile` keyword or
/// `PGSERVICEFILE`), else `~/.pg_service.conf`, and when that file lacks the service, from
/// the system-wide `pg_service.conf`.
pub(super) fn service(
    name: &str,
    file: Option<&str>,
    home: Option<&str>,
    sysconfdir: Option<&str>,
) -> Result<Vec<(String, String)>, ServiceError> {
    let user_file = file
        .map(PathBuf::from)
        .or_else(|| home.map(|home| Path::new(home).join(".pg_service.conf")));
    let system_file = Path::new(sysconfdir.unwrap_or(SYSTEM_SERVICE_DIR)).join("pg_service.conf");
    let mut looked = Vec::new();
    for (path, named) in user_file
        .iter()
        .map(|p| (p, file.is_some()))
        .chain([(&system_file, false)])
    {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            // A file named explicitly must exist; the default places may not.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {
                looked.push(path.display().to_string());
                continue;
            }
            Err(e) => {
                return Err(ServiceError(format!(
                    "cannot read the service file {}: {e}",
                    path.display()
                )))
            }
        };
        looked.push(path.display().to_string());
        if let Some(found) = service_section(&text, name, path)? {
            return Ok(found);
        }
    }
    Err(ServiceError(format!(
        "the service {name:?} is defined in none of {}: add a [{name}] section, or name the \
         file with PGSERVICEFILE",
        looked.join(", ")
    )))
}

/// The `key=value` lines of section `[name]`, `None` when the file has no such section.
fn service_section(
    text: &str,
    name: &str,
    path: &Path,
) -> Result<Option<Vec<(String, String)>>, ServiceError> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            inside = section == name;
            if inside {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        // Line numbers, never lines: a line may hold a password.
        let Some((key, value)) = line.split_once('=') else {
            return Err(ServiceError(format!(
                "line {} of the service file {} is not key=value",
                number + 1,
                path.display()
            )));
        };
        let key = key.trim();
        if matches!(key, "service" | "servicefile") {
            return Err(ServiceError(format!(
                "line {} of the service file {} names another service, which libpq does not \
                 allow either",
                number + 1,
                path.display()
            )));
        }
        if let Some(pairs) = found.as_mut() {
            pairs.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_password_file_matches_as_libpq_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            dir.path(),
            "pgpass",
            "# comment\n\
             db1:5432:shop:app:first\n\
             db\\:x:*:*:app:esc\\:aped\\\\\n\
             *:6432:*:*:with:colons\n\
             *:*:*:app:any\n",
            0o600,
        );
        let find = |host, port, db, user| {
            passfile_password(&path, host, port, db, user).map(|p| p.expose().to_owned())
        };
        assert_eq!(find("db1", 5432, "shop", "app").as_deref(), Some("first"));
        assert_eq!(find("db:x", 1, "x", "app").as_deref(), Some("esc:aped\\"));
        assert_eq!(find("h", 6432, "x", "bob").as_deref(), Some("with"));
        assert_eq!(find("db1", 5432, "other", "app").as_deref(), Some("any"));
        assert_eq!(find("db1", 5432, "shop", "bob"), None);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            find("db1", 5432, "shop", "app"),
            None,
            "a readable file is ignored"
        );
        assert_eq!(
            passfile_password(&dir.path().join("missing"), "h", 1, "d", "u"),
            None
        );
    }

    #[test]
    fn services_come_from_the_user_file_then_the_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        file(
            &home,
            ".pg_service.conf",
            "[mine]\nhost=a\n port = 1 \n[other]\nhost=b\n",
            0o600,
        );
        file(
            &etc,
            "pg_service.conf",
            "# system\n[shared]\nhost=c\n",
            0o644,
        );
        let (home, etc) = (home.to_str().unwrap(), etc.to_str().unwrap());
        assert_eq!(
            service("mine", None, Some(home), Some(etc)).unwrap(),
            [("host".into(), "a".into()), ("port".into(), "1".into())]
        );
        assert_eq!(
            service("shared", None, Some(home), Some(etc)).unwrap(),
            [("host".to_owned(), "c".to_owned())]
        );
        let missing = service("nope", None, Some(home), Some(etc)).unwrap_err().0;
        assert!(
            missing.contains("\"nope\"") && missing.contains("pg_service.conf"),
            "{missing}"
        );

        let bad = file(dir.path(), "bad.conf", "[x]\npassword hunter2\n", 0o600);
        let err = service("x", bad.to_str(), None, Some(etc)).unwrap_err().0;
        assert!(err.contains("line 2") && !err.contains("hunter2"), "{err}");
    }
}
