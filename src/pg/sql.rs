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

/// `text` as a quoted SQL string literal (standard_conforming_strings).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
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
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
