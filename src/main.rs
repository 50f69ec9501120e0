//! The `tributary` binary: parse, dispatch, map the outcome to an exit code. Everything
//! else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    tributary::cli::main()
}
