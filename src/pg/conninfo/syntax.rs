//! The two spellings of a libpq connection string, read into `(keyword, value)` pairs:
//! `postgresql://user:password@host1:port1,host2:port2/dbname?key=value&…` and
//! `host=a,b port=1,2 user=u password='x y'`. What the pairs mean is `resolve`'s job.
//!
//! Written here rather than taken from tokio-postgres's `Config`, whose parser refuses
//! every keyword it does not implement (`sslrootcert`, `sslcert`, `service`, `passfile`, …)
//! and so cannot read the strings operators already have; the URL is read by hand because
//! the `url` crate has no notion of several hosts and takes the last `@` of the authority
//! where libpq takes the first.

use super::{InvalidUrl, URL_SHAPE};

/// Reads `text` in whichever of the two spellings it is written.
pub(super) fn pairs(text: &str) -> Result<Vec<(String, String)>, InvalidUrl> {
    if text.trim().is_empty() {
        // libpq's empty string: every setting from the environment and the defaults.
        return Ok(Vec::new());
    }
    if is_url(text) || !looks_like_keywords(text) {
        url_pairs(text)
    } else {
        keyword_pairs(text)
    }
}

/// `host=db user=app …`: libpq's keyword/value spelling. Values may be single-quoted;
/// a backslash takes the next character literally, inside quotes or not.
fn keyword_pairs(text: &str) -> Result<Vec<(String, String)>, InvalidUrl> {
    // Nothing of the text is shown: a mask could miss a password that a quoting mistake
    // moved elsewhere.
    let fail = |reason: String| InvalidUrl {
        shown: None,
        reason: format!(
            "in the key=value connection string (not shown: it may hold a password): {reason}"
        ),
    };
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(fail(format!(
                "{} is not followed by `=`: write keyword=value pairs separated by spaces",
                shown_key(&key)
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(fail(format!(
                            "the value of {} has no closing quote: end it with `'`, and write a \
                             quote inside a value as \\'",
                            shown_key(&key)
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// A key as an error may show it: keys are never secret, but a mistyped string may have
/// a password where a key should be, so only keyword-like text is quoted.
fn shown_key(key: &str) -> String {
    if !key.is_empty()
        && key.len() <= 40
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        format!("keyword {key:?}")
    } else {
        "a keyword".to_owned()
    }
}

/// `postgresql://[user[:password]@][host[:port][,…]][/dbname][?key=value&…]`, with every
/// part percent-decoded. Several hosts become comma-separated `host` and `port` values,
/// as libpq's own reading makes them.
fn url_pairs(text: &str) -> Result<Vec<(String, String)>, InvalidUrl> {
    if let Some(misshapen) = misshapen(text) {
        return Err(misshapen);
    }
    let fail = |reason: String| InvalidUrl {
        shown: Some(mask_password(text)),
        reason,
    };
    let (scheme, rest) = text.split_once("://").expect("misshapen() checked for ://");
    if !matches!(scheme, "postgresql" | "postgres") {
        return Err(fail(format!(
            "scheme {scheme:?} is not supported: start the URL with postgresql://"
        )));
    }
    // Named, never quoted: the part may be the password.
    let decode = |part: &str, what: &str| -> Result<String, InvalidUrl> {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                fail(format!(
                    "the {what} is not valid UTF-8 after percent-decoding: {URL_SHAPE}"
                ))
            })
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(slash) => (&before_query[..slash], &before_query[slash + 1..]),
        None => (before_query, ""),
    };
    let mut out = Vec::new();
    let hostlist = match authority.split_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_owned(), decode(user, "user name")?));
            }
            if let Some(password) = password {
                out.push(("password".to_owned(), decode(password, "password")?));
            }
            hosts
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostlist.split(',') {
            let (host, port) = split_host_port(spec).ok_or_else(|| {
                fail(format!(
                    "the host {:?} is not HOST, HOST:PORT or [IPv6]:PORT: {URL_SHAPE}",
                    mask_password(spec)
                ))
            })?;
            hosts.push(decode(host, "host")?);
            ports.push(port.to_owned());
        }
        if hosts.iter().any(|h| h.contains(',')) {
            return Err(fail("a host name holds an encoded `,` (%2C)".into()));
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".to_owned(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".to_owned(), ports.join(",")));
        }
    }
    if !path.is_empty() {
        out.push(("dbname".to_owned(), decode(path, "database name")?));
    }
    let mut after_password = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            if after_password {
                return Err(fail(PASSWORD_AMPERSAND.into()));
            }
            return Err(fail(format!(
                "the parameter {:?} has no `=`: write key=value",
                mask_password(pair)
            )));
        };
        let key = decode(key, "parameter name")?;
        let value = decode(value, "parameter value")?;
        let follows_password = std::mem::replace(
            &mut after_password,
            matches!(key.as_str(), "password" | "sslpassword"),
        );
        if follows_password && !super::resolve::is_keyword(&key) && key != "ssl" {
            return Err(fail(PASSWORD_AMPERSAND.into()));
        }
        // JDBC's spelling, which libpq also takes.
        if key == "ssl" && value == "true" {
            out.push(("sslmode".to_owned(), "require".to_owned()));
        } else {
            out.push((key, value));
        }
    }
    Ok(out)
}

