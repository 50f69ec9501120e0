//! Just enough of PostgreSQL's lexer to cut a query string into statements and read their
//! leading keywords, as psql does: strings (`'…'`, `E'…'`), quoted identifiers, dollar
//! quotes and comments are skipped over, so a `;` inside them does not end a statement.
//!
//! Schema change capture needs it: an event trigger sees the whole query string the client
//! sent, which may hold several statements (`ALTER TABLE …; UPDATE …;`), and only the DDL
//! statement it fired for may be replayed.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// An unquoted identifier or keyword.
    Word,
    Semicolon,
    /// Anything else that is part of a statement: literals, quoted names, operators.
    Other,
    Comment,
}

/// The tokens of `sql` with their byte ranges. Unterminated literals and comments run to
/// the end (the server would have refused such a statement anyway).
fn tokens(sql: &str) -> Vec<(Token, Range<usize>)> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word_start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
    let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        let token = match b {
            b if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = memchr(bytes, i, b'\n').map_or(bytes.len(), |n| n + 1);
                Token::Comment
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                Token::Comment
            }
            b';' => {
                i += 1;
                Token::Semicolon
            }
            b'\'' => {
                i = end_of_quoted(bytes, i + 1, b'\'', false);
                Token::Other
            }
            b'e' | b'E' if bytes.get(i + 1) == Some(&b'\'') => {
                i = end_of_quoted(bytes, i + 2, b'\'', true);
                Token::Other
            }
            b'"' => {
                i = end_of_quoted(bytes, i + 1, b'"', false);
                Token::Other
            }
            b'$' => {
                // `$tag$ … $tag$` (tag empty or an identifier); `$1` is a parameter.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !word_char(c) || c == b'$')
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(end)
                        if bytes[end] == b'$'
                            && bytes.get(i + 1).is_none_or(|&c| !c.is_ascii_digit()) =>
                    {
                        let tag = &bytes[i..=end];
                        i = find(bytes, end + 1, tag).map_or(bytes.len(), |n| n + tag.len());
                    }
                    _ => i += 1,
                }
                Token::Other
            }
            b if word_start(b) => {
                while i < bytes.len() && word_char(bytes[i]) {
                    i += 1;
                }
                Token::Word
            }
            _ => {
                i += 1;
                while i < bytes.len() && !sql.is_char_boundary(i) {
                    i += 1;
                }
                Token::Other
            }
        };
        out.push((token, start..i));
    }
    out
}

fn memchr(bytes: &[u8], from: usize, needle: u8) -> Option<usize> {
    bytes[from..]
        .iter()
        .position(|&b| b == needle)
        .map(|n| from + n)
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|n| from + n)
}

/// The index just past the closing `quote` of a literal whose body starts at `i`; a doubled
/// quote is part of the body, and so is a backslash-escaped one in `E'…'`.
fn end_of_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if backslash => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The statements of `sql`, without their `;` and surrounding white space or comments;
/// empty statements are left out.
pub fn split(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for (token, range) in tokens(sql) {
        match token {
            Token::Semicolon => {
                if let Some(statement) = current.take() {
                    statements.push(&sql[statement]);
                }
            }
            Token::Comment => {}
            Token::Word | Token::Other => {
                let start = current.as_ref().map_or(range.start, |c| c.start);
                current = Some(start..range.end);
            }
        }
    }
    if let Some(statement) = current {
        statements.push(&sql[statement]);
    }
    statements
}

/// The first `n` unquoted words of a statement, upper-cased (`CREATE`, `UNIQUE`, `INDEX`).
pub fn leading_words(statement: &str, n: usize) -> Vec<String> {
    tokens(statement)
        .into_iter()
        .filter(|(token, _)| *token != Token::Comment)
        .take(n)
        .filter(|(token, _)| *token == Token::Word)
        .map(|(_, range)| statement[range].to_ascii_uppercase())
        .collect()
}

