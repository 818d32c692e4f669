//! `cargo xtask testenv up | down | status | env | seed`: a real local control plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK), a real OCI registry
//! behind TLS with Harbor-style token auth, and a real Git server over HTTPS smart HTTP.
//!
//! Everything binds to 127.0.0.1. `up` is idempotent; `down` stops exactly the processes `up`
//! started (by pid, checked against the program it ran) and leaves nothing listening.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use crate::env_info::{Creds, DEFAULT_PORT_BASE, EnvInfo, Ports};
use crate::paths;
use crate::pki::Pki;
pub(crate) use crate::proc::{Layout, Proc, check_alive, live_pid, log_tail, process_alive, spawn};
use crate::token_service::{Account, Grant, TokenConfig};
use crate::tools::{self, GoTools};

/// The KWOK node every fixture targets.
pub const NODE_NAME: &str = "store-node-1";
/// The registry's `service` (Harbor's value, so payloads and challenges look the same).
pub const REGISTRY_SERVICE: &str = "harbor-registry";
/// The registry namespace kept for waves' health reports: the store robot may push there only.
pub const REPORTS_PREFIX: &str = "gitops-reports/";
const TOKEN_ISSUER: &str = "gitops-agent-testenv-token-issuer";

/// The order `up` starts components in; `down` stops them in reverse.
const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "token-service",
    "registry",
    "git-server",
];

/// Starts the testenv (no-op when it already runs) and returns what it offers.
pub async fn up(opts: &UpOptions) -> Result<EnvInfo> {
    let run = paths::run_dir();
    let ports = Ports::from_env()?;
    let layout = Layout { root: run.clone() };
    let want = crate::node::wanted()?;
    if let Ok(info) = EnvInfo::load(&run)
        && info.ports == ports
        && all_running(&layout)
        && (info.real_node.is_some() == (want == crate::node::Want::RealNode))
        && (info.real_node.is_none() || crate::node::running(&layout))
        && crate::http::get(
            &format!("{}/readyz", info.apiserver),
            &info.ca_cert,
            &[("authorization", &format!("Bearer {}", info.admin_token))],
        )
        .await
        .is_ok_and(|r| r.status == 200)
    {
        eprintln!("testenv: already up ({})", run.display());
        return crate::node::refresh_images(&run, info);
    }
    // Something is half there (a crash, a reboot): start clean, keeping PKI and credentials.
    stop_all(&layout)?;

    tools::ensure_apt_packages()?;
    let go = GoTools::ensure()?;
    // Not run by the testenv: the e2e tests sign images with it (docs/verification.md).
    tools::ensure_cosign()?;
    let system = SystemTools::find()?;
    check_ports_free(&ports)?;

    for d in ["logs", "pids", "etcd", "registry/storage", "git/repos", "git/www", "token", "kwok"] {
        fs::create_dir_all(layout.p(d))?;
    }
    let pki = Pki::ensure(&layout.p("pki"))?;
    let creds = Credentials::ensure(&layout.p("credentials.json"))?;
    let mut info = write_configs(&layout, &ports, &pki, &creds, &go, &system, opts)?;
    if want == crate::node::Want::RealNode {
        info.real_node = Some(crate::node::prepare(&run, &pki, &go.kubelet, &info.apiserver)?);
        write_private(&EnvInfo::path(&layout.root), &serde_json::to_string_pretty(&info)?)?;
    }

    let started = Instant::now();
    match start_all(&layout, &ports, &pki, &go, &system, &info).await {
        Ok(()) => {
            eprintln!("testenv: up in {:.1}s ({})", started.elapsed().as_secs_f64(), run.display());
            Ok(info)
        }
        Err(e) => {
            // Leave nothing half-started.
            let _ = stop_all(&layout);
            Err(e)
        }
    }
}

/// Options of `testenv up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// How long KWOK waits before a good pod becomes Ready (a pod can override it with the
    /// annotation `pod-ready.stage.kwok.x-k8s.io/delay`).
    pub pod_ready_delay: Duration,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions { pod_ready_delay: Duration::from_millis(1000) }
    }
}

struct SystemTools {
    registry: PathBuf,
    lighttpd: PathBuf,
    http_backend: PathBuf,
}

