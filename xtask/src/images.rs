//! Container images we build ourselves for the real node, as one-layer OCI images: the pause
//! image (a few lines of static C, `fixtures/images/pause.c`) and the kiosk fixture app (a static
//! musl binary), the latter also as a variant that exits 1 at start. Nothing comes from outside
//! the machine; the kiosk images go to the testenv registry, private, and pods pull them with an
//! `imagePullSecret`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use sha2::{Digest, Sha256};

use crate::env_info::{EnvInfo, Layer};
use crate::paths;

/// The sandbox image containerd runs every pod's network namespace in (imported, never pulled).
pub const PAUSE_IMAGE: &str = "testenv.local/pause:1";
/// The target of the kiosk app's static binary.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The port the kiosk image listens on (all addresses of the pod).
pub const KIOSK_PORT: u16 = 8080;

/// Which kiosk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kiosk {
    /// The app: WebSocket sessions, `/health`, `/ready`, `/metrics`, `/drain`, SIGTERM drain.
    App,
    /// The same binary told to exit 1 at start, so its pods really crash-loop.
    CrashAtStart,
}

impl Kiosk {
    fn entrypoint(self, port: u16) -> Vec<String> {
        let mut e = vec!["/kiosk-app".to_owned(), "--listen".to_owned(), format!("0.0.0.0:{port}")];
        if self == Kiosk::CrashAtStart {
            e.push("--crash-at-start".to_owned());
        }
        e
    }
}

/// The config section of the fixture images: entrypoint, user and the version label.
fn simple_config(entrypoint: &[String], user: &str, tag: &str) -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": entrypoint,
        "User": user,
        "Labels": {"org.opencontainers.image.version": tag},
    })
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("sha256:{:x}", Sha256::digest(&bytes)))
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A reproducible layer of the folder `root` (sorted, mtime 0, owner root), written to `out`
/// (`<out>.tar.gz`) unless it is there already.
pub fn layer(root: &Path, out: &Path) -> Result<Layer> {
    layer_at(root, out, 0)
}

/// [`layer`] with every entry's mtime `mtime` (unix seconds; the agent's image uses its commit's
/// time). The file modes are taken from `root` as they are, so callers set them.
pub fn layer_at(root: &Path, out: &Path, mtime: u64) -> Result<Layer> {
    let meta = out.with_extension("json");
    if let Ok(text) = fs::read_to_string(&meta)
        && let Ok(layer) = serde_json::from_str::<Layer>(&text)
        && layer.blob.exists()
    {
        return Ok(layer);
    }
    let tar = out.with_extension("tar");
    run(
        Command::new("tar")
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--format=gnu"])
            .arg(format!("--mtime=@{mtime}"))
            .arg("-C")
            .arg(root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "packing an image layer",
    )?;
    let diff_id = sha256_file(&tar)?;
    let blob = out.with_extension("tar.gz");
    run(Command::new("gzip").args(["-n", "-f"]).arg(&tar), "compressing an image layer")?;
    let layer = Layer { digest: sha256_file(&blob)?, diff_id, size: fs::metadata(&blob)?.len(), blob };
    fs::write(&meta, serde_json::to_string_pretty(&layer)?)?;
    Ok(layer)
}

/// Writes an OCI image layout in `dir` holding one image: `layer` with the image config's
/// `config` section (Entrypoint, User, Labels, ...) and `created` when given, tagged `tag` and
/// named `name` in the index (containerd's import name). Returns the manifest digest. Every
/// JSON document is written with sorted keys, so the same inputs give the same digest.
pub(crate) fn layout(
    dir: &Path,
    layer: &Layer,
    config: serde_json::Value,
    created: Option<&str>,
    tag: &str,
    name: &str,
) -> Result<String> {
    layout_for(dir, layer, config, created, tag, name, ("amd64", None))
}

/// [`layout`] for another platform: `arch` is the config's `architecture` and `variant` (OCI
/// names: `arm64`, `v8`).
pub(crate) fn layout_for(
    dir: &Path,
    layer: &Layer,
    config: serde_json::Value,
    created: Option<&str>,
    tag: &str,
    name: &str,
    arch: (&str, Option<&str>),
) -> Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let layer_path = blobs.join(layer.digest.trim_start_matches("sha256:"));
    if !layer_path.exists() {
        // A hard link when the cache is on the same file system, else a copy.
        fs::hard_link(&layer.blob, &layer_path).or_else(|_| fs::copy(&layer.blob, &layer_path).map(|_| ()))?;
    }
    let mut config = serde_json::json!({
        "architecture": arch.0,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    if let Some(variant) = arch.1 {
        config["variant"] = variant.into();
    }
    if let Some(created) = created {
        config["created"] = created.into();
    }
    let (config_digest, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.digest, "size": layer.size}],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": name},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(manifest_digest)
}

/// Builds the pause image from `fixtures/images/pause.c` (gcc -static) into `work` and returns
/// an OCI archive that `ctr images import` names [`PAUSE_IMAGE`].
pub fn pause_archive(work: &Path) -> Result<PathBuf> {
    let archive = work.join("pause.oci.tar");
    if archive.exists() {
        return Ok(archive);
    }
    let root = work.join("pause-root");
    fs::create_dir_all(&root)?;
    let source = paths::workspace_root().join("fixtures/images/pause.c");
    run(
        Command::new("gcc").args(["-static", "-Os", "-s", "-o"]).arg(root.join("pause")).arg(&source),
        "building the pause image (gcc -static; install the Debian package gcc)",
    )?;
    let layer = layer(&root, &work.join("pause-layer"))?;
    let dir = work.join("pause-layout");
    let _ = fs::remove_dir_all(&dir);
    layout(&dir, &layer, simple_config(&["/pause".to_owned()], "65535:65535", "1"), None, "1", PAUSE_IMAGE)?;
    let tmp = archive.with_extension("partial");
    run(Command::new("tar").arg("-C").arg(&dir).arg("-cf").arg(&tmp).arg("."), "packing the pause image")?;
    fs::rename(&tmp, &archive)?;
    Ok(archive)
}

/// Builds the kiosk app as a static musl binary (cargo, cached in the workspace's target dir)
/// and its layer in `work` (with `/bin/check-config` from `fixtures/images/check-config.c`, the
/// init container of Stack B's signalling pods), reused while the binary is unchanged.
pub fn kiosk_layer(work: &Path) -> Result<Layer> {
    let root = kiosk_root(work)?;
    let short = root.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("kiosk-root-")).unwrap_or("x");
    layer(&root, &work.join(format!("kiosk-layer-{short}")))
}

