//! One CopyData payload of the replication stream (XLogData, keepalive, anything else):
//! an error or a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::source::replication::parse_copy_data;

fuzz_target!(|data: &[u8]| {
    let _ = parse_copy_data(bytes::Bytes::copy_from_slice(data));
});
