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

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use xtask::images::{Kiosk, push_kiosk};
use xtask::node_support::{HostRelay, PULL_SECRET, pull_secret, real_node};
use xtask::support::{TestEnv, unique};

use crate::util::{git, wait_for};

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

async fn status(ip: &str) -> Result<Value, String> {
    let r = reqwest::get(format!("http://{ip}:8080/status")).await.map_err(|e| e.to_string())?;
    let body = r.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// Waits until the agent at `ip` says bundle `helm` runs `commit`, synced.
async fn wait_running(ip: &str, commit: &str, timeout: Duration) -> Value {
    wait_for(&format!("Stack B running {commit}"), timeout, || async {
        let s = status(ip).await?;
        let b = s["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == "helm")).cloned();
        match b {
            Some(b) if b["running"]["commit"] == commit && b["state"] == "synced" => Ok(b),
            other => Err(format!("{other:?}")),
        }
    })
    .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installed_from_the_registry_runs_the_agent_on_the_real_node_under_its_own_rbac() {
    let env = TestEnv::get();
    let info = &env.info;
    let node = real_node(info).clone();
    let client = env.client().await;
    let home = tempfile::tempdir().unwrap();
    let hint = unique("install");

    // ---- CI: the agent's image and chart into the registry --------------------------------
    let image_repo = format!("tests/{hint}/gitops-agent");
    let relay_repo = format!("tests/{hint}/relay");
    let built = {
        let inputs = xtask::agent_image::inputs(Some("https://git.example.invalid/gitops-agent")).unwrap();
        let built = xtask::agent_image::build(&inputs, &home.path().join("image")).unwrap();
        let pushed =
            xtask::images::push_layout(info, &built.dir, &built.tag, &format!("{image_repo}:{}", built.tag)).unwrap();
        assert_eq!(pushed, built.digest, "the registry holds the image that was built");
        built
    };
    push_kiosk(info, &relay_repo, "1", Kiosk::App).unwrap();
    let (chart, chart_digest) = xtask::chart::push(info, &format!("tests/{hint}/charts")).unwrap();
    assert!(chart_digest.starts_with("sha256:"), "{chart_digest}");

    // ---- The store: namespaces, Secrets, the git repository -----------------------------
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
        apply(
            &secrets,
            name,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}),
        )
        .await;
    }
    let ca = std::fs::read_to_string(&info.ca_cert).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &agent_ns.name);
    apply(
        &cms,
        "testenv-ca",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "testenv-ca"}, "data": {"ca.crt": ca}}),
    )
    .await;
    pull_secret(&client, info, &agent_ns.name).await.unwrap();

    let repo = env.git_repo("install");
    let work = home.path().join("repo");
    let signalling_repo = format!("tests/{hint}/signalling");
    for tag in ["1.0.0", "1.1.0", "1.2.0-broken"] {
        env.push_image(&signalling_repo, tag);
    }
    let made = Command::new("bash")
        .arg(xtask::paths::workspace_root().join("fixtures/stack-b/make-repo.sh"))
        .args([work.to_str().unwrap(), &info.registry, &app_ns.name])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let values_file = work.join("stack-b/helm/values.yaml");
    let set_signalling = |tag: &str| {
        let text = std::fs::read_to_string(&values_file).unwrap();
        let start = text.find("signalling:\n  image:\n").expect("the signalling image in values.yaml");
        let (head, rest) = text.split_at(start);
        let end = rest.find("  replicas:").unwrap();
        let block = format!("signalling:\n  image:\n    repository: {signalling_repo}\n    tag: \"{tag}\"\n");
        std::fs::write(&values_file, format!("{head}{block}{}", &rest[end..])).unwrap();
    };
    let commit = |message: &str| {
        git(&work, &["-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qam", message]);
        xtask::seed::git_push(info, &info.git_ci, &work, &repo.name, "main").unwrap();
        git(&work, &["rev-parse", "HEAD"]).trim().to_owned()
    };
    set_signalling("1.0.0");
    let first = commit("signalling from its own repository");

    // ---- helm install from the registry, as the store's pull robot -------------------------
    let relay = HostRelay::start(&node, &[info.ports.apiserver, info.ports.git, info.ports.registry, info.ports.token])
        .await
        .unwrap();
    let restricted = json!({
        "runAsNonRoot": true, "runAsUser": 65532, "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}});
    let mut command = vec![json!("/kiosk-app")];
    command.extend(relay.args().into_iter().map(Value::from));
    let values = json!({
        "mode": "perNode",
        "image": {"repository": format!("{}/{image_repo}", info.registry), "tag": built.tag},
        "imagePullSecrets": [{"name": PULL_SECRET}],
        "managedNamespaces": [app_ns.name],
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
            "securityContext": restricted,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        }],
        "config": {
            "git": {
                "url": repo.url, "path": "stack-b", "pollInterval": "1h",
                "caConfigMapRef": {"name": "testenv-ca", "key": "ca.crt"},
                "auth": {"username": info.git_agent.username, "secretRef": {"name": "git-credentials", "key": "token"}},
            },
            "registries": [{
                "host": info.registry,
                "caConfigMapRef": {"name": "testenv-ca", "key": "ca.crt"},
                "auth": {"username": info.registry_agent.username, "secretRef": {"name": "registry-robot", "key": "password"}},
            }],
            "server": {"webhooks": [{"sender": "gitea", "secretRef": {"name": "webhooks", "key": "gitea"}}]},
            "rollout": {"progressDeadline": "60s", "verifyWindow": "0s"},
        },
    });
    let values_path = home.path().join("values.json");
    std::fs::write(&values_path, values.to_string()).unwrap();
    xtask::chart::login(home.path(), info, &info.registry_agent).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let ca_file = info.ca_cert.to_str().unwrap();
    let installed_at = Instant::now();
    let (ok, out) = helm(
        env,
        home.path(),
        &[
            "install",
            RELEASE,
            &chart,
            "--version",
            version,
            "--ca-file",
            ca_file,
            "-n",
            &agent_ns.name,
            "--values",
            values_path.to_str().unwrap(),
        ],
    );
    assert!(ok, "helm install: {out}");
    assert!(out.contains("agent status"), "NOTES.txt says how to see agent status: {out}");

    let pod = wait_for("the agent's pod Ready on the real node", Duration::from_secs(180), || async {
        let pods = agent_pods(&client, &agent_ns.name).await;
        match pods.last() {
            Some(p) if ready(p) => Ok(p.clone()),
            other => Err(format!("{:?}", other.map(|p| &p.status))),
        }
    })
    .await;
    let to_ready = installed_at.elapsed();
    eprintln!("install: the agent's pod was Ready {:.1}s after helm install", to_ready.as_secs_f64());
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let (uid_line, root) = agent_process(&uid).unwrap();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == "65532"), "the agent runs as 65532: {uid_line}");
    assert!(root.split(',').any(|o| o == "ro"), "the root file system is read-only: {root}");

    // PodSecurity restricted is enforced in that namespace: a pod with a hostPath is refused.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &agent_ns.name);
    let host_path: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "host-path"},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": restricted}],
                 "volumes": [{"name": "h", "hostPath": {"path": "/var/lib/gitops-agent"}}]}}))
    .unwrap();
    let refused = pods.create(&PostParams { dry_run: true, ..Default::default() }, &host_path).await.unwrap_err();
    assert!(refused.to_string().contains("restricted"), "{refused}");

    // ---- The agent's job, from inside its pod --------------------------------------------
    wait_running(&ip, &first, Duration::from_secs(180)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &app_ns.name);
    let signalling_image = || async {
        let list = deployments.list(&ListParams::default().labels("app.kubernetes.io/name=signalling")).await.unwrap();
        list.items[0].spec.clone().unwrap().template.spec.unwrap().containers[0].image.clone().unwrap()
    };
    assert!(
        signalling_image().await.contains(&format!("{signalling_repo}:1.0.0@sha256:")),
        "{}",
        signalling_image().await
    );

    let gitea = |after: &str| {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "after": after,
            "repository": {"full_name": format!("ci/{}", repo.name), "clone_url": repo.url},
        }))
        .unwrap();
        let signature = shared::webhook::signature(WEBHOOK_SECRET.as_bytes(), &body);
        let url = format!("http://{ip}:8080/webhooks/gitea");
        async move {
            let r = reqwest::Client::new()
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
    let good = commit("signalling 1.1.0");
    assert_eq!(gitea(&good).await, 202);
    wait_running(&ip, &good, Duration::from_secs(120)).await;
    assert!(signalling_image().await.contains(":1.1.0@sha256:"), "{}", signalling_image().await);

    set_signalling("1.2.0-broken");
    let broken = commit("signalling 1.2.0-broken");
    assert_eq!(gitea(&broken).await, 202);
    let b = wait_for("the broken tag rolled back", Duration::from_secs(180), || async {
        let s = status(&ip).await?;
        let b = s["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == "helm")).cloned();
        match b {
            Some(b) if b["last"]["commit"] == broken.as_str() && b["last"]["result"] == "rolledBack" => Ok(b),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(b["running"]["commit"], good.as_str(), "{b}");
    assert!(signalling_image().await.contains(":1.1.0@sha256:"), "{}", signalling_image().await);

    // ---- Only what the chart granted, and only where ----------------------------------------
    let user = format!("system:serviceaccount:{}:{RELEASE}", agent_ns.name);
    let events: Vec<Value> = env
        .audit_events_settled(&agent_ns.name)
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
            ns != agent_ns.name && ns != app_ns.name
        })
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(writes_elsewhere.is_empty(), "writes outside its namespaces: {writes_elsewhere:#?}");

    // ---- A bad config value: a clear start-up error, the running agent untouched ------------
    let (ok, out) = helm(
        env,
        home.path(),
        &[
            "upgrade",
            RELEASE,
            &chart,
            "--version",
            version,
            "--ca-file",
            ca_file,
            "-n",
            &agent_ns.name,
            "--values",
            values_path.to_str().unwrap(),
            "--set",
            "config.git.pollInterval=1s",
        ],
    );
    assert!(ok, "helm upgrade: {out}");
    let message = wait_for("the new pod's validate container to fail", Duration::from_secs(120), || async {
        let pods = agent_pods(&client, &agent_ns.name).await;
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
    let still = agent_pods(&client, &agent_ns.name).await;
    let old = still.iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())).expect("the old pod still runs");
    assert!(ready(old), "the old agent keeps serving while the new one cannot start");
    assert!(status(&ip).await.is_ok());

    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &agent_ns.name);
    assert!(daemonsets.get(RELEASE).await.is_ok());
    let (ok, out) = helm(env, home.path(), &["uninstall", RELEASE, "-n", &agent_ns.name, "--wait"]);
    assert!(ok, "helm uninstall: {out}");
    drop(relay);
}
