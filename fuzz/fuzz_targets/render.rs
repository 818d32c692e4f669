//! Fuzz target: renderer output (`shared::render::parse_manifests`: multi-document YAML with
//! `# Source:` comments and `List`s), hooks set apart, images found and replaced.
//!
//! Beyond "no panic": every image `images` finds is replaced by `replace_images`, and none is
//! left afterwards.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shared::render;

const PINNED: &str =
    "registry.example/pinned:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifests) = render::parse_manifests(text, "fuzz.yaml") else { return };
    for m in &manifests {
        let _ = m.id();
    }
    let (mut objects, _hooks) = render::split_hooks(manifests);
    let found = render::images(&objects);
    let replace: BTreeMap<String, String> = found.iter().map(|u| (u.image.clone(), PINNED.to_owned())).collect();
    let replaced = render::replace_images(&mut objects, &replace);
    assert_eq!(replaced, found.len(), "every image found is replaced");
    assert!(render::images(&objects).iter().all(|u| u.image == PINNED), "an image left unreplaced");
});
