//! `cargo xtask image`: the agent's OCI image, built without a container engine. One layer: the
//! agent as a static musl binary (profile `release-image`), `helm` and `kustomize` at the pinned
//! versions of `tools` (static Go builds), a CA bundle, `/etc/passwd` and `/etc/group` with the
//! nonroot user 65532; no shell, no package manager. Reproducible: every timestamp is the
//! commit's (`SOURCE_DATE_EPOCH`), tar entries are sorted with fixed owner and mtime, gzip writes
//! no name or time, JSON keys are sorted; the same commit gives the same digest. `--verify`
//! builds twice and checks digests, the layer's files and the config.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::env_info::{EnvInfo, Layer};
use crate::images::{self, MUSL_TARGET};
use crate::{paths, tools};

/// The user and group the agent runs as (distroless' `nonroot`).
pub const NONROOT: u32 = 65532;
/// The cargo profile of the image's binary (the workspace's `Cargo.toml`).
pub const PROFILE: &str = "release-image";
/// The image's name in the layout's index.
const NAME: &str = "gitops-agent";
/// Programs an image without a shell must not hold.
const SHELLS: &[&str] = &["bin/sh", "bin/bash", "bin/ash", "bin/dash", "bin/busybox", "usr/bin/sh"];
/// Package managers an image without one must not hold.
const PACKAGE_MANAGERS: &[&str] = &["usr/bin/apt", "usr/bin/apt-get", "usr/bin/dpkg", "sbin/apk", "usr/bin/rpm"];

/// The inputs of one image: what goes in and the commit facts its labels carry.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub agent: PathBuf,
    pub helm: PathBuf,
    pub kustomize: PathBuf,
    pub ca_bundle: PathBuf,
    /// `SOURCE_DATE_EPOCH`: the commit's time, unix seconds.
    pub epoch: u64,
    pub revision: String,
    pub version: String,
    pub source: String,
}

/// What was built: the layout folder, its tag and manifest digest, and the layer.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub tag: String,
    pub digest: String,
    pub layer: Layer,
    pub uncompressed: u64,
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git").args(args).current_dir(paths::workspace_root()).output().context("running git")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit's facts: `SOURCE_DATE_EPOCH` when set, else the commit time; the revision (with
/// `-dirty` when tracked files changed, as `agent version` says); the source URL from `--source`,
/// else the `origin` remote.
pub fn commit_facts(source: Option<&str>) -> Result<(u64, String, String)> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not unix seconds"))?,
        Err(_) => git(&["log", "-1", "--format=%ct"])?.parse().context("git log -1 --format=%ct")?,
    };
    let mut revision = git(&["rev-parse", "HEAD"])?;
    if !git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        revision.push_str("-dirty");
    }
    let source = match source {
        Some(s) => s.to_owned(),
        None => git(&["remote", "get-url", "origin"]).unwrap_or_else(|_| {
            eprintln!("image: no `origin` remote; the source label says `unknown` (pass --source URL)");
            "unknown".to_owned()
        }),
    };
    if source.contains('@') && source.contains("://") {
        bail!("--source: a URL with credentials cannot be a label");
    }
    Ok((epoch, revision, source))
}

/// Builds the agent for the image: static musl, profile `release-image`, with workspace and cargo
/// home paths remapped so the binary does not depend on where the checkout is.
pub fn build_agent() -> Result<PathBuf> {
    images::ensure_musl_target()?;
    let root = paths::workspace_root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let flags = format!("--remap-path-prefix={}=. --remap-path-prefix={}=/cargo", root.display(), cargo_home.display());
    eprintln!("image: cargo build --profile {PROFILE} --target {MUSL_TARGET} -p agent (first time: minutes)");
    let status = paths::cargo()
        .args(["build", "--quiet", "--profile", PROFILE, "--target", MUSL_TARGET, "-p", "agent"])
        .env("RUSTFLAGS", flags)
        .status()
        .context("running cargo build for the agent's image")?;
    if !status.success() {
        bail!("cargo build --profile {PROFILE} --target {MUSL_TARGET} -p agent failed ({status})");
    }
    Ok(root.join(format!("target/{MUSL_TARGET}/{PROFILE}/agent")))
}