impl SystemTools {
    fn find() -> Result<SystemTools> {
        let http_backend = PathBuf::from("/usr/lib/git-core/git-http-backend");
        if !http_backend.exists() {
            bail!("{} not found; install the Debian package git", http_backend.display());
        }
        Ok(SystemTools {
            registry: tools::require("docker-registry")?,
            lighttpd: tools::require("lighttpd")?,
            http_backend,
        })
    }
}

/// Random credentials, created once per run dir and reused by later `up`s.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credentials {
    admin_token: String,
    component_tokens: BTreeMap<String, String>,
    registry_agent: Creds,
    registry_ci: Creds,
    git_agent: Creds,
    git_ci: Creds,
}

impl Credentials {
    fn ensure(path: &Path) -> Result<Credentials> {
        if let Ok(text) = fs::read_to_string(path) {
            return serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()));
        }
        let secret = || format!("{:032x}", rand::random::<u128>());
        let c = Credentials {
            admin_token: secret(),
            component_tokens: ["kube-controller-manager", "kube-scheduler", "kwok"]
                .iter()
                .map(|n| ((*n).to_owned(), secret()))
                .collect(),
            registry_agent: Creds { username: "robot$store1+agent".into(), password: secret() },
            registry_ci: Creds { username: "robot$ci+builder".into(), password: secret() },
            git_agent: Creds { username: "store1-agent".into(), password: secret() },
            git_ci: Creds { username: "ci".into(), password: secret() },
        };
        write_private(path, &serde_json::to_string_pretty(&c)?)?;
        Ok(c)
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn check_ports_free(ports: &Ports) -> Result<()> {
    let taken: Vec<String> = ports
        .all()
        .into_iter()
        .filter(|(_, port)| TcpListener::bind(("127.0.0.1", *port)).is_err())
        .map(|(name, port)| format!("127.0.0.1:{port} ({name})"))
        .collect();
    if !taken.is_empty() {
        bail!(
            "port(s) already in use: {}; nothing was started. Stop what uses them, or move the testenv with \
             GITOPS_TESTENV_PORT_BASE=<port> (it uses 9 consecutive ports)",
            taken.join(", ")
        );
    }
    Ok(())
}

fn kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: {user}\n\
         current-context: testenv\n",
        ca = ca.display()
    )
}

