//! The agent's Helm chart `deploy/chart/gitops-agent`: `cargo xtask chart [--push REPO]` lints
//! it (`helm lint --strict`), packages it, and pushes it as an OCI artifact to the testenv
//! registry as the CI robot (`helm push`), as a store's CI would to Harbor. The tests below render
//! it in both modes and hold it to its promises: least-privilege RBAC with no wildcard, a pod
//! PodSecurity `restricted` admits, credentials only from existing Secrets, and the k3s/RKE2
//! `HelmChart` example rendering.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::testenv::EnvInfo;
use crate::{paths, tools};

/// The chart's folder in the repository.
pub fn dir() -> PathBuf {
    paths::workspace_root().join("deploy/chart/gitops-agent")
}

/// The two values a release must give (everything else has a default).
pub const REQUIRED_VALUES: &[&str] =
    &["config.git.url=https://git.example.internal/store.git", "managedNamespaces[0]=kiosk"];

fn helm() -> Result<PathBuf> {
    let (helm, _) = tools::ensure_renderers()?;
    Ok(helm)
}

/// `helm` with its homes in `home` (never the user's: no repositories, no registry logins).
fn helm_in(home: &Path) -> Result<Command> {
    let mut c = Command::new(helm()?);
    for (var, sub) in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")] {
        c.env(var, home.join(sub));
    }
    c.env("HELM_REGISTRY_CONFIG", home.join("registry.json")).env_remove("KUBECONFIG");
    Ok(c)
}

