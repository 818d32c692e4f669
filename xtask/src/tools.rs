//! The external programs the testenv runs: Go-built ones (cached by version) and Debian packages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::paths;

/// Kubernetes 1.33 matches the `k8s-openapi` `v1_33` floor the agent is built against.
pub const KUBE_VERSION: &str = "v1.33.13";
/// kubeadm pairs Kubernetes 1.31–1.33 with etcd 3.5.x; 3.5.21 is the client kube 1.33.13 links.
pub const ETCD_VERSION: &str = "v3.5.21";
/// KWOK 0.8 needs Go 1.26 (0.7 needs 1.24).
pub const KWOK_VERSION: &str = "v0.8.0";
pub const HELM_VERSION: &str = "v3.19.0";
pub const KUSTOMIZE_VERSION: &str = "v5.7.1";
/// cosign 2.x writes the "classic" `sha256-<hex>.sig` signatures the agent verifies by default
/// (3.x writes Sigstore bundles unless `--new-bundle-format=false`); 2.6.5 builds with Go 1.26.
pub const COSIGN_VERSION: &str = "v2.6.5";

/// Debian packages the testenv and the fixtures use, with what proves each present: a program on
/// PATH, or an absolute file path. Installed without Recommends, so every needed package is listed
/// (lighttpd's TLS module is only a Recommends of lighttpd).
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("lighttpd", "lighttpd"),
    ("lighttpd-mod-openssl", "/usr/lib/lighttpd/mod_openssl.so"),
    ("skopeo", "skopeo"),
    ("openssl", "openssl"),
    ("git", "git"),
    ("curl", "curl"),
    // The signature e2e tests sign commits as git does: `ssh-keygen -Y sign` and gpg.
    ("openssh-client", "ssh-keygen"),
    ("gnupg", "gpg"),
    // `systemd-analyze verify` and `security` check the host-mode unit (xtask's unit_file tests).
    ("systemd", "systemd-analyze"),
];

/// Paths of every Go-built binary.
#[derive(Debug, Clone)]
pub struct GoTools {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    /// The real node's kubelet, from the same wrapper module.
    pub kubelet: PathBuf,
    pub etcd: PathBuf,
    pub kwok: PathBuf,
    pub helm: PathBuf,
    pub kustomize: PathBuf,
}

impl GoTools {
    /// Where the binaries are (or will be) in the cache.
    pub fn locate() -> GoTools {
        let c = paths::cache_dir();
        let kube = c.join(format!("kube-{KUBE_VERSION}/bin"));
        GoTools {
            kube_apiserver: kube.join("kube-apiserver"),
            kube_controller_manager: kube.join("kube-controller-manager"),
            kube_scheduler: kube.join("kube-scheduler"),
            kubelet: kube.join("kubelet"),
            etcd: c.join(format!("etcd-{ETCD_VERSION}/bin/etcd")),
            kwok: c.join(format!("kwok-{KWOK_VERSION}/bin/kwok")),
            helm: c.join(format!("helm-{HELM_VERSION}/bin/helm")),
            kustomize: c.join(format!("kustomize-{KUSTOMIZE_VERSION}/bin/kustomize")),
        }
    }

