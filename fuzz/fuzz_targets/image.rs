//! Fuzz target: image references (`shared::image::ImageRef::parse`), as found in rendered
//! manifests and `gitopsAgent.images[].repository`.
//!
//! Beyond "no panic": a reference that parses prints back as one that parses to the same value,
//! and pinning it to a digest keeps that true.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::image::ImageRef;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(image) = ImageRef::parse(text) else { return };
    let printed = image.to_string();
    let again = ImageRef::parse(&printed).unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}: {e}"));
    assert_eq!(again, image, "{text:?} printed as {printed:?}");
    let pinned = image.pinned(DIGEST);
    assert_eq!(ImageRef::parse(&pinned.to_string()).as_ref(), Ok(&pinned));
});
