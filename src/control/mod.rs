//! What commands decide and do, apart from parsing and rendering (`cli/`): each decision
//! a pure function with a table test, the work around it here too.

pub mod credentials;
