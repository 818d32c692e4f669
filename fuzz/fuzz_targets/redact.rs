//! Fuzz target: credential stripping (`shared::redact::url`), which every URL passes before a
//! log, a status, an error or an Event.
//!
//! Beyond "no panic": a redacted URL has no password, its user is masked, and a query parameter
//! named like a credential keeps no value of its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let redacted = shared::redact::url(text);
    let Ok(original) = Url::parse(text) else {
        assert_eq!(redacted, text, "text that is no URL is left as it is");
        return;
    };
    let out = Url::parse(&redacted).unwrap_or_else(|e| panic!("{text:?} redacted to {redacted:?}, no URL: {e}"));
    assert_eq!(out.password(), None, "{text:?} redacted to {redacted:?}");
    if !original.username().is_empty() || original.password().is_some() {
        assert_eq!(out.username(), "***", "{text:?} redacted to {redacted:?}");
    }
    for (k, v) in out.query_pairs() {
        let secret =
            ["token", "password", "secret", "sig", "signature"].iter().any(|s| k.to_ascii_lowercase().contains(s));
        assert!(!secret || v == "***", "{text:?} redacted to {redacted:?}");
    }
});
