use std::collections::HashMap;

use super::*;

#[test]
fn urls_mask_omit_or_show_the_password() {
    let info =
        ConnInfo::parse("postgresql://app%40x:p%2Fw%3Ad@db.example:6432/shop?sslmode=require")
            .unwrap()
            .with_dbname("dev_1");
    assert_eq!(
        info.url(ShowPassword::Masked),
        "postgresql://app%40x:****@db.example:6432/dev_1?sslmode=require"
    );
    assert_eq!(info.to_string(), info.url(ShowPassword::Masked));
    assert_eq!(
        info.url(ShowPassword::Omitted),
        "postgresql://app%40x@db.example:6432/dev_1?sslmode=require"
    );
    let shown = info.url(ShowPassword::Shown);
    assert_eq!(
        shown,
        "postgresql://app%40x:p%2Fw%3Ad@db.example:6432/dev_1?sslmode=require"
    );
    let back = ConnInfo::parse(&shown).unwrap();
    assert_eq!(
        back.password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .as_deref(),
        Some("p/w:d")
    );
    assert_eq!(back.user, "app@x");
}

#[test]
fn parses_a_full_url() {
    let info = ConnInfo::parse(
            "postgresql://rep%40user:p%3Ass%2Fw@db.example.com:6543/sales?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=t1",
        )
        .unwrap();
    assert_eq!(
        info.endpoints,
        [Endpoint {
            host: Host::Tcp("db.example.com".into()),
            hostaddr: None,
            port: 6543
        }]
    );
    assert_eq!(info.user, "rep@user");
    assert_eq!(info.password.as_ref().unwrap().expose(), "p:ss/w");
    assert_eq!(info.dbname, "sales");
    assert_eq!(info.sslmode, SslMode::VerifyFull);
    assert_eq!(
        info.tls.rootcert,
        Some(RootCert::File("/etc/ca.pem".into()))
    );
    assert_eq!(info.application_name, "t1");
}

#[test]
fn accepts_postgres_scheme_and_defaults() {
    let info = ConnInfo::parse("postgres://alice@localhost").unwrap();
    assert_eq!(info.endpoints[0].port, 5432);
    assert_eq!(info.dbname, "alice");
    assert_eq!(info.sslmode, SslMode::Prefer);
}

#[test]
fn unix_socket_directory_from_query() {
    let info = ConnInfo::parse("postgresql://bob@/db?host=/tmp/sock&port=5555").unwrap();
    assert_eq!(info.endpoints[0].host, Host::Unix("/tmp/sock".into()));
    for bad in ["\t(\t/va\0", "a b", "/dir\0"] {
        let url = format!(
            "postgres://u@/db?host={}",
            bad.replace('\0', "%00").replace(' ', "%20")
        );
        assert!(ConnInfo::parse(&url).is_err(), "{url}");
    }
    assert!(ConnInfo::parse("postgres://u@/db?host=::1").is_ok());
    assert!(ConnInfo::parse("postgresql://u@db.example%40x/db").is_err());
    assert!(ConnInfo::parse("postgresql://u@[::1]:5433/db").is_ok());
    assert_eq!(info.target(), "/tmp/sock/.s.PGSQL.5555");
}

