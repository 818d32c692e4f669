//! `agent state-dir PATH --owner UID:GID`: makes a host folder the agent's state folder (created
//! when missing, owned by the agent's user, mode 0700). For the chart's per-node mode, whose
//! hostPath the kubelet creates as root: its init container runs this as root with CAP_CHOWN
//! only, since the image has no shell.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// A `UID:GID` pair, both numeric (the image has no user database to look names up in).
pub fn parse_owner(text: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) =
        text.split_once(':').with_context(|| format!("--owner {text:?}: expected UID:GID, e.g. 65532:65532"))?;
    let num = |s: &str, what: &str| {
        s.parse::<u32>().with_context(|| format!("--owner {text:?}: the {what} {s:?} is not a number"))
    };
    Ok((num(u, "UID")?, num(g, "GID")?))
}

pub fn run(path: &Path, owner: &str, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (uid, gid) = parse_owner(owner)?;
    if !path.is_absolute() {
        bail!("{}: the state folder must be an absolute path", path.display());
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        // A file, or a symlink (which could point the chown anywhere on the host).
        bail!("{}: exists and is not a folder", path.display());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("making {} owned by {uid}:{gid} (needs CAP_CHOWN)", path.display()))?;
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting {} to mode 0700", path.display()))?;
    }
    writeln!(out, "{}: owned by {uid}:{gid}, mode 0700", path.display())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_two_numbers_and_anything_else_says_what_is_wrong() {
        assert_eq!(parse_owner("65532:65532").unwrap(), (65532, 65532));
        let e = parse_owner("nonroot").unwrap_err().to_string();
        assert!(e.contains("expected UID:GID"), "{e}");
        let e = parse_owner("65532:nonroot").unwrap_err().to_string();
        assert!(e.contains("the GID \"nonroot\" is not a number"), "{e}");
    }

    #[test]
    fn a_folder_of_our_own_user_is_created_with_mode_0700_and_a_file_in_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap();
        let owner = format!("{}:{}", me.uid(), me.gid());
        let target = dir.path().join("a/b");
        let mut out = Vec::new();
        run(&target, &owner, &mut out).unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert!(String::from_utf8(out).unwrap().contains("mode 0700"));

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = run(&file, &owner, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let e = run(Path::new("relative"), &owner, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("absolute path"), "{e}");
    }
}
