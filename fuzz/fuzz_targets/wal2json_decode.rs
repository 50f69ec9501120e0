//! One wal2json record: an error or a message, never a panic; an error's text (which may
//! quote the input) is always printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::source::wal2json::decode;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = decode(data) {
        let _ = e.to_string();
    }
});