#[test]
fn rejects_bad_input_with_reasons() {
    for (url, needle) in [
        ("mysql://u@h/db", "scheme"),
        ("postgresql://u@h/db?sslmode=sometimes", "unknown sslmode"),
        ("postgresql://u@h/db?port=abc", "port"),
        ("postgresql://u@h/db?frobnicate=1", "unknown parameter"),
        (
            "postgresql://u@h/db?sslrootcert=system&sslmode=require",
            "verify-full",
        ),
        ("postgresql://u@h1,h2/db?port=1,2,3", "3 ports"),
        ("host=h user=u replication=database", "remove replication="),
        ("host=h user=u sslcert=/c", "both sslcert and sslkey"),
        ("host=h user=u hostaddr=db.example", "not an IP address"),
        (
            "host=h user=u target_session_attrs=master",
            "prefer-standby",
        ),
        ("host=h user=u options='-X'", "-c name=value"),
        ("host=h user=u oauth_issuer=x", "OAuth"),
        ("host=h user=u sslmode='require", "no closing quote"),
        ("host=h user u", "not followed by `=`"),
    ] {
        let err = ConnInfo::parse(url).unwrap_err().to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[test]
fn passwords_never_print() {
    let url = "postgresql://u:hunter2@h/db?sslmode=frob";
    let err = ConnInfo::parse(url).unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let info = ConnInfo::parse("postgresql://u:hunter2@h/db").unwrap();
    assert!(!info.to_string().contains("hunter2"));
    assert!(!format!("{info:?}").contains("hunter2"));
    let q = ConnInfo::parse("postgresql://u@h/db?password=hunter2&port=x").unwrap_err();
    assert!(!q.to_string().contains("hunter2"), "{q}");
    assert_eq!(
        mask_password("postgresql://u:se:cret@h:5/db?password=x&sslmode=require"),
        "postgresql://u:****@h:5/db?password=****&sslmode=require"
    );
    assert_eq!(mask_password("not a url hunter"), "not a url hunter");
}

/// Every malformed input an operator was seen to type, with a password `hunter2` in it
/// somewhere: the error never shows the password, and says what to do instead.
#[test]
fn malformed_urls_never_show_the_password_and_say_what_to_do() {
    for (text, advice) in [
        (
            "repl:hunter2@host/db",
            "did you mean postgresql://repl:****@host/db?",
        ),
        (
            "postgres//repl:hunter2@host/db",
            "did you mean postgresql://repl:****@host/db?",
        ),
        (
            "postgresql:/repl:hunter2@host/db",
            "did you mean postgresql://repl:****@host/db?",
        ),
        (
            "postgresql:repl:hunter2@host/db",
            "did you mean postgresql://repl:****@host/db?",
        ),
        (
            "host=db user=repl password=hunter2 dbname=app sslmode=sometimes",
            "use disable, prefer",
        ),
        (
            " password = 'hunter2 host=db",
            "key=value connection string",
        ),
        (
            "host=db password=hunter2 frob=1",
            "unknown parameter \"frob\"",
        ),
        ("postgresql://repl:hunter2/x@host/db", "`/` as %2F"),
        ("postgresql://repl:hunter2?x@host/db", "`?` as %3F"),
        ("postgresql://repl:hunter2#x@host/db", "`#` as %23"),
        ("postgresql://repl:hun@ter2@host/db", "%40"),
        ("postgresql://repl:1234/hunter2@host/db", "%40"),
        (
            "postgresql://repl@host/db?password=hun&ter2&sslmode=require",
            "%26",
        ),
        ("postgresql://repl@host/db?password=hunter2&frob=1", "%26"),
        (
            "postgresql://repl:hunter2@host:99999/db",
            "between 1 and 65535",
        ),
        ("postgresql://repl:hunter2@[::1/db", "percent-encoded"),
        (
            "postgresql://repl:hunter2%ff@host/db",
            "password is not valid UTF-8",
        ),
        (
            "mysql://repl:hunter2@host/db",
            "start the URL with postgresql://",
        ),
        (
            "postgresql://repl:hunter2@host/db?sslmode=sometimes",
            "use disable, prefer",
        ),
    ] {
        let err = ConnInfo::parse(text).expect_err(text);
        let message = err.to_string();
        let debug = format!("{err:?}");
        for secret in ["hunter2", "hun", "ter2", "1234"] {
            assert!(!message.contains(secret), "{text}: {message}");
            assert!(!debug.contains(secret), "{text}: {debug}");
        }
        assert!(message.contains(advice), "{text}: {message}");
    }
}

#[test]
fn well_formed_urls_with_at_signs_in_parameters_still_parse() {
    let info =
        ConnInfo::parse("postgresql://u:p%40ss@h:5433/db?application_name=me@laptop").unwrap();
    assert_eq!(info.password.unwrap().expose(), "p@ss");
    assert_eq!(info.application_name, "me@laptop");
    let no_user = ConnInfo::parse("postgresql://h:5433/db?application_name=me@laptop&user=u");
    assert!(no_user.is_ok(), "{no_user:?}");
    assert!(ConnInfo::parse("postgresql://u@[::1]:5433/db").is_ok());
}

#[test]
fn masking_hides_the_password_of_well_formed_and_malformed_text() {
    for (text, masked) in [
        ("postgresql://u:pw@h/db", "postgresql://u:****@h/db"),
        (
            "postgresql://u@h/db?application_name=a@b",
            "postgresql://u@h/db?application_name=a@b",
        ),
        (
            "postgresql://h:5432/db?application_name=a@b",
            "postgresql://h:5432/db?application_name=a@b",
        ),
        ("postgresql://u:p/w@h/db", "postgresql://u:****@h/db"),
        ("postgresql://u:p#w@h/db", "postgresql://u:****@h/db"),
        ("postgresql://u:p@w@h/db", "postgresql://u:****@h/db"),
        ("repl:pw@host/db", "repl:****@host/db"),
        ("postgres//repl:pw@host/db", "postgres//repl:****@host/db"),
        ("postgresql:/repl:pw@host/db", "postgresql:****@host/db"),
        (
            "postgresql://u@h/db?password=a&b&port=1",
            "postgresql://u@h/db?password=****&port=1",
        ),
        ("no password here", "no password here"),
        // key=value with a URL in a value: still key=value (libpq's rule), masked as such.
        (
            "host=db password=secret application_name=http://x",
            "host=db password=**** application_name=http://x",
        ),
    ] {
        assert_eq!(mask_password(text), masked, "{text}");
    }
    let info = ConnInfo::parse_in(
        "host=db user=u password=secret application_name=http://x",
        &env(&[]),
    )
    .unwrap()
    .0;
    assert_eq!(info.application_name, "http://x");
}

fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    pairs.iter().copied().collect()
}

fn parse_with(text: &str, vars: &[(&'static str, &'static str)]) -> ConnInfo {
    ConnInfo::parse_in(text, &env(vars))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .0
}

#[test]
fn key_value_strings_read_as_libpq_reads_them() {
    let info = parse_with(
        r"host = db.example port=6543 user=app password='a b\'c\\' dbname=sh\ op sslmode=require",
        &[],
    );
    assert_eq!(info.endpoints[0].target(), "db.example:6543");
    assert_eq!(info.password.unwrap().expose(), r"a b'c\");
    assert_eq!(info.dbname, "sh op");
    assert_eq!(info.sslmode, SslMode::Require);
    let empty = parse_with("host=h user=u password=''", &[]);
    assert_eq!(empty.password.unwrap().expose(), "");
}

#[test]
fn several_hosts_pair_with_their_ports_and_addresses() {
    for text in [
        "postgresql://u@a:1,b:2/db?target_session_attrs=read-write",
        "host=a,b port=1,2 user=u dbname=db target_session_attrs=read-write",
    ] {
        let info = parse_with(text, &[]);
        let targets: Vec<String> = info.endpoints.iter().map(Endpoint::target).collect();
        assert_eq!(targets, ["a:1", "b:2"], "{text}");
        assert_eq!(info.session_attrs, SessionAttrs::ReadWrite);
        // The URL form gives back the same servers.
        let again = parse_with(&info.url(ShowPassword::Shown), &[]);
        assert_eq!(again.endpoints, info.endpoints);
        assert_eq!(again.session_attrs, info.session_attrs);
    }
    let one_port = parse_with("host=a,b port=7 user=u", &[]);
    assert!(one_port.endpoints.iter().all(|e| e.port == 7));
    let v6 = parse_with("postgresql://u@[::1]:5,h/db", &[]);
    assert_eq!(v6.endpoints[0].target(), "[::1]:5");
    assert_eq!(v6.endpoints[1].port, 5432);
    let addr = parse_with("host=db.example hostaddr=10.0.0.7 user=u", &[]);
    assert_eq!(addr.endpoints[0].dial().as_deref(), Some("10.0.0.7"));
    assert_eq!(addr.endpoints[0].server_name(), "db.example");
    let balanced = parse_with("host=a,b,c user=u load_balance_hosts=random", &[]);
    let mut tried: Vec<String> = balanced
        .endpoints_to_try()
        .iter()
        .map(Endpoint::target)
        .collect();
    tried.sort();
    assert_eq!(tried, ["a:5432", "b:5432", "c:5432"]);
    assert_eq!(balanced.pinned(&balanced.endpoints[1]).endpoints.len(), 1);
}

#[test]
fn the_string_wins_over_the_service_which_wins_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.conf");
    std::fs::write(
        &file,
        "[shop]\nhost=svc-host\nport=6000\ndbname=svc-db\nuser=svc-user\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let text = format!("service=shop servicefile={file} dbname=mine");
    let vars = [
        ("PGHOST", "env-host"),
        ("PGPORT", "7000"),
        ("PGSSLMODE", "require"),
        ("PGUSER", "env-user"),
    ];
    let info = parse_with(&text, &vars);
    assert_eq!(info.endpoints[0].target(), "svc-host:6000");
    assert_eq!(info.dbname, "mine");
    assert_eq!(info.user, "svc-user");
    assert_eq!(info.sslmode, SslMode::Require, "from PGSSLMODE");
    // PGSERVICE names the service when the string does not.
    let leaked: &'static str = Box::leak(file.into_boxed_str());
    let by_env = parse_with(
        "dbname=x",
        &[("PGSERVICE", "shop"), ("PGSERVICEFILE", leaked)],
    );
    assert_eq!(by_env.endpoints[0].target(), "svc-host:6000");
    let missing = ConnInfo::parse_in(&format!("service=nope servicefile={leaked}"), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("\"nope\""), "{missing}");
    let defaults = parse_with("", &[("USER", "me")]);
    assert_eq!(
        (defaults.user.as_str(), defaults.dbname.as_str()),
        ("me", "me")
    );
    assert_eq!(defaults.endpoints[0].port, 5432);
}

#[test]
fn passwords_come_from_the_string_then_pgpassword_then_the_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        "a:5432:*:u:from-file-a\nb:5432:*:u:from-file-b\n",
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile: &'static str = Box::leak(passfile.to_str().unwrap().to_owned().into_boxed_str());
    let info = parse_with("host=a,b user=u", &[("PGPASSFILE", passfile)]);
    let found: Vec<String> = info
        .endpoints
        .iter()
        .map(|e| info.password_for(e).unwrap().expose().to_owned())
        .collect();
    assert_eq!(found, ["from-file-a", "from-file-b"], "looked up per host");
    let env_password = parse_with(
        "host=a user=u",
        &[("PGPASSFILE", passfile), ("PGPASSWORD", "env")],
    );
    assert_eq!(
        env_password
            .password_for(&env_password.endpoints[0])
            .unwrap()
            .expose(),
        "env"
    );
    let own = parse_with("host=a user=u password=own", &[("PGPASSWORD", "env")]);
    assert_eq!(own.password_for(&own.endpoints[0]).unwrap().expose(), "own");
    let err = ConnInfo::parse_in("host=a user=u", &env(&[("PGPASSWORD", "env")]))
        .map(|(_, origins)| origins.get("password").copied());
    assert_eq!(err.unwrap(), Some(resolve::Origin::Environment));
}

#[test]
fn key_value_secrets_are_masked_and_unreadable_strings_not_shown() {
    assert_eq!(
        mask_password("host=h password='x y' sslpassword=z user=u"),
        "host=h password=**** sslpassword=**** user=u"
    );
    assert!(!mask_password("host=h password='unterminated").contains("unterminated"));
    assert_eq!(
        mask_password("postgresql://u@h/db?sslpassword=k&sslmode=require"),
        "postgresql://u@h/db?sslpassword=****&sslmode=require"
    );
    let info = parse_with(
        "host=h user=u password=p sslcert=/c sslkey=/k sslpassword=kp",
        &[],
    );
    let shown = info.url(ShowPassword::Masked);
    assert!(!shown.contains("kp") && !shown.contains(":p@"), "{shown}");
    assert!(!format!("{info:?}").contains("kp"));
}

#[test]
fn the_system_roots_alone_mean_verify_full() {
    let (info, _) =
        ConnInfo::parse_in("postgresql://u@h/db?sslrootcert=system", &env(&[])).unwrap();
    assert_eq!(info.sslmode, SslMode::VerifyFull);
}

#[test]
fn password_file_lines_name_a_socket_as_libpq_does() {
    let socket = |dir: &str| Endpoint {
        host: Host::Unix(dir.into()),
        hostaddr: None,
        port: 5432,
    };
    assert_eq!(socket("/var/run/postgresql").passfile_host(), "localhost");
    assert_eq!(socket("/tmp").passfile_host(), "/tmp");
}