/// Whether `statement` is a command with this tag (`CREATE INDEX` for `CREATE UNIQUE
/// INDEX CONCURRENTLY …`, `CREATE FUNCTION` for `CREATE OR REPLACE FUNCTION …`): the tag's
/// words appear in order among the statement's first words, starting with the first.
pub fn has_tag(statement: &str, tag: &str) -> bool {
    let tag: Vec<&str> = tag.split_whitespace().collect();
    let words = leading_words(statement, tag.len() + 4);
    if words.first().map(String::as_str) != tag.first().copied() {
        return false;
    }
    let mut wanted = tag.iter().peekable();
    for word in &words {
        if wanted.peek().is_some_and(|w| w.eq_ignore_ascii_case(word)) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}

/// `statement` without `CONCURRENTLY` in `CREATE [UNIQUE] INDEX CONCURRENTLY`,
/// `DROP INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY` and `REFRESH MATERIALIZED VIEW
/// CONCURRENTLY`: those cannot run inside a transaction block, and on a replica with
/// no readers the plain form does the same.
pub fn without_concurrently(statement: &str) -> String {
    const BEFORE: &[&str] = &["INDEX", "TABLE", "SCHEMA", "DATABASE", "SYSTEM", "VIEW"];
    let leading: Vec<(Token, Range<usize>)> = tokens(statement)
        .into_iter()
        .filter(|(token, _)| *token != Token::Comment)
        .take(8)
        .collect();
    let is_word = |(token, range): &(Token, Range<usize>), word: &str| {
        *token == Token::Word && statement[range.clone()].eq_ignore_ascii_case(word)
    };
    let found = leading.windows(2).find(|pair| {
        BEFORE.iter().any(|word| is_word(&pair[0], word)) && is_word(&pair[1], "CONCURRENTLY")
    });
    match found {
        Some(pair) => {
            let range = &pair[1].1;
            format!("{}{}", &statement[..range.start], &statement[range.end..])
        }
        None => statement.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_outside_literals_and_comments() {
        let sql = "alter table t add c text default 'a;b'; -- note; here\n\
                   update t set c = $$x;y$$ /* c; /* nested; */ */; \
                   create function f() returns int language sql as $body$ select 1; $body$ ;;\
                   insert into \"odd;name\" values (E'it\\'s;'), ($1)";
        assert_eq!(
            split(sql),
            [
                "alter table t add c text default 'a;b'",
                "update t set c = $$x;y$$",
                "create function f() returns int language sql as $body$ select 1; $body$",
                "insert into \"odd;name\" values (E'it\\'s;'), ($1)",
            ]
        );
        assert!(split(" ; -- nothing\n").is_empty());
        assert_eq!(split("select 'unterminated;"), ["select 'unterminated;"]);
        assert_eq!(split("select 'ü;'; select 2"), ["select 'ü;'", "select 2"]);
    }

    #[test]
    fn matches_command_tags() {
        assert!(has_tag(
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
            "CREATE INDEX"
        ));
        assert!(has_tag(
            "create or replace function f() …",
            "CREATE FUNCTION"
        ));
        assert!(has_tag("create unlogged table t (a int)", "CREATE TABLE"));
        assert!(has_tag("create table t as select 1", "CREATE TABLE AS"));
        assert!(has_tag("/* why */ alter table t add b int", "ALTER TABLE"));
        assert!(!has_tag("update t set a = 1", "ALTER TABLE"));
        assert!(!has_tag(
            "do $$ begin alter table t add b int; end $$",
            "ALTER TABLE"
        ));
        assert!(!has_tag("create index i on t (a)", "CREATE TABLE"));
    }

    #[test]
    fn drops_concurrently_where_a_transaction_forbids_it() {
        assert_eq!(
            without_concurrently("create index CONCURRENTLY if not exists i on t (a)"),
            "create index  if not exists i on t (a)"
        );
        assert_eq!(
            without_concurrently("DROP INDEX concurrently \"concurrently\""),
            "DROP INDEX  \"concurrently\""
        );
        assert_eq!(
            without_concurrently("create index i on t (concurrently)"),
            "create index i on t (concurrently)"
        );
        assert_eq!(
            without_concurrently("reindex (verbose) table concurrently t"),
            "reindex (verbose) table  t"
        );
    }
}