/// The kiosk image's files (the app, `/bin/check-config`) under `work`, built once per input.
fn kiosk_root(work: &Path) -> Result<PathBuf> {
    ensure_musl_target()?;
    let status = paths::cargo()
        .args(["build", "--quiet", "--package", "kiosk-app", "--target", MUSL_TARGET])
        .status()
        .context("running cargo build for the kiosk image")?;
    if !status.success() {
        bail!("cargo build --package kiosk-app --target {MUSL_TARGET} failed ({status})");
    }
    let bin = paths::workspace_root().join(format!("target/{MUSL_TARGET}/debug/kiosk-app"));
    let check_config = paths::workspace_root().join("fixtures/images/check-config.c");
    // Keyed by what goes in: the binary and the init helper's source.
    let mut key = Sha256::new();
    key.update(fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?);
    key.update(fs::read(&check_config).with_context(|| format!("reading {}", check_config.display()))?);
    let hash = format!("{:x}", key.finalize());
    let short = &hash[..16];
    let root = work.join(format!("kiosk-root-{short}"));
    if !root.join("kiosk-app").exists() {
        fs::create_dir_all(root.join("bin"))?;
        run(
            Command::new("gcc")
                .args(["-static", "-Os", "-s", "-o"])
                .arg(root.join("bin/check-config"))
                .arg(&check_config),
            "building check-config (gcc -static)",
        )?;
        fs::copy(&bin, root.join("kiosk-app"))?;
    }
    Ok(root)
}

pub(crate) fn ensure_musl_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == MUSL_TARGET) => Ok(()),
        Ok(_) => {
            eprintln!("testenv: rustup target add {MUSL_TARGET} (the kiosk image is a static binary)");
            run(Command::new("rustup").args(["target", "add", MUSL_TARGET]), "rustup target add")
        }
        Err(e) => bail!("rustup not found ({e}); the kiosk image needs the Rust target {MUSL_TARGET}"),
    }
}

/// Pushes a kiosk image (listening on [`KIOSK_PORT`]) to `repo:tag` in the testenv registry as
/// the CI robot; returns its manifest digest. Each tag gets its own digest (the tag is a label
/// of the config).
pub fn push_kiosk(info: &EnvInfo, repo: &str, tag: &str, kind: Kiosk) -> Result<String> {
    push_kiosk_on_port(info, repo, tag, kind, KIOSK_PORT)
}

