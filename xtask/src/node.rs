//! The testenv's real node: Debian's containerd and runc, the bridge CNI plugin and a real
//! kubelet (built like the control plane), beside the KWOK node. Pods that tolerate its taint
//! really pull (TLS, an `imagePullSecret`), probe, drain and crash.
//!
//! The node changes the host, so it belongs to one testenv instance per host (port 10250, fixed
//! paths): `up` claims it with a lock file, records the host's state first (sysctls, iptables
//! chains, mounts, fixed paths, cgroups, addresses), and `down` restores every item from that
//! record and then checks that nothing is left ([`stop`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::env_info::{EnvInfo, RealNode};
use crate::images;
use crate::pki::Pki;
use crate::proc::{self, Layout, Proc};
use crate::tools;

/// The real node's name.
pub const NAME: &str = "real-node-1";
/// Its address: an alias on `lo` (the kubelet refuses a loopback node IP; dummy links are not
/// available in every sandbox).
pub const NODE_IP: &str = "10.254.0.1";
/// Pods' addresses: a private /24 behind the bridge, with no default route in the pods.
pub const POD_SUBNET: &str = "10.254.1.0/24";
const BRIDGE: &str = "gitops-br0";
/// Only pods that tolerate this taint land on the real node.
pub const TAINT_KEY: &str = "gitops-agent.test/real-node";
/// The label its pods select it by.
pub const LABEL_KEY: &str = "gitops-agent.test/node";
pub const LABEL_VALUE: &str = "real";
/// The kubelet's port (fixed: one real node per host).
pub const KUBELET_PORT: u16 = 10250;
/// The host-wide claim: which testenv instance holds the real node.
const CLAIM: &str = "/run/gitops-agent-testenv-real-node.json";
/// Paths outside the run dir that containerd, runc, the CNI plugins or the kubelet create.
const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/run/containerd",
    "/run/netns",
    "/var/run/netns",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/opt/containerd",
    "/opt/cni",
    "/etc/cni",
    "/usr/libexec/kubernetes",
];
/// The sysctls the kubelet (kernel tunables) and the bridge plugin (forwarding) change.
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
];
const IPTABLES_TABLES: &[&str] = &["filter", "nat", "mangle"];
/// Whether a component on the node side is ours: the processes `up` started.
pub const COMPONENTS: &[&str] = &["containerd", "kubelet"];

/// Whether this instance runs the real node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    RealNode,
    KwokOnly,
}

/// The primary instance (default run dir) runs the real node; a throw-away instance
/// (`GITOPS_TESTENV_DIR`) does not. `GITOPS_TESTENV_REAL_NODE=0|1` decides explicitly.
pub fn wanted() -> Result<Want> {
    match std::env::var("GITOPS_TESTENV_REAL_NODE").ok().as_deref() {
        Some("1") => Ok(Want::RealNode),
        Some("0") => Ok(Want::KwokOnly),
        Some(v) => bail!("GITOPS_TESTENV_REAL_NODE={v:?}: use 1 (run the real node) or 0 (KWOK only)"),
        None if std::env::var_os("GITOPS_TESTENV_DIR").is_some() => Ok(Want::KwokOnly),
        None => Ok(Want::RealNode),
    }
}

fn node_dir(run: &Path) -> PathBuf {
    run.join("node")
}

/// The record of the host before `up` changed it (JSON), kept until `down` undid every change.
pub fn record_path(run: &Path) -> PathBuf {
    node_dir(run).join("host-before-up.json")
}

/// The host as it was before `up` changed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HostRecord {
    sysctls: BTreeMap<String, String>,
    /// `table -> chains` (iptables and ip6tables, prefixed `4:`/`6:`).
    chains: BTreeMap<String, BTreeSet<String>>,
    mounts: BTreeSet<String>,
    /// Fixed paths that existed, with their entries then.
    fixed: BTreeMap<String, Option<BTreeSet<String>>>,
    /// `kubepods` cgroup folders that existed.
    cgroups: BTreeSet<String>,
    lo_alias_existed: bool,
    bridge_existed: bool,
}

