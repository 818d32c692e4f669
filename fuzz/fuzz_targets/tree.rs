//! Fuzz target: repository tree paths and symlinks (`shared::tree`): `check_path`,
//! `resolve_symlink`, `is_within`, `cache_name`.
//!
//! Input: three lines: a path (the link), a symlink target, a bundle root. Beyond "no panic": a
//! path accepted has no empty, `.`, `..` or `.git` component; a symlink resolved from an
//! accepted link stays inside its root and has no `..`; a cache name is one plain folder name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::tree;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let link = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let root = lines.next().unwrap_or_default();
    let accepted = tree::check_path(link).is_ok();
    if accepted {
        assert!(
            link.split('/').all(|c| !matches!(c, "" | "." | "..") && !c.eq_ignore_ascii_case(".git")),
            "{link:?} accepted"
        );
        assert!(!link.starts_with('/') && !link.contains('\\') && !link.contains('\0'));
    }
    if let Ok(resolved) = tree::resolve_symlink(link, target, root) {
        assert!(tree::is_within(&resolved, root), "{link:?} -> {target:?} resolved outside {root:?}");
        if accepted {
            assert!(resolved.split('/').all(|c| c != ".."), "{link:?} -> {target:?} resolved to {resolved:?}");
        }
    }
    let name = tree::cache_name(text);
    assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    assert!(name != "." && name != "..");
});
