//! The `tributary` binary: parse, dispatch, map the outcome to an exit code. Everything
//! else lives in the library.

use std::process::ExitCode;

/// Streaming allocates and frees a few small strings per column value; mimalloc does that
/// for a fraction of glibc malloc's cost (see the README's performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tributary::cli::main()
}
