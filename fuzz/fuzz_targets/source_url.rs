//! Connection URLs: any text parses or fails with an error, never a panic; a parsed URL
//! prints (with its password hidden) and what it prints parses again to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::pg::ConnInfo;

fuzz_target!(|text: &str| {
    match ConnInfo::parse(text) {
        Ok(info) => {
            let shown = info.to_string();
            let _ = info.target();
            if let Ok(again) = ConnInfo::parse(&shown) {
                assert_eq!(
                    again.target(),
                    info.target(),
                    "{text:?} printed as {shown:?}"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