const PASSWORD_AMPERSAND: &str = "an unknown parameter follows password=: if the password \
                                  holds `&`, percent-encode it as %26 (and `%` as %25, `#` as %23)";

/// `host`, `host:port`, `[v6]`, `[v6]:port`, `:port` or empty, split; `None` when the
/// port is no number.
fn split_host_port(spec: &str) -> Option<(&str, &str)> {
    let (host, after) = match spec.strip_prefix('[') {
        Some(bracketed) => {
            let end = bracketed.find(']')?;
            (&bracketed[..end], &bracketed[end + 1..])
        }
        None => match spec.find(':') {
            Some(colon) => (&spec[..colon], &spec[colon..]),
            None => (spec, ""),
        },
    };
    let port = match after.strip_prefix(':') {
        Some(port) => port,
        None if after.is_empty() => "",
        None => return None,
    };
    port.bytes()
        .all(|b| b.is_ascii_digit())
        .then_some((host, port))
}

/// What makes `text` no URL at all, or one whose user name or password would be misread
/// (a reserved character left unencoded in it). The reason never quotes the text unmasked.
fn misshapen(text: &str) -> Option<InvalidUrl> {
    let Some(scheme_end) = text.find("://") else {
        // `postgres//…`, `postgresql:/…`, `postgresql:…` or no scheme at all.
        let rest = text
            .strip_prefix("postgresql")
            .or_else(|| text.strip_prefix("postgres"))
            .map_or(text, |rest| rest.trim_start_matches([':', '/']));
        return Some(InvalidUrl {
            shown: Some(mask_password(text)),
            reason: format!(
                "it is neither a URL nor key=value pairs: did you mean postgresql://{}? \
                 Otherwise {URL_SHAPE}",
                mask_password(rest)
            ),
        });
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let reason = if authority.matches('@').count() > 1 {
        "the user name or password holds an unencoded `@`: percent-encode it as %40".to_owned()
    } else if !authority.contains('@') && rest.contains('@') && colon_without_port(authority) {
        let reserved = rest[authority_end..].chars().next().unwrap_or('/');
        format!(
            "the password (or user name) holds an unencoded `{reserved}`, which ends the host \
             part early: percent-encode it ({})",
            percent_encoded(reserved)
        )
    } else if rest[authority_end..path_end].contains('@') {
        "an unencoded `@` after the host: percent-encode it as %40 in a database name; if it \
         ends a password, percent-encode the password's `/`, `?` and `#` (%2F, %3F, %23)"
            .to_owned()
    } else if rest.contains('#') {
        "the URL holds an unencoded `#`: percent-encode it as %23".to_owned()
    } else {
        return None;
    };
    Some(InvalidUrl {
        shown: Some(mask_password(text)),
        reason,
    })
}

fn percent_encoded(c: char) -> &'static str {
    match c {
        '/' => "`/` as %2F",
        '?' => "`?` as %3F",
        _ => "`#` as %23",
    }
}