fn output(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// `helm lint --strict` with the required values.
pub fn lint(home: &Path) -> Result<String> {
    let mut c = helm_in(home)?;
    c.args(["lint", "--strict"]).arg(dir());
    for v in REQUIRED_VALUES {
        c.args(["--set", v]);
    }
    output(c, "helm lint")
}

/// `helm template` of the chart with `values` (YAML) in `namespace`: the rendered manifests.
pub fn template(home: &Path, namespace: &str, values: &str) -> Result<String> {
    std::fs::create_dir_all(home)?;
    let file = home.join("values.yaml");
    std::fs::write(&file, values)?;
    let mut c = helm_in(home)?;
    c.args(["template", "gitops-agent"]).arg(dir()).args(["--namespace", namespace, "--values"]).arg(&file);
    output(c, "helm template")
}

/// `helm package` into `out`: the chart archive.
pub fn package(home: &Path, out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let mut c = helm_in(home)?;
    c.arg("package").arg(dir()).arg("--destination").arg(out);
    let text = output(c, "helm package")?;
    let path = text
        .lines()
        .find_map(|l| l.split_once("saved it to: ").map(|(_, p)| PathBuf::from(p.trim())))
        .with_context(|| format!("helm package said no path: {text}"))?;
    Ok(path)
}

/// Logs `helm` (homes in `home`) in to the testenv registry as `who`.
pub fn login(home: &Path, info: &EnvInfo, who: &crate::env_info::Creds) -> Result<()> {
    use std::io::Write;
    let mut c = helm_in(home)?;
    c.args(["registry", "login", &info.registry, "--username", &who.username, "--password-stdin", "--ca-file"])
        .arg(&info.ca_cert)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().context("running helm registry login")?;
    child.stdin.take().context("helm's stdin")?.write_all(who.password.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "helm registry login {} as {} failed: {}",
            info.registry,
            who.username,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Lints, packages and pushes the chart to `oci://REGISTRY/<repo>` as the CI robot; returns the
/// chart's reference (`oci://REGISTRY/<repo>/gitops-agent`) and its manifest digest.
pub fn push(info: &EnvInfo, repo: &str) -> Result<(String, String)> {
    let home = tempfile::tempdir_in(&info.run_dir)?;
    lint(home.path())?;
    let archive = package(home.path(), &home.path().join("out"))?;
    login(home.path(), info, &info.registry_ci)?;
    let mut c = helm_in(home.path())?;
    c.arg("push").arg(&archive).arg(format!("oci://{}/{repo}", info.registry)).arg("--ca-file").arg(&info.ca_cert);
    let text = output(c, "helm push")?;
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .map(str::trim)
        .with_context(|| format!("helm push named no digest: {text}"))?
        .to_owned();
    Ok((format!("oci://{}/{repo}/gitops-agent", info.registry), digest))
}

/// `cargo xtask chart [--push REPO]`.
pub fn chart(push_to: Option<&str>) -> Result<()> {
    let home = tempfile::tempdir()?;
    print!("{}", lint(home.path())?);
    let archive = package(home.path(), &paths::workspace_root().join("target/chart"))?;
    println!("chart: packaged {}", archive.display());
    if let Some(repo) = push_to {
        let info = EnvInfo::load(&paths::run_dir())?;
        let (reference, digest) = push(&info, repo)?;
        println!("chart: pushed {reference} ({digest}) as {}", info.registry_ci.username);
    }
    Ok(())
}

/// Every document of a multi-document YAML text, parsed.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for doc in text.split("\n---") {
        let v: serde_json::Value = serde_saphyr::from_str(doc).with_context(|| format!("parsing:\n{doc}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    const BASE: &str = "config:\n  git:\n    url: https://git.example.internal/store.git\n    auth:\n      username: store1\n      \
                        secretRef: {name: git-credentials, key: token}\n  registries:\n  - host: harbor.example.internal\n    \
                        auth:\n      username: robot$store1\n      secretRef: {name: harbor-robot, key: password}\n  \
                        server:\n    webhooks:\n    - sender: gitea\n      secretRef: {name: webhooks, key: gitea}\n\
                        managedNamespaces: [kiosk, kiosk-qa]\n";

    fn render(values: &str) -> Vec<Value> {
        let home = tempfile::tempdir().unwrap();
        documents(&template(home.path(), "gitops-agent", values).unwrap()).unwrap()
    }

    fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn rules(doc: &Value) -> Vec<&Value> {
        doc["rules"].as_array().map(|r| r.iter().collect()).unwrap_or_default()
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
    }

    #[test]
    fn helm_lint_is_clean_and_the_chart_version_is_the_agents() {
        let home = tempfile::tempdir().unwrap();
        let text = lint(home.path()).unwrap();
        assert!(text.contains("0 chart(s) failed"), "{text}");
        assert!(!text.contains("[WARNING]") && !text.contains("[ERROR]"), "{text}");
        let chart: Value = serde_saphyr::from_str(&std::fs::read_to_string(dir().join("Chart.yaml")).unwrap()).unwrap();
        assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn rbac_grants_no_wildcard_and_writes_only_in_the_managed_namespaces_and_its_own() {
        let docs = render(BASE);
        for d in of_kind(&docs, "Role").into_iter().chain(of_kind(&docs, "ClusterRole")) {
            for r in rules(d) {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(!strings(&r[field]).contains(&"*"), "a wildcard in {field}: {r}");
                }
            }
        }
        let roles = of_kind(&docs, "Role");
        let namespaces: Vec<&str> = roles.iter().filter_map(|r| r["metadata"]["namespace"].as_str()).collect();
        assert_eq!(namespaces, ["kiosk", "kiosk-qa", "gitops-agent"], "a Role per managed namespace and its own");
        assert_eq!(of_kind(&docs, "RoleBinding").len(), 3);
        let kiosk = roles[0];
        let deployments = rules(kiosk).into_iter().find(|r| strings(&r["resources"]).contains(&"deployments")).unwrap();
        assert_eq!(strings(&deployments["verbs"]), ["get", "list", "watch", "create", "patch", "delete"]);
        // Cluster-wide: reads, and no namespace creation unless asked.
        let cluster = of_kind(&docs, "ClusterRole");
        assert_eq!(cluster.len(), 1);
        for r in rules(cluster[0]) {
            for v in strings(&r["verbs"]) {
                assert!(["get", "list", "watch"].contains(&v), "a cluster-wide {v}: {r}");
            }
        }
    }

    #[test]
    fn the_global_values_fleet_and_the_agent_inject_are_accepted() {
        let docs = render(&format!("{BASE}global:\n  fleet:\n    clusterLabels: {{store: store1}}\n"));
        assert_eq!(of_kind(&docs, "DaemonSet").len(), 1);
    }

    #[test]
    fn pruning_off_drops_delete_and_creating_namespaces_adds_only_namespaces_create() {
        let docs = render(&format!("{BASE}rbac:\n  prune: false\n  createNamespaces: true\n"));
        for r in of_kind(&docs, "Role").into_iter().flat_map(rules) {
            assert!(!strings(&r["verbs"]).contains(&"delete"), "{r}");
        }
        let cluster = of_kind(&docs, "ClusterRole")[0];
        let ns = rules(cluster).into_iter().find(|r| strings(&r["resources"]) == ["namespaces"]).unwrap();
        assert_eq!(strings(&ns["verbs"]), ["get", "create", "patch"]);
    }

    #[test]
    fn pre_pull_is_off_by_default_and_on_grants_pods_create_and_delete_in_the_managed_namespaces_only() {
        let pods = |docs: &[Value], ns: &str| -> Vec<String> {
            let role = of_kind(docs, "Role").into_iter().find(|r| r["metadata"]["namespace"] == ns).unwrap().clone();
            let rule = rules(&role).into_iter().find(|r| strings(&r["resources"]) == ["pods"]).unwrap().clone();
            strings(&rule["verbs"]).into_iter().map(str::to_owned).collect()
        };
        let off = render(BASE);
        assert_eq!(pods(&off, "kiosk"), ["get", "list", "watch"], "least privilege: no pod writes");
        assert!(config_of(&off).get("prepull").is_none(), "off: the agent's config has no prepull");

        let on = render(&format!("{BASE}prepull:\n  enabled: true\n  maxConcurrent: 3\n"));
        for ns in ["kiosk", "kiosk-qa"] {
            assert_eq!(pods(&on, ns), ["get", "list", "watch", "create", "delete"], "{ns}");
        }
        let own = of_kind(&on, "Role").into_iter().find(|r| r["metadata"]["namespace"] == "gitops-agent").unwrap();
        assert!(rules(own).iter().all(|r| !strings(&r["resources"]).contains(&"pods")), "none in its own namespace");
        for r in rules(of_kind(&on, "ClusterRole")[0]) {
            assert!(
                strings(&r["verbs"]).iter().all(|v| ["get", "list", "watch"].contains(v)),
                "cluster-wide reads: {r}"
            );
        }
        let config = config_of(&on);
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            config["prepull"],
            serde_json::json!({"enabled": true, "helperImage": format!("registry.example.internal/platform/gitops-agent:{version}"),
                               "maxConcurrent": 3, "timeout": "30m"}),
            "the helper is the agent's own image unless set"
        );
        let mine =
            render(&format!("{BASE}prepull:\n  enabled: true\n  helperImage: harbor.example.internal/p/helper:1\n"));
        assert_eq!(config_of(&mine)["prepull"]["helperImage"], "harbor.example.internal/p/helper:1");
    }

    #[test]
    fn cluster_mode_is_a_deployment_with_leader_election_an_empty_dir_and_the_lease_by_name() {
        let values = BASE.replace("config:\n", "mode: cluster\nconfig:\n  identity: {nodeName: store-42}\n");
        let docs = render(&values);
        let d = of_kind(&docs, "Deployment");
        assert_eq!(d.len(), 1, "{docs:#?}");
        assert_eq!(d[0]["spec"]["replicas"], 2);
        assert!(of_kind(&docs, "DaemonSet").is_empty());
        let volumes = &d[0]["spec"]["template"]["spec"]["volumes"];
        let state = volumes.as_array().unwrap().iter().find(|v| v["name"] == "state").unwrap();
        assert!(state.get("emptyDir").is_some(), "{state}");
        let config = config_of(&docs);
        assert_eq!(config["leaderElection"]["enabled"], true);
        assert_eq!(config["identity"]["nodeName"], "store-42");
        let own = of_kind(&docs, "Role").into_iter().find(|r| r["metadata"]["namespace"] == "gitops-agent").unwrap();
        let lease = rules(own).into_iter().find(|r| r["resourceNames"].is_array()).unwrap();
        assert_eq!(strings(&lease["resourceNames"]), ["gitops-agent-gitops-agent"]);
        assert_eq!(strings(&lease["verbs"]), ["get", "update", "patch"]);
        // cluster mode without a name for the cluster says so
        let home = tempfile::tempdir().unwrap();
        let e = template(home.path(), "gitops-agent", &format!("mode: cluster\n{BASE}")).unwrap_err().to_string();
        assert!(e.contains("config.identity.nodeName is required in mode cluster"), "{e}");
    }

    fn config_of(docs: &[Value]) -> Value {
        let cm = of_kind(docs, "ConfigMap")[0];
        serde_saphyr::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn per_node_mode_is_a_daemonset_named_by_the_downward_api_with_the_state_on_the_host() {
        let docs = render(BASE);
        let ds = of_kind(&docs, "DaemonSet");
        assert_eq!(ds.len(), 1);
        let spec = &ds[0]["spec"]["template"]["spec"];
        let agent = &spec["containers"][0];
        let env = agent["env"].as_array().unwrap();
        let node = env.iter().find(|e| e["name"] == "GITOPS_AGENT_NODE_NAME").unwrap();
        assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        let config = config_of(&docs);
        assert_eq!(config["identity"]["perNode"], true);
        assert!(config["identity"].get("nodeName").is_none(), "the node's name comes from the pod");
        let state = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "state").unwrap();
        assert_eq!(state["hostPath"]["path"], "/var/lib/gitops-agent");
        // The host folder is made the agent's by an init container with CAP_CHOWN alone.
        let init = &spec["initContainers"][0];
        assert_eq!(init["name"], "state-dir");
        assert_eq!(strings(&init["securityContext"]["capabilities"]["add"]), ["CHOWN"]);
        assert_eq!(strings(&init["securityContext"]["capabilities"]["drop"]), ["ALL"]);
        assert_eq!(spec["initContainers"][1]["name"], "validate");
        assert_eq!(
            strings(&spec["initContainers"][1]["args"]),
            ["validate", "--config", "/etc/gitops-agent/config.yaml"]
        );
    }

    #[test]
    fn the_agent_container_is_what_podsecurity_restricted_asks_for() {
        let docs = render(&format!("{BASE}persistence: {{type: emptyDir}}\n"));
        let spec = &of_kind(&docs, "DaemonSet")[0]["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let containers =
            spec["containers"].as_array().unwrap().iter().chain(spec["initContainers"].as_array().unwrap());
        let mut n = 0;
        for c in containers {
            n += 1;
            let s = &c["securityContext"];
            assert_eq!(s["runAsNonRoot"], true, "{}", c["name"]);
            assert_eq!(s["runAsUser"], 65532, "{}", c["name"]);
            assert_eq!(s["readOnlyRootFilesystem"], true, "{}", c["name"]);
            assert_eq!(s["allowPrivilegeEscalation"], false, "{}", c["name"]);
            assert_eq!(strings(&s["capabilities"]["drop"]), ["ALL"], "{}", c["name"]);
            assert!(s["capabilities"].get("add").is_none(), "{}", c["name"]);
        }
        assert_eq!(n, 2, "validate and agent, no state-dir init with an emptyDir");
        assert!(spec["volumes"].as_array().unwrap().iter().all(|v| v.get("hostPath").is_none()));
        for probe in ["livenessProbe", "readinessProbe"] {
            assert!(spec["containers"][0][probe]["httpGet"]["path"].as_str().unwrap().ends_with("z"), "{probe}");
        }
    }

    #[test]
    fn credentials_come_from_existing_secrets_mounted_read_only_never_from_values() {
        let docs = render(BASE);
        let config = config_of(&docs);
        assert_eq!(config["git"]["auth"]["passwordFile"], "/run/secrets/gitops-agent/git-credentials/token");
        assert_eq!(config["registries"][0]["auth"]["passwordFile"], "/run/secrets/gitops-agent/harbor-robot/password");
        assert_eq!(config["server"]["webhooks"][0]["secretFile"], "/run/secrets/gitops-agent/webhooks/gitea");
        let spec = &of_kind(&docs, "DaemonSet")[0]["spec"]["template"]["spec"];
        let secrets: Vec<&str> =
            spec["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
        assert_eq!(secrets, ["git-credentials", "harbor-robot", "webhooks"]);
        assert!(of_kind(&docs, "Secret").is_empty(), "the chart makes no Secret");
        let home = tempfile::tempdir().unwrap();
        let e = template(
            home.path(),
            "gitops-agent",
            &BASE.replace("secretRef: {name: git-credentials, key: token}", "password: hunter2"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/config/git/auth"), "the schema refuses a password in values: {e}");
    }

    #[test]
    fn trusted_keys_come_from_existing_secrets_as_files_the_agent_reads() {
        let values = BASE
            .replace(
                "      secretRef: {name: harbor-robot, key: password}\n",
                "      secretRef: {name: harbor-robot, key: password}\n    verify:\n      cosign:\n        publicKeys:\n        \
                 - {name: ci-2026, secretRef: {name: signing-keys, key: ci-2026.pub}}\n        \
                 - {name: ci-2025, file: /etc/ssl/ci-2025.pub}\n",
            )
            .replace(
                "secretRef: {name: git-credentials, key: token}\n",
                "secretRef: {name: git-credentials, key: token}\n    verify:\n      mode: head\n      \
                 sshAllowedSigners: {secretRef: {name: signing-keys, key: allowed_signers}}\n      \
                 openpgpKeys: /etc/ssl/release.asc\n",
            );
        assert!(values.contains("ci-2026.pub") && values.contains("allowed_signers"), "{values}");
        let docs = render(&values);
        let config = config_of(&docs);
        let keys = &config["registries"][0]["verify"]["cosign"]["publicKeys"];
        assert_eq!(
            keys[0],
            serde_json::json!({"name": "ci-2026", "file": "/run/secrets/gitops-agent/signing-keys/ci-2026.pub"})
        );
        assert_eq!(
            keys[1],
            serde_json::json!({"name": "ci-2025", "file": "/etc/ssl/ci-2025.pub"}),
            "a file stays a file"
        );
        let verify = &config["git"]["verify"];
        assert_eq!(verify["sshAllowedSigners"], "/run/secrets/gitops-agent/signing-keys/allowed_signers");
        assert_eq!(verify["openpgpKeys"], "/etc/ssl/release.asc");
        let spec = &of_kind(&docs, "DaemonSet")[0]["spec"]["template"]["spec"];
        let secrets: Vec<&str> =
            spec["volumes"].as_array().unwrap().iter().filter_map(|v| v["secret"]["secretName"].as_str()).collect();
        assert_eq!(secrets, ["git-credentials", "signing-keys", "harbor-robot", "webhooks"], "the Secret mounted once");
        let home = tempfile::tempdir().unwrap();
        let e = template(home.path(), "gitops-agent", &values.replace("key: ci-2026.pub", "kee: ci-2026.pub"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("publicKeys"), "the schema names a bad key reference: {e}");
    }

    #[test]
    fn the_k3s_helmchart_example_installs_this_chart_with_values_that_render() {
        let text = std::fs::read_to_string(paths::workspace_root().join("deploy/k3s/gitops-agent.yaml")).unwrap();
        let docs = documents(&text).unwrap();
        let hc = docs.iter().find(|d| d["kind"] == "HelmChart").expect("a HelmChart");
        assert_eq!(hc["apiVersion"], "helm.cattle.io/v1");
        assert_eq!(hc["metadata"]["namespace"], "kube-system", "k3s's helm controller watches kube-system");
        assert!(hc["spec"]["chart"].as_str().unwrap().starts_with("oci://"));
        assert_eq!(hc["spec"]["version"], env!("CARGO_PKG_VERSION"));
        let ns = hc["spec"]["targetNamespace"].as_str().unwrap();
        let values = hc["spec"]["valuesContent"].as_str().unwrap();
        let home = tempfile::tempdir().unwrap();
        let rendered = documents(&template(home.path(), ns, values).unwrap()).unwrap();
        assert_eq!(of_kind(&rendered, "DaemonSet").len(), 1);
    }
}