    /// Builds whatever is missing from the cache; a warm cache costs nothing.
    pub fn ensure() -> Result<GoTools> {
        let t = GoTools::locate();
        let c = paths::cache_dir();
        let scripts = paths::workspace_root().join("xtask/go");
        // Only the missing commands: a binary a running testenv executes is never rewritten.
        let missing: Vec<&str> = [&t.kube_apiserver, &t.kube_controller_manager, &t.kube_scheduler, &t.kubelet]
            .iter()
            .filter(|p| !p.exists())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
            .collect();
        if !missing.is_empty() {
            let dir = c.join(format!("kube-{KUBE_VERSION}"));
            eprintln!(
                "testenv: building Kubernetes {KUBE_VERSION} ({}) with Go (first time: ~10 min on 2 cores)",
                missing.join(", ")
            );
            let mut args = vec![KUBE_VERSION];
            args.extend(&missing);
            run_script(&scripts.join("build-kube.sh"), &args, &dir)?;
        }
        if !t.etcd.exists() {
            let dir = c.join(format!("etcd-{ETCD_VERSION}"));
            eprintln!("testenv: building etcd {ETCD_VERSION} with Go");
            run_script(&scripts.join("build-etcd.sh"), &[ETCD_VERSION], &dir)?;
        }
        go_install(&t.kwok, &format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"))?;
        go_install(&t.helm, &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"))?;
        go_install(&t.kustomize, &format!("sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"))?;
        Ok(t)
    }
}

/// Builds only `helm` and `kustomize` if missing (static: `CGO_ENABLED=0`, `-trimpath`), for the
/// agent's image; returns their paths.
pub fn ensure_renderers() -> Result<(PathBuf, PathBuf)> {
    let t = GoTools::locate();
    go_install(&t.helm, &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"))?;
    go_install(&t.kustomize, &format!("sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"))?;
    Ok((t.helm, t.kustomize))
}

/// Builds `cosign` if missing (the e2e tests sign images with it, offline: a key pair of the
/// test's, no transparency log); returns its path.
pub fn ensure_cosign() -> Result<PathBuf> {
    let path = paths::cache_dir().join(format!("cosign-{COSIGN_VERSION}/bin/cosign"));
    go_install(&path, &format!("github.com/sigstore/cosign/v2/cmd/cosign@{COSIGN_VERSION}"))?;
    Ok(path)
}

/// The Flux controllers the full bench runs beside the agent, with their versions and the extra
/// `replace` edits each needs to build here: v1.10 of source- and kustomize-controller needs Go
/// 1.27; helm-controller 1.6.4 is the release that pairs with them (source-controller api 1.9)
/// and the newest the module proxy serves here (1.6.5 and 1.7.x are refused).
pub const FLUX_CONTROLLERS: &[(&str, &str, &[&str])] = &[
    // The proxy refuses github.com/fluxcd/pkg/artifact v0.18.2 and v0.18.3.
    ("source-controller", "v1.9.6", &["github.com/fluxcd/pkg/artifact=github.com/fluxcd/pkg/artifact@v0.18.1"]),
    ("kustomize-controller", "v1.9.6", &[]),
    ("helm-controller", "v1.6.4", &[]),
];

/// Builds the Flux controllers that are missing from the cache (xtask/go/build-flux.sh), each
/// into `flux-<name>-<version>/bin/` with its CRDs in `bin/crds/`. Returns the folder the bench
/// reads (one link per controller: `<dir>/<name>/{<name>,crds/}`) and, per controller that did
/// not build, why (the build's last lines); the bench runs the others.
pub fn ensure_flux() -> Result<(PathBuf, Vec<(String, String)>)> {
    let c = paths::cache_dir();
    let links = c.join("flux-bench");
    fs::create_dir_all(&links)?;
    let script = paths::workspace_root().join("xtask/go/build-flux.sh");
    let mut failed = Vec::new();
    for (name, version, replaces) in FLUX_CONTROLLERS {
        let dir = c.join(format!("flux-{name}-{version}"));
        let bin = dir.join("bin");
        if !bin.join(name).exists() || !bin.join("crds").exists() {
            eprintln!("bench: building Flux {name} {version} with Go (first time: several minutes on 2 cores)");
            let out = Command::new("bash")
                .arg(&script)
                .args([*version])
                .arg(&bin)
                .arg(dir.join("src"))
                .arg(name)
                .args(replaces.iter())
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::piped())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().filter(|l| !l.starts_with("go: downloading")).collect();
            let tail = tail[tail.len().saturating_sub(12)..].join("\n");
            if !out.status.success() {
                eprintln!("bench: Flux {name} {version} did not build:\n{tail}");
                failed.push((format!("{name} {version}"), tail));
                continue;
            }
        }
        let link = links.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&bin, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok((links, failed))
}

/// Cross-builds `helm` and `kustomize` for `linux/GOARCH` (static, like [`ensure_renderers`]) into
/// their own cache folders, keyed by version and architecture; returns their paths.
pub fn ensure_renderers_for(goarch: &str) -> Result<(PathBuf, PathBuf)> {
    let c = paths::cache_dir();
    let helm = c.join(format!("helm-{HELM_VERSION}-linux-{goarch}/bin/helm"));
    let kustomize = c.join(format!("kustomize-{KUSTOMIZE_VERSION}-linux-{goarch}/bin/kustomize"));
    go_cross_install(&helm, &format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"), goarch)?;
    go_cross_install(&kustomize, &format!("sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"), goarch)?;
    Ok((helm, kustomize))
}

/// `go install` for another architecture. Go refuses `GOBIN` when cross-compiling and puts the
/// binary in `$GOPATH/bin/linux_GOARCH/`, so the build gets a GOPATH of its own beside `target`
/// (the module cache stays the shared one) and the binary is moved to `target`.
fn go_cross_install(target: &Path, module: &str, goarch: &str) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    let name = target.file_name().expect("cache paths name a file");
    let dir = target.parent().and_then(Path::parent).expect("cache paths are <tool>/bin/<name>");
    let gopath = dir.join("gopath");
    let out = Command::new("go").args(["env", "GOMODCACHE"]).output().context("running `go env GOMODCACHE`")?;
    let modcache = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || modcache.is_empty() {
        bail!("`go env GOMODCACHE` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    eprintln!("image: GOOS=linux GOARCH={goarch} go install {module}");
    let status = Command::new("go")
        .args(["install", "-trimpath", "-ldflags", "-s -w", module])
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", goarch)
        .env("GOPATH", &gopath)
        .env("GOMODCACHE", &modcache)
        .env_remove("GOBIN")
        .status()
        .context("running `go` (is Go installed and on PATH?)")?;
    if !status.success() {
        bail!("GOARCH={goarch} go install {module} failed ({status})");
    }
    // `bin/linux_GOARCH/` on another host architecture, `bin/` on one of the same.
    let built = [gopath.join(format!("bin/linux_{goarch}")).join(name), gopath.join("bin").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!("go install {module} left no {} under {}", name.to_string_lossy(), gopath.display())
        })?;
    fs::create_dir_all(target.parent().expect("cache paths have a parent"))?;
    fs::rename(&built, target).with_context(|| format!("moving {} to {}", built.display(), target.display()))?;
    let _ = fs::remove_dir_all(&gopath);
    Ok(())
}

/// Runs `script VERSION BIN_DIR SRC_DIR [MORE...]` (`args` = VERSION, MORE...).
fn run_script(script: &Path, args: &[&str], dir: &Path) -> Result<()> {
    let status = Command::new("bash")
        .arg(script)
        .arg(args[0])
        .arg(dir.join("bin"))
        .arg(dir.join("src"))
        .args(&args[1..])
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} {} failed ({status}); see its output above", script.display(), args.join(" "));
    }
    Ok(())
}

fn go_install(target: &Path, module: &str) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    let bin_dir = target.parent().expect("cache paths have a parent");
    eprintln!("testenv: go install {module}");
    let status = Command::new("go")
        .args(["install", "-trimpath", "-ldflags", "-s -w", module])
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOBIN", bin_dir)
        .status()
        .context("running `go` (is Go installed and on PATH?)")?;
    if !status.success() {
        bail!("go install {module} failed ({status})");
    }
    Ok(())
}

/// Installs missing Debian packages (as root directly, otherwise through sudo when available).
pub fn ensure_apt_packages() -> Result<()> {
    ensure_packages(APT_PACKAGES)
}

/// Installs those of `packages` (name, program or absolute path proving it present) that are
/// missing.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let present = |prog: &str| if prog.starts_with('/') { Path::new(prog).exists() } else { which(prog).is_some() };
    let missing: Vec<&str> = packages.iter().filter(|(_, prog)| !present(prog)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("testenv: installing Debian packages: {}", missing.join(" "));
    let root = nix::unistd::Uid::effective().is_root();
    let sudo: &[&str] = if root { &[] } else { &["sudo", "-n"] };
    let run = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new(if root { args[0] } else { sudo[0] });
        if !root {
            cmd.args(&sudo[1..]).arg(args[0]);
        }
        let status = cmd.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if !status.success() {
            bail!("`{}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"]).context("apt-get update (needs root or passwordless sudo)")?;
    let mut install = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    run(&install).with_context(|| format!("installing {}", missing.join(" ")))?;
    Ok(())
}

/// The path of `prog` on PATH (or in /usr/sbin, where lighttpd lives).
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Like [`which`], but an error that says which package provides the program.
pub fn require(prog: &str) -> Result<PathBuf> {
    which(prog).with_context(|| {
        let pkg = APT_PACKAGES.iter().find(|(_, p)| *p == prog).map_or(prog, |(pkg, _)| *pkg);
        format!(
            "`{prog}` not found; install the Debian package {pkg} (cargo xtask testenv up does it when run as root)"
        )
    })
}
