//! The agent installed as a store installs it: its image built (`xtask::agent_image`) and
//! pushed to the testenv registry, its chart pushed there as an OCI artifact and installed from
//! it with `helm install`, `mode: perNode`, into a namespace that enforces PodSecurity
//! `restricted`, its pod on the real node. Under the chart's ServiceAccount alone, the agent
//! deploys Stack B into its managed namespace, rolls a new tag out on Gitea's webhook and rolls a
//! broken one back; the audit log shows that identity was never refused and wrote nowhere else.
//!
//! The testenv's services listen on the host's loopback, which a pod cannot reach: the agent's
//! pod gets a relay sidecar (the kiosk image's `--relay` mode, `xtask::node_support::HostRelay`)
//! that listens on the pod's loopback at the same ports, so the agent's URLs, TLS names and the
//! registry's token realm are those of every other test. A store's agent reaches its Gitea and
//! Harbor over the store's network instead; the sidecar is test infrastructure, added through the
//! chart's `extraContainers` value.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use xtask::images::{Kiosk, push_kiosk};
use xtask::node_support::{HostRelay, PULL_SECRET, pull_secret, real_node};
use xtask::support::{TestEnv, unique};

use crate::util::{git, try_wait_for, wait_for};

/// The ServiceAccount the chart makes (the release is named after the chart).
const RELEASE: &str = "gitops-agent";
const WEBHOOK_SECRET: &str = "install-test-webhook-secret-3b7d";

fn helm(env: &TestEnv, home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(&env.info.helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("HELM_REGISTRY_CONFIG", home.join("registry.json"))
        .env("KUBECONFIG", &env.info.kubeconfig)
        .output()
        .expect("running helm");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn apply<K>(api: &Api<K>, name: &str, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("install-test").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// The agent's pod of the release (the newest, when a rolling update runs two).
async fn agent_pods(client: &kube::Client, ns: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=gitops-agent")).await.unwrap().items;
    list.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    list
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A client for the pod network: never through a proxy the environment names, and never
/// waiting for ever on a pod that stopped answering.
fn pod_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("an HTTP client")
}

async fn status(ip: &str) -> Result<Value, String> {
    let r = pod_client().get(format!("http://{ip}:8080/status")).send().await.map_err(|e| format!("{e:?}"))?;
    let body = r.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// The agent process of pod `uid` as the host sees it: (the Uid line of /proc/PID/status, the
/// options of its root mount).
fn agent_process(uid: &str) -> Result<(String, String), String> {
    let cgroup_part = uid.replace('-', "_");
    for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        if !cmdline.starts_with(b"/agent\0run\0") {
            continue;
        }
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&cgroup_part) && !cgroup.contains(uid) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).map_err(|e| e.to_string())?;
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
        let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).map_err(|e| e.to_string())?;
        // Fields: id parent major:minor root mount-point options ...
        let root = mountinfo
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.len() > 5 && f[4] == "/")
            .map(|f| f[5].to_owned())
            .unwrap_or_default();
        return Ok((uid_line, root));
    }
    Err(format!("no process `/agent run` in the cgroup of pod {uid}"))
}

/// A store with the agent installed by its chart: the image and chart pushed by "CI", the agent's
/// namespace (PodSecurity `restricted` enforced) with its Secrets, a managed namespace, the git
/// repository, and `helm install` done.
struct Store {
    env: &'static TestEnv,
    client: kube::Client,
    home: tempfile::TempDir,
    hint: String,
    inputs: xtask::agent_image::Inputs,
    built: xtask::agent_image::Built,
    image_repo: String,
    chart: String,
    agent_ns: xtask::support::TestNamespace,
    app_ns: xtask::support::TestNamespace,
    repo: xtask::support::GitRepo,
    work: std::path::PathBuf,
    /// The release's values (JSON), as installed.
    values: Value,
    installed_at: Instant,
    _relay: HostRelay,
}

