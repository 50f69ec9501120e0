//! What commands decide, apart from how they parse arguments and print: pure functions
//! over what the source and the bookkeeping say, each with a table test.

pub mod decisions;