fn read_sysctl(name: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{name}")).ok().map(|s| s.trim().to_owned())
}

fn iptables_chains() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for (family, prog) in [("4", "iptables"), ("6", "ip6tables")] {
        for table in IPTABLES_TABLES {
            let Ok(out) = Command::new(prog).args(["-w", "-t", table, "-S"]).output() else { continue };
            let chains = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("-N ").or_else(|| l.strip_prefix("-P ")))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            all.insert(format!("{family}:{table}"), chains);
        }
    }
    all
}

fn mount_points() -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| m.replace("\\040", " "))
        .collect()
}

fn entries(dir: &Path) -> Option<BTreeSet<String>> {
    let rd = fs::read_dir(dir).ok()?;
    Some(rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

/// Every cgroup folder named `kubepods*` at the top of a cgroup hierarchy.
fn kubepods_cgroups() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Some(names) = entries(Path::new("/sys/fs/cgroup")) {
        roots.extend(names.iter().map(|n| Path::new("/sys/fs/cgroup").join(n)));
    }
    for root in roots {
        for name in entries(&root).unwrap_or_default() {
            if name.starts_with("kubepods") {
                found.insert(root.join(name).display().to_string());
            }
        }
    }
    found
}

fn has_lo_alias() -> bool {
    Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {NODE_IP}/32")))
}

fn has_bridge() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

impl HostRecord {
    fn take() -> HostRecord {
        HostRecord {
            sysctls: SYSCTLS.iter().filter_map(|s| Some(((*s).to_owned(), read_sysctl(s)?))).collect(),
            chains: iptables_chains(),
            mounts: mount_points(),
            fixed: FIXED_PATHS.iter().map(|p| ((*p).to_owned(), entries(Path::new(p)))).collect(),
            cgroups: kubepods_cgroups(),
            lo_alias_existed: has_lo_alias(),
            bridge_existed: has_bridge(),
        }
    }
}

/// The claim file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    run_dir: PathBuf,
}

/// Whether the testenv at `run` holds the host's real node: the claim names it, or its record
/// of the host before `up` is there. Only then may its `down` touch the node's processes: the
/// pods' processes are found by the host's `kubepods` cgroups, which belong to whichever
/// instance holds the node.
fn holds_node(run: &Path) -> bool {
    record_path(run).exists()
        || fs::read_to_string(CLAIM)
            .ok()
            .and_then(|t| serde_json::from_str::<Claim>(&t).ok())
            .is_some_and(|c| c.run_dir == run)
}

/// Fails, naming the holder, when another live instance holds the real node.
fn check_claim(run: &Path) -> Result<Option<Claim>> {
    if let Ok(text) = fs::read_to_string(CLAIM)
        && let Ok(held) = serde_json::from_str::<Claim>(&text)
        && held.run_dir != run
    {
        let layout = Layout { root: held.run_dir.clone() };
        if COMPONENTS.iter().any(|c| proc::live_pid(&layout, c).is_some()) {
            bail!(
                "the real node is held by the testenv at {} ({CLAIM}); one real node per host (port {KUBELET_PORT}, \
                 fixed paths). Run `cargo xtask testenv down` there, or start this one without it: \
                 GITOPS_TESTENV_REAL_NODE=0",
                held.run_dir.display()
            );
        }
        return Ok(Some(held));
    }
    Ok(None)
}

/// Claims the real node for `run`, or explains which instance holds it. A claim whose holder no
/// longer runs a node is stale: its host changes are undone from its record first.
fn claim(run: &Path) -> Result<()> {
    if let Some(stale) = check_claim(run)? {
        eprintln!("testenv: the real node's claim by {} is stale; undoing its host changes", stale.run_dir.display());
        stop(&stale.run_dir)?;
    }
    fs::write(CLAIM, serde_json::to_string(&Claim { run_dir: run.to_path_buf() })?)
        .with_context(|| format!("writing {CLAIM} (the real node needs root)"))
}

/// The Debian packages of the node, with what proves each present.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("iptables", "iptables"),
    ("iproute2", "ip"),
    ("gcc", "gcc"),
    ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"),
];