impl Store {
    /// Everything up to `helm install`; `config` is the agent's config in values (git path, poll
    /// interval) and `managed` the namespaces besides the app's that the agent manages.
    async fn install(hint: &str, git: Value, also_manage_own: bool) -> Store {
        let env = TestEnv::get();
        let info = &env.info;
        let node = real_node(info).clone();
        let client = env.client().await;
        let home = tempfile::tempdir().unwrap();
        let hint = unique(hint);

        // CI: the agent's image and chart into the registry.
        let image_repo = format!("tests/{hint}/gitops-agent");
        let relay_repo = format!("tests/{hint}/relay");
        let inputs = xtask::agent_image::inputs(Some("https://git.example.invalid/gitops-agent")).unwrap();
        let built = xtask::agent_image::build(&inputs, &home.path().join("image")).unwrap();
        let pushed =
            xtask::images::push_layout(info, &built.dir, &built.tag, &format!("{image_repo}:{}", built.tag)).unwrap();
        assert_eq!(pushed, built.digest, "the registry holds the image that was built");
        push_kiosk(info, &relay_repo, "1", Kiosk::App).unwrap();
        let (chart, chart_digest) = xtask::chart::push(info, &format!("tests/{hint}/charts")).unwrap();
        assert!(chart_digest.starts_with("sha256:"), "{chart_digest}");

        // The store: namespaces, Secrets, the git repository.
        let agent_ns = env.namespace("agent").await;
        let app_ns = env.namespace("stack-b").await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &agent_ns.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest"}}})),
            )
            .await
            .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &agent_ns.name);
        for (name, key, value) in [
            ("git-credentials", "token", info.git_agent.password.as_str()),
            ("registry-robot", "password", info.registry_agent.password.as_str()),
            ("webhooks", "gitea", WEBHOOK_SECRET),
        ] {
            let secret =
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}});
            apply(&secrets, name, secret).await;
        }
        let ca = std::fs::read_to_string(&info.ca_cert).unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &agent_ns.name);
        let ca_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "testenv-ca"}, "data": {"ca.crt": ca}});
        apply(&cms, "testenv-ca", ca_map).await;
        pull_secret(&client, info, &agent_ns.name).await.unwrap();
        let repo = env.git_repo(&hint);
        let work = home.path().join("repo");

        // The values: the store's sources, the real node, and the relay sidecar.
        let relay =
            HostRelay::start(&node, &[info.ports.apiserver, info.ports.git, info.ports.registry, info.ports.token])
                .await
                .unwrap();
        let mut command = vec![json!("/kiosk-app")];
        command.extend(relay.args().into_iter().map(Value::from));
        let mut managed = vec![json!(app_ns.name)];
        if also_manage_own {
            managed.push(json!(agent_ns.name));
        }
        let mut git = git;
        git["url"] = json!(repo.url);
        git["caConfigMapRef"] = json!({"name": "testenv-ca", "key": "ca.crt"});
        git["auth"] =
            json!({"username": info.git_agent.username, "secretRef": {"name": "git-credentials", "key": "token"}});
        let values = json!({
            "mode": "perNode",
            "image": {"repository": format!("{}/{image_repo}", info.registry), "tag": built.tag},
            "imagePullSecrets": [{"name": PULL_SECRET}],
            "managedNamespaces": managed,
            "persistence": {"type": "emptyDir"},
            "nodeSelector": {node.label_key.clone(): node.label_value},
            "tolerations": [{"key": node.taint_key, "operator": "Equal", "value": node.taint_value, "effect": "NoSchedule"}],
            // The pod reaches the API server through the relay on its own loopback.
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": info.ports.apiserver.to_string()},
            ],
            "extraContainers": [{
                "name": "relay", "image": format!("{}/{relay_repo}:1", info.registry), "command": command,
                "securityContext": restricted(),
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
            }],
            "config": {
                "git": git,
                "registries": [{
                    "host": info.registry,
                    "caConfigMapRef": {"name": "testenv-ca", "key": "ca.crt"},
                    "auth": {"username": info.registry_agent.username, "secretRef": {"name": "registry-robot", "key": "password"}},
                }],
                "server": {"webhooks": [{"sender": "gitea", "secretRef": {"name": "webhooks", "key": "gitea"}}]},
                "rollout": {"progressDeadline": "60s", "verifyWindow": "0s"},
                "leaderElection": {"enabled": true, "leaseDuration": "5s"},
            },
        });
        xtask::chart::login(home.path(), info, &info.registry_agent).unwrap();
        Store {
            env,
            client,
            home,
            hint,
            inputs,
            built,
            image_repo,
            chart,
            agent_ns,
            app_ns,
            repo,
            work,
            values,
            installed_at: Instant::now(),
            _relay: relay,
        }
    }

    fn helm(&self, args: &[&str]) -> (bool, String) {
        helm(self.env, self.home.path(), args)
    }

    /// `helm install` (or `upgrade`) of the release from the registry with the store's values
    /// and `extra` arguments.
    fn helm_release(&mut self, verb: &str, extra: &[&str]) -> String {
        let path = self.home.path().join("values.json");
        std::fs::write(&path, self.values.to_string()).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        let ca = self.env.info.ca_cert.to_str().unwrap().to_owned();
        let mut args = vec![verb, RELEASE, &self.chart, "--version", version, "--ca-file", &ca];
        args.extend(["-n", &self.agent_ns.name, "--values", path.to_str().unwrap()]);
        args.extend(extra);
        self.installed_at = Instant::now();
        let (ok, out) = self.helm(&args);
        assert!(ok, "helm {verb}: {out}");
        out
    }

    async fn pods(&self) -> Vec<Pod> {
        agent_pods(&self.client, &self.agent_ns.name).await
    }

    /// Waits until the release's pods are one Ready pod (none terminating); returns it.
    async fn one_ready_pod(&self, what: &str, timeout: Duration) -> Pod {
        wait_for(what, timeout, || async {
            let pods = self.pods().await;
            match pods.as_slice() {
                [p] if ready(p) && p.metadata.deletion_timestamp.is_none() => Ok(p.clone()),
                other => Err(format!("{:?}", other.iter().map(|p| (&p.metadata.name, ready(p))).collect::<Vec<_>>())),
            }
        })
        .await
    }

    /// `bundle` in the status of a Ready agent pod (whichever: during a rolling update of the
    /// agent itself the pods change, and a standby's status shows the same records).
    async fn bundle(&self, bundle: &str) -> Result<(Pod, Value), String> {
        let pods = self.pods().await;
        let mut last = "no Ready agent pod".to_owned();
        for p in pods.iter().rev().filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none()) {
            match status(&pod_ip(p)).await {
                Ok(s) => {
                    let b = s["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == bundle)).cloned();
                    return b.map(|b| (p.clone(), b)).ok_or_else(|| format!("no {bundle} in {s}"));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until `bundle`, in the status of a Ready agent pod, passes `done`; returns that pod
    /// and the bundle. On a timeout the pods' states, their events and the agent's log are
    /// printed before the test fails: a pod that restarted or moved is then plain to see.
    async fn wait_bundle(
        &self,
        what: &str,
        bundle: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> (Pod, Value) {
        let waited = try_wait_for(what, timeout, || async {
            let (p, b) = self.bundle(bundle).await?;
            if done(&b) { Ok((p, b)) } else { Err(b.to_string()) }
        })
        .await;
        match waited {
            Ok(found) => found,
            Err(e) => {
                self.diagnose().await;
                panic!("{e}");
            }
        }
    }

    /// Waits until `bundle` runs `commit`, synced.
    async fn wait_running(&self, bundle: &str, commit: &str, timeout: Duration) -> (Pod, Value) {
        self.wait_bundle(&format!("{bundle} running {commit}"), bundle, timeout, |b| {
            b["running"]["commit"] == commit && b["state"] == "synced"
        })
        .await
    }

    /// Waits until `bundle`'s last revision is `broken`, rolled back.
    async fn wait_rolled_back(&self, bundle: &str, broken: &str, timeout: Duration) -> (Pod, Value) {
        self.wait_bundle(&format!("{bundle}'s {broken} rolled back"), bundle, timeout, |b| {
            b["last"]["commit"] == broken && b["last"]["result"] == "rolledBack"
        })
        .await
    }

    /// Prints what a failed wait needs explained: each agent pod (IP, readiness, restarts, last
    /// termination), the agent namespace's events, and the tail of each agent container's log.
    async fn diagnose(&self) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.agent_ns.name);
        for p in self.pods().await {
            let name = p.metadata.name.clone().unwrap_or_default();
            let status = p.status.clone().unwrap_or_default();
            eprintln!(
                "diagnose: pod {name} uid {:?} phase {:?} ip {:?} ready {} deleting {}",
                p.metadata.uid,
                status.phase,
                status.pod_ip,
                ready(&p),
                p.metadata.deletion_timestamp.is_some()
            );
            for c in status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten()) {
                eprintln!(
                    "diagnose:   {} ready {} restarts {} state {:?} last {:?}",
                    c.name, c.ready, c.restart_count, c.state, c.last_state
                );
            }
            for previous in [false, true] {
                let params = kube::api::LogParams {
                    container: Some("agent".to_owned()),
                    previous,
                    tail_lines: Some(60),
                    ..Default::default()
                };
                match pods.logs(&name, &params).await {
                    Ok(log) => eprintln!("diagnose:   log of agent (previous: {previous}):\n{log}"),
                    Err(e) => eprintln!("diagnose:   no log of agent (previous: {previous}): {e}"),
                }
            }
        }
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &self.agent_ns.name);
        match events.list(&ListParams::default()).await {
            Ok(list) => {
                for e in list.items {
                    eprintln!(
                        "diagnose: event {} {:?} {:?}: {}",
                        e.involved_object.name.unwrap_or_default(),
                        e.type_,
                        e.reason,
                        e.message.unwrap_or_default()
                    );
                }
            }
            Err(e) => eprintln!("diagnose: no events: {e}"),
        }
    }

    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        xtask::seed::git_push(&self.env.info, &self.env.info.git_ci, &self.work, &self.repo.name, "main").unwrap();
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_owned()
    }
}