/// `host=db user=app …`: libpq's other connection string syntax.
/// libpq's rule: a URL starts with its scheme. A key=value string may hold `://` in a
/// value (`application_name=http://…`) and is still read, and masked, as key=value.
fn is_url(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with("postgresql://") || text.starts_with("postgres://")
}

fn looks_like_keywords(text: &str) -> bool {
    let text = text.trim_start();
    let key_len = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    key_len > 0 && text[key_len..].trim_start().starts_with('=')
}

/// Whether an authority without `@` has a colon that no port follows (`user:pass`, where
/// the password went on with `/`, `?` or `#`), rather than `host`, `host:5432`,
/// `[::1]:5432` or a list of those.
fn colon_without_port(authority: &str) -> bool {
    authority
        .split(',')
        .any(|spec| !spec.is_empty() && split_host_port(spec).is_none())
}

/// Replaces every password in a connection string with `****`: a URL's
/// `user:password@`, and the value of every `password=` and `sslpassword=` parameter, also
/// when the text does not otherwise parse, so that an error about it never shows a secret.
///
/// In a well-formed URL the password ends at the authority's last `@`. In malformed text
/// (no `://`, or a password holding `/`, `?` or `#`, which end the authority early) it is
/// taken to end at the text's last `@`: that may hide more than the password, never less.
/// A key=value string that does not read is not shown at all.
pub fn mask_password(text: &str) -> String {
    if !is_url(text) && looks_like_keywords(text) {
        return mask_keywords(text);
    }
    let (head, rest) = match text.find("://") {
        Some(end) => text.split_at(end + 3),
        None => ("", text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let misread = head.is_empty()
        || colon_without_port(authority)
        || rest[authority_end..path_end].contains('@');
    let userinfo_end = match authority.rfind('@') {
        Some(at) => Some(at),
        None if misread => rest.rfind('@'),
        None => None,
    };
    let masked = match userinfo_end.and_then(|at| Some((rest[..at].find(':')?, at))) {
        Some((colon, at)) => format!("{head}{}:****{}", &rest[..colon], &rest[at..]),
        None => text.to_owned(),
    };
    mask_query_password(&masked)
}

/// A key=value string with its secrets replaced, re-quoted where a value needs it.
fn mask_keywords(text: &str) -> String {
    let Ok(pairs) = keyword_pairs(text) else {
        return "(a key=value connection string that does not read; not shown)".to_owned();
    };
    pairs
        .iter()
        .map(|(key, value)| {
            if is_secret(key) {
                format!("{key}=****")
            } else if value.is_empty() || value.contains([' ', '\'', '\\']) {
                format!(
                    "{key}='{}'",
                    value.replace('\\', "\\\\").replace('\'', "\\'")
                )
            } else {
                format!("{key}={value}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keywords whose values are secrets.
pub(super) fn is_secret(key: &str) -> bool {
    matches!(key, "password" | "sslpassword")
}

/// Masks the value of every secret parameter of a URL's query: up to the next parameter
/// libpq knows, so that a password holding an unencoded `&` is hidden whole.
fn mask_query_password(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (base, query) = text.split_at(q + 1);
    let mut pairs: Vec<String> = Vec::new();
    let mut in_password = false;
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if is_secret(key) {
            in_password = true;
            pairs.push(format!("{key}=****"));
        } else if in_password && !(pair.contains('=') && super::resolve::is_keyword(key)) {
            // Still the password's value.
        } else {
            in_password = false;
            pairs.push(pair.to_owned());
        }
    }
    format!("{base}{}", pairs.join("&"))
}
