//! Records the git commit the binary was built from, for `agent version`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=AGENT_GIT_COMMIT");
    // Rebuild when HEAD moves: the HEAD file (checkout), the branch ref (commit), packed refs.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/packed-refs");
        println!("cargo:rerun-if-changed={git_dir}/index");
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head_ref}");
        }
    }
    let commit = std::env::var("AGENT_GIT_COMMIT").ok().or_else(|| {
        let mut c = git(&["rev-parse", "--short=12", "HEAD"])?;
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            c.push_str("-dirty");
        }
        Some(c)
    });
    println!("cargo:rustc-env=AGENT_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