fn restricted() -> Value {
    json!({
        "runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}})
}

fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a Ready pod has an IP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installed_from_the_registry_runs_the_agent_on_the_real_node_under_its_own_rbac() {
    let git_config = json!({"path": "stack-b", "pollInterval": "1h"});
    let mut store = Store::install("install", git_config, false).await;
    let env = store.env;
    let info = &env.info;
    let node = real_node(info).clone();
    let client = store.client.clone();

    // Stack B, every image from the test's own registry repositories (pushed as CI would), so
    // the test depends on no other's pushes and on no `testenv seed`: the signalling image that
    // the test moves, and the chart's others (`library/...` in the fixture).
    let prefix = format!("tests/{}", store.hint);
    let signalling_repo = format!("{prefix}/signalling");
    std::thread::scope(|s| {
        for tag in ["1.0.0", "1.1.0", "1.2.0-broken"] {
            let repo = &signalling_repo;
            s.spawn(move || env.push_image(repo, tag));
        }
        for name in ["u5-orchestrator", "u5-signalling", "session-store"] {
            let repo = format!("{prefix}/{name}");
            s.spawn(move || env.push_image(&repo, "1.0.0"));
        }
    });
    let made = Command::new("bash")
        .arg(xtask::paths::workspace_root().join("fixtures/stack-b/make-repo.sh"))
        .args([store.work.to_str().unwrap(), &info.registry, &store.app_ns.name])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let values_file = store.work.join("stack-b/helm/values.yaml");
    let set_signalling = |tag: &str| {
        let text = std::fs::read_to_string(&values_file).unwrap();
        let start = text.find("signalling:\n  image:\n").expect("the signalling image in values.yaml");
        let (head, rest) = text.split_at(start);
        let end = rest.find("  replicas:").unwrap();
        let block = format!("signalling:\n  image:\n    repository: {signalling_repo}\n    tag: \"{tag}\"\n");
        std::fs::write(&values_file, format!("{head}{block}{}", &rest[end..])).unwrap();
    };
    let text = std::fs::read_to_string(&values_file).unwrap();
    assert!(text.contains("repository: library/"), "the fixture's images in values.yaml");
    std::fs::write(&values_file, text.replace("repository: library/", &format!("repository: {prefix}/"))).unwrap();
    set_signalling("1.0.0");
    // The KWOK node has one GPU, which the orchestrator of any other Stack B in the cluster may
    // hold: this one asks for none, so parallel tests do not queue for it.
    let text = std::fs::read_to_string(&values_file).unwrap();
    assert!(text.contains("  gpu: 1\n"), "the orchestrator's GPU in values.yaml");
    std::fs::write(&values_file, text.replace("  gpu: 1\n", "  gpu: 0\n")).unwrap();
    let first = store.commit("signalling from its own repository, no GPU");

    // helm install from the registry, as the store's pull robot.
    let out = store.helm_release("install", &[]);
    assert!(out.contains("agent status"), "NOTES.txt says how to see agent status: {out}");
    let pod = store.one_ready_pod("the agent's pod Ready on the real node", Duration::from_secs(180)).await;
    eprintln!(
        "install: the agent's pod was Ready {:.1}s after helm install",
        store.installed_at.elapsed().as_secs_f64()
    );
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node.name.as_str()));
    let uid = pod.metadata.uid.clone().unwrap();
    let (uid_line, root) = agent_process(&uid).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "65532"), "the agent runs as 65532: {uid_line}");
    assert!(root.split(',').any(|o| o == "ro"), "the root file system is read-only: {root}");

    // PodSecurity restricted is enforced in that namespace: a pod with a hostPath is refused.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &store.agent_ns.name);
    let host_path: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "host-path"},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": restricted()}],
                 "volumes": [{"name": "h", "hostPath": {"path": "/var/lib/gitops-agent"}}]}}))
    .unwrap();
    let refused = pods.create(&PostParams { dry_run: true, ..Default::default() }, &host_path).await.unwrap_err();
    assert!(refused.to_string().contains("restricted"), "{refused}");

    // The agent's job, from inside its pod.
    let (serving, _) = store.wait_running("helm", &first, Duration::from_secs(180)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &store.app_ns.name);
    let signalling_image = || async {
        let list = deployments.list(&ListParams::default().labels("app.kubernetes.io/name=signalling")).await.unwrap();
        list.items[0].spec.clone().unwrap().template.spec.unwrap().containers[0].image.clone().unwrap()
    };
    assert!(
        signalling_image().await.contains(&format!("{signalling_repo}:1.0.0@sha256:")),
        "{}",
        signalling_image().await
    );

    let (repo_name, repo_url) = (store.repo.name.clone(), store.repo.url.clone());
    // The webhook goes to the pod that serves (its IP as it is now: a pod whose sandbox was
    // made anew has a new one).
    let gitea = |pod: &Pod, after: &str| {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "after": after,
            "repository": {"full_name": format!("ci/{repo_name}"), "clone_url": repo_url},
        }))
        .unwrap();
        let signature = shared::webhook::signature(WEBHOOK_SECRET.as_bytes(), &body);
        let url = format!("http://{}:8080/webhooks/gitea", pod_ip(pod));
        async move {
            let r = pod_client()
                .post(url)
                .header("x-gitea-event", "push")
                .header("x-gitea-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    set_signalling("1.1.0");
    let good = store.commit("signalling 1.1.0");
    assert_eq!(gitea(&serving, &good).await, 202);
    let (serving, _) = store.wait_running("helm", &good, Duration::from_secs(120)).await;
    assert!(signalling_image().await.contains(":1.1.0@sha256:"), "{}", signalling_image().await);

    set_signalling("1.2.0-broken");
    let broken = store.commit("signalling 1.2.0-broken");
    assert_eq!(gitea(&serving, &broken).await, 202);
    let (_, b) = store.wait_rolled_back("helm", &broken, Duration::from_secs(180)).await;
    assert_eq!(b["running"]["commit"], good.as_str(), "{b}");
    assert!(signalling_image().await.contains(":1.1.0@sha256:"), "{}", signalling_image().await);

    // Only what the chart granted, and only where.
    check_audit(&store).await;

    // A bad config value: a clear start-up error, the running agent untouched.
    store.helm_release("upgrade", &["--set", "config.git.pollInterval=1s"]);
    let message = wait_for("the new pod's validate container to fail", Duration::from_secs(120), || async {
        let pods = store.pods().await;
        let newest = pods.last().ok_or("no pod")?;
        if newest.metadata.uid.as_deref() == Some(uid.as_str()) {
            return Err("no new pod yet".to_owned());
        }
        let statuses = newest.status.as_ref().and_then(|s| s.init_container_statuses.clone()).unwrap_or_default();
        let validate = statuses.iter().find(|s| s.name == "validate").ok_or("no validate status")?;
        let terminated = validate
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .or_else(|| validate.state.as_ref().and_then(|s| s.terminated.clone()));
        match terminated {
            Some(t) if t.exit_code != 0 => Ok(t.message.unwrap_or_default()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(message.contains("git.pollInterval") && message.contains("line"), "the field and its line: {message}");
    let still = store.pods().await;
    let old = still.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())).expect("the old pod still runs");
    assert!(ready(old), "the old agent keeps serving while the new one cannot start");
    assert!(status(&pod_ip(old)).await.is_ok());

    let (ok, out) = store.helm(&["uninstall", RELEASE, "-n", &store.agent_ns.name, "--wait"]);
    assert!(ok, "helm uninstall: {out}");
}

/// The audit log of the agent's ServiceAccount: never refused, no write outside its namespaces.
async fn check_audit(store: &Store) {
    let user = format!("system:serviceaccount:{}:{RELEASE}", store.agent_ns.name);
    let events: Vec<Value> = store
        .env
        .audit_events_settled(&store.agent_ns.name)
        .await
        .into_iter()
        .filter(|e| e["user"]["username"] == user.as_str())
        .collect();
    assert!(events.len() > 20, "the agent's requests are in the audit log: {}", events.len());
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(refused.is_empty(), "requests the chart's RBAC refused: {refused:#?}");
    let writes_elsewhere: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e["verb"].as_str(), Some("get" | "list" | "watch")))
        .filter(|e| {
            let ns = e["objectRef"]["namespace"].as_str().unwrap_or_default();
            ns != store.agent_ns.name && ns != store.app_ns.name
        })
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(writes_elsewhere.is_empty(), "writes outside its namespaces: {writes_elsewhere:#?}");
}

/// The agent's own chart as a bundle in its Git repository, as Flux's bootstrap manages Flux:
/// the agent adopts the release `helm install` made, rolls out a new agent image (a new pod
/// beside the old one, which hands over), and rolls a broken one back while the old pod serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_upgrades_itself_through_git_and_rolls_a_broken_image_of_itself_back() {
    let git_config = json!({"path": ".", "pollInterval": "5s"});
    let mut store = Store::install("self-upgrade", git_config, true).await;
    let info = &store.env.info;

    // Two more releases of the agent: a new one (only its version label differs) and a broken
    // one (its entrypoint refuses to start).
    let new =
        xtask::agent_image::variant(&store.inputs, &store.built, &store.home.path().join("new"), "0.1.1-test", |c| {
            c["Labels"]["org.opencontainers.image.version"] = json!("0.1.1-test");
        })
        .unwrap();
    let broken = xtask::agent_image::variant(
        &store.inputs,
        &store.built,
        &store.home.path().join("broken"),
        "0.1.2-broken",
        |c| {
            c["Entrypoint"] = json!(["/agent", "--no-such-flag"]);
        },
    )
    .unwrap();
    for b in [&new, &broken] {
        let pushed =
            xtask::images::push_layout(info, &b.dir, &b.tag, &format!("{}:{}", store.image_repo, b.tag)).unwrap();
        assert_eq!(pushed, b.digest);
    }
    assert_ne!(new.digest, store.built.digest);

    // The bundle: the chart as in the repository, its values the release's minus what the
    // cluster admin installed (RBAC and the ServiceAccount stay helm's).
    let chart_dir = store.work.join("gitops-agent/chart");
    copy_dir(&xtask::chart::dir(), &chart_dir);
    let (base_values, agent_ns, work) = (store.values.clone(), store.agent_ns.name.clone(), store.work.clone());
    let fleet = |tag: &str| {
        let mut values = base_values.clone();
        values["image"]["tag"] = json!(tag);
        values["rbac"] = json!({"create": false});
        values["serviceAccount"] = json!({"create": false, "name": RELEASE});
        let fleet = json!({
            "defaultNamespace": agent_ns,
            "helm": {"chart": "./chart", "releaseName": RELEASE, "values": values},
        });
        std::fs::write(work.join("gitops-agent/fleet.yaml"), fleet.to_string()).unwrap();
    };
    git(&store.work, &["init", "-q", "-b", "main"]);
    fleet(&store.built.tag);
    let first = store.commit("the agent manages itself");

    store.helm_release("install", &[]);
    store.one_ready_pod("the agent's pod Ready", Duration::from_secs(180)).await;
    // It adopts the release helm made, then applies Git's revision of itself (its labels on the
    // pod template: a new pod beside the old one, which hands over).
    let adopted = wait_for("the agent running its own bundle", Duration::from_secs(240), || async {
        let (p, b) = store.bundle("gitops-agent").await?;
        if b["running"]["commit"] == first.as_str() && b["state"] == "synced" {
            Ok((p, b))
        } else {
            Err(format!("{b}"))
        }
    })
    .await;
    eprintln!("self-upgrade: runs its own bundle; history: {}", adopted.1["counts"]);
    let serving = store.one_ready_pod("one agent pod", Duration::from_secs(120)).await;

    // A new agent image through Git: a new pod beside the old one, which hands over.
    fleet(&new.tag);
    let upgrade = store.commit("agent 0.1.1-test");
    let upgraded = wait_for("the new agent image rolled out", Duration::from_secs(240), || async {
        let (p, b) = store.bundle("gitops-agent").await?;
        let image = p.spec.as_ref().map(|s| s.containers[0].image.clone().unwrap_or_default()).unwrap_or_default();
        if b["running"]["commit"] == upgrade.as_str() && b["state"] == "synced" && image.contains(&new.digest) {
            Ok(p)
        } else {
            Err(format!("{image}: {b}"))
        }
    })
    .await;
    assert_ne!(upgraded.metadata.uid, serving.metadata.uid, "a new pod runs the new image");
    let upgraded = store.one_ready_pod("the old agent pod gone", Duration::from_secs(120)).await;
    assert!(upgraded.spec.as_ref().unwrap().containers[0].image.clone().unwrap().contains(&new.digest));

    // A broken agent image: its pod never starts; the running agent rolls it back and serves on.
    fleet(&broken.tag);
    let bad = store.commit("agent 0.1.2-broken");
    let (_, b) = store.wait_rolled_back("gitops-agent", &bad, Duration::from_secs(240)).await;
    assert_eq!(b["running"]["commit"], upgrade.as_str(), "{b}");
    let after = store.one_ready_pod("the broken pod gone, the agent serving", Duration::from_secs(120)).await;
    assert_eq!(after.metadata.uid, upgraded.metadata.uid, "the pod that served before serves on");
    assert!(after.spec.as_ref().unwrap().containers[0].image.clone().unwrap().contains(&new.digest));
    check_audit(&store).await;

    let (ok, out) = store.helm(&["uninstall", RELEASE, "-n", &store.agent_ns.name, "--wait"]);
    assert!(ok, "helm uninstall: {out}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
