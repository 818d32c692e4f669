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
        let mut watch = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/packed-refs"), format!("{git_dir}/index")];
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{git_dir}/{head_ref}"));
        }
        // A watched file that does not exist makes cargo rerun this script on every build.
        for path in watch.into_iter().filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("AGENT_GIT_COMMIT").ok().or_else(|| {
        let mut c = git(&["rev-parse", "--short=12", "HEAD"])?;
        // --no-optional-locks: a plain `git status` rewrites .git/index, which (watched above) would
        // make every build rerun this script and relink the agent.
        if git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty())
        {
            c.push_str("-dirty");
        }
        Some(c)
    });
    println!("cargo:rustc-env=AGENT_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
