//! Load on the webhook endpoint of `agent run` (run by `cargo xtask webhook-load`, ignored in
//! the suite: a 10 s burst would skew the tests beside it): 10,000 requests in 10 s over loopback
//! from 20 senders, good and bad signatures mixed, while `/healthz` is sampled and the agent's
//! RSS read from /proc. Asserted: every request gets its answer (401 for a bad signature),
//! `/healthz` answers throughout, memory stays bounded, and the reconciles are at most what the
//! debounce allows. Measured and printed, never asserted: latencies and RSS figures
//! (docs/reliability.md has them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use xtask::support::TestEnv;

use crate::bench_peers::rss_kib;
use crate::daemon::{Daemon, gitea_push, metrics, sample, serve, signed};
use crate::rollout::App;
use crate::util::wait_for;

/// The daemon's trigger debounce (`DEBOUNCE` in agent/src/daemon/mod.rs): two reconciles caused
/// by webhooks start at least this far apart.
const DEBOUNCE: Duration = Duration::from_millis(300);

const REQUESTS: usize = 10_000;
const BURST: Duration = Duration::from_secs(10);
const SENDERS: usize = 20;

/// What a sender sends: good or bad credentials, by webhook kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GiteaGood,
    GiteaBad,
    HarborGood,
    HarborBad,
    GenericBad,
}

const KINDS: [Kind; 5] = [Kind::GiteaGood, Kind::GiteaBad, Kind::HarborGood, Kind::HarborBad, Kind::GenericBad];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load: run alone by `cargo xtask webhook-load`"]
async fn a_burst_of_webhooks_leaves_healthz_answering_memory_bounded_and_only_debounced_reconciles() {
    let env = TestEnv::get();
    let app = App::new(env, "hook-load").await;
    // A generous rate limit, so the debounce, not the limiter, is what bounds the reconciles.
    let port = serve(&app, "  webhookBurst: 100000\n  webhookEvery: 1ms\n", "1h", "15s");
    let dir = app.config.parent().unwrap().to_owned();
    let d = Daemon::start(&app.config, dir.join("agent.log"), port, &[]);
    d.wait_ready().await;
    d.wait_running("web", &app.head(), Duration::from_secs(90)).await;
    let pid = d.pid();
    let url = format!("http://127.0.0.1:{port}");
    let cycles_before = d.cycles().await;
    let rss_before = rss_kib(pid);

    let gitea = gitea_push(&app);
    let harbor = serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT",
        "event_data": {
            "resources": [{"tag": "1.1.0", "resource_url": format!("{}/{}:1.1.0", env.info.registry, app.image_repo)}],
            "repository": {"repo_full_name": app.image_repo},
        },
    }))
    .unwrap();
    let secret = std::fs::read_to_string(app.config.with_file_name("webhook-secret")).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let healthz = {
        let (done, url) = (done.clone(), url.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(format!("{url}/healthz")).send().await.expect("/healthz answers during the burst");
                assert_eq!(r.status(), 200, "/healthz during the burst");
                latencies.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        })
    };
    let rss = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };

    let started = Instant::now();
    let per_sender = REQUESTS / SENDERS;
    let every = BURST / per_sender as u32;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let kind = KINDS[i % KINDS.len()];
        let (url, gitea, harbor, secret) = (url.clone(), gitea.clone(), harbor.clone(), secret.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut codes = Vec::with_capacity(per_sender);
            for n in 0..per_sender {
                tokio::time::sleep_until((started + every * n as u32).into()).await;
                let req = match kind {
                    Kind::GiteaGood | Kind::GiteaBad => {
                        let sig = if kind == Kind::GiteaGood { signed(&gitea) } else { "0".repeat(64) };
                        client
                            .post(format!("{url}/webhooks/gitea"))
                            .header("x-gitea-event", "push")
                            .header("x-gitea-signature", sig)
                            .body(gitea.clone())
                    }
                    Kind::HarborGood | Kind::HarborBad => {
                        let auth = if kind == Kind::HarborGood { secret.clone() } else { format!("{secret}x") };
                        client.post(format!("{url}/webhooks/harbor")).header("authorization", auth).body(harbor.clone())
                    }
                    Kind::GenericBad => client
                        .post(format!("{url}/webhooks/generic"))
                        .header("x-signature-256", format!("sha256={}", "f".repeat(64)))
                        .body("{}"),
                };
                codes.push(req.send().await.expect("every webhook request is answered").status().as_u16());
            }
            (kind, codes)
        }));
    }
    let mut answered = 0;
    let mut accepted = 0;
    for s in senders {
        let (kind, codes) = s.await.unwrap();
        for code in codes {
            answered += 1;
            match kind {
                Kind::GiteaGood | Kind::HarborGood => {
                    assert!(code == 202 || code == 429, "{kind:?}: {code}");
                    accepted += usize::from(code == 202);
                }
                _ => assert_eq!(code, 401, "{kind:?}"),
            }
        }
    }
    let burst = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut latencies = healthz.await.unwrap();
    let rss_peak = rss.await.unwrap();
    latencies.sort();

    // Settled: no reconcile for longer than the queue's longest hold (3 s, MAX_DELAY).
    let last = std::cell::Cell::new((d.cycles().await, Instant::now()));
    wait_for("the reconciles to settle", Duration::from_secs(120), || async {
        let now = d.cycles().await;
        if now != last.get().0 {
            last.set((now, Instant::now()));
        }
        if last.get().1.elapsed() > Duration::from_secs(4) { Ok(()) } else { Err(format!("{now} cycles")) }
    })
    .await;
    let cycles = last.get().0 - cycles_before;
    let settled = started.elapsed();
    let rss_after = rss_kib(pid);
    let (_, body) = d.get("/metrics").await;
    let m = metrics(&body);
    let triggered: f64 = ["gitea", "harbor"]
        .iter()
        .filter_map(|s| sample(&m, "gitops_agent_webhook_requests_total", &[("sender", s), ("outcome", "triggered")]))
        .sum();

    println!("webhook load: {answered} requests in {:.1} s from {SENDERS} senders", burst.as_secs_f64());
    println!("  accepted (202, good signature): {accepted}; triggered per /metrics: {triggered}");
    println!(
        "  /healthz during the burst: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("  RSS: before {} MiB, peak {} MiB, after {} MiB", rss_before / 1024, rss_peak / 1024, rss_after / 1024);
    println!("  reconciles: {cycles} in {:.1} s (burst and settling)", settled.as_secs_f64());

    assert_eq!(answered, REQUESTS);
    assert!(!latencies.is_empty(), "/healthz was sampled");
    assert!(accepted > 0 && triggered > 0.0, "good signatures got through: {accepted}, {triggered}");
    assert!(cycles >= 1.0, "the accepted webhooks caused a reconcile");
    let bound = (settled.as_secs_f64() / DEBOUNCE.as_secs_f64()).floor() + 1.0;
    assert!(cycles <= bound, "{cycles} reconciles in {settled:?}: more than the debounce allows ({bound})");
    assert!(cycles < triggered, "{triggered} triggers were not debounced into fewer reconciles ({cycles})");
    // Bounded: requests are answered and dropped; 64 MiB above the start would be a leak.
    assert!(rss_peak < rss_before + 64 * 1024, "RSS {rss_before} KiB before, {rss_peak} KiB at the peak");
}
