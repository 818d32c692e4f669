//! Test support: how integration tests reach a running testenv (starting it if needed) and get
//! their own namespace, git repository, registry repository and fault proxy, so tests never
//! interfere with each other and run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};

use crate::fault_proxy::FaultProxy;
use crate::kube::kube_client;
use crate::paths;
use crate::testenv::{self, Creds, EnvInfo};

/// A unique, DNS-safe name with a readable hint: `t-<hint>-<random>`.
pub fn unique(hint: &str) -> String {
    let clean: String = hint
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(30)
        .collect();
    format!("t-{}-{:06x}", clean.trim_end_matches('-'), rand::random::<u32>() & 0xff_ffff)
}

/// The testenv, as a test sees it.
#[derive(Debug)]
pub struct TestEnv {
    pub info: EnvInfo,
}

/// Which testenv service a fault proxy fronts.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    ApiServer,
    Registry,
    TokenService,
    Git,
}

impl TestEnv {
    /// The running testenv; starts it (`cargo xtask testenv up`) on first use if it is not up.
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            crate::tls::install_crypto_provider();
            let run = paths::run_dir();
            let info = match testenv::running(&run) {
                Some(info) => info,
                None => {
                    let status = paths::cargo()
                        .args(["run", "--quiet", "--package", "xtask", "--", "testenv", "up"])
                        .status()
                        .expect("running `cargo xtask testenv up`");
                    assert!(status.success(), "`cargo xtask testenv up` failed ({status})");
                    EnvInfo::load(&run).expect("testenv env.json after up")
                }
            };
            TestEnv { info }
        })
    }

    pub async fn client(&self) -> kube::Client {
        kube_client(&self.info.kubeconfig).await.expect("kube client for the testenv")
    }

    /// A fresh namespace for one test; deleted when the guard drops, unless the test failed
    /// (then it stays for a look).
    pub async fn namespace(&self, hint: &str) -> TestNamespace {
        let name = unique(hint);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"gitops-agent.test/e2e": "true"}},
        }))
        .expect("static namespace");
        let api: Api<Namespace> = Api::all(self.client().await);
        api.create(&PostParams::default(), &ns).await.expect("creating test namespace");
        TestNamespace { name, kubeconfig: self.info.kubeconfig.clone() }
    }

    /// A new, empty bare repository on the git server, for this test alone.
    pub fn git_repo(&self, hint: &str) -> GitRepo {
        let name = unique(hint);
        let path = self.info.git_repos_dir.join(format!("{name}.git"));
        crate::seed::init_bare(&path).expect("creating bare repository");
        GitRepo { url: format!("{}/{name}.git", self.info.git_base), name, path }
    }

    /// A registry repository name no other test uses (nothing is created until a push).
    pub fn registry_repo(&self, hint: &str) -> String {
        format!("tests/{}/app", unique(hint))
    }

    /// Pushes a small fixture image (CI robot) and returns its digest.
    pub fn push_image(&self, repo: &str, tag: &str) -> String {
        crate::seed::push_image(&self.info, repo, tag).expect("pushing fixture image")
    }

    /// Pushes new content under an existing tag (the tag moves to a new digest).
    pub fn repush_image(&self, repo: &str, tag: &str, salt: &str) -> String {
        crate::seed::push_image_salted(&self.info, repo, tag, salt).expect("pushing fixture image")
    }

    /// Adds `tags` to the manifest `from` already has in `repo`, with one manifest PUT each as
    /// the CI robot (far quicker than a push per tag, for tests that need many tags).
    pub async fn tag_image(&self, repo: &str, from: &str, tags: &[String]) -> Result<()> {
        use base64::Engine;
        let ca = &self.info.ca_cert;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.info.registry_ci.username, self.info.registry_ci.password));
        let token_url = format!(
            "{}?service={}&scope=repository:{repo}:pull,push",
            self.info.token_realm, self.info.registry_service
        );
        let reply = crate::http::get(&token_url, ca, &[("authorization", &format!("Basic {basic}"))]).await?;
        let token: serde_json::Value = serde_json::from_str(&reply.body).context("token response")?;
        let bearer = format!("Bearer {}", token["token"].as_str().context("token in response")?);
        let base = format!("https://{}/v2/{repo}/manifests", self.info.registry);
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let manifest =
            crate::http::get(&format!("{base}/{from}"), ca, &[("authorization", &bearer), ("accept", accept)]).await?;
        if manifest.status != 200 {
            bail!("GET {base}/{from}: HTTP {}", manifest.status);
        }
        let media_type = manifest.header("content-type").unwrap_or(accept).to_owned();
        for tag in tags {
            let url = format!("{base}/{tag}");
            let headers = [("authorization", bearer.as_str()), ("content-type", media_type.as_str())];
            let put = crate::http::request_with_body("PUT", &url, ca, &headers, manifest.body.clone().into()).await?;
            if put.status != 201 {
                bail!("PUT {url}: HTTP {}: {}", put.status, put.body);
            }
        }
        Ok(())
    }

    /// Base URL of a testenv service.
    pub fn url(&self, upstream: Upstream) -> String {
        let p = self.info.ports;
        let port = match upstream {
            Upstream::ApiServer => p.apiserver,
            Upstream::Registry => p.registry,
            Upstream::TokenService => p.token,
            Upstream::Git => p.git,
        };
        format!("https://127.0.0.1:{port}")
    }

    /// A fault proxy in front of one service, for this test alone.
    pub async fn fault_proxy(&self, upstream: Upstream) -> FaultProxy {
        FaultProxy::start(&self.url(upstream), &self.info.pki()).await.expect("starting fault proxy")
    }

    /// A kubeconfig (admin) whose server is `server` (e.g. a fault proxy's URL).
    pub fn kubeconfig_for(&self, server: &str, dir: &Path) -> PathBuf {
        let text = std::fs::read_to_string(&self.info.kubeconfig).expect("reading testenv kubeconfig");
        let text = text.replace(&self.info.apiserver, server);
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("writing kubeconfig");
        path
    }

    /// `git` with the testenv CA trusted and `who`'s credentials (or none) configured.
    pub fn git(&self, who: Option<&Creds>) -> Command {
        let mut cmd = Command::new("git");
        match who {
            Some(c) => crate::seed::git_auth_env(&mut cmd, &self.info, c),
            None => {
                cmd.env("GIT_SSL_CAINFO", &self.info.ca_cert).env("GIT_TERMINAL_PROMPT", "0");
            }
        }
        cmd
    }

    /// The API server's audit events (write requests) as far as the log holds them now, parsed.
    /// An unreadable log is an error, never an empty list: a check of what was (not) written
    /// must not pass because the log could not be read. The last line may be half written
    /// and is then left out; any other line that does not parse is an error.
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let path = &self.info.audit_log;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the audit log {}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut events = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(e) => events.push(e),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => bail!("{}: line {}: not an audit event: {e}", path.display(), i + 1),
            }
        }
        Ok(events)
    }

    /// The audit events once the log has caught up with every write that finished before this
    /// call: writes a marker ConfigMap (`audit-marker-…`) in `namespace`, waits until the API
    /// server logged it, and returns the events logged before it. Checks that nothing was
    /// applied compare these, so a late or missing log fails them instead of passing them.
    /// Markers are test writes: filter names starting with [`AUDIT_MARKER_PREFIX`] out.
    pub async fn audit_events_settled(&self, namespace: &str) -> Vec<serde_json::Value> {
        let name = format!("{AUDIT_MARKER_PREFIX}{:08x}", rand::random::<u32>());
        let marker: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"gitops-agent.test/audit-marker": "true"}},
        }))
        .expect("static ConfigMap");
        let api: Api<ConfigMap> = Api::namespaced(self.client().await, namespace);
        api.create(&PostParams::default(), &marker).await.expect("writing the audit marker");
        let is_marker = |e: &serde_json::Value| {
            e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["namespace"] == namespace
                && e["objectRef"]["name"] == name.as_str()
        };
        let deadline = std::time::Instant::now() + AUDIT_CATCH_UP;
        loop {
            let events = self.audit_events().expect("the audit log is readable");
            if let Some(at) = events.iter().position(is_marker) {
                return events.into_iter().take(at).collect();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the audit log did not record the marker {namespace}/{name} within {AUDIT_CATCH_UP:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Names of the marker objects [`TestEnv::audit_events_settled`] writes.
pub const AUDIT_MARKER_PREFIX: &str = "audit-marker-";

/// How long the audit log may lag behind a finished write: it is written as each request
/// completes, so anything near this is a broken log, not a slow one.
const AUDIT_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// A test's own namespace.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping namespace {} of a failed test", self.name);
            return;
        }
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        // Drop cannot be async; a short-lived thread with its own runtime does the delete.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let client = kube_client(&kubeconfig).await.ok()?;
                Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await.ok()
            })
        })
        .join();
    }
}

/// A test's own git repository on the git server.
#[derive(Debug)]
pub struct GitRepo {
    pub name: String,
    /// HTTPS URL (needs credentials).
    pub url: String,
    /// The bare repository on the server's disk.
    pub path: PathBuf,
}