/// Gathers every input: the agent built, helm and kustomize (cached Go builds), the host's CA
/// bundle, the commit facts.
pub fn inputs(source: Option<&str>) -> Result<Inputs> {
    let agent = build_agent()?;
    let (helm, kustomize) = tools::ensure_renderers()?;
    let ca_bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    if !ca_bundle.exists() {
        bail!("{} not found: install the Debian package ca-certificates", ca_bundle.display());
    }
    let (epoch, revision, source) = commit_facts(source)?;
    Ok(Inputs { agent, helm, kustomize, ca_bundle, epoch, revision, version: env!("CARGO_PKG_VERSION").into(), source })
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";

/// Lays the image's file system out in `root` with explicit modes (the umask plays no part).
pub fn rootfs(inputs: &Inputs, root: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    let put = |from: Option<&Path>, text: &str, to: &str, mode: u32| -> Result<()> {
        let dest = root.join(to);
        let parent = dest.parent().expect("image paths have a parent");
        fs::create_dir_all(parent)?;
        match from {
            Some(src) => fs::copy(src, &dest).map(|_| ()).with_context(|| format!("copying {}", src.display()))?,
            None => fs::write(&dest, text)?,
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(Some(&inputs.agent), "", "agent", 0o755)?;
    put(Some(&inputs.helm), "", "usr/local/bin/helm", 0o755)?;
    put(Some(&inputs.kustomize), "", "usr/local/bin/kustomize", 0o755)?;
    put(Some(&inputs.ca_bundle), "", "etc/ssl/certs/ca-certificates.crt", 0o644)?;
    put(None, PASSWD, "etc/passwd", 0o644)?;
    put(None, GROUP, "etc/group", 0o644)?;
    // Writable only where the pod mounts something (read-only root file system).
    fs::create_dir_all(root.join("tmp"))?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    for dir in ["etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin"] {
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The config section: entrypoint the agent, user 65532, environment, the OCI labels.
pub fn config(inputs: &Inputs, created: &str) -> serde_json::Value {
    let labels: BTreeMap<&str, &str> = [
        ("org.opencontainers.image.title", "gitops-agent"),
        ("org.opencontainers.image.description", "Pull-based GitOps reconciliation for store and edge nodes"),
        ("org.opencontainers.image.source", inputs.source.as_str()),
        ("org.opencontainers.image.revision", inputs.revision.as_str()),
        ("org.opencontainers.image.version", inputs.version.as_str()),
        ("org.opencontainers.image.created", created),
        ("org.opencontainers.image.licenses", "Apache-2.0"),
    ]
    .into();
    serde_json::json!({
        "Entrypoint": ["/agent"],
        "Cmd": ["run", "--config", "/etc/gitops-agent/config.yaml"],
        "User": format!("{NONROOT}:{NONROOT}"),
        "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "WorkingDir": "/",
        "Labels": labels,
    })
}

/// The commit time as RFC 3339 (`created` and its label).
pub fn created(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch)).to_string()
}

/// Builds the image from `inputs` into `out/layout` (replaced), from scratch: no cached layer.
pub fn build(inputs: &Inputs, out: &Path) -> Result<Built> {
    fs::create_dir_all(out)?;
    let root = out.join("rootfs");
    rootfs(inputs, &root)?;
    let layer_base = out.join("layer");
    for ext in ["json", "tar", "tar.gz"] {
        let _ = fs::remove_file(layer_base.with_extension(ext));
    }
    let layer = images::layer_at(&root, &layer_base, inputs.epoch)?;
    let uncompressed = gunzipped_size(&layer.blob)?;
    let dir = out.join("layout");
    let _ = fs::remove_dir_all(&dir);
    let tag = inputs.version.clone();
    let when = created(inputs.epoch);
    let digest = images::layout(&dir, &layer, config(inputs, &when), Some(&when), &tag, &format!("{NAME}:{tag}"))?;
    Ok(Built { dir, tag, digest, layer, uncompressed })
}

/// Another image from `built`'s layer, tagged `tag`, with its config changed by `edit` (tests:
/// a release that differs only by its version label, or one whose entrypoint cannot start).
pub fn variant(
    inputs: &Inputs,
    built: &Built,
    out: &Path,
    tag: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Result<Built> {
    let dir = out.join("layout");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(out)?;
    let when = created(inputs.epoch);
    let mut config = config(inputs, &when);
    edit(&mut config);
    let digest = images::layout(&dir, &built.layer, config, Some(&when), tag, &format!("{NAME}:{tag}"))?;
    Ok(Built { dir, tag: tag.to_owned(), digest, layer: built.layer.clone(), uncompressed: built.uncompressed })
}

fn gunzipped_size(blob: &Path) -> Result<u64> {
    let out = Command::new("gzip").arg("-dc").arg(blob).output().context("running gzip -dc")?;
    if !out.status.success() {
        bail!("gzip -dc {} failed", blob.display());
    }
    Ok(out.stdout.len() as u64)
}

/// The layer's entries as `tar -tzv` lists them (mode, owner, size, date, path).
pub fn layer_listing(blob: &Path) -> Result<String> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tzvf"])
        .env("TZ", "UTC")
        .arg(blob)
        .output()
        .context("running tar -tzvf")?;
    if !out.status.success() {
        bail!("tar -tzvf {} failed: {}", blob.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What is wrong with an image, from its layer listing (`tar -tzv --numeric-owner`) and its
/// config document: a shell or package manager, a missing agent, helm, kustomize, CA bundle or
/// nonroot user, a user other than 65532, a missing label, an entry not owned by 0:0 or with
/// another mtime than the commit's. Empty when all is well.
pub fn problems(listing: &str, passwd: &str, config: &serde_json::Value, epoch: u64) -> Vec<String> {
    let mut p = Vec::new();
    let mut paths = Vec::new();
    let when = created(epoch);
    // `2026-12-01 10:53:33` as tar --full-time prints it (UTC when TZ is unset).
    let stamp = when.trim_end_matches('Z').replacen('T', " ", 1);
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            p.push(format!("unreadable listing line: {line}"));
            continue;
        }
        let path = f[5..].join(" ");
        let path = path.trim_start_matches("./").trim_end_matches('/').to_owned();
        if f[1] != "0/0" {
            p.push(format!("{path}: owner {} (want 0/0)", f[1]));
        }
        if format!("{} {}", f[3], f[4]) != stamp {
            p.push(format!("{path}: mtime {} {} (want the commit's, {stamp})", f[3], f[4]));
        }
        paths.push(path);
    }
    for bad in SHELLS.iter().chain(PACKAGE_MANAGERS) {
        if paths.iter().any(|x| x == bad) {
            p.push(format!("{bad} is in the image"));
        }
    }
    for want in ["agent", "usr/local/bin/helm", "usr/local/bin/kustomize", "etc/ssl/certs/ca-certificates.crt"] {
        if !paths.iter().any(|x| x == want) {
            p.push(format!("{want} is missing"));
        }
    }
    if !passwd.lines().any(|l| l.split(':').nth(2) == Some("65532") && l.split(':').nth(3) == Some("65532")) {
        p.push("/etc/passwd has no user 65532:65532".into());
    }
    let c = &config["config"];
    if c["User"] != "65532:65532" {
        p.push(format!("User is {} (want 65532:65532)", c["User"]));
    }
    if c["Entrypoint"] != serde_json::json!(["/agent"]) {
        p.push(format!("Entrypoint is {} (want [\"/agent\"])", c["Entrypoint"]));
    }
    if config["created"] != when.as_str() {
        p.push(format!("created is {} (want {when})", config["created"]));
    }
    for label in ["title", "source", "revision", "version", "created", "licenses"] {
        let key = format!("org.opencontainers.image.{label}");
        match c["Labels"][&key].as_str() {
            Some(v) if !v.is_empty() => {}
            _ => p.push(format!("label {key} is missing")),
        }
    }
    p
}

/// Reads a blob of the layout by digest.
fn blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The config document of the image whose manifest is `digest` in the layout `dir`.
pub fn read_config(dir: &Path, digest: &str) -> Result<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_slice(&blob(dir, digest)?)?;
    let config = manifest["config"]["digest"].as_str().context("the manifest names no config")?;
    Ok(serde_json::from_slice(&blob(dir, config)?)?)
}

/// `cargo xtask image [--push REF] [--verify] [--source URL]`.
pub fn image(push: Option<&str>, verify: bool, source: Option<&str>) -> Result<()> {
    let inputs = inputs(source)?;
    let base = paths::workspace_root().join("target/image");
    let built = build(&inputs, &base.join("a"))?;
    let agent_size = fs::metadata(&inputs.agent)?.len();
    println!("image: OCI layout {} (tag {})", built.dir.display(), built.tag);
    println!("image: manifest {}", built.digest);
    println!(
        "image: layer {} compressed, {} uncompressed; agent binary {}",
        human(built.layer.size),
        human(built.uncompressed),
        human(agent_size)
    );
    if verify {
        // A second build from scratch in another folder, minutes later: the same digest.
        let again = build(&inputs, &base.join("b"))?;
        println!("image: second build {}", again.digest);
        if again.digest != built.digest {
            bail!("not reproducible: {} then {}", built.digest, again.digest);
        }
        let listing = layer_listing(&built.layer.blob)?;
        print!("{listing}");
        let passwd = fs::read_to_string(base.join("a/rootfs/etc/passwd"))?;
        let config = read_config(&built.dir, &built.digest)?;
        println!("image: config {}", serde_json::to_string(&config["config"])?);
        let found = problems(&listing, &passwd, &config, inputs.epoch);
        if !found.is_empty() {
            bail!("the image is wrong:\n  {}", found.join("\n  "));
        }
        println!("image: verified: same digest twice, no shell, no package manager, user 65532:65532, labels");
    }
    if let Some(dest) = push {
        let info = EnvInfo::load(&paths::run_dir())?;
        let pushed = images::push_layout(&info, &built.dir, &built.tag, dest)?;
        println!("image: pushed {}/{dest} as {} ({pushed})", info.registry, info.registry_ci.username);
        if pushed != built.digest {
            bail!("the registry holds {pushed}, the layout {}", built.digest);
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-image-{name}-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Inputs made of small stand-in files, so the packing is tested without a release build.
    fn fake_inputs(dir: &Path) -> Inputs {
        for (name, text) in [("agent", "agent"), ("helm", "helm"), ("kustomize", "kustomize"), ("ca", "ca")] {
            fs::write(dir.join(name), text).expect("stand-in file");
        }
        Inputs {
            agent: dir.join("agent"),
            helm: dir.join("helm"),
            kustomize: dir.join("kustomize"),
            ca_bundle: dir.join("ca"),
            epoch: 1_700_000_000,
            revision: "0123456789abcdef".into(),
            version: "0.1.0".into(),
            source: "https://git.example/gitops-agent".into(),
        }
    }

    #[test]
    fn the_same_inputs_packed_twice_at_different_times_give_the_same_digest() {
        let dir = scratch("twice");
        let inputs = fake_inputs(&dir);
        let first = build(&inputs, &dir.join("one")).expect("first build");
        // Newer mtimes and another folder must change nothing.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(dir.join("agent"), "agent").expect("touch");
        let second = build(&inputs, &dir.join("two")).expect("second build");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.layer.digest, second.layer.digest);
        let other = Inputs { epoch: inputs.epoch + 1, ..inputs.clone() };
        assert_ne!(build(&other, &dir.join("three")).expect("third build").digest, first.digest);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_packed_image_has_no_shell_runs_as_nonroot_and_carries_the_labels() {
        let dir = scratch("check");
        let inputs = fake_inputs(&dir);
        let built = build(&inputs, &dir.join("one")).expect("build");
        let listing = layer_listing(&built.layer.blob).expect("listing");
        let config = read_config(&built.dir, &built.digest).expect("config");
        let passwd = fs::read_to_string(dir.join("one/rootfs/etc/passwd")).expect("passwd");
        assert_eq!(problems(&listing, &passwd, &config, inputs.epoch), Vec::<String>::new());
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert!(listing.contains("-rwxr-xr-x 0/0"), "the agent is executable: {listing}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_checks_catch_a_shell_a_root_user_a_missing_label_and_a_stray_mtime() {
        let dir = scratch("bad");
        let inputs = fake_inputs(&dir);
        let built = build(&inputs, &dir.join("one")).expect("build");
        let listing = layer_listing(&built.layer.blob).expect("listing");
        let mut config = read_config(&built.dir, &built.digest).expect("config");
        config["config"]["User"] = "0:0".into();
        config["config"]["Labels"].as_object_mut().expect("labels").remove("org.opencontainers.image.revision");
        let stamp = created(inputs.epoch).trim_end_matches('Z').replacen('T', " ", 1);
        let with_shell =
            format!("{listing}-rwxr-xr-x 0/0 10 {stamp} ./bin/sh\n-rw-r--r-- 1000/1000 1 1999-01-01 00:00:00 ./x\n");
        let found = problems(&with_shell, "root:x:0:0::/:/bin/sh\n", &config, inputs.epoch);
        for want in [
            "bin/sh is in the image",
            "User is \"0:0\" (want 65532:65532)",
            "label org.opencontainers.image.revision is missing",
            "/etc/passwd has no user 65532:65532",
            "x: owner 1000/1000 (want 0/0)",
        ] {
            assert!(found.iter().any(|f| f == want), "{want:?} not in {found:#?}");
        }
        assert!(found.iter().any(|f| f.starts_with("x: mtime 1999-01-01")), "{found:#?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
