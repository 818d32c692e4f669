//! `cargo xtask image`: the agent's OCI image, built without a container engine. One layer: the
//! agent as a static musl binary (profile `release-image`), `helm` and `kustomize` at the pinned
//! versions of `tools` (static Go builds), a CA bundle, `/etc/passwd` and `/etc/group` with the
//! nonroot user 65532; no shell, no package manager. Reproducible: every timestamp is the
//! commit's (`SOURCE_DATE_EPOCH`), tar entries are sorted with fixed owner and mtime, gzip writes
//! no name or time, JSON keys are sorted; the same commit gives the same digest. `--verify`
//! builds twice and checks digests, the layer's files and the config. `--platform linux/arm64`
//! cross-builds the same image for arm64 (Debian's `aarch64-linux-gnu-gcc` as C compiler and
//! linker, Rust's self-contained musl CRT; helm and kustomize with `GOARCH=arm64`); `--platform
//! all` builds both and an OCI image index over them.

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

/// The OCI image index's media type (one manifest per platform).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// An image manifest's media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The Debian packages that cross-compile and link for arm64, with what proves each there: the
/// compiler, and the C headers `ring` includes (only a Recommends of the compiler).
const ARM64_GCC: &[(&str, &str)] = &[
    ("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
    ("libc6-dev-arm64-cross", "/usr/aarch64-linux-gnu/include/stdint.h"),
];

/// The Debian package that compiles `ring`'s C for the amd64 musl target (`musl-gcc`): the host's
/// `gcc` is not what cc-rs looks for there (`x86_64-linux-musl-gcc`), so a fresh machine fails.
const MUSL_GCC: &[(&str, &str)] = &[("musl-tools", "musl-gcc")];

/// A platform the image is built for (always `linux`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The Rust target of the agent (static musl).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => MUSL_TARGET,
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The OCI (and Go) architecture name.
    pub fn oci(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The OCI variant (`v8` for arm64, as the registries' multi-platform images say).
    pub fn variant(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => None,
            Arch::Arm64 => Some("v8"),
        }
    }

    /// The ELF header's `e_machine` for this architecture (EM_X86_64, EM_AARCH64).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// `linux/amd64`, as `--platform` spells it.
    pub fn platform(self) -> String {
        format!("linux/{}", self.oci())
    }
}

/// The platforms `--platform` names: none or `linux/amd64` is amd64 alone (the image as it
/// always was), `linux/arm64` arm64 alone, `all` both (and an image index).
pub fn platforms(arg: Option<&str>) -> Result<Vec<Arch>> {
    match arg {
        None | Some("linux/amd64") => Ok(vec![Arch::Amd64]),
        Some("linux/arm64") => Ok(vec![Arch::Arm64]),
        Some("all") => Ok(vec![Arch::Amd64, Arch::Arm64]),
        Some(other) => bail!("--platform {other:?}: want linux/amd64, linux/arm64 or all"),
    }
}

/// What is wrong with `bytes` (the start of a file, at least its program headers) as a static
/// 64-bit little-endian ELF executable for `arch`: not ELF, another class or byte order, another
/// machine, or a program interpreter (`PT_INTERP`: dynamically linked). Empty when all is well.
/// A static-pie binary (Rust's musl default) has `PT_DYNAMIC` for its own relocations but no
/// interpreter, so the interpreter is what tells.
pub fn elf_problems(bytes: &[u8], arch: Arch) -> Vec<String> {
    let mut p = Vec::new();
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        p.push("not an ELF file".to_owned());
        return p;
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        p.push(format!("not 64-bit little-endian ELF (class {}, data {})", bytes[4], bytes[5]));
        return p;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let machine = u16_at(18);
    if machine != arch.elf_machine() {
        p.push(format!("e_machine is {machine} (want {} for {})", arch.elf_machine(), arch.platform()));
    }
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("eight bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(head) = bytes.get(at..at + 4) else {
            p.push(format!("program header {i} lies past the bytes read"));
            break;
        };
        if u32::from_le_bytes(head.try_into().expect("four bytes")) == 3 {
            p.push("dynamically linked (it has a program interpreter, PT_INTERP)".to_owned());
        }
    }
    p
}

/// [`elf_problems`] of the file at `path`, reading only its header and program headers.
pub fn check_elf(path: &Path, arch: Arch) -> Result<()> {
    use std::io::Read;
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    let found = elf_problems(&head, arch);
    if !found.is_empty() {
        bail!("{} is not a static {} executable: {}", path.display(), arch.platform(), found.join("; "));
    }
    Ok(())
}

/// The inputs of one image: what goes in and the commit facts its labels carry.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The platform the binaries are built for.
    pub arch: Arch,
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
    build_agent_for(Arch::Amd64)
}

