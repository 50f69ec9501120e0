//! Small SQL text helpers shared by every part that builds statements or reports errors.

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`, for SQL.
pub fn quote_table(table: &crate::types::TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// `text` as a quoted SQL string literal that reads the same whatever the server's
/// `standard_conforming_strings`: text with a backslash becomes `E'…'` (libpq's
/// `PQescapeLiteral`, without the leading space it adds, which would show in the messages
/// that quote a value; every caller puts the literal after a space, `=`, `(` or `,`).
pub fn quote_literal(text: &str) -> String {
    let literal = postgres_protocol::escape::escape_literal(text);
    match literal.strip_prefix(' ') {
        Some(literal) => literal.to_owned(),
        None => literal,
    }
}

/// A tokio-postgres error with what the server said: its `Display` alone prints only
/// "db error" for server errors.
pub fn error_message(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.to_string().replace('\n', "; ");
    }
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident(r#"My "odd" table"#), r#""My ""odd"" table""#);
        for (text, literal) in [
            ("plain", "'plain'"),
            ("", "''"),
            ("it's", "'it''s'"),
            (r"C:\dir", r"E'C:\\dir'"),
            (r"it's \ and '", r"E'it''s \\ and '''"),
        ] {
            assert_eq!(quote_literal(text), literal, "{text}");
        }
    }
}
