//! The node config as the agent reads it: the file, the environment, and every problem listed at
//! once. Shared by the commands that act on a config and by the daemon (`agent run`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Reads a config file and refuses an invalid one, listing every problem; returns it with the
/// folder that relative paths in it are relative to.
pub fn load(path: &Path) -> anyhow::Result<(shared::config::Loaded, PathBuf)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let loaded = shared::config::load(&text, &|k| std::env::var(k).ok()).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{}: invalid config:\n  {}", path.display(), list.join("\n  "))
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    Ok((loaded, base))
}
