//! Fuzz target: another store's health report and its manifest (`shared::report::parse`,
//! `config_of`, `read_tagged`), and a repository's `waves.yaml` (`shared::waves::parse_file`):
//! all written by others and read by every store.
//!
//! Beyond "no panic": a report that parses writes back to a document that parses to the same
//! value, and is only accepted under its own store's tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::report::{Report, config_of, read_tagged, tag};

fuzz_target!(|data: &[u8]| {
    let _ = config_of(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shared::waves::parse_file(text);
    }
    let Ok(report) = Report::parse(data) else { return };
    let again = Report::parse(&report.to_json()).expect("a parsed report writes back parseable");
    assert_eq!(again, report);
    let own = tag(&report.wave, &report.store).expect("a parsed report has a valid tag");
    assert_eq!(read_tagged(data, &own, &report.bundle).as_ref(), Ok(&report));
    assert!(read_tagged(data, &format!("{own}x"), &report.bundle).is_err());
});
