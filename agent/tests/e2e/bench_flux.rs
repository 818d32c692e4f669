//! Flux side by side in the bench (full bench only): source-controller, kustomize-controller and
//! helm-controller (built from the Go module proxy by `cargo xtask bench`) run as local processes
//! against the testenv, through fault proxies of their own in front of the API server and git,
//! with the bench's bundles as Kustomizations (raw ones) and HelmReleases (charts) from one
//! GitRepository. Measured once all are Ready, over a window of intervals: each controller's
//! RSS and CPU, and the API requests, writes and git ref checks per interval.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Map, Value, json};
use xtask::support::{TestEnv, Upstream};

use crate::bench_peers::{bundle_name, rss_kib, tree_cpu_seconds};
use crate::util::{free_port_block, wait_for};

/// Flux's reconcile interval for every object of the side-by-side run.
const INTERVAL: Duration = Duration::from_secs(60);
/// Intervals measured once everything is Ready.
const WINDOW_INTERVALS: u32 = 2;
const CONTROLLERS: [&str; 3] = ["source-controller", "kustomize-controller", "helm-controller"];

/// A controller process, killed when dropped.
struct Controller {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Applies every CRD in `dir` (server-side) and waits until each is Established.
async fn install_crds(env: &TestEnv, dir: &Path) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.client().await);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = crd["metadata"]["name"].as_str().expect("a CRD name").to_owned();
        crds.patch(&name, &PatchParams::apply("gitops-agent-bench").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        names.push(name);
    }
    for name in names {
        wait_for(&format!("CRD {name} established"), Duration::from_secs(30), || async {
            let c = crds.get(&name).await.map_err(|e| e.to_string())?;
            let ok = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if ok { Ok(()) } else { Err("not yet".to_owned()) }
        })
        .await;
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn apply(api: &Api<DynamicObject>, object: Value) {
    let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
    let obj: DynamicObject = serde_json::from_value(object).unwrap();
    api.patch(&name, &PatchParams::apply("gitops-agent-bench").force(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// What keeps an object from Ready: its kind, name and Ready condition (reason: message).
fn not_ready(o: &DynamicObject) -> String {
    let kind = o.types.as_ref().map_or("?", |t| t.kind.as_str());
    let name = o.metadata.name.as_deref().unwrap_or_default();
    let conditions = o.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let why = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| format!("{}: {}", c["reason"].as_str().unwrap_or("-"), c["message"].as_str().unwrap_or("-")))
        .unwrap_or_else(|| "no Ready condition yet".into());
    format!("{kind}/{name}: {why}")
}

fn ready(o: &DynamicObject) -> bool {
    o.data["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Runs the three controllers on the bench's repository (`repo_url`, bundles `0..size`) and
/// measures them; the figures as JSON.
/// A controller that did not build (`GITOPS_BENCH_FLUX_ERRORS`, from `cargo xtask bench`) is
/// left out with its error in the figures: without helm-controller the charts are not run,
/// without source- or kustomize-controller nothing is.
pub(crate) async fn run(env: &TestEnv, dir: &Path, size: usize, repo_url: &str) -> Value {
    let errors: Value = std::env::var("GITOPS_BENCH_FLUX_ERRORS")
        .ok()
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or_else(|| json!({}));
    let present: Vec<&'static str> = CONTROLLERS.into_iter().filter(|c| dir.join(c).join(c).is_file()).collect();
    if !present.contains(&"source-controller") || !present.contains(&"kustomize-controller") {
        return json!({"buildErrors": errors, "notRun": "source-controller and kustomize-controller are both needed"});
    }
    let helm = present.contains(&"helm-controller");
    for c in &present {
        install_crds(env, &dir.join(c).join("crds")).await;
    }
    let ns = env.namespace("bench-flux").await;
    let api_proxy = env.fault_proxy(Upstream::ApiServer).await;
    let git_proxy = env.fault_proxy(Upstream::Git).await;
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = env.kubeconfig_for(&api_proxy.url(), work.path());
    let client = env.client().await;

    // The git credentials and CA, as GitRepository v1 reads them from its secretRef.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "git"}, "stringData": {
        "username": env.info.git_agent.username, "password": env.info.git_agent.password,
        "ca.crt": std::fs::read_to_string(&env.info.ca_cert).unwrap()}});
    secrets
        .patch("git", &PatchParams::apply("gitops-agent-bench").force(), &Patch::Apply(&secret))
        .await
        .expect("the git Secret");
    let interval = format!("{}s", INTERVAL.as_secs());
    let git_url = repo_url.replace(&env.url(Upstream::Git), &git_proxy.url());
    let gitrepos = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &resource("source.toolkit.fluxcd.io", "v1", "GitRepository", "gitrepositories"),
    );
    // Only apps/ is source; fleet.yaml is not a Kubernetes object.
    apply(
        &gitrepos,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": {"name": "bench"},
            "spec": {"url": git_url, "interval": interval, "ref": {"branch": "main"}, "secretRef": {"name": "git"},
                "ignore": "/*\n!/apps/\n/apps/**/fleet.yaml\n"}}),
    )
    .await;
    let ks_res = resource("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations");
    let hr_res = resource("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases");
    let kustomizations = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ks_res);
    let releases = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &hr_res);
    let source_ref = json!({"kind": "GitRepository", "name": "bench"});
    let expected = if helm { size } else { size / 2 };
    for i in 0..size {
        let name = bundle_name(i);
        if i.is_multiple_of(2) && !helm {
            continue;
        }
        if i.is_multiple_of(2) {
            apply(
                &releases,
                json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": name},
                    "spec": {"interval": interval, "chart": {"spec": {"chart": format!("./apps/{name}"),
                        "sourceRef": source_ref, "interval": interval, "reconcileStrategy": "ChartVersion"}}}}),
            )
            .await;
        } else {
            apply(
                &kustomizations,
                json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": name},
                    "spec": {"interval": interval, "path": format!("./apps/{name}"), "prune": true, "wait": false,
                        "targetNamespace": ns.name, "sourceRef": source_ref}}),
            )
            .await;
        }
    }

    let port = free_port_block(8);
    let storage = work.path().join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    let flags = |i: u16| {
        vec![
            "--events-addr=".to_owned(),
            format!("--metrics-addr=127.0.0.1:{}", port + 2 * i),
            format!("--health-addr=127.0.0.1:{}", port + 2 * i + 1),
            "--enable-leader-election=false".to_owned(),
        ]
    };
    let storage_addr = format!("127.0.0.1:{}", port + 6);
    let mut controllers = Vec::new();
    let started = Instant::now();
    for (i, name) in present.iter().copied().enumerate() {
        let mut args = flags(i as u16);
        match name {
            "source-controller" => args.extend([
                format!("--storage-path={}", storage.display()),
                format!("--storage-addr={storage_addr}"),
                format!("--storage-adv-addr={storage_addr}"),
            ]),
            "kustomize-controller" => args.push("--no-remote-bases=true".to_owned()),
            _ => {}
        }
        let log = work.path().join(format!("{name}.log"));
        let child = Command::new(dir.join(name).join(name))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUNTIME_NAMESPACE", &ns.name)
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::create(work.path().join(format!("{name}.err"))).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        controllers.push(Controller { name, child, log });
    }
    let logs = |cs: &[Controller]| {
        cs.iter()
            .map(|c| format!("{}:\n{}\n{}", c.name, log_tail(&c.log), log_tail(&c.log.with_extension("err"))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for("every Kustomization and HelmRelease Ready", Duration::from_secs(120 + 10 * size as u64), || async {
        let k = kustomizations.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let h =
            if helm { releases.list(&Default::default()).await.map_err(|e| e.to_string())?.items } else { Vec::new() };
        let n = k.items.iter().filter(|o| ready(o)).count() + h.iter().filter(|o| ready(o)).count();
        let waiting: Vec<String> = k.items.iter().chain(&h).filter(|o| !ready(o)).map(not_ready).collect();
        if n == expected {
            Ok(())
        } else {
            Err(format!("{n}/{expected} Ready; not Ready: {}\n{}", waiting.join("; "), logs(&controllers)))
        }
    })
    .await;
    let all_ready = started.elapsed();

    // The window: whole intervals once everything is Ready.
    api_proxy.reset_seen();
    git_proxy.reset_seen();
    let cpu0: Vec<f64> = controllers.iter().map(|c| tree_cpu_seconds(c.child.id())).collect();
    let t0 = Instant::now();
    // A measurement window, not a wait for a condition: the controllers run on their own clock.
    tokio::time::sleep(INTERVAL * WINDOW_INTERVALS).await;
    let window = t0.elapsed().as_secs_f64() / INTERVAL.as_secs_f64();
    let per = |n: f64| (n / window * 10.0).round() / 10.0;
    let mut per_controller = Map::new();
    let (mut rss_total, mut cpu_total) = (0.0, 0.0);
    for (c, before) in controllers.iter_mut().zip(cpu0) {
        assert!(c.child.try_wait().unwrap().is_none(), "{} exited\n{}", c.name, log_tail(&c.log));
        let rss = rss_kib(c.child.id()) as f64 / 1024.0;
        let cpu = tree_cpu_seconds(c.child.id()) - before;
        rss_total += rss;
        cpu_total += cpu;
        per_controller.insert(
            c.name.to_owned(),
            json!({"rssMiB": (rss * 10.0).round() / 10.0, "cpuSecondsPerInterval": (cpu / window * 1000.0).round() / 1000.0}),
        );
    }
    let seen = api_proxy.seen();
    let non_watch = seen.iter().filter(|s| !s.target.contains("watch=true")).count();
    let writes: Vec<_> = seen.iter().filter(|s| s.method != "GET").collect();
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for s in &writes {
        let path = s.target.split('?').next().unwrap_or_default().replace(&ns.name, "NS");
        let parts: Vec<&str> = path.split('/').collect();
        // e.g. PATCH .../kustomizations/NAME/status -> "PATCH kustomizations/status"
        let kind = parts.iter().position(|p| *p == "namespaces").and_then(|i| parts.get(i + 2)).copied().unwrap_or("?");
        let sub = if path.ends_with("/status") { "/status" } else { "" };
        let dry = if s.target.contains("dryRun") { " (dry run)" } else { "" };
        *by_kind.entry(format!("{} {kind}{sub}{dry}", s.method)).or_default() += 1;
    }
    // Flux's finalizers would keep the namespace terminating once its controllers are gone.
    drop(controllers);
    let unfinalize = PatchParams::default();
    let patch = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    // helm-controller's HelmReleases make source-controller HelmCharts, with finalizers too.
    let charts = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &resource("source.toolkit.fluxcd.io", "v1", "HelmChart", "helmcharts"),
    );
    for api in [&kustomizations, &releases, &gitrepos, &charts] {
        for o in api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
            let _ = api.patch(&o.metadata.name.unwrap_or_default(), &unfinalize, &patch).await;
        }
    }
    let git = git_proxy.seen();
    let ref_checks = git.iter().filter(|s| s.target.contains("/info/refs")).count();
    let fetches = git.iter().filter(|s| s.method == "POST").count();
    assert!(ref_checks > 0, "source-controller checked the repository within {WINDOW_INTERVALS} intervals");
    json!({
        "controllers": per_controller,
        "kustomizations": size / 2,
        "helmReleases": if helm { size.div_ceil(2) } else { 0 },
        "buildErrors": errors,
        "intervalSeconds": INTERVAL.as_secs(),
        "windowIntervals": (window * 100.0).round() / 100.0,
        "allReadySeconds": (all_ready.as_secs_f64() * 10.0).round() / 10.0,
        "total": {"rssMiB": (rss_total * 10.0).round() / 10.0, "cpuSecondsPerInterval": (cpu_total / window * 1000.0).round() / 1000.0},
        "perInterval": {
            "apiRequests": per(non_watch as f64),
            "apiWrites": per(writes.len() as f64),
            "apiWritesByKind": by_kind.iter().map(|(k, n)| json!({"request": k, "perInterval": per(*n as f64)})).collect::<Vec<_>>(),
            "gitRefChecks": per(ref_checks as f64),
            "gitFetches": per(fetches as f64),
            "registryRequests": 0,
        },
    })
}

