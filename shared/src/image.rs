//! Image references (`host:port/path/name:tag@sha256:...`), parsed and validated by the grammar of
//! distribution's `reference` package, with errors that name the value and what is wrong with it.

use std::fmt;

/// Registry used when a reference names none (Docker's rule).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The longest name (`registry/repository`, as normalized) distribution's `reference` accepts
/// (`NameTotalLengthMax`).
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]`; `docker.io` when the reference names none.
    pub registry: String,
    /// Path inside the registry; `library/` is prefixed for one-component Docker Hub names.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

/// What is wrong with a reference; `value` is the reference as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {value:?}: {problem}")]
pub struct ImageRefError {
    pub value: String,
    pub problem: String,
}

impl ImageRef {
    pub fn parse(value: &str) -> Result<ImageRef, ImageRefError> {
        let err = |problem: String| ImageRefError { value: value.to_owned(), problem };
        if value.is_empty() {
            return Err(err("is empty".into()));
        }
        if value.trim() != value || value.contains(char::is_whitespace) {
            return Err(err("contains white space".into()));
        }
        let (rest, digest) = match value.split_once('@') {
            Some((r, d)) => (r, Some(parse_digest(d).map_err(err)?)),
            None => (value, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a port's ':' comes before).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if tag.is_empty() {
                    return Err(err("has an empty tag after ':'".into()));
                }
                if !is_tag(tag) {
                    return Err(err(format!(
                        "tag {tag:?} is invalid (letters, digits, '_', '.', '-'; not starting with '.' or '-'; at most 128)"
                    )));
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(err("has no repository name".into()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_owned(), path),
            _ => (DEFAULT_REGISTRY.to_owned(), name),
        };
        if !is_host(&registry) {
            return Err(err(format!("registry {registry:?} is not a valid host[:port]")));
        }
        if path.is_empty() {
            return Err(err("has no repository path after the registry".into()));
        }
        for component in path.split('/') {
            if component.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(err(format!("repository must be lower case (component {component:?})")));
            }
            if !is_path_component(component) {
                return Err(err(format!(
                    "repository component {component:?} is invalid (lower case letters and digits, separated by '.', '_', '__' or '-')"
                )));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        // Distribution's limit is on the whole name as normalized (`docker.io/library/x`), so a
        // reference that parses prints as one that parses again (found by the `image` fuzz target).
        if registry.len() + 1 + repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(err(format!("name {registry}/{repository} is longer than {NAME_TOTAL_LENGTH_MAX} characters")));
        }
        Ok(ImageRef { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned: `registry/repository:tag@digest` (tag kept for readability).
    pub fn pinned(&self, digest: &str) -> ImageRef {
        ImageRef { digest: Some(digest.to_owned()), ..self.clone() }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn parse_digest(d: &str) -> Result<String, String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} is not algorithm:hex"));
    };
    let want = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("digest {d:?} uses an unsupported algorithm {algo:?} (sha256, sha512)")),
    };
    if hex.len() != want || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {d:?}: expected {want} lower-case hex characters after {algo}:"));
    }
    Ok(d.to_owned())
}

fn is_tag(t: &str) -> bool {
    let mut b = t.bytes();
    t.len() <= 128
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

fn is_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    port.is_none_or(|p| p.parse::<u16>().is_ok())
        && !host.is_empty()
        && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// input, registry, repository, tag, digest
    type Row = (&'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>);

    const D: &str = "sha256:9d9d0e9b4860357dc46e7b4f299d4bcddd3c21d5779772c8e359e47f1a18ae8b";

    #[test]
    fn references_parse_into_registry_repository_tag_and_digest() {
        let table: &[Row] = &[
            ("nginx", "docker.io", "library/nginx", None, None),
            ("nginx:1.27", "docker.io", "library/nginx", Some("1.27"), None),
            (
                "harbor.example/library/u5-orchestrator:1.2.0",
                "harbor.example",
                "library/u5-orchestrator",
                Some("1.2.0"),
                None,
            ),
            ("127.0.0.1:38406/library/app:1.0.0", "127.0.0.1:38406", "library/app", Some("1.0.0"), None),
            ("localhost/a/b", "localhost", "a/b", None, None),
            ("127.0.0.1:38406/library/app", "127.0.0.1:38406", "library/app", None, None),
        ];
        for (input, registry, repository, tag, digest) in table {
            let r = ImageRef::parse(input).expect(input);
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref(), r.digest.as_deref()),
                (*registry, *repository, *tag, *digest),
                "{input}"
            );
        }
        let pinned = ImageRef::parse(&format!("h.example:5000/a/b:1.0@{D}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(D));
        assert_eq!(pinned.to_string(), format!("h.example:5000/a/b:1.0@{D}"));
    }

    #[test]
    fn pinning_keeps_the_tag_for_readability() {
        let r = ImageRef::parse("harbor.example/library/app:1.1.0").unwrap().pinned(D);
        assert_eq!(r.to_string(), format!("harbor.example/library/app:1.1.0@{D}"));
        assert_eq!(r.name(), "harbor.example/library/app");
    }

    #[test]
    fn malformed_references_are_errors_that_name_the_value() {
        let table: &[(&str, &str)] = &[
            ("", r#"image reference "": is empty"#),
            (
                "harbor.example/Library/app:1",
                r#"image reference "harbor.example/Library/app:1": repository must be lower case (component "Library")"#,
            ),
            ("harbor.example/app:", r#"image reference "harbor.example/app:": has an empty tag after ':'"#),
            (
                "app@sha256:abc",
                r#"image reference "app@sha256:abc": digest "sha256:abc": expected 64 lower-case hex characters after sha256:"#,
            ),
            (
                "app@md5:abc",
                r#"image reference "app@md5:abc": digest "md5:abc" uses an unsupported algorithm "md5" (sha256, sha512)"#,
            ),
            ("app:-bad", r#"image reference "app:-bad": tag "-bad" is invalid"#),
            ("harbor.example/a..b", r#"image reference "harbor.example/a..b": repository component "a..b" is invalid"#),
            (
                "harbor.example:99999/a",
                r#"image reference "harbor.example:99999/a": registry "harbor.example:99999" is not a valid host[:port]"#,
            ),
            ("harbor.example/", r#"image reference "harbor.example/": has no repository path after the registry"#),
            (" app", r#"image reference " app": contains white space"#),
        ];
        for (input, want) in table {
            let e = ImageRef::parse(input).expect_err(input).to_string();
            assert!(e.starts_with(want), "{input:?}: got {e:?}");
        }
    }

    #[test]
    fn a_reference_that_parses_prints_as_one_that_parses_to_the_same_even_at_the_length_limit() {
        // Found by the `image` fuzz target: 250 characters were a valid path, but printed as
        // `docker.io/library/...` they were not, so a reference did not survive its own output.
        let short = "a".repeat(250);
        let err = ImageRef::parse(&short).expect_err("docker.io/library/ + 250 is past the limit");
        assert!(err.problem.contains("longer than 255"), "{err}");
        let longest = "a".repeat(NAME_TOTAL_LENGTH_MAX - "docker.io/library/".len());
        let r = ImageRef::parse(&longest).expect("exactly at the limit");
        assert_eq!(r.name().len(), NAME_TOTAL_LENGTH_MAX);
        assert_eq!(ImageRef::parse(&r.to_string()), Ok(r));
        let host = format!("h.example/{}", "b".repeat(NAME_TOTAL_LENGTH_MAX - "h.example/".len() + 1));
        assert!(ImageRef::parse(&host).is_err(), "the registry counts too");
    }
}