/// Checks the host can run the node (root, packages, the kubelet binary), builds the images,
/// writes every config; returns what `env.json` says of the node. Starts nothing.
pub fn prepare(run: &Path, pki: &Pki, kubelet: &Path, apiserver: &str) -> Result<RealNode> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the real node needs root (containerd, runc, network namespaces); run as root, or without it: \
             GITOPS_TESTENV_REAL_NODE=0"
        );
    }
    check_claim(run)?;
    tools::ensure_packages(APT_PACKAGES)?;
    let dir = node_dir(run);
    for d in ["containerd", "kubelet", "cni/net.d", "certs.d", "images", "pod-logs"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let socket = dir.join("containerd/containerd.sock");

    // The registry trusted through certs.d, the CA twice (section G's fix 4); no credentials.
    let registry = registry_host(run)?;
    let host_dir = dir.join("certs.d").join(&registry);
    fs::create_dir_all(&host_dir)?;
    let ca = pki.ca_cert();
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{registry}\"\nca = \"{ca}\"\n\n[host.\"https://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            ca = ca.display()
        ),
    )?;

    let d = |p: &str| dir.join(p).display().to_string();
    fs::write(
        dir.join("containerd/config.toml"),
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This VM lacks CAP_SYS_RESOURCE: runc may only raise oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            sock = socket.display(),
            opt = d("containerd/opt"),
            pause = images::PAUSE_IMAGE,
            runc = d("runc"),
            cni = d("cni/net.d"),
            certs = d("certs.d"),
        ),
    )?;

    // Bridge + host-local: a private /24, the bridge the pods' gateway to the host only (no
    // default route in pods: the only route is the subnet's own).
    fs::write(
        dir.join("cni/net.d/10-testenv.conflist"),
        serde_json::to_string_pretty(&serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "gitops-testenv",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "isDefaultGateway": false,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "dataDir": d("cni/ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }))?,
    )?;

    // Node identity: a client certificate from the testenv CA (system:node:<name>); serving
    // certificate for the node address, so the API server verifies the kubelet.
    let (client_key, client_cert) =
        pki.ensure_leaf("real-node-client", &format!("/O=system:nodes/CN=system:node:{NAME}"), None, "clientAuth")?;
    let (serving_key, serving_cert) = pki.ensure_leaf(
        "real-node-serving",
        &format!("/CN=system:node:{NAME}"),
        Some(&format!("IP:{NODE_IP},DNS:{NAME}")),
        "serverAuth",
    )?;
    fs::write(
        dir.join("kubelet/kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {apiserver}\n    certificate-authority: {ca}\n\
             users:\n- name: node\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: node\n\
             current-context: testenv\n",
            ca = ca.display(),
            cert = client_cert.display(),
            key = client_key.display(),
        ),
    )?;
    fs::write(
        dir.join("kubelet/config.yaml"),
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {serving_cert}
tlsPrivateKeyFile: {serving_key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://{sock}
makeIPTablesUtilChains: false
resolvConf: ""
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
serializeImagePulls: false
maxPods: 60
evictionHard: {{memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerWithTaints:
- {{key: {TAINT_KEY}, value: "true", effect: NoSchedule}}
"#,
            serving_cert = serving_cert.display(),
            serving_key = serving_key.display(),
            ca = ca.display(),
            sock = socket.display(),
            pod_logs = d("pod-logs"),
            volume_plugins = d("kubelet/volume-plugins"),
        ),
    )?;

    images::pause_archive(&dir.join("images"))?;
    let kiosk_layer = images::kiosk_layer(&run.join("images"))?;
    Ok(RealNode {
        name: NAME.into(),
        ip: NODE_IP.into(),
        pod_subnet: POD_SUBNET.into(),
        taint_key: TAINT_KEY.into(),
        taint_value: "true".into(),
        label_key: LABEL_KEY.into(),
        label_value: LABEL_VALUE.into(),
        kubelet_version: version(kubelet, &["--version"]),
        containerd_version: version(Path::new("containerd"), &["--version"]),
        runc_version: version(Path::new("runc"), &["--version"]),
        containerd_socket: socket,
        pause_image: images::PAUSE_IMAGE.into(),
        kiosk_layer,
    })
}

/// For a testenv already up: rebuilds the kiosk image's layer when its sources changed (a cargo
/// no-op otherwise) and records it in `env.json`, so tests push the current app.
pub fn refresh_images(run: &Path, mut info: EnvInfo) -> Result<EnvInfo> {
    let Some(node) = info.real_node.as_mut() else { return Ok(info) };
    let layer = images::kiosk_layer(&run.join("images"))?;
    if layer != node.kiosk_layer {
        node.kiosk_layer = layer;
        let text = serde_json::to_string_pretty(&info)?;
        let path = EnvInfo::path(run);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(info)
}

fn registry_host(run: &Path) -> Result<String> {
    // `prepare` runs after write_configs wrote env.json, whose registry is `127.0.0.1:PORT`.
    Ok(EnvInfo::load(run)?.registry)
}

fn version(prog: &Path, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The pods' bridge with the host's gateway address on it, as the bridge plugin makes it with
/// the first pod: made at `up`, so the host's side of the pod network
/// ([`RealNode::host_address`], where test relays listen) is there before any pod runs. The
/// plugin takes an existing bridge and address as they are.
fn ensure_bridge(node: &RealNode) -> Result<()> {
    if !has_bridge() {
        ip(&["link", "add", "name", BRIDGE, "type", "bridge"])?;
    }
    let (address, len) = node.host_address()?;
    let gateway = format!("{address}/{len}");
    let out = Command::new("ip").args(["-o", "addr", "show", "dev", BRIDGE]).output()?;
    if !String::from_utf8_lossy(&out.stdout).contains(&format!("inet {gateway}")) {
        ip(&["addr", "add", &gateway, "dev", BRIDGE])?;
    }
    ip(&["link", "set", BRIDGE, "up"])
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (install the Debian package iproute2)")?;
    if !out.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .context("running ctr (Debian package containerd)")?;
    if !out.status.success() {
        bail!("ctr {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts containerd and the kubelet (the control plane runs), and waits for the node to be
/// Ready. Host changes are recorded before the first one is made.
pub(crate) async fn start(l: &Layout, info: &EnvInfo, node: &RealNode, kubelet: &Path) -> Result<()> {
    let run = &l.root;
    claim(run)?;
    let record = record_path(run);
    if !record.exists() {
        fs::write(&record, serde_json::to_string_pretty(&HostRecord::take())?)?;
    }
    if !has_lo_alias() {
        ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    }
    ensure_bridge(node)?;
    let dir = node_dir(run);
    proc::spawn(
        l,
        Proc {
            name: "containerd",
            program: tools::require("containerd")?,
            args: vec!["--config".into(), dir.join("containerd/config.toml").display().to_string()],
            cwd: None,
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctr(&node.containerd_socket, &["version"]).is_err() {
        proc::check_alive(l, "containerd")?;
        if Instant::now() > deadline {
            bail!(
                "containerd did not answer on {} within 30s\n{}",
                node.containerd_socket.display(),
                proc::log_tail(l, "containerd")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The socket answers before the CRI plugin has recovered its state (longer with more
    // containers and images on the node), and a kubelet started then exits at once ("server is
    // not initialized yet"): wait for the plugin's last start-up step in this start's log.
    while !fs::read_to_string(l.log("containerd")).unwrap_or_default().contains("Start streaming server") {
        proc::check_alive(l, "containerd")?;
        if Instant::now() > deadline {
            bail!("containerd's CRI plugin did not start within 30s\n{}", proc::log_tail(l, "containerd"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = ctr(&node.containerd_socket, &["images", "ls", "-q"])?;
    if !listed.lines().any(|i| i.trim() == images::PAUSE_IMAGE) {
        let archive = images::pause_archive(&dir.join("images"))?;
        ctr(&node.containerd_socket, &["images", "import", &archive.display().to_string()])
            .context("importing the pause image into containerd")?;
    }

    let client = crate::kube::kube_client(&info.kubeconfig).await?;
    bind_node_role(&client).await?;
    proc::spawn(
        l,
        Proc {
            name: "kubelet",
            program: kubelet.to_path_buf(),
            args: vec![
                format!("--config={}", dir.join("kubelet/config.yaml").display()),
                format!("--kubeconfig={}", dir.join("kubelet/kubeconfig").display()),
                format!("--root-dir={}", dir.join("kubelet/root").display()),
                format!("--cert-dir={}", dir.join("kubelet/pki").display()),
                format!("--hostname-override={NAME}"),
                format!("--node-ip={NODE_IP}"),
                format!("--node-labels={LABEL_KEY}={LABEL_VALUE},store=store1,env=qa"),
                "--v=1".into(),
            ],
            cwd: None,
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        proc::check_alive(l, "kubelet")?;
        if crate::kube::wait_node_ready(&client, NAME, Duration::from_millis(1)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the kubelet did not make node {NAME} Ready within 90s\n{}", proc::log_tail(l, "kubelet"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// RBAC for the node's identity (the testenv authorizes with RBAC alone, no Node authorizer).
async fn bind_node_role(client: &kube::Client) -> Result<()> {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    use kube::api::{Api, Patch, PatchParams};
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "testenv:real-node"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("system:node:{NAME}")}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch("testenv:real-node", &PatchParams::apply("testenv").force(), &Patch::Apply(&binding))
        .await
        .context("binding ClusterRole system:node to the real node")?;
    Ok(())
}

/// Whether the node's processes run.
pub(crate) fn running(l: &Layout) -> bool {
    COMPONENTS.iter().all(|c| proc::live_pid(l, c).is_some())
}

/// Pids of processes that belong to this run's node: containerd's shims (their command line
/// names our socket) and every process in a `kubepods` cgroup (the containers).
fn node_processes(run: &Path) -> Vec<i32> {
    let socket = node_dir(run).join("containerd/containerd.sock").display().to_string();
    let mut pids = BTreeSet::new();
    for cg in kubepods_cgroups() {
        collect_cgroup_procs(Path::new(&cg), &mut pids);
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(&socket) {
            pids.insert(pid);
        }
    }
    pids.into_iter().filter(|p| proc::process_alive(*p)).collect()
}

fn collect_cgroup_procs(dir: &Path, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_procs(&entry.path(), pids);
        }
    }
}

fn stop_pid_file(l: &Layout, name: &str) -> bool {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = proc::live_pid(l, name) else {
        let _ = fs::remove_file(l.pid(name));
        return false;
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc::process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if proc::process_alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = fs::remove_file(l.pid(name));
    true
}

/// Stops the node and undoes every host change recorded by `start`, then checks the host.
/// Harmless when nothing runs and nothing was recorded. Returns the node components stopped.
pub fn stop(run: &Path) -> Result<Vec<&'static str>> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let l = Layout { root: run.to_path_buf() };
    let mut stopped = Vec::new();
    if stop_pid_file(&l, "kubelet") {
        stopped.push("kubelet");
    }
    if !holds_node(run) {
        // Another instance's node (or none): its pods are not this testenv's to kill. (They
        // were: every `up` or `down` of a second testenv, such as the suite's throwaway ones,
        // killed all of the real node's pods, which the kubelet then made anew with new IPs.)
        if stop_pid_file(&l, "containerd") {
            stopped.push("containerd");
        }
        return Ok(stopped);
    }
    // Containers and shims, by pid: SIGKILL (their pods are gone with the node anyway).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = node_processes(run);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("processes of the real node still run after SIGKILL: {pids:?}");
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if stop_pid_file(&l, "containerd") {
        stopped.push("containerd");
    }
    let record_file = record_path(run);
    let Ok(text) = fs::read_to_string(&record_file) else {
        release_claim(run);
        return Ok(stopped);
    };
    let before: HostRecord =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", record_file.display()))?;
    let mut problems = restore(run, &before);
    problems.extend(leftovers(run, &before));
    if !problems.is_empty() {
        bail!(
            "the real node's host changes are not all undone (the record stays in {}; `down` again retries):\n  {}",
            record_file.display(),
            problems.join("\n  ")
        );
    }
    fs::remove_file(&record_file)?;
    release_claim(run);
    Ok(stopped)
}

fn release_claim(run: &Path) {
    if let Ok(text) = fs::read_to_string(CLAIM)
        && serde_json::from_str::<Claim>(&text).is_ok_and(|c| c.run_dir == run)
    {
        let _ = fs::remove_file(CLAIM);
    }
}

/// Mount points `up` added under the run dir or a fixed path, deepest first.
fn new_mounts(run: &Path, before: &HostRecord) -> Vec<String> {
    let roots: Vec<String> =
        std::iter::once(run.display().to_string()).chain(FIXED_PATHS.iter().map(|p| (*p).to_owned())).collect();
    let mut mounts: Vec<String> = mount_points()
        .into_iter()
        .filter(|m| !before.mounts.contains(m))
        .filter(|m| roots.iter().any(|r| m == r || m.starts_with(&format!("{r}/"))))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts
}

fn new_chains(before: &HostRecord) -> Vec<(String, String)> {
    let now = iptables_chains();
    let mut out = Vec::new();
    for (table, chains) in now {
        let old = before.chains.get(&table).cloned().unwrap_or_default();
        for c in chains.difference(&old) {
            out.push((table.clone(), c.clone()));
        }
    }
    out
}

/// Undoes each recorded item; returns what failed.
fn restore(run: &Path, before: &HostRecord) -> Vec<String> {
    let mut problems = Vec::new();
    for m in new_mounts(run, before) {
        let out = Command::new("umount").arg("-l").arg(&m).output();
        if !out.is_ok_and(|o| o.status.success()) {
            problems.push(format!("umount {m} failed"));
        }
    }
    if !before.bridge_existed
        && has_bridge()
        && let Err(e) = ip(&["link", "del", BRIDGE])
    {
        problems.push(format!("{e:#}"));
    }
    if !before.lo_alias_existed
        && has_lo_alias()
        && let Err(e) = ip(&["addr", "del", &format!("{NODE_IP}/32"), "dev", "lo"])
    {
        problems.push(format!("{e:#}"));
    }
    for (table, chain) in new_chains(before) {
        let (family, table) = table.split_once(':').expect("chains are keyed family:table");
        let prog = if family == "6" { "ip6tables" } else { "iptables" };
        // Rules that jump to the chain go first, then its own rules, then the chain.
        let rules = Command::new(prog).args(["-w", "-t", table, "-S"]).output().map(|o| o.stdout).unwrap_or_default();
        for rule in String::from_utf8_lossy(&rules).lines() {
            if rule.starts_with("-A ")
                && rule.split_whitespace().any(|w| w == chain)
                && !rule.starts_with(&format!("-A {chain} "))
            {
                let args: Vec<&str> = rule[3..].split_whitespace().collect();
                let _ = Command::new(prog).args(["-w", "-t", table, "-D"]).args(&args).output();
            }
        }
        let _ = Command::new(prog).args(["-w", "-t", table, "-F", &chain]).output();
        let ok = Command::new(prog).args(["-w", "-t", table, "-X", &chain]).output().is_ok_and(|o| o.status.success());
        if !ok {
            problems.push(format!("{prog} -t {table} -X {chain} failed"));
        }
    }
    for (name, value) in &before.sysctls {
        if read_sysctl(name).as_deref() != Some(value.as_str())
            && let Err(e) = fs::write(format!("/proc/sys/{name}"), value)
        {
            problems.push(format!("restoring sysctl {} to {value}: {e}", name.replace('/', ".")));
        }
    }
    for cg in kubepods_cgroups().difference(&before.cgroups) {
        remove_cgroup_tree(Path::new(cg), &mut problems);
    }
    for (path, was) in &before.fixed {
        let p = Path::new(path);
        match was {
            None if p.exists() || p.is_symlink() => {
                if let Err(e) = fs::remove_dir_all(p) {
                    problems.push(format!("removing {path}: {e}"));
                }
            }
            Some(old) => {
                for name in entries(p).unwrap_or_default().difference(old) {
                    let child = p.join(name);
                    let res = if child.is_dir() && !child.is_symlink() {
                        fs::remove_dir_all(&child)
                    } else {
                        fs::remove_file(&child)
                    };
                    if let Err(e) = res {
                        problems.push(format!("removing {}: {e}", child.display()));
                    }
                }
            }
            None => {}
        }
    }
    problems
}

fn remove_cgroup_tree(dir: &Path, problems: &mut Vec<String>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path(), problems);
        }
    }
    // A cgroup goes with rmdir once it has no processes and no children; a process that just
    // left may take a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        if Instant::now() > deadline {
            problems.push(format!("removing cgroup {}: {e}", dir.display()));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What differs from the record after restoring: the checks of `down`.
fn leftovers(run: &Path, before: &HostRecord) -> Vec<String> {
    let mut left = Vec::new();
    let pids = node_processes(run);
    if !pids.is_empty() {
        left.push(format!("processes still run: {pids:?}"));
    }
    let l = Layout { root: run.to_path_buf() };
    for c in COMPONENTS {
        if let Some(pid) = proc::live_pid(&l, c) {
            left.push(format!("{c} still runs (pid {pid})"));
        }
    }
    let mounts = new_mounts(run, before);
    if !mounts.is_empty() {
        left.push(format!("mounts left: {}", mounts.join(", ")));
    }
    if !before.bridge_existed && has_bridge() {
        left.push(format!("bridge {BRIDGE} left"));
    }
    if !before.lo_alias_existed && has_lo_alias() {
        left.push(format!("address {NODE_IP}/32 left on lo"));
    }
    let chains = new_chains(before);
    if !chains.is_empty() {
        left.push(format!("iptables chains left: {chains:?}"));
    }
    for (name, value) in &before.sysctls {
        let now = read_sysctl(name);
        if now.as_deref() != Some(value.as_str()) {
            left.push(format!("sysctl {} is {now:?}, was {value}", name.replace('/', ".")));
        }
    }
    let cgroups: Vec<String> = kubepods_cgroups().difference(&before.cgroups).cloned().collect();
    if !cgroups.is_empty() {
        left.push(format!("cgroups left: {}", cgroups.join(", ")));
    }
    for (path, was) in &before.fixed {
        let now = entries(Path::new(path));
        let changed = match (was, &now) {
            (None, None) => false,
            (Some(old), Some(now)) => !now.is_subset(old),
            _ => true,
        };
        if changed {
            left.push(format!("{path} differs from before up"));
        }
    }
    left
}

/// `testenv status` lines for the node.
pub async fn status(out: &mut dyn std::io::Write, run: &Path, info: &EnvInfo) -> Result<bool> {
    let l = Layout { root: run.to_path_buf() };
    let Some(node) = &info.real_node else {
        writeln!(out, "  {:<24} none (KWOK only; GITOPS_TESTENV_REAL_NODE=1 runs it)", "real node")?;
        return Ok(true);
    };
    let mut all = true;
    for name in COMPONENTS {
        let state = match proc::live_pid(&l, name) {
            Some(pid) => format!("running (pid {pid})"),
            None => {
                all = false;
                "stopped".to_owned()
            }
        };
        writeln!(out, "  {name:<24} {state}")?;
    }
    let ready = match crate::kube::kube_client(&info.kubeconfig).await {
        Ok(client) => crate::kube::wait_node_ready(&client, &node.name, Duration::from_millis(1)).await.is_ok(),
        Err(_) => false,
    };
    all &= ready;
    writeln!(
        out,
        "  {:<24} {} {} ({}, pods {}, taint {}={}:NoSchedule)",
        "real node",
        node.name,
        if ready { "Ready" } else { "not Ready" },
        node.ip,
        node.pod_subnet,
        node.taint_key,
        node.taint_value
    )?;
    writeln!(out, "  {:<24} {}; {}; {}", "runtime", node.kubelet_version, node.containerd_version, node.runc_version)?;
    Ok(all)
}
