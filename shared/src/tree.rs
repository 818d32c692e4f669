//! Untrusted repository content: which paths, symlinks and file sizes a commit's tree may hold.
//!
//! A GitOps repository is written by many hands (and CI). Before any of it reaches a renderer or
//! the disk, every path is checked to stay inside its bundle: no `..` or absolute components, no
//! symlink that leads out of the bundle, and no file larger than a limit. The git adapter walks
//! the tree; these functions decide. Pure: paths are `/`-separated strings from the tree.

/// Files larger than this are refused unless configured otherwise: a chart, a values file or a
/// manifest is kilobytes; a multi-megabyte blob in a bundle is a mistake or an attack.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;

/// How many symlinks in a row are followed before the chain counts as a loop (Linux's
/// `MAXSYMLINKS` is 40; repository content has no business needing more than a few).
pub const MAX_SYMLINK_HOPS: usize = 8;

/// Why a tree entry is refused. Each names the path as it stands in the repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: unsafe path component {component:?} (only plain names are allowed)")]
    UnsafePath { path: String, component: String },
    #[error("{path}: symlink to {target:?} points outside its bundle {root:?}")]
    SymlinkEscapes { path: String, target: String, root: String },
    #[error("{path}: symlink chain longer than {MAX_SYMLINK_HOPS} (a loop?)")]
    SymlinkLoop { path: String },
    #[error("{path}: {size} bytes is above the limit of {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
}

/// Checks that a tree path (as git stores it, relative, `/`-separated) has only plain names:
/// no empty, `.` or `..` component, no leading `/`, no backslash and no NUL. Git itself never
/// writes such entries, but a crafted tree object can hold them.
pub fn check_path(path: &str) -> Result<(), TreeError> {
    let bad = |component: &str| TreeError::UnsafePath { path: path.to_owned(), component: component.to_owned() };
    if path.is_empty() {
        return Err(bad(""));
    }
    for component in path.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(bad(component));
        }
        if component.contains('\\') || component.contains('\0') {
            return Err(bad(component));
        }
        // `.git` inside a tree would be a repository inside the export (git refuses it too).
        if component.eq_ignore_ascii_case(".git") {
            return Err(bad(component));
        }
    }
    Ok(())
}

/// Where the symlink at `link` (a path under `root`) with content `target` leads, as a path
/// relative to the repository root, provided it stays inside `root` (`.` or `""` for the whole
/// repository). The target is resolved lexically from the link's folder, as the kernel would on
/// a checkout; an absolute target always escapes.
pub fn resolve_symlink(link: &str, target: &str, root: &str) -> Result<String, TreeError> {
    let escapes =
        || TreeError::SymlinkEscapes { path: link.to_owned(), target: target.to_owned(), root: display_root(root) };
    if target.starts_with('/') || target.contains('\\') || target.contains('\0') || target.is_empty() {
        return Err(escapes());
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop(); // the link's own name
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(escapes());
                }
            }
            name => parts.push(name),
        }
    }
    let resolved = parts.join("/");
    if !is_within(&resolved, root) || resolved == root_norm(root) {
        return Err(escapes());
    }
    Ok(resolved)
}

/// Refuses a file above `limit` bytes.
pub fn check_size(path: &str, size: u64, limit: u64) -> Result<(), TreeError> {
    if size > limit {
        return Err(TreeError::TooLarge { path: path.to_owned(), size, limit });
    }
    Ok(())
}

