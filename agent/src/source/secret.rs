//! Credentials as the config names them: a file (re-read when it changes, since Harbor robot
//! secrets and Gitea tokens rotate without a restart) or an environment variable. The value
//! never appears in a `Debug` output or an error; errors name the file or variable instead.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Where a secret lives.
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    /// From a config `Credentials` entry; relative files are relative to `base`.
    pub fn from_config(c: &shared::config::Credentials, base: &Path) -> SecretSource {
        SecretSource::from_parts(c.password_file.as_deref(), c.password_env.as_deref(), base)
    }

    /// From a `...File` / `...Env` pair of config fields (a file wins).
    pub fn from_parts(file: Option<&str>, env: Option<&str>, base: &Path) -> SecretSource {
        match (file, env) {
            (Some(f), _) => SecretSource::File(base.join(f)),
            (None, Some(e)) => SecretSource::Env(e.to_owned()),
            // Validation refuses this; an unset variable with an empty name reads as "not set".
            (None, None) => SecretSource::Env(String::new()),
        }
    }

    /// How errors name it: `password file /x` or `variable $X`.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p) => format!("password file {}", p.display()),
            SecretSource::Env(v) => format!("variable ${v}"),
        }
    }
}

/// A secret could not be read; names where it was looked for, never a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading the {what}: {reason}")]
pub struct SecretError {
    pub what: String,
    pub reason: String,
}

/// One value read, and whether it differs from the previous read (callers drop what they derived
/// from the old one, such as registry tokens).
#[derive(Clone)]
pub struct Read {
    pub value: String,
    pub changed: bool,
}

/// A secret with its last value cached; a file is re-read when its size or modification time
/// changed.
#[derive(Debug)]
pub struct Secret {
    source: SecretSource,
    cache: Mutex<Option<Cached>>,
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    value: String,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cached(***)")
    }
}

impl Secret {
    pub fn new(source: SecretSource) -> Secret {
        Secret { source, cache: Mutex::new(None) }
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The current value (trimmed of surrounding white space, as files end with a newline).
    pub fn read(&self) -> Result<Read, SecretError> {
        let err = |reason: String| SecretError { what: self.source.describe(), reason };
        let stamp = match &self.source {
            SecretSource::File(path) => file_stamp(path),
            SecretSource::Env(_) => None,
        };
        let mut cache = self.cache.lock().expect("secret cache lock");
        if let Some(c) = cache.as_ref().filter(|c| c.stamp.is_some() && c.stamp == stamp) {
            return Ok(Read { value: c.value.clone(), changed: false });
        }
        let raw = match &self.source {
            SecretSource::Env(var) => std::env::var(var).map_err(|_| err("not set".into()))?,
            SecretSource::File(path) => std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?,
        };
        let value = raw.trim().to_owned();
        if value.is_empty() {
            return Err(err("empty".into()));
        }
        let changed = cache.as_ref().is_some_and(|c| c.value != value);
        *cache = Some(Cached { stamp, value: value.clone() });
        Ok(Read { value, changed })
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_read_again_and_reported_as_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        std::fs::write(&path, "one\n").expect("write");
        let s = Secret::new(SecretSource::File(path.clone()));
        let first = s.read().expect("read");
        assert_eq!((first.value.as_str(), first.changed), ("one", false));
        assert!(!s.read().expect("read").changed);
        std::fs::write(&path, "two-longer\n").expect("write");
        let second = s.read().expect("read");
        assert_eq!((second.value.as_str(), second.changed), ("two-longer", true));
    }

    #[test]
    fn errors_name_the_file_and_never_a_value() {
        let s = Secret::new(SecretSource::File("/nonexistent/secret".into()));
        let e = s.read().err().expect("missing file").to_string();
        assert!(e.starts_with("reading the password file /nonexistent/secret: "), "{e}");
        let s = Secret::new(SecretSource::Env("GITOPS_AGENT_TEST_SURELY_UNSET".into()));
        assert_eq!(
            s.read().err().expect("unset").to_string(),
            "reading the variable $GITOPS_AGENT_TEST_SURELY_UNSET: not set"
        );
    }
}
