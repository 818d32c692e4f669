//! `cargo xtask testenv seed`: the Stack B fixture repo in the git server and its images in the
//! registry, built by the scripts in `fixtures/` with real git and skopeo.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths;
use crate::testenv::{Creds, EnvInfo};

/// Images the Stack B chart uses, with the tags CI would have pushed.
pub const STACK_B_IMAGES: &[(&str, &[&str])] = &[
    ("library/u5-orchestrator", &["1.0.0", "1.1.0", "1.2.0-broken"]),
    ("library/u5-signalling", &["1.0.0", "1.1.0", "1.2.0-broken"]),
    ("library/session-store", &["1.0.0", "1.1.0"]),
];

/// The git repository name `seed` creates (`<git_base>/stack-b.git`).
pub const STACK_B_REPO: &str = "stack-b";

/// Pushes the Stack B images and (re)creates the Stack B repository. Idempotent.
pub fn seed(info: &EnvInfo) -> Result<()> {
    for (repo, tags) in STACK_B_IMAGES {
        for tag in *tags {
            let digest = push_stack_b_image(info, repo, tag)?;
            eprintln!("seed: pushed {}/{repo}:{tag} {digest}", info.registry);
        }
    }
    let bare = info.git_repos_dir.join(format!("{STACK_B_REPO}.git"));
    if bare.exists() {
        std::fs::remove_dir_all(&bare)?;
    }
    init_bare(&bare)?;
    let work = tempdir("stack-b")?;
    let src = work.join("repo");
    run(Command::new("bash")
        .arg(paths::workspace_root().join("fixtures/stack-b/make-repo.sh"))
        .arg(&src)
        .arg(&info.registry))?;
    git_push(info, &info.git_ci, &src, STACK_B_REPO, "main")?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("seed: {}/{STACK_B_REPO}.git (branch main)", info.git_base);
    Ok(())
}

/// The port Stack B's signalling server listens on (the chart's `ws` port).
pub const SIGNALLING_PORT: u16 = 8443;

/// Pushes a Stack B image with the CI robot; returns its digest. With a real node, the signalling
/// images are the kiosk fixture app (serving on [`SIGNALLING_PORT`]; a tag containing `broken`
/// exits 1 at start), so the signalling pods really run there; otherwise, and for the other
/// images, a fixture image for KWOK.
pub fn push_stack_b_image(info: &EnvInfo, repo: &str, tag: &str) -> Result<String> {
    if repo == "library/u5-signalling" && info.real_node.is_some() {
        use crate::images::{Kiosk, push_kiosk_on_port};
        let kind = if tag.contains("broken") { Kiosk::CrashAtStart } else { Kiosk::App };
        return push_kiosk_on_port(info, repo, tag, kind, SIGNALLING_PORT);
    }
    push_image(info, repo, tag)
}

/// Pushes a fixture image with the CI robot; returns its manifest digest.
pub fn push_image(info: &EnvInfo, repo: &str, tag: &str) -> Result<String> {
    push_image_salted(info, repo, tag, "")
}

/// Like [`push_image`], with `salt` mixed into the content: the same tag gets a new digest, as
/// when CI re-pushes a mutable tag.
pub fn push_image_salted(info: &EnvInfo, repo: &str, tag: &str, salt: &str) -> Result<String> {
    let out = Command::new("bash")
        .arg(paths::workspace_root().join("fixtures/images/push-image.sh"))
        .args([info.registry.as_str(), repo, tag])
        .arg(&info.registry_cert_dir)
        .env("PUSH_USER", &info.registry_ci.username)
        .env("PUSH_PASSWORD", &info.registry_ci.password)
        .env("IMAGE_SALT", salt)
        .output()
        .context("running fixtures/images/push-image.sh")?;
    if !out.status.success() {
        bail!("pushing {repo}:{tag} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !digest.starts_with("sha256:") {
        bail!("push-image.sh printed {digest:?}, not a digest");
    }
    Ok(digest)
}

/// Creates an empty bare repository on the git server's disk (as an admin would in Gitea).
pub fn init_bare(path: &Path) -> Result<()> {
    run(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(path))?;
    // Let pushes update refs the server does not know yet, like a hosted git server does.
    run(Command::new("git").arg("-C").arg(path).args(["config", "http.receivepack", "true"])).map(drop)
}

/// `git push` over HTTPS with Basic credentials passed through the environment (never argv).
pub fn git_push(info: &EnvInfo, who: &Creds, worktree: &Path, repo: &str, branch: &str) -> Result<()> {
    let url = format!("{}/{repo}.git", info.git_base);
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(worktree).args(["push", "-q", "--force", &url, &format!("HEAD:refs/heads/{branch}")]);
    git_auth_env(&mut cmd, info, who);
    run(&mut cmd).map(drop)
}

/// Environment that makes `git` trust the testenv CA and send `who`'s Basic credentials.
pub fn git_auth_env(cmd: &mut Command, info: &EnvInfo, who: &Creds) {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", who.username, who.password));
    // GIT_SSL_CAINFO, not http.sslCAInfo: the variable wins over config, and some machines set it.
    cmd.env("GIT_SSL_CAINFO", &info.ca_cert)
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env("GIT_CONFIG_VALUE_0", format!("Authorization: Basic {basic}"))
        .env("GIT_TERMINAL_PROMPT", "0");
}

fn tempdir(hint: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gitops-agent-{hint}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs a command; its stdout, or an error naming the program, its arguments and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    // Name the program and arguments only: the environment may hold credentials.
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