fn write_configs(
    l: &Layout,
    ports: &Ports,
    pki: &Pki,
    c: &Credentials,
    go: &GoTools,
    sys: &SystemTools,
    opts: &UpOptions,
) -> Result<EnvInfo> {
    let apiserver = format!("https://127.0.0.1:{}", ports.apiserver);

    // Static tokens: the admin for tests and tools, and one identity per component so the audit
    // log tells who wrote what. All are cluster admins; tests that need less make their own.
    let mut tokens = format!("{},testenv-admin,testenv-admin,\"system:masters\"\n", c.admin_token);
    for (name, token) in &c.component_tokens {
        tokens.push_str(&format!("{token},testenv:{name},testenv:{name},\"system:masters\"\n"));
        write_private(&l.p(&format!("{name}.kubeconfig")), &kubeconfig(&apiserver, &pki.ca_cert(), name, token))?;
    }
    write_private(&l.p("tokens.csv"), &tokens)?;
    write_private(&l.p("kubeconfig"), &kubeconfig(&apiserver, &pki.ca_cert(), "testenv-admin", &c.admin_token))?;

    // Audit: every write in full (Request level) except the components' own churn (node and pod
    // status from KWOK, leases, events), which is recorded at Metadata level or dropped. Service
    // accounts (the agent's own pod under its chart's RBAC) are recorded for every request, reads
    // too, so a test can show that identity was never refused (403).
    let components: Vec<String> = c.component_tokens.keys().map(|n| format!("testenv:{n}")).collect();
    let audit = format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  userGroups: [\"system:serviceaccounts\"]\n\
         - level: None\n  verbs: [get, list, watch]\n\
         - level: None\n  resources:\n  - group: coordination.k8s.io\n    resources: [leases]\n\
         - level: None\n  users: [{users}]\n  resources:\n  - group: \"\"\n    resources: [events, nodes/status, pods/status]\n\
         - level: Metadata\n  users: [{users}]\n\
         - level: Request\n",
        users = components.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ")
    );
    fs::write(l.p("audit-policy.yaml"), audit)?;

    // KWOK: one node, and pod stages (ours replace KWOK's defaults entirely).
    fs::write(l.p("kwok/kwok.yaml"), crate::kwok_stages::config(opts.pod_ready_delay))?;

    // Registry (distribution 2.8) with token auth, as Harbor runs it.
    let realm = format!("https://127.0.0.1:{}/service/token", ports.token);
    let registry_cfg = format!(
        "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: {secret:032x}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
         auth:\n  token:\n    realm: {realm}\n    service: {REGISTRY_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {ca}\n",
        storage = l.p("registry/storage").display(),
        port = ports.registry,
        secret = rand::random::<u128>(),
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
        ca = pki.ca_cert().display(),
    );
    fs::write(l.p("registry/config.yml"), registry_cfg)?;

    let token_cfg = TokenConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], ports.token)),
        tls_cert: pki.server_cert(),
        tls_key: pki.server_key(),
        signing_cert: pki.token_cert(),
        signing_key: pki.token_key(),
        issuer: TOKEN_ISSUER.into(),
        service: REGISTRY_SERVICE.into(),
        // Harbor's default is 30 min; 5 min keeps expiry reachable in tests.
        ttl_seconds: 300,
        accounts: vec![
            Account {
                username: c.registry_agent.username.clone(),
                password: c.registry_agent.password.clone(),
                // Pull anything; push only reports (waves: docs/waves.md), never an app image.
                grants: vec![
                    Grant { repository_prefix: String::new(), actions: vec!["pull".into()] },
                    Grant { repository_prefix: REPORTS_PREFIX.into(), actions: vec!["pull".into(), "push".into()] },
                ],
            },
            Account {
                username: c.registry_ci.username.clone(),
                password: c.registry_ci.password.clone(),
                grants: vec![Grant {
                    repository_prefix: String::new(),
                    actions: vec!["pull".into(), "push".into(), "delete".into()],
                }],
            },
        ],
        access_log: l.p("token/access.log"),
    };
    write_private(&l.p("token/config.json"), &serde_json::to_string_pretty(&token_cfg)?)?;

    // Git: lighttpd + git http-backend (CGI), Basic auth, TLS (the setup in git-http-backend(1)).
    write_private(
        &l.p("git/users"),
        &format!("{}:{}\n{}:{}\n", c.git_agent.username, c.git_agent.password, c.git_ci.username, c.git_ci.password),
    )?;
    let lighttpd = format!(
        r#"server.modules = ("mod_access", "mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv", "mod_openssl", "mod_accesslog")
server.document-root = "{www}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{errorlog}"
accesslog.filename = "{accesslog}"
accesslog.format = "%h %u %t \"%r\" %>s %b"
ssl.engine = "enable"
ssl.pemfile = "{pem}"
auth.backend = "plain"
auth.backend.plain.userfile = "{users}"
alias.url = ( "/git" => "{backend}" )
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ( "" => "" )
  setenv.add-environment = ( "GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1" )
  auth.require = ( "" => ( "method" => "basic", "realm" => "git", "require" => "valid-user" ) )
}}
"#,
        www = l.p("git/www").display(),
        port = ports.git,
        errorlog = l.log("git-server-error").display(),
        accesslog = l.p("git/access.log").display(),
        pem = pki.server_pem().display(),
        users = l.p("git/users").display(),
        backend = sys.http_backend.display(),
        repos = l.p("git/repos").display(),
    );
    fs::write(l.p("git/lighttpd.conf"), lighttpd)?;

    let info = EnvInfo {
        run_dir: l.root.clone(),
        ports: *ports,
        kubeconfig: l.p("kubeconfig"),
        apiserver,
        admin_token: c.admin_token.clone(),
        ca_cert: pki.ca_cert(),
        audit_log: l.p("audit.log"),
        registry: format!("127.0.0.1:{}", ports.registry),
        registry_service: REGISTRY_SERVICE.into(),
        token_realm: realm,
        token_access_log: l.p("token/access.log"),
        registry_agent: c.registry_agent.clone(),
        registry_ci: c.registry_ci.clone(),
        registry_cert_dir: pki.cert_dir(),
        git_base: format!("https://127.0.0.1:{}/git", ports.git),
        git_repos_dir: l.p("git/repos"),
        git_access_log: l.p("git/access.log"),
        git_agent: c.git_agent.clone(),
        git_ci: c.git_ci.clone(),
        node_name: NODE_NAME.into(),
        helm: go.helm.clone(),
        kustomize: go.kustomize.clone(),
        foreign_signing_cert: pki.foreign_cert(),
        foreign_signing_key: pki.foreign_key(),
        real_node: None,
    };
    write_private(&EnvInfo::path(&l.root), &serde_json::to_string_pretty(&info)?)?;
    Ok(info)
}