/// [`build_agent`] for `arch`. amd64 compiles `ring`'s C with Debian's `musl-gcc` (installed on
/// first use). arm64 is cross-built: the Rust target added and Debian's
/// `aarch64-linux-gnu-gcc` installed on first use, and set as the C compiler (`ring`) and linker
/// for this cargo invocation only; the musl target brings its own libc and start files.
pub fn build_agent_for(arch: Arch) -> Result<PathBuf> {
    let target = arch.rust_target();
    let mut cross: Vec<(String, &str)> = Vec::new();
    match arch {
        Arch::Amd64 => {
            images::ensure_musl_target()?;
            tools::ensure_packages(MUSL_GCC)?;
            cross.push((format!("CC_{}", target.replace('-', "_")), MUSL_GCC[0].1));
        }
        Arch::Arm64 => {
            ensure_rust_target(target)?;
            tools::ensure_packages(ARM64_GCC)?;
            let env_target = target.replace('-', "_");
            cross.push((format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()), ARM64_GCC[0].1));
            cross.push((format!("CC_{env_target}"), ARM64_GCC[0].1));
        }
    }
    let root = paths::workspace_root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let mut flags =
        format!("--remap-path-prefix={}=. --remap-path-prefix={}=/cargo", root.display(), cargo_home.display());
    if arch == Arch::Amd64 {
        // RELR: the static-pie's relative relocations packed (musl's start-up applies them),
        // 0.6 MiB of `.rela.dyn` down to a few KiB, address randomisation kept (docs/image.md).
        flags.push_str(" -C link-arg=-Wl,-z,pack-relative-relocs");
    }
    eprintln!("image: cargo build --profile {PROFILE} --target {target} -p agent (first time: minutes)");
    let status = paths::cargo()
        .args(["build", "--quiet", "--profile", PROFILE, "--target", target, "-p", "agent"])
        .env("RUSTFLAGS", flags)
        .envs(cross.iter().map(|(k, v)| (k.as_str(), *v)))
        .status()
        .context("running cargo build for the agent's image")?;
    if !status.success() {
        bail!("cargo build --profile {PROFILE} --target {target} -p agent failed ({status})");
    }
    let agent = root.join(format!("target/{target}/{PROFILE}/agent"));
    check_elf(&agent, arch)?;
    Ok(agent)
}

/// `rustup target add TARGET` unless it is there.
fn ensure_rust_target(target: &str) -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == target) => Ok(()),
        Ok(_) => {
            eprintln!("image: rustup target add {target}");
            let status = Command::new("rustup").args(["target", "add", target]).status()?;
            if !status.success() {
                bail!("rustup target add {target} failed ({status})");
            }
            Ok(())
        }
        Err(e) => bail!("rustup not found ({e}); the image needs the Rust target {target}"),
    }
}

/// Gathers every input: the agent built, helm and kustomize (cached Go builds), the host's CA
/// bundle, the commit facts.
pub fn inputs(source: Option<&str>) -> Result<Inputs> {
    inputs_for(source, Arch::Amd64)
}

/// [`inputs`] for `arch`; every binary is checked to be a static ELF executable for it.
pub fn inputs_for(source: Option<&str>, arch: Arch) -> Result<Inputs> {
    let agent = build_agent_for(arch)?;
    let (helm, kustomize) = match arch {
        Arch::Amd64 => tools::ensure_renderers()?,
        Arch::Arm64 => tools::ensure_renderers_for(arch.oci())?,
    };
    check_elf(&helm, arch)?;
    check_elf(&kustomize, arch)?;
    let ca_bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    if !ca_bundle.exists() {
        bail!("{} not found: install the Debian package ca-certificates", ca_bundle.display());
    }
    let (epoch, revision, source) = commit_facts(source)?;
    let version = env!("CARGO_PKG_VERSION").into();
    Ok(Inputs { arch, agent, helm, kustomize, ca_bundle, epoch, revision, version, source })
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
    let name = format!("{NAME}:{tag}");
    let arch = (inputs.arch.oci(), inputs.arch.variant());
    let digest = images::layout_for(&dir, &layer, config(inputs, &when), Some(&when), &tag, &name, arch)?;
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
    let arch = (inputs.arch.oci(), inputs.arch.variant());
    let digest = images::layout_for(&dir, &built.layer, config, Some(&when), tag, &format!("{NAME}:{tag}"), arch)?;
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

/// The image index over one image per platform: each manifest's digest, size and `platform`.
pub fn index_document(images: &[(Arch, &str, u64)]) -> serde_json::Value {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(arch, digest, size)| {
            let mut platform = serde_json::json!({"architecture": arch.oci(), "os": "linux"});
            if let Some(variant) = arch.variant() {
                platform["variant"] = variant.into();
            }
            serde_json::json!({"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": size, "platform": platform})
        })
        .collect();
    serde_json::json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
}

