//! Where things live: the workspace, the build cache (outside the repo) and the testenv run dir.

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cache of Go-built binaries, keyed by tool and version; shared by every checkout on the machine.
/// `GITOPS_TESTENV_CACHE` overrides it (CI's cold-cache run points it at an empty folder).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GITOPS_TESTENV_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gitops-agent-testenv")
}

/// Runtime state of one testenv instance (PKI, data, logs, pids, kubeconfig, env.json).
/// `GITOPS_TESTENV_DIR` overrides it, so tests can start a second, throw-away instance.
pub fn run_dir() -> PathBuf {
    match std::env::var_os("GITOPS_TESTENV_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target").join("testenv"),
    }
}

/// A `cargo` command for this workspace without the variables cargo sets for the process that
/// runs it (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `OUT_DIR`, ...). Inherited, they change the environment
/// some build scripts watch, so every nested build recompiled `ring` and everything above it.
pub fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key.starts_with("__CARGO")
            || key == "OUT_DIR";
        if set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}