async fn start_all(
    l: &Layout,
    ports: &Ports,
    pki: &Pki,
    go: &GoTools,
    sys: &SystemTools,
    info: &EnvInfo,
) -> Result<()> {
    let s = |p: &Path| p.display().to_string();
    let etcd_client = format!("http://127.0.0.1:{}", ports.etcd_client);
    // system:masters: the kubelet's webhook authorization lets it do everything (logs, exec).
    let kubelet_client =
        pki.ensure_leaf("apiserver-kubelet-client", "/O=system:masters/CN=testenv:kube-apiserver", None, "clientAuth")?;
    let etcd_peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    spawn(
        l,
        Proc {
            name: "etcd",
            program: go.etcd.clone(),
            args: vec![
                "--name=testenv".into(),
                format!("--data-dir={}", s(&l.p("etcd"))),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=testenv={etcd_peer}"),
                // Test data is disposable; fsync dominates etcd latency on small disks.
                "--unsafe-no-fsync".into(),
                "--auto-compaction-retention=1".into(),
                "--quota-backend-bytes=2147483648".into(),
            ],
            cwd: None,
        },
    )?;
    wait_tcp(l, "etcd", ports.etcd_client, Duration::from_secs(30)).await?;

    spawn(
        l,
        Proc {
            name: "kube-apiserver",
            program: go.kube_apiserver.clone(),
            args: vec![
                format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                // Without a default route the API server cannot pick an address by itself.
                "--advertise-address=127.0.0.1".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={}", ports.apiserver),
                format!("--tls-cert-file={}", s(&pki.server_cert())),
                format!("--tls-private-key-file={}", s(&pki.server_key())),
                format!("--client-ca-file={}", s(&pki.ca_cert())),
                format!("--token-auth-file={}", s(&l.p("tokens.csv"))),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-key-file={}", s(&pki.sa_pub())),
                format!("--service-account-signing-key-file={}", s(&pki.sa_key())),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
                format!("--audit-policy-file={}", s(&l.p("audit-policy.yaml"))),
                format!("--audit-log-path={}", s(&info.audit_log)),
                "--audit-log-format=json".into(),
                "--audit-log-maxsize=0".into(),
                format!("--cert-dir={}", s(&l.p("apiserver-certs"))),
                // A node's name is never looked up in the machine's DNS; the kubelet's serving
                // certificate is checked, and the API server presents its own to the kubelet.
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-certificate-authority={}", s(&pki.ca_cert())),
                format!("--kubelet-client-certificate={}", s(&kubelet_client.1)),
                format!("--kubelet-client-key={}", s(&kubelet_client.0)),
            ],
            cwd: None,
        },
    )?;
    wait_http(
        l,
        "kube-apiserver",
        &format!("{}/readyz", info.apiserver),
        &info.ca_cert,
        Some(&info.admin_token),
        200,
        Duration::from_secs(90),
    )
    .await?;

    let comp_kubeconfig = |n: &str| s(&l.p(&format!("{n}.kubeconfig")));
    spawn(
        l,
        Proc {
            name: "kube-controller-manager",
            program: go.kube_controller_manager.clone(),
            args: vec![
                format!("--kubeconfig={}", comp_kubeconfig("kube-controller-manager")),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.controller_manager),
                format!("--cert-dir={}", s(&l.p("kcm-certs"))),
                "--leader-elect=false".into(),
                format!("--root-ca-file={}", s(&pki.ca_cert())),
                format!("--service-account-private-key-file={}", s(&pki.sa_key())),
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".into(),
                // KWOK heartbeats every 20-45 s; a long grace keeps the fake node from flapping.
                "--node-monitor-grace-period=3m20s".into(),
                "--kube-api-qps=500".into(),
                "--kube-api-burst=1000".into(),
            ],
            cwd: None,
        },
    )?;
    spawn(
        l,
        Proc {
            name: "kube-scheduler",
            program: go.kube_scheduler.clone(),
            args: vec![
                format!("--kubeconfig={}", comp_kubeconfig("kube-scheduler")),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.scheduler),
                format!("--cert-dir={}", s(&l.p("scheduler-certs"))),
                "--leader-elect=false".into(),
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".into(),
            ],
            cwd: None,
        },
    )?;
    spawn(
        l,
        Proc {
            name: "kwok",
            program: go.kwok.clone(),
            args: vec![
                format!("--kubeconfig={}", comp_kubeconfig("kwok")),
                format!("--config={}", s(&l.p("kwok/kwok.yaml"))),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                format!("--server-address=127.0.0.1:{}", ports.kwok),
                "--node-ip=10.0.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
            cwd: None,
        },
    )?;

    let token_bin = l.p("token/xtask-token-service");
    // Run a copy: a later `cargo build` may replace the xtask binary while the service runs.
    fs::copy(std::env::current_exe()?, &token_bin).context("copying the xtask binary for the token service")?;
    spawn(
        l,
        Proc {
            name: "token-service",
            program: token_bin,
            args: vec!["testenv".into(), "serve-token".into(), "--config".into(), s(&l.p("token/config.json"))],
            cwd: None,
        },
    )?;
    spawn(
        l,
        Proc {
            name: "registry",
            program: sys.registry.clone(),
            args: vec!["serve".into(), s(&l.p("registry/config.yml"))],
            cwd: None,
        },
    )?;
    spawn(
        l,
        Proc {
            name: "git-server",
            program: sys.lighttpd.clone(),
            args: vec!["-D".into(), "-f".into(), s(&l.p("git/lighttpd.conf"))],
            cwd: Some(l.p("git")),
        },
    )?;

    let token_url = format!("{}?service={REGISTRY_SERVICE}", info.token_realm);
    wait_http(l, "token-service", &token_url, &info.ca_cert, None, 200, Duration::from_secs(20)).await?;
    wait_http(
        l,
        "registry",
        &format!("https://{}/v2/", info.registry),
        &info.ca_cert,
        None,
        401,
        Duration::from_secs(20),
    )
    .await?;
    wait_http(l, "git-server", &format!("{}/", info.git_base), &info.ca_cert, None, 401, Duration::from_secs(20))
        .await?;
    wait_tcp(l, "kube-controller-manager", ports.controller_manager, Duration::from_secs(30)).await?;
    wait_tcp(l, "kube-scheduler", ports.scheduler, Duration::from_secs(30)).await?;
    wait_tcp(l, "kwok", ports.kwok, Duration::from_secs(30)).await?;

    let client = crate::kube::kube_client(&info.kubeconfig).await?;
    crate::kube::ensure_node(&client, NODE_NAME, &[("store", "store1"), ("env", "qa")], &[("nvidia.com/gpu", "1")])
        .await?;
    crate::kube::wait_node_ready(&client, NODE_NAME, Duration::from_secs(60))
        .await
        .with_context(|| format!("KWOK did not make node {NODE_NAME} Ready; see {}", l.log("kwok").display()))?;
    if let Some(node) = &info.real_node {
        crate::node::start(l, info, node, &go.kubelet).await?;
    }
    Ok(())
}