/// Writes an OCI layout in `dir` (replaced) whose tag names an image index over `images` (one per
/// platform, all with the same tag): every blob of theirs, the index, `index.json` pointing at it.
/// Returns the index's digest.
pub fn index_layout(images: &[(Arch, &Built)], dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let _ = fs::remove_dir_all(dir);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let mut entries = Vec::new();
    for (arch, built) in images {
        for entry in fs::read_dir(built.dir.join("blobs/sha256"))? {
            let from = entry?.path();
            let to = blobs.join(from.file_name().expect("blobs have names"));
            if !to.exists() {
                fs::hard_link(&from, &to).or_else(|_| fs::copy(&from, &to).map(|_| ()))?;
            }
        }
        let size = blob(&built.dir, &built.digest)?.len() as u64;
        entries.push((*arch, built.digest.as_str(), size));
    }
    let tag = images.first().context("an index needs one image at least")?.1.tag.clone();
    let bytes = serde_json::to_vec(&index_document(&entries))?;
    let hex = format!("{:x}", Sha256::digest(&bytes));
    fs::write(blobs.join(&hex), &bytes)?;
    let digest = format!("sha256:{hex}");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": format!("{NAME}:{tag}")},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&top)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(digest)
}

/// `cargo xtask image [--platform P] [--push REF] [--verify] [--source URL]`: one image per
/// platform (amd64 under `target/image/a`, as always; arm64 under `target/image/arm64/a`), and
/// with `all` an index layout under `target/image/index`, which `--push` pushes.
pub fn image(platform: Option<&str>, push: Option<&str>, verify: bool, source: Option<&str>) -> Result<()> {
    let arches = platforms(platform)?;
    let base = paths::workspace_root().join("target/image");
    let mut images = Vec::new();
    for arch in &arches {
        let dir = match arch {
            Arch::Amd64 => base.clone(),
            Arch::Arm64 => base.join("arm64"),
        };
        let built = image_one(*arch, &dir, verify, source)?;
        images.push((*arch, built));
    }
    let (layout_dir, tag, digest, index) = if images.len() == 1 {
        let built = &images[0].1;
        (built.dir.clone(), built.tag.clone(), built.digest.clone(), false)
    } else {
        let refs: Vec<(Arch, &Built)> = images.iter().map(|(a, b)| (*a, b)).collect();
        let dir = base.join("index/layout");
        let digest = index_layout(&refs, &dir)?;
        println!("image: OCI layout {} (tag {}), image index {digest}", dir.display(), refs[0].1.tag);
        if verify {
            let again = index_layout(&refs, &base.join("index/b"))?;
            if again != digest {
                bail!("the index is not reproducible: {digest} then {again}");
            }
        }
        (dir, refs[0].1.tag.clone(), digest, true)
    };
    if let Some(dest) = push {
        let info = EnvInfo::load(&paths::run_dir())?;
        let pushed = if index {
            images::push_index_layout(&info, &layout_dir, &tag, dest)?
        } else {
            images::push_layout(&info, &layout_dir, &tag, dest)?
        };
        println!("image: pushed {}/{dest} as {} ({pushed})", info.registry, info.registry_ci.username);
        if pushed != digest {
            bail!("the registry holds {pushed}, the layout {digest}");
        }
    }
    Ok(())
}

