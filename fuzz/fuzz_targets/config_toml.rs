//! The configuration file: any text is either settings or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::settings::Settings;

fuzz_target!(|text: &str| {
    match Settings::from_toml(text) {
        Ok(settings) => {
            let _ = settings.store();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