fn all_running(l: &Layout) -> bool {
    COMPONENTS.iter().all(|c| live_pid(l, c).is_some())
}

/// Stops every component `up` started, newest first; returns the names it stopped.
fn stop_all(l: &Layout) -> Result<Vec<&'static str>> {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    // The real node first: its kubelet talks to the API server, and its host changes are undone.
    let mut stopped = crate::node::stop(&l.root)?;
    for name in COMPONENTS.iter().rev() {
        if let Some(pid) = live_pid(l, name) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if process_alive(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            stopped.push(*name);
        }
        let _ = fs::remove_file(l.pid(name));
    }
    Ok(stopped)
}

/// `testenv down`: stops everything and checks that no testenv port is still listening.
pub fn down() -> Result<()> {
    let run = paths::run_dir();
    let layout = Layout { root: run.clone() };
    let stopped = stop_all(&layout)?;
    let ports = EnvInfo::load(&run).map(|i| i.ports).or_else(|_| Ports::from_env())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening: Vec<String> = ports
            .all()
            .into_iter()
            .filter(|(_, p)| {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], *p)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .map(|(n, p)| format!("127.0.0.1:{p} ({n})"))
            .collect();
        if listening.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("after stopping the testenv these ports still listen: {}", listening.join(", "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if stopped.is_empty() {
        eprintln!("testenv: nothing was running ({})", run.display());
    } else {
        eprintln!("testenv: stopped {}", stopped.join(", "));
    }
    Ok(())
}

/// `testenv status`: one line per component.
pub async fn status(out: &mut dyn std::io::Write) -> Result<bool> {
    let run = paths::run_dir();
    let layout = Layout { root: run.clone() };
    let info = EnvInfo::load(&run).ok();
    writeln!(out, "testenv at {}", run.display())?;
    let mut all = true;
    for name in COMPONENTS {
        let state = match live_pid(&layout, name) {
            Some(pid) => format!("running (pid {pid})"),
            None => {
                all = false;
                "stopped".to_owned()
            }
        };
        writeln!(out, "  {name:<24} {state}")?;
    }
    if let Some(info) = &info {
        let ready = crate::http::get(
            &format!("{}/readyz", info.apiserver),
            &info.ca_cert,
            &[("authorization", &format!("Bearer {}", info.admin_token))],
        )
        .await
        .is_ok_and(|r| r.status == 200);
        writeln!(out, "  {:<24} {}", "api server /readyz", if ready { "ok" } else { "not ready" })?;
        all &= ready;
        all &= crate::node::status(out, &run, info).await?;
    }
    Ok(all)
}

/// `testenv env`: shell exports for the endpoints and credentials.
pub fn env_exports(info: &EnvInfo) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let p = |p: &Path| q(&p.display().to_string());
    let vars = [
        ("KUBECONFIG", p(&info.kubeconfig)),
        ("GITOPS_TESTENV_APISERVER", q(&info.apiserver)),
        ("GITOPS_TESTENV_CA", p(&info.ca_cert)),
        ("GITOPS_TESTENV_AUDIT_LOG", p(&info.audit_log)),
        ("GITOPS_TESTENV_REGISTRY", q(&info.registry)),
        ("GITOPS_TESTENV_REGISTRY_CERT_DIR", p(&info.registry_cert_dir)),
        ("GITOPS_TESTENV_REGISTRY_AGENT_USER", q(&info.registry_agent.username)),
        ("GITOPS_TESTENV_REGISTRY_AGENT_PASSWORD", q(&info.registry_agent.password)),
        ("GITOPS_TESTENV_REGISTRY_CI_USER", q(&info.registry_ci.username)),
        ("GITOPS_TESTENV_REGISTRY_CI_PASSWORD", q(&info.registry_ci.password)),
        ("GITOPS_TESTENV_GIT_BASE", q(&info.git_base)),
        ("GITOPS_TESTENV_GIT_AGENT_USER", q(&info.git_agent.username)),
        ("GITOPS_TESTENV_GIT_AGENT_PASSWORD", q(&info.git_agent.password)),
        ("GITOPS_TESTENV_GIT_CI_USER", q(&info.git_ci.username)),
        ("GITOPS_TESTENV_GIT_CI_PASSWORD", q(&info.git_ci.password)),
        ("GITOPS_TESTENV_HELM", p(&info.helm)),
        ("GITOPS_TESTENV_KUSTOMIZE", p(&info.kustomize)),
    ];
    vars.iter().map(|(k, v)| format!("export {k}={v}\n")).collect()
}

async fn wait_tcp(l: &Layout, name: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        check_alive(l, name)?;
        if Instant::now() > deadline {
            bail!("{name} did not listen on 127.0.0.1:{port} within {timeout:?}\n{}", log_tail(l, name));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_http(
    l: &Layout,
    name: &str,
    url: &str,
    ca: &Path,
    token: Option<&str>,
    want: u16,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    loop {
        let last = match crate::http::get(url, ca, &headers).await {
            Ok(r) if r.status == want => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status),
            Err(e) => format!("{e:#}"),
        };
        check_alive(l, name)?;
        if Instant::now() > deadline {
            bail!("{name} did not answer {url} with {want} within {timeout:?} (last: {last})\n{}", log_tail(l, name));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The running testenv's info, if `up` completed and every component still runs.
pub fn running(run_dir: &Path) -> Option<EnvInfo> {
    let info = EnvInfo::load(run_dir).ok()?;
    let layout = Layout { root: run_dir.to_path_buf() };
    all_running(&layout).then_some(info)
}