/// One platform's image under `base/a` (and, with `verify`, again under `base/b`, checked).
fn image_one(arch: Arch, base: &Path, verify: bool, source: Option<&str>) -> Result<Built> {
    let started = std::time::Instant::now();
    let inputs = inputs_for(source, arch)?;
    println!("image: {} inputs ready in {:.0?}", arch.platform(), started.elapsed());
    let built = build(&inputs, &base.join("a"))?;
    let agent_size = fs::metadata(&inputs.agent)?.len();
    println!("image: {} OCI layout {} (tag {})", arch.platform(), built.dir.display(), built.tag);
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
        let mut found = problems(&listing, &passwd, &config, inputs.epoch);
        if config["architecture"] != arch.oci() {
            found.push(format!("architecture is {} (want {})", config["architecture"], arch.oci()));
        }
        if !found.is_empty() {
            bail!("the image is wrong:\n  {}", found.join("\n  "));
        }
        println!("image: verified: same digest twice, no shell, no package manager, user 65532:65532, labels");
    }
    Ok(built)
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
            arch: Arch::Amd64,
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

    /// A 64-bit little-endian ELF header for `machine` with one program header of `ptype`.
    fn elf_header(machine: u16, ptype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b
    }

    #[test]
    fn the_elf_check_wants_the_platforms_machine_and_no_interpreter() {
        // PT_LOAD = 1, PT_INTERP = 3.
        assert_eq!(elf_problems(&elf_header(183, 1), Arch::Arm64), Vec::<String>::new());
        assert_eq!(elf_problems(&elf_header(62, 1), Arch::Amd64), Vec::<String>::new());
        assert_eq!(elf_problems(&elf_header(62, 1), Arch::Arm64), ["e_machine is 62 (want 183 for linux/arm64)"]);
        assert_eq!(
            elf_problems(&elf_header(183, 3), Arch::Arm64),
            ["dynamically linked (it has a program interpreter, PT_INTERP)"]
        );
        assert_eq!(elf_problems(b"#!/bin/sh\necho not a binary\n", Arch::Amd64), ["not an ELF file"]);
        let mut big_endian = elf_header(183, 1);
        big_endian[5] = 2;
        assert_eq!(elf_problems(&big_endian, Arch::Arm64), ["not 64-bit little-endian ELF (class 2, data 2)"]);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_elf_check_reads_a_real_binary_and_finds_this_dynamic_amd64_test_program_not_static() {
        let me = std::env::current_exe().expect("the test binary's path");
        let err = check_elf(&me, Arch::Arm64).expect_err("an amd64 glibc binary is not a static arm64 one");
        let text = format!("{err:#}");
        assert!(text.contains("e_machine is 62 (want 183 for linux/arm64)"), "{text}");
        assert!(text.contains("dynamically linked"), "{text}");
        let err = check_elf(&me, Arch::Amd64).expect_err("a glibc test binary is dynamic");
        assert!(!format!("{err:#}").contains("e_machine"), "{err:#}");
    }

    #[test]
    fn the_platform_flag_means_amd64_alone_by_default_and_both_with_all() {
        assert_eq!(platforms(None).expect("default"), [Arch::Amd64]);
        assert_eq!(platforms(Some("linux/amd64")).expect("amd64"), [Arch::Amd64]);
        assert_eq!(platforms(Some("linux/arm64")).expect("arm64"), [Arch::Arm64]);
        assert_eq!(platforms(Some("all")).expect("all"), [Arch::Amd64, Arch::Arm64]);
        let err = platforms(Some("linux/riscv64")).expect_err("not built");
        assert!(err.to_string().contains("--platform \"linux/riscv64\""), "{err}");
    }

    #[test]
    fn the_index_names_both_platforms_manifests_with_their_digests_and_media_types() {
        let dir = scratch("index");
        let amd = fake_inputs(&dir);
        let arm = Inputs { arch: Arch::Arm64, ..amd.clone() };
        let amd_built = build(&amd, &dir.join("amd64")).expect("amd64 build");
        let arm_built = build(&arm, &dir.join("arm64")).expect("arm64 build");
        // The same files for another platform are another image: its config names arm64.
        assert_ne!(amd_built.digest, arm_built.digest);
        let arm_config = read_config(&arm_built.dir, &arm_built.digest).expect("arm64 config");
        assert_eq!((&arm_config["architecture"], &arm_config["variant"]), (&"arm64".into(), &"v8".into()));
        let amd_config = read_config(&amd_built.dir, &amd_built.digest).expect("amd64 config");
        assert_eq!(amd_config["architecture"], "amd64");
        assert!(amd_config.get("variant").is_none(), "amd64 has no variant: {amd_config}");

        let images = [(Arch::Amd64, &amd_built), (Arch::Arm64, &arm_built)];
        let out = dir.join("index");
        let digest = index_layout(&images, &out).expect("index layout");
        let top: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("index.json")).expect("index.json")).expect("json");
        assert_eq!(top["manifests"][0]["mediaType"], INDEX_MEDIA_TYPE);
        assert_eq!(top["manifests"][0]["digest"], digest.as_str());
        assert_eq!(top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "0.1.0");
        let index: serde_json::Value = serde_json::from_slice(&blob(&out, &digest).expect("index blob")).expect("json");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2);
        for (m, (arch, built)) in manifests.iter().zip(images) {
            assert_eq!(m["mediaType"], MANIFEST_MEDIA_TYPE);
            assert_eq!(m["digest"], built.digest.as_str());
            let bytes = blob(&out, &built.digest).expect("the manifest is in the index layout");
            assert_eq!(m["size"], bytes.len());
            assert_eq!(m["platform"]["os"], "linux");
            assert_eq!(m["platform"]["architecture"], arch.oci());
            // Every blob the manifest names is in the layout too.
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).expect("manifest json");
            blob(&out, manifest["config"]["digest"].as_str().expect("config digest")).expect("config blob");
            blob(&out, manifest["layers"][0]["digest"].as_str().expect("layer digest")).expect("layer blob");
        }
        assert_eq!(manifests[1]["platform"]["variant"], "v8");
        assert!(manifests[0]["platform"].get("variant").is_none());
        // Reproducible: the same images give the same index from another folder.
        assert_eq!(index_layout(&images, &dir.join("again")).expect("again"), digest);
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