/// Whether `path` lies inside `root` (both relative to the repository root).
pub fn is_within(path: &str, root: &str) -> bool {
    let root = root_norm(root);
    root.is_empty() || path == root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

/// The folder name of a repository's local cache: readable (host and path) and unique (a
/// stable FNV-1a hash of the whole URL, so `a/b` and `a-b` never share a cache).
pub fn cache_name(url: &str) -> String {
    let readable: String = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let readable = readable.trim_matches(|c| c == '-' || c == '.');
    let readable: String = readable.chars().take(60).collect();
    // FNV-1a 64 (offset basis and prime from the FNV reference); stable across Rust releases,
    // unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{readable}-{h:016x}")
}

fn root_norm(root: &str) -> &str {
    let r = root.trim_matches('/');
    if r == "." { "" } else { r }
}

fn display_root(root: &str) -> String {
    let r = root_norm(root);
    if r.is_empty() { ".".into() } else { r.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_and_every_unsafe_component_is_named() {
        for ok in ["a", "stack-b/helm/values.yaml", ".github/x", "a/..b/c", "a/b..", "templates/_helpers.tpl"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("../etc/passwd", ".."),
            ("a/../b", ".."),
            ("a/./b", "."),
            ("/abs", ""),
            ("a//b", ""),
            ("a/", ""),
            ("", ""),
            ("a\\..\\b", "a\\..\\b"),
            ("x/.git/config", ".git"),
            ("x/.GIT/config", ".GIT"),
        ];
        for (path, component) in cases {
            assert_eq!(
                check_path(path),
                Err(TreeError::UnsafePath { path: path.into(), component: component.into() }),
                "{path}"
            );
        }
    }

    #[test]
    fn the_error_text_names_the_path_and_the_component() {
        let e = check_path("b/../../x").unwrap_err().to_string();
        assert_eq!(e, r#"b/../../x: unsafe path component ".." (only plain names are allowed)"#);
    }

    #[test]
    fn symlinks_resolve_inside_their_bundle_and_are_refused_outside() {
        let ok = [
            ("b/values-qa.yaml", "values.yaml", "b", "b/values.yaml"),
            ("b/t/x.yaml", "../values.yaml", "b", "b/values.yaml"),
            ("b/t/x.yaml", "./y/../z.yaml", "b", "b/t/z.yaml"),
            ("b/x", "c/../d", "b", "b/d"),
            ("x", "y", ".", "y"),
            ("a/x", "../y", "", "y"),
        ];
        for (link, target, root, want) in ok {
            assert_eq!(resolve_symlink(link, target, root).as_deref(), Ok(want), "{link} -> {target}");
        }
        let escaping = [
            ("b/x", "../other/secret.yaml", "b"),
            ("b/x", "/etc/passwd", "b"),
            ("b/x", "..", "b"),
            ("b/x", ".", "b"),
            ("b/x", "../b2/y", "b"),
            ("x", "../../etc/passwd", "."),
            ("b/x", "", "b"),
        ];
        for (link, target, root) in escaping {
            let err = resolve_symlink(link, target, root).unwrap_err();
            assert!(matches!(err, TreeError::SymlinkEscapes { .. }), "{link} -> {target}: {err}");
            assert!(err.to_string().starts_with(&format!("{link}: symlink to {target:?}")), "{err}");
        }
    }

    #[test]
    fn sizes_up_to_the_limit_pass() {
        assert_eq!(check_size("a", 10, 10), Ok(()));
        assert_eq!(
            check_size("b/big.yaml", 11, 10).unwrap_err().to_string(),
            "b/big.yaml: 11 bytes is above the limit of 10 bytes"
        );
    }

    #[test]
    fn cache_names_are_readable_and_distinct() {
        let a = cache_name("https://gitea.example/org/repo.git");
        assert!(a.starts_with("gitea.example-org-repo.git-"), "{a}");
        assert_eq!(a, cache_name("https://gitea.example/org/repo.git"), "stable");
        assert_ne!(cache_name("https://h/a/b"), cache_name("https://h/a-b"));
        assert!(!cache_name("file:///../../etc").contains('/'));
    }

    #[test]
    fn within_respects_folder_boundaries() {
        assert!(is_within("b/x", "b"));
        assert!(is_within("b", "b/"));
        assert!(!is_within("b2/x", "b"));
        assert!(is_within("anything", "."));
        assert!(is_within("anything", ""));
    }
}
