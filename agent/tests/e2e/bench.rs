//! The bench (run by `cargo xtask bench`, ignored in the suite: it measures, and a crowd of
//! tests beside it would skew the figures): M bundles, half Helm charts and half raw manifests,
//! each with its own image in its own registry repository, in a repository with a long history,
//! synced by `agent run`; then polls with nothing changed, one-commit changes, and more first
//! syncs at other sizes for the RSS slope. Requests are counted and timed at the server side
//! (fault proxies in front of the registry, git and the API server; the token service's access
//! log; the API server's audit log), and the peers (curl, skopeo, git, Flux) run against the same
//! proxies in the same run. Printed as one table and written as JSON; only request counts and the
//! presence of figures are asserted, never a time.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use xtask::support::{TestEnv, Upstream};

use crate::bench_peers::{self as peers, bundle_name, median, ms, percentile, rss_kib, span, tree_cpu_seconds};
use crate::daemon::{Daemon, serve, tail};
use crate::no_change::{poll_once, token_requests_for};
use crate::rollout::App;
use crate::util::{git, wait_for};

/// No-change polls measured (after one that keeps the plans of the first sync).
const POLLS: usize = 3;
/// Runs of each peer command (the median is reported).
const PEER_RUNS: usize = 3;
/// Bundles planned for the plan CPU figure.
const PLAN_BUNDLES: usize = 1000;

/// What one run measures, from the environment `cargo xtask bench` sets.
struct Sizes {
    bundles: usize,
    /// Bundle counts of the extra first syncs the RSS slope is fitted on.
    slope: Vec<usize>,
    history_files: usize,
    history_commits: usize,
    /// Webhook → apply samples.
    latency_samples: usize,
    /// Where the Flux controllers are (full bench only).
    flux: Option<PathBuf>,
}

