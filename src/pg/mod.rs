//! Connecting to PostgreSQL, shared by every part that does: URL parsing with libpq's
//! rules, TLS per sslmode, and SQL sessions (tokio-postgres) that follow both.
//!
//! The replication protocol has its own client in `source/`; it uses the same
//! [`ConnInfo`] and TLS rules, so a URL means the same thing everywhere.

mod client;
pub mod conninfo;
pub mod hosts;
pub mod retry;
mod sql;
pub mod statements;
pub(crate) mod tls;

pub use client::{connect, connect_endpoint, ConnectError, PgClient};
pub use conninfo::{ConnInfo, Endpoint, InvalidUrl, ShowPassword, SslMode};
pub use sql::{error_message, quote_ident, quote_literal, quote_table};
