//! Schema change capture input: the statement lexer over any query text, and a capture
//! message body. Statements come out as slices of the query, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::pg::statements;
use tributary::source::capture::DdlMessage;

fuzz_target!(|text: &str| {
    for statement in statements::split(text) {
        assert!(text.contains(statement));
        let _ = statements::has_tag(statement, "ALTER TABLE");
        let _ = statements::without_concurrently(statement);
    }
    let _ = DdlMessage::parse(text);
});