/// [`push_kiosk`] with the app listening on `port` (Stack B's signalling serves on 8443).
pub fn push_kiosk_on_port(info: &EnvInfo, repo: &str, tag: &str, kind: Kiosk, port: u16) -> Result<String> {
    let node = info.real_node.as_ref().context("the testenv runs no real node (see docs/testenv.md)")?;
    let work = tempfile_dir(&info.run_dir)?;
    let dir = work.join("layout");
    let config = simple_config(&kind.entrypoint(port), "65534:65534", tag);
    let res = layout(&dir, &node.kiosk_layer, config, None, tag, &format!("{repo}:{tag}"))
        .and_then(|_| push_layout(info, &dir, tag, &format!("{repo}:{tag}")));
    let _ = fs::remove_dir_all(&work);
    res
}

/// [`push_kiosk`] of a large image: the app's layer with `mib` MiB of random bytes beside it
/// (incompressible, so the registry stores and the node pulls that much), as a GPU app's image
/// is large. Each tag gets its own bytes; returns the manifest digest.
pub fn push_large_kiosk(info: &EnvInfo, repo: &str, tag: &str, mib: usize) -> Result<String> {
    use std::io::Write;
    info.real_node.as_ref().context("the testenv runs no real node (see docs/testenv.md)")?;
    let images = info.run_dir.join("images");
    let small = kiosk_root(&images)?;
    let work = tempfile_dir(&info.run_dir)?;
    let res = (|| {
        let root = work.join("root");
        fs::create_dir_all(root.join("bin"))?;
        for file in ["kiosk-app", "bin/check-config"] {
            fs::copy(small.join(file), root.join(file))?;
        }
        let mut ballast = fs::File::create(root.join("ballast"))?;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut chunk);
            ballast.write_all(&chunk)?;
        }
        drop(ballast);
        let layer = layer(&root, &work.join("layer"))?;
        let dir = work.join("layout");
        let config = simple_config(&Kiosk::App.entrypoint(KIOSK_PORT), "65534:65534", tag);
        layout(&dir, &layer, config, None, tag, &format!("{repo}:{tag}"))?;
        push_layout(info, &dir, tag, &format!("{repo}:{tag}"))
    })();
    let _ = fs::remove_dir_all(&work);
    res
}

/// Pushes the image tagged `tag` of the OCI layout `dir` to `dest` (`repository:tag`) in the
/// testenv registry as the CI robot (skopeo); returns the manifest digest.
pub fn push_layout(info: &EnvInfo, dir: &Path, tag: &str, dest: &str) -> Result<String> {
    push_layout_with(info, dir, tag, dest, &[])
}

/// [`push_layout`] of a layout whose tag names an image index: every platform's manifest, then
/// the index (`skopeo copy --all`); returns the index's digest.
pub fn push_index_layout(info: &EnvInfo, dir: &Path, tag: &str, dest: &str) -> Result<String> {
    push_layout_with(info, dir, tag, dest, &["--all"])
}

fn push_layout_with(info: &EnvInfo, dir: &Path, tag: &str, dest: &str, extra: &[&str]) -> Result<String> {
    let work = tempfile_dir(&info.run_dir)?;
    let auth = work.join("auth.json");
    let res = (|| {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", info.registry_ci.username, info.registry_ci.password));
        write_private(&auth, &serde_json::json!({"auths": {info.registry.clone(): {"auth": basic}}}).to_string())?;
        let digest_file = work.join("digest");
        run(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet"])
                .args(extra)
                .arg("--dest-cert-dir")
                .arg(&info.registry_cert_dir)
                .arg("--dest-authfile")
                .arg(&auth)
                .arg("--digestfile")
                .arg(&digest_file)
                .arg(format!("oci:{}:{tag}", dir.display()))
                .arg(format!("docker://{}/{dest}", info.registry)),
            &format!("pushing the image {dest}"),
        )?;
        Ok(fs::read_to_string(&digest_file)?.trim().to_owned())
    })();
    let _ = fs::remove_dir_all(&work);
    res
}

fn tempfile_dir(run_dir: &Path) -> Result<PathBuf> {
    let dir = run_dir.join("images/tmp").join(format!("{:016x}", rand::random::<u64>()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crash_variant_runs_the_same_binary_told_to_exit_at_start() {
        assert_eq!(Kiosk::App.entrypoint(8080), ["/kiosk-app", "--listen", "0.0.0.0:8080"]);
        assert_eq!(
            Kiosk::CrashAtStart.entrypoint(8443),
            ["/kiosk-app", "--listen", "0.0.0.0:8443", "--crash-at-start"]
        );
    }
}