/// The Flux rows of the bench's table, with the agent's figure beside each.
pub(crate) fn print_rows(f: &Map<String, Value>, r: &Value) {
    let p = &r["perNoChangePoll"];
    let pi = &f["perInterval"];
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { String::new() };
    for (name, error) in f["buildErrors"].as_object().into_iter().flatten() {
        let last = error.as_str().unwrap_or_default().lines().last().unwrap_or_default();
        println!("| Flux {name}: did not build | | {last} | |");
    }
    if let Some(why) = f.get("notRun") {
        println!("| Flux: not run | | {} | |", why.as_str().unwrap_or_default());
        return;
    }
    println!(
        "| Flux: {} Kustomizations + {} HelmReleases, interval {} s, all Ready in {} s | | | |",
        f["kustomizations"], f["helmReleases"], f["intervalSeconds"], f["allReadySeconds"]
    );
    for (name, c) in f["controllers"].as_object().into_iter().flatten() {
        println!("| - {name}: RSS, CPU per interval | | {} MiB, {} s | |", c["rssMiB"], c["cpuSecondsPerInterval"]);
    }
    let agent_rss = r["rssAfterFirstSyncMiB"].as_f64().unwrap_or(0.0);
    let flux_rss = f["total"]["rssMiB"].as_f64().unwrap_or(0.0);
    println!(
        "| RSS: agent vs Flux's controllers together | {agent_rss} MiB | {flux_rss} MiB | {} |",
        ratio(agent_rss, flux_rss)
    );
    let agent_cpu = p["cpuMs"].as_f64().unwrap_or(0.0) / 1000.0;
    let flux_cpu = f["total"]["cpuSecondsPerInterval"].as_f64().unwrap_or(0.0);
    println!("| CPU per poll vs per Flux interval | {agent_cpu} s | {flux_cpu} s | {} |", ratio(agent_cpu, flux_cpu));
    let agent_writes = p["apiWrites"].as_f64().unwrap_or(0.0);
    let flux_writes = pi["apiWrites"].as_f64().unwrap_or(0.0);
    println!(
        "| API writes per poll vs per Flux interval | {agent_writes} | {flux_writes} | {} |",
        ratio(agent_writes, flux_writes)
    );
    for w in pi["apiWritesByKind"].as_array().into_iter().flatten().take(6) {
        println!("|   {} | | {} | |", w["request"].as_str().unwrap_or(""), w["perInterval"]);
    }
    let agent_api = p["apiRequests"].as_f64().unwrap_or(0.0);
    let flux_api = pi["apiRequests"].as_f64().unwrap_or(0.0);
    println!("| API requests besides watches | {agent_api} | {flux_api} | {} |", ratio(agent_api, flux_api));
    println!("| git ref checks (fetches) | {} | {} ({}) | |", p["gitRefChecks"], pi["gitRefChecks"], pi["gitFetches"]);
    println!("| registry requests (Flux checks no digest) | {} | 0 | |", p["registryRequests"]);
}
