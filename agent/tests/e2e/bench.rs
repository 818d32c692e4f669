//! The bench (run by `cargo xtask bench`, ignored in the suite: it measures, and a crowd of
//! tests beside it would skew the figures): M bundles, half Helm charts and half raw manifests,
//! each with its own image in its own registry repository, synced by `agent run`; then polls
//! with nothing changed. Requests are counted at the server side (fault proxies in front of the
//! registry, git and the API server; the token service's access log). Printed and written as
//! JSON: requests per no-change poll against the floor (1 git ref check + 1 HEAD per distinct
//! image), first sync time, RSS after the first sync, the binary's size. Only request counts are
//! asserted, never a time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use xtask::support::{TestEnv, Upstream};

use crate::daemon::{Daemon, serve, tail};
use crate::no_change::{poll_once, token_requests_for};
use crate::rollout::App;
use crate::util::wait_for;

/// No-change polls measured (after one that keeps the plans of the first sync).
const POLLS: usize = 3;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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
        (
            format!("apps/{name}/config.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-config\ndata:\n  greeting: hello\n"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run alone by `cargo xtask bench`"]
async fn bench_first_sync_and_no_change_polls() {
    let size: usize = std::env::var("GITOPS_BENCH_BUNDLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let bin = std::env::var_os("GITOPS_BENCH_AGENT")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_agent")), PathBuf::from);
    let env = TestEnv::get();
    let app = App::new(env, "bench").await;
    let registry = env.fault_proxy(Upstream::Registry).await;
    let git = env.fault_proxy(Upstream::Git).await;
    let (api, _kubeconfig) = app.through_api_proxy(env).await;

    let repos: Vec<String> = (0..size).map(|i| env.registry_repo(&format!("bench-{i}"))).collect();
    std::thread::scope(|s| {
        for chunk in repos.chunks(size.div_ceil(4).max(1)) {
            s.spawn(move || chunk.iter().for_each(|r| drop(env.push_image(r, "1.0.0"))));
        }
    });
    std::fs::remove_dir_all(app.work.join("apps/web")).unwrap();
    for (i, repo) in repos.iter().enumerate() {
        let image = format!("{}/{repo}:1.0.0", registry.addr());
        let files = if i % 2 == 0 {
            chart(&format!("h{i:02}"), &app.ns.name, &image)
        } else {
            raw(&format!("r{i:02}"), &app.ns.name, &image)
        };
        for (path, text) in files {
            app.write(&path, &text);
        }
    }
    app.commit(env, "bench bundles");
    app.edit_config(&format!("host: {}\n", env.info.registry), &format!("host: {}\n", registry.addr()));
    let git_url = app.repo.url.replace(&env.url(Upstream::Git), &git.url());
    app.edit_config(&app.repo.url, &git_url);

    let port = serve(&app, "  webhookBurst: 100\n  webhookEvery: 1s\n", "1h", "15s");
    let started = Instant::now();
    let d = Daemon::start_binary(&bin, &app.config, app.config.with_file_name("agent.log"), port, &[]);
    let head = app.head();
    d.wait_ready().await;
    wait_for("every bundle synced", Duration::from_secs(60 + 30 * size as u64), || async {
        let (_, body) = d.get("/status").await;
        let s: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let synced = s["bundles"].as_array().map_or(0, |b| {
            b.iter().filter(|b| b["running"]["commit"] == head.as_str() && b["state"] == "synced").count()
        });
        if synced == size { Ok(()) } else { Err(format!("{synced}/{size} synced\n{}", tail(&d.logs()))) }
    })
    .await;
    let first_sync = started.elapsed();
    let rss = rss_kib(d.pid());

    // The first poll after a rollout plans in full and keeps the plans that found nothing to do.
    poll_once(&d, &app, Some(&git_url)).await;
    let tokens_before: usize = repos.iter().map(|r| token_requests_for(env, r)).sum();
    for p in [&registry, &git, &api] {
        p.reset_seen();
    }
    let mut polls = 0.0;
    for _ in 0..POLLS {
        polls += poll_once(&d, &app, Some(&git_url)).await;
    }
    let tokens = repos.iter().map(|r| token_requests_for(env, r)).sum::<usize>() - tokens_before;
    let per = |n: usize| (n as f64 / polls * 10.0).round() / 10.0;
    let registry_requests = registry.seen().len();
    let git_requests = git.seen().len();
    let ref_checks = git.count(|s| s.method == "POST" && s.body_head.contains("command=ls-refs"));
    // Watches are long-lived: they are set up once, not per poll.
    let api_requests = api.count(|s| !s.target.contains("watch=true"));
    let dry_runs = api.count(|s| s.method == "PATCH" && s.target.contains("dryRun"));
    // What the API requests are, by method and path (names of the test's namespace and
    // objects made generic), most first: where the next cut is.
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for s in api.seen().iter().filter(|s| !s.target.contains("watch=true")) {
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
    let binary = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let floor = 1 + size;
    let report = json!({
        "bundles": size,
        "helm": size.div_ceil(2),
        "raw": size / 2,
        "distinctImages": size,
        "agent": bin.file_name().map(|f| f.to_string_lossy().into_owned()),
        "build": if bin.components().any(|c| c.as_os_str() == "release") { "release" } else { "debug" },
        "noChangePolls": polls,
        "perNoChangePoll": {
            "floor": floor,
            "gitRefChecks": per(ref_checks),
            "gitHttpRequests": per(git_requests),
            "registryRequests": per(registry_requests),
            "tokenRequests": per(tokens),
            "apiRequests": per(api_requests),
            "dryRunPatches": per(dry_runs),
            "apiRequestsByPath": api_by_kind.iter().map(|(k, n)| json!({"request": k, "perPoll": per(*n)})).collect::<Vec<_>>(),
        },
        "firstSyncSeconds": (first_sync.as_secs_f64() * 10.0).round() / 10.0,
        "rssAfterFirstSyncMiB": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "binaryMiB": (binary as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    });
    let out =
        std::env::var_os("GITOPS_BENCH_REPORT").map_or_else(|| app.config.with_file_name("report.json"), PathBuf::from);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    let p = &report["perNoChangePoll"];
    println!(
        "bench: {size} bundles ({} helm, {} raw), {size} distinct images, {polls} no-change polls",
        size.div_ceil(2),
        size / 2
    );
    println!("| measure | gitops-agent | floor |");
    println!("|---|---|---|");
    println!(
        "| requests per no-change poll: git ref checks + registry | {} | {floor} |",
        per(ref_checks) + per(registry_requests)
    );
    println!("| - git HTTP requests (ref checks) | {} ({}) | 1 |", p["gitHttpRequests"], p["gitRefChecks"]);
    println!("| - registry requests (tokens) | {} ({}) | {size} |", p["registryRequests"], p["tokenRequests"]);
    println!(
        "| - API requests besides watches (dry-run patches) | {} ({}) | 0 |",
        p["apiRequests"], p["dryRunPatches"]
    );
    for (k, n) in api_by_kind.iter().take(5) {
        println!("|   {k} | {} | |", per(*n));
    }
    println!("| first sync | {} s | |", report["firstSyncSeconds"]);
    println!("| RSS after first sync | {} MiB | |", report["rssAfterFirstSyncMiB"]);
    println!("| binary ({}) | {} MiB | |", report["build"].as_str().unwrap_or(""), report["binaryMiB"]);
    println!("bench: report written to {}", out.display());

    // The request counts are the point of the bench: they hold at any size and speed.
    assert_eq!(registry_requests, size * polls as usize, "one HEAD per image and poll: {:?}", registry.seen());
    assert_eq!(tokens, 0, "tokens reused across polls");
    assert_eq!(dry_runs, 0, "no plan against the API server when nothing changed");
    assert_eq!(ref_checks, polls as usize, "one git ref check per poll");
}