impl Sizes {
    fn from_env() -> Sizes {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let num = |k: &str, d: usize| var(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let bundles = num("GITOPS_BENCH_BUNDLES", 10);
        let slope = var("GITOPS_BENCH_SLOPE")
            .map(|v| v.split(',').map(|n| n.trim().parse().expect("GITOPS_BENCH_SLOPE: bundle counts")).collect())
            .unwrap_or_else(|| vec![2, 5]);
        let (files, commits) = var("GITOPS_BENCH_HISTORY")
            .and_then(|v| v.split_once('x').map(|(f, c)| (f.parse().ok(), c.parse().ok())))
            .and_then(|(f, c)| Some((f?, c?)))
            .unwrap_or((500, 50));
        Sizes {
            bundles,
            slope,
            history_files: files,
            history_commits: commits,
            latency_samples: num("GITOPS_BENCH_LATENCY_SAMPLES", 3),
            flux: var("GITOPS_BENCH_FLUX").map(PathBuf::from),
        }
    }
}

fn chart(name: &str, ns: &str, image: &str) -> Vec<(String, String)> {
    vec![
        (format!("apps/{name}/Chart.yaml"), format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n")),
        (format!("apps/{name}/fleet.yaml"), format!("defaultNamespace: {ns}\n")),
        (format!("apps/{name}/values.yaml"), format!("image: {image}\nreplicas: 1\n")),
        (
            format!("apps/{name}/templates/deployment.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {{{{ .Values.replicas }}}}\n  \
                 selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    \
                 spec:\n      containers:\n      - name: app\n        image: {{{{ .Values.image }}}}\n"
            ),
        ),
    ]
}

fn raw(name: &str, ns: &str, image: &str) -> Vec<(String, String)> {
    vec![
        (format!("apps/{name}/fleet.yaml"), format!("defaultNamespace: {ns}\n")),
        (
            format!("apps/{name}/deployment.yaml"),
            crate::rollout::DEPLOYMENT
                .replace("name: web", &format!("name: {name}"))
                .replace("app: web", &format!("app: {name}"))
                .replace("IMAGE", image),
        ),
        (format!("apps/{name}/config.yaml"), config_map(name, "hello")),
    ]
}

fn config_map(name: &str, greeting: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-config\ndata:\n  greeting: {greeting}\n")
}

/// Replaces the app's `apps/web` with `size` bench bundles, bundle `i` running `images[i]` with
/// `replicas` pods.
fn write_bundles(app: &App, size: usize, images: &[String], replicas: u32) {
    let _ = std::fs::remove_dir_all(app.work.join("apps/web"));
    for (i, image) in images.iter().enumerate().take(size) {
        let files = if i.is_multiple_of(2) {
            chart(&bundle_name(i), &app.ns.name, image)
        } else {
            raw(&bundle_name(i), &app.ns.name, image)
        };
        for (path, text) in files {
            app.write(&path, &text.replace("replicas: 1\n", &format!("replicas: {replicas}\n")));
        }
    }
}

async fn wait_synced(d: &Daemon, head: &str, size: usize) {
    wait_for("every bundle synced", Duration::from_secs(60 + 30 * size as u64), || async {
        let (_, body) = d.get("/status").await;
        let s: Value = serde_json::from_str(&body).unwrap_or_default();
        let synced = s["bundles"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|b| b["running"]["commit"] == head && b["state"] == "synced").count());
        if synced == size { Ok(()) } else { Err(format!("{synced}/{size} synced\n{}", tail(&d.logs()))) }
    })
    .await;
}

/// A first sync of `size` bundles from a fresh process (its own namespace and repository, the
/// registry direct): RSS once every bundle is synced, in KiB.
async fn rss_at(env: &TestEnv, bin: &std::path::Path, size: usize, repos: &[String]) -> u64 {
    let app = App::new(env, &format!("bench-rss{size}")).await;
    let images: Vec<String> = repos.iter().map(|r| format!("{}/{r}:1.0.0", env.info.registry)).collect();
    // No pods: the testenv's one KWOK node takes 110, fewer than the slope's 200 bundles.
    write_bundles(&app, size, &images, 0);
    app.commit(env, "bench bundles");
    let port = serve(&app, "", "1h", "15s");
    let d = Daemon::start_binary(bin, &app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    wait_synced(&d, &app.head(), size).await;
    rss_kib(d.pid())
}

/// The first apply patch (not a dry run) of ConfigMap `name` in `ns` that the API server
/// received after `after`: its audit timestamp.
async fn first_apply_after(env: &TestEnv, ns: &str, name: &str, after: SystemTime) -> SystemTime {
    wait_for("the apply patch in the audit log", Duration::from_secs(60), || async {
        env.audit_events()
            .unwrap()
            .iter()
            .filter(|e| {
                e["verb"] == "patch"
                    && e["objectRef"]["resource"] == "configmaps"
                    && e["objectRef"]["namespace"] == ns
                    && e["objectRef"]["name"] == name
                    && !e["requestURI"].as_str().unwrap_or_default().contains("dryRun")
            })
            .filter_map(|e| humantime::parse_rfc3339(e["requestReceivedTimestamp"].as_str()?).ok())
            .filter(|t| *t >= after)
            .min()
            .ok_or_else(|| "not yet".to_owned())
    })
    .await
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn ratio(a: f64, b: f64) -> Value {
    if b > 0.0 { json!((a / b * 100.0).round() / 100.0) } else { Value::Null }
}

/// Bytes of the files under `dir` (an OCI layout: the image's blobs and index).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run alone by `cargo xtask bench`"]
async fn bench_first_sync_and_no_change_polls() {
    let sizes = Sizes::from_env();
    let size = sizes.bundles;
    let bin = std::env::var_os("GITOPS_BENCH_AGENT")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_agent")), PathBuf::from);

    // Planning alone first, while nothing else of the bench runs.
    let (plan_cpu, plan_unchanged) = peers::plan_cpu(PLAN_BUNDLES);

    let env = TestEnv::get();
    let app = App::new(env, "bench").await;
    let registry = env.fault_proxy(Upstream::Registry).await;
    let git_proxy = env.fault_proxy(Upstream::Git).await;
    let (api, _kubeconfig) = app.through_api_proxy(env).await;

    let most = sizes.slope.iter().copied().chain([size]).max().unwrap_or(size);
    let repos: Vec<String> = (0..most).map(|i| env.registry_repo(&format!("bench-{i}"))).collect();
    std::thread::scope(|s| {
        for chunk in repos.chunks(most.div_ceil(4).max(1)) {
            s.spawn(move || chunk.iter().for_each(|r| drop(env.push_image(r, "1.0.0"))));
        }
    });
    // The long history first (files outside `apps`, which the agent reads), the bundles on top.
    let history = peers::big_history(sizes.history_files, sizes.history_commits);
    git(&app.work, &["fetch", "-q", history.to_str().unwrap(), "main"]);
    // Seeded on the server's disk (as an admin imports a repository): one push of a large pack
    // through the test web server's HTTP/2 breaks, and the push below then sends only the top.
    git(&app.repo.path, &["fetch", "-q", history.to_str().unwrap(), "+main:refs/bench/history"]);
    git(&app.work, &["merge", "-q", "--allow-unrelated-histories", "--no-edit", "-m", "bench history", "FETCH_HEAD"]);
    let images: Vec<String> = repos.iter().map(|r| format!("{}/{r}:1.0.0", registry.addr())).collect();
    write_bundles(&app, size, &images, 1);
    app.commit(env, "bench bundles");
    app.edit_config(&format!("host: {}\n", env.info.registry), &format!("host: {}\n", registry.addr()));
    let git_url = app.repo.url.replace(&env.url(Upstream::Git), &git_proxy.url());
    app.edit_config(&app.repo.url, &git_url);

    let port = serve(&app, "  webhookBurst: 100\n  webhookEvery: 1s\n", "1h", "15s");
    let started = Instant::now();
    let d = Daemon::start_binary(&bin, &app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    wait_synced(&d, &app.head(), size).await;
    let first_sync = started.elapsed();
    let rss = rss_kib(d.pid());

    // The first poll after a rollout plans in full and keeps the plans that found nothing to do;
    // a bundle whose plan did more (it verified a revision) is kept at the poll after. Measured
    // from the first poll that planned nothing.
    let dry_run = |s: &xtask::fault_proxy::Seen| s.method == "PATCH" && s.target.contains("dryRun");
    wait_for("a poll that plans nothing", Duration::from_secs(120), || async {
        api.reset_seen();
        poll_once(&d, &app, Some(&git_url)).await;
        let n = api.count(dry_run);
        if n == 0 { Ok(()) } else { Err(format!("{n} dry-run patches\n{}", tail(&d.logs()))) }
    })
    .await;
    let log_start = d.logs().len();
    let tokens_before: usize = repos.iter().map(|r| token_requests_for(env, r)).sum();
    for p in [&registry, &git_proxy, &api] {
        p.reset_seen();
    }
    let cpu_before = tree_cpu_seconds(d.pid());
    let mut polls = 0.0;
    let (mut registry_walls, mut git_walls) = (Vec::new(), Vec::new());
    for _ in 0..POLLS {
        let (r0, g0) = (registry.seen().len(), git_proxy.seen().len());
        polls += poll_once(&d, &app, Some(&git_url)).await;
        registry_walls.push(ms(span(&registry.seen()[r0..])));
        git_walls.push(ms(span(&git_proxy.seen()[g0..])));
    }
    let cpu_per_poll = (tree_cpu_seconds(d.pid()) - cpu_before) / polls;
    // What made a measured poll plan, in the agent's words, should one have.
    let planned: Vec<String> = d.logs()[log_start..]
        .lines()
        .filter(|l| l.contains("drift") || l.contains("rendering and planning"))
        .map(str::to_owned)
        .collect();
    let tokens = repos.iter().map(|r| token_requests_for(env, r)).sum::<usize>() - tokens_before;
    let per = |n: usize| round1(n as f64 / polls);
    let registry_requests = registry.seen().len();
    let git_requests = git_proxy.seen().len();
    let ref_checks = git_proxy.count(|s| s.method == "POST" && s.body_head.contains("command=ls-refs"));
    // Watches are long-lived: they are set up once, not per poll.
    // The Lease is renewed on the election's own clock (every few seconds, whatever the polls
    // do): counted apart, not as a cost of a poll.
    let lease = |s: &xtask::fault_proxy::Seen| s.target.contains("/apis/coordination.k8s.io/");
    let lease_requests = api.count(lease);
    let api_requests = api.count(|s| !s.target.contains("watch=true") && !lease(s));
    let api_writes = api.count(|s| s.method != "GET" && !lease(s));
    let dry_runs = api.count(dry_run);
    // What the API requests are, by method and path (names of the test's namespace and
    // objects made generic), most first: where the next cut is.
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for s in api.seen().iter().filter(|s| !s.target.contains("watch=true") && !lease(s)) {
        let path = s.target.split('?').next().unwrap_or_default().replace(&app.ns.name, "NS");
        let shape: Vec<&str> = path.split('/').collect();
        // Drop the object's name: /api/v1/namespaces/NS/secrets/NAME -> .../secrets/*
        let shape = match shape.len() {
            n if n >= 7 && shape[3] == "namespaces" => format!("{} {}/*", s.method, shape[..6].join("/")),
            _ => format!("{} {path}", s.method),
        };
        *kinds.entry(shape).or_default() += 1;
    }
    let mut api_by_kind: Vec<(String, usize)> = kinds.into_iter().collect();
    api_by_kind.sort_by_key(|(_, n)| std::cmp::Reverse(*n));

    // The registry peers: the same images over the same proxy, with the tokens the agent holds.
    let tagged: Vec<(String, String)> = repos.iter().take(size).map(|r| (r.clone(), "1.0.0".to_owned())).collect();
    let tokens_now = peers::pull_tokens(env, &repos[..size]).await;
    registry.reset_seen();
    let curl_ms = median(
        (0..PEER_RUNS)
            .map(|_| ms(peers::curl_heads(env, &registry.addr().to_string(), &tagged, &tokens_now)))
            .collect(),
    );
    let curl_heads = registry.count(|s| s.method == "HEAD" && s.status == 200);
    assert_eq!(curl_heads, size * PEER_RUNS, "the curl peer made one good HEAD per image: {:?}", registry.seen());
    let skopeo_ms = ms(peers::skopeo_loop(env, &registry.addr().to_string(), &tagged));
    let ls_remote_ms = median((0..PEER_RUNS).map(|_| ms(peers::git_ls_remote(env, &git_url))).collect());

    // One-commit changes: the first timed against `git fetch` + `git diff`, each one's webhook →
    // apply patch latency from the audit log.
    let clone = peers::git_clone(env, &git_url);
    let changed = bundle_name(1);
    let (mut latencies, mut change_walls) = (Vec::new(), Vec::new());
    let mut fetch_diff_ms = 0.0;
    for k in 0..sizes.latency_samples.max(1) {
        app.write(&format!("apps/{changed}/config.yaml"), &config_map(&changed, &format!("sample-{k}")));
        app.commit(env, &format!("bench change {k}"));
        let g0 = git_proxy.seen().len();
        let sent = SystemTime::now();
        poll_once(&d, &app, Some(&git_url)).await;
        let applied = first_apply_after(env, &app.ns.name, &format!("{changed}-config"), sent).await;
        latencies.push(ms(applied.duration_since(sent).unwrap_or_default()));
        change_walls.push(ms(span(&git_proxy.seen()[g0..])));
        if k == 0 {
            fetch_diff_ms = ms(peers::git_fetch_diff(env, clone.path()));
        }
    }
    let cycles_log = tail(&d.logs());
    drop(d);

    // The RSS slope: more first syncs, each from a fresh process.
    let mut rss_points = Vec::new();
    for &n in &sizes.slope {
        let kib = rss_at(env, &bin, n, &repos).await;
        rss_points.push((n, kib as f64 / 1024.0));
    }
    let slope = {
        let n = rss_points.len() as f64;
        let (sx, sy) = rss_points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + *x as f64, b + y));
        let (mx, my) = (sx / n, sy / n);
        let cov: f64 = rss_points.iter().map(|(x, y)| (*x as f64 - mx) * (y - my)).sum();
        let var: f64 = rss_points.iter().map(|(x, _)| (*x as f64 - mx).powi(2)).sum();
        if var > 0.0 { cov / var } else { 0.0 }
    };

    let flux = match &sizes.flux {
        Some(dir) => Some(crate::bench_flux::run(env, dir, size, &app.repo.url).await),
        None => None,
    };

    let binary = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    // `cargo xtask image`'s amd64 OCI layout (its blobs: the layer, config and manifest).
    let image_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/a/layout");
    let image = image_dir.join("index.json").exists().then(|| dir_bytes(&image_dir));
    let floor = 1 + size;
    let floor_requests = per(ref_checks) + per(registry_requests);
    let mib = |b: u64| round1(b as f64 / 1024.0 / 1024.0);
    let (p50, p99) = (percentile(latencies.clone(), 50.0), percentile(latencies.clone(), 99.0));
    let registry_ms = median(registry_walls.clone());
    let git_check_ms = median(git_walls.clone());
    let change_ms = change_walls[0];
    let report = json!({
        "bundles": size,
        "helm": size.div_ceil(2),
        "raw": size / 2,
        "distinctImages": size,
        "history": {"files": sizes.history_files, "commits": sizes.history_commits},
        "agent": bin.file_name().map(|f| f.to_string_lossy().into_owned()),
        "build": build_name(&bin),
        "noChangePolls": polls,
        "perNoChangePoll": {
            "floor": floor,
            "floorRequests": floor_requests,
            "ratioToFloor": ratio(floor_requests, floor as f64),
            "gitRefChecks": per(ref_checks),
            "gitHttpRequests": per(git_requests),
            "registryRequests": per(registry_requests),
            "tokenRequests": per(tokens),
            "apiRequests": per(api_requests),
            "apiWrites": per(api_writes),
            "leaseRequestsInPollWindow": per(lease_requests),
            "dryRunPatches": per(dry_runs),
            "apiRequestsByPath": api_by_kind.iter().map(|(k, n)| json!({"request": k, "perPoll": per(*n)})).collect::<Vec<_>>(),
            "cpuMs": round1(cpu_per_poll * 1000.0),
            "registryWallMs": {"agent": registry_ms, "each": registry_walls, "curlKeepAlive": curl_ms, "skopeoLoop": skopeo_ms,
                "ratioToCurl": ratio(registry_ms, curl_ms), "ratioToSkopeo": ratio(registry_ms, skopeo_ms)},
            "gitCheckWallMs": {"agent": git_check_ms, "each": git_walls, "gitLsRemote": ls_remote_ms,
                "ratioToLsRemote": ratio(git_check_ms, ls_remote_ms)},
        },
        "oneCommitChange": {
            "gitWallMs": change_ms, "gitFetchAndDiffMs": fetch_diff_ms, "ratioToGit": ratio(change_ms, fetch_diff_ms),
            "webhookToApplyMs": {"samples": latencies, "p50": p50, "p99": p99},
        },
        "firstSyncSeconds": round1(first_sync.as_secs_f64()),
        "rssAfterFirstSyncMiB": round1(rss as f64 / 1024.0),
        "rssByBundles": rss_points.iter().map(|(n, m)| json!({"bundles": n, "rssMiB": round1(*m)})).collect::<Vec<_>>(),
        "rssSlopeMiBPerBundle": (slope * 1000.0).round() / 1000.0,
        "planCpuMs": {"bundles": PLAN_BUNDLES, "cpuMs": ms(plan_cpu), "objectsUnchanged": plan_unchanged},
        "binaryMiB": mib(binary),
        "imageMiB": image.map(mib),
        "flux": flux,
    });
    let out =
        std::env::var_os("GITOPS_BENCH_REPORT").map_or_else(|| app.config.with_file_name("report.json"), PathBuf::from);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    print_table(&report, &api_by_kind, polls);
    println!("bench: report written to {}", out.display());

    // The request counts are the point of the bench: they hold at any size and speed.
    assert_eq!(registry_requests, size * polls as usize, "one HEAD per image and poll: {:?}", registry.seen());
    assert_eq!(tokens, 0, "tokens reused across polls");
    assert_eq!(dry_runs, 0, "no plan against the API server when nothing changed; the agent said: {planned:#?}");
    assert_eq!(ref_checks, polls as usize, "one git ref check per poll");
    // The records are read from the state Secret watch, the live objects watched: nothing to ask.
    assert_eq!(api_requests, 0, "no API request besides watches when nothing changed: {api_by_kind:?}");
    // Every figure was measured (a zero would be a measurement that did not happen).
    assert!(cpu_per_poll > 0.0 || polls > 0.0, "CPU read from /proc");
    assert_eq!(plan_unchanged, 2 * PLAN_BUNDLES, "the synthetic plan found every object unchanged");
    assert!(plan_cpu > Duration::ZERO, "plan CPU measured");
    assert!(registry_walls.iter().all(|w| *w > 0.0), "registry spans measured: {registry_walls:?}");
    assert!(git_walls.iter().all(|w| *w > 0.0), "git spans measured: {git_walls:?}");
    assert!(curl_ms > 0.0 && skopeo_ms > 0.0 && ls_remote_ms > 0.0 && fetch_diff_ms > 0.0, "peers timed");
    assert!(change_ms > 0.0, "the one-commit change's git requests seen\n{cycles_log}");
    assert_eq!(latencies.len(), sizes.latency_samples.max(1), "a webhook → apply sample per change");
    assert!(rss_points.iter().all(|(_, m)| *m > 0.0), "RSS read at every size: {rss_points:?}");
}

/// The one table: each figure, its floor and the peers measured in the same run, with ratios.
fn print_table(r: &Value, api_by_kind: &[(String, usize)], polls: f64) {
    let p = &r["perNoChangePoll"];
    let c = &r["oneCommitChange"];
    let size = r["bundles"].as_u64().unwrap_or(0);
    println!(
        "bench: {size} bundles ({} helm, {} raw), {size} distinct images, history of {} files and {} commits, {polls} no-change polls",
        r["helm"], r["raw"], r["history"]["files"], r["history"]["commits"]
    );
    println!("| measure | gitops-agent | floor or peer | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| requests per no-change poll: git ref checks + registry | {} | floor {} | {} |",
        p["floorRequests"], p["floor"], p["ratioToFloor"]
    );
    println!("| - git HTTP requests (ref checks) | {} ({}) | floor 1 | |", p["gitHttpRequests"], p["gitRefChecks"]);
    println!(
        "| - registry requests (token requests) | {} ({}) | floor {size} | |",
        p["registryRequests"], p["tokenRequests"]
    );
    println!(
        "| - API requests besides watches (writes, dry-run patches) | {} ({}, {}) | floor 0 | |",
        p["apiRequests"], p["apiWrites"], p["dryRunPatches"]
    );
    for (k, n) in api_by_kind.iter().take(5) {
        println!("|   {k} | {} | | |", (*n as f64 / polls * 10.0).round() / 10.0);
    }
    println!(
        "| - Lease renewals in the same window (the election's clock, not the poll's) | {} | | |",
        p["leaseRequestsInPollWindow"]
    );
    let w = &p["registryWallMs"];
    println!(
        "| registry poll wall time | {} ms | curl keep-alive HEADs {} ms | {} |",
        w["agent"], w["curlKeepAlive"], w["ratioToCurl"]
    );
    println!("| | | skopeo inspect loop {} ms | {} |", w["skopeoLoop"], w["ratioToSkopeo"]);
    let g = &p["gitCheckWallMs"];
    println!(
        "| git no-change check | {} ms | git ls-remote {} ms | {} |",
        g["agent"], g["gitLsRemote"], g["ratioToLsRemote"]
    );
    println!(
        "| git one-commit change (ref check + fetch) | {} ms | git fetch + git diff {} ms | {} |",
        c["gitWallMs"], c["gitFetchAndDiffMs"], c["ratioToGit"]
    );
    println!("| CPU per no-change poll (agent + children) | {} ms | | |", p["cpuMs"]);
    let l = &c["webhookToApplyMs"];
    println!(
        "| webhook → first apply patch p50 / p99 ({} samples) | {} / {} ms | | |",
        l["samples"].as_array().map_or(0, Vec::len),
        l["p50"],
        l["p99"]
    );
    println!("| first sync | {} s | | |", r["firstSyncSeconds"]);
    println!("| RSS after first sync | {} MiB | | |", r["rssAfterFirstSyncMiB"]);
    let points: Vec<String> = r["rssByBundles"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("{}: {}", v["bundles"], v["rssMiB"]))
        .collect();
    println!("| RSS slope per bundle ({}) | {} MiB | | |", points.join(", "), r["rssSlopeMiBPerBundle"]);
    println!("| plan CPU, {} bundles (shared) | {} ms | | |", r["planCpuMs"]["bundles"], r["planCpuMs"]["cpuMs"]);
    println!("| binary ({}) | {} MiB | | |", r["build"].as_str().unwrap_or(""), r["binaryMiB"]);
    match r["imageMiB"].as_f64() {
        Some(m) => println!("| image (target/image, amd64) | {m} MiB | | |"),
        None => println!("| image | not built (cargo xtask image) | | |"),
    }
    if let Some(f) = r["flux"].as_object() {
        crate::bench_flux::print_rows(f, r);
    }
}

/// Which build `bin` is, by its folder under `target/`: `release-image` is the static musl
/// binary that ships in the image and the host unit.
fn build_name(bin: &std::path::Path) -> &'static str {
    let has = |name: &str| bin.components().any(|c| c.as_os_str() == name);
    if has("release-image") {
        "release-image, musl, as shipped"
    } else if has("release") {
        "release"
    } else {
        "debug"
    }
}
