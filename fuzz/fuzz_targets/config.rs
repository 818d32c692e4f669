//! Fuzz target: the node config (`shared::config::load`: YAML, environment overrides, every
//! validation), as `agent validate` and `agent run` read it.
//!
//! Input: the config file, optionally followed by a line `#env` and `NAME=value` lines that the
//! environment look-up answers (so the override paths are fuzzed too).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (file, env_text) = text.split_once("\n#env\n").unwrap_or((text, ""));
    let env: BTreeMap<&str, &str> = env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let lookup = |name: &str| env.get(name).map(|v| (*v).to_owned());
    match shared::config::load(file, &lookup) {
        Ok(loaded) => {
            // A valid config validates again to nothing.
            assert!(loaded.validate().is_empty());
        }
        Err(problems) => assert!(!problems.is_empty(), "an error with no problem in it"),
    }
});
