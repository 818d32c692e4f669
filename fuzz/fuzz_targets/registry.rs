//! Fuzz target: registry response headers (`shared::registry`): `WWW-Authenticate` challenges,
//! `Link` pagination, `Retry-After`.
//!
//! Beyond "no panic": a next page is always a path on the same registry (`/v2/...`), never a
//! URL that would carry our credentials elsewhere; a wait is never above the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::registry::{self, Challenge};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(c) = Challenge::parse(text) {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        let _ = c.param("realm");
    }
    if let Some(next) = registry::next_page(Some(text)) {
        assert!(next.starts_with("/v2/"), "next page {next:?} leaves the registry");
    }
    if let Some(wait) = registry::retry_after(text) {
        assert!(wait <= registry::MAX_RETRY_AFTER);
    }
});
