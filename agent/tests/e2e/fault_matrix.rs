//! The fault matrix: one table test over fault × phase against the testenv, each row an agent
//! daemon (`agent run`) of its own whose next release meets the fault. Every row holds the same
//! promises: the workloads keep running the last-known-good, which the records keep; no image is
//! rolled out but the digest the registry holds for the tag Git names; no rollback loop; while
//! the fault lasts, `agent status` names it (for the faults that are errors; a slow service is
//! only slow); and once it ends, the agent rolls the release out (or back) by itself, with no
//! `agent retry`. The SIGKILL rows are the `rollout::killed_*` tests, kept where they are.
//! `docs/reliability.md` holds the table as a run printed it (`cargo test -p agent --test e2e
//! -- fault_matrix --nocapture`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use xtask::fault_proxy::{Fault, FaultProxy, Seen, is_apply};
use xtask::support::{TestEnv, Upstream};

use crate::daemon::{Daemon, serve, tail};
use crate::rollout::{App, DEPLOYMENT};
use crate::util::wait_for;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Git,
    Registry,
    ApiServer,
    /// The registry's token service (behind a proxy of its own: the registry proxy points its
    /// `WWW-Authenticate` realm there). The release's image is in a repository the agent holds
    /// no token for yet, so its resolve needs the token service.
    TokenService,
    StateDirReadOnly,
    StateDirFull,
    StateSecretDeleted,
    StateSecretCorrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The fault starts before the release is committed: the poll, the resolve or the plan
    /// meets it.
    Poll,
    /// The fault starts once the new image is applied: the rollout watch meets it.
    Watch,
    /// A broken release: the fault starts once it is applied, so the watch and the rollback
    /// meet it.
    Rollback,
}

struct Row {
    target: Target,
    fault: Fault,
    phase: Phase,
    /// What `agent status` says while the fault lasts (none: a slow service is not an error).
    names: Option<&'static str>,
}

fn rows() -> Vec<Row> {
    let cut = || Fault::Cut;
    let status = |s| Fault::Respond { status: s, retry_after: None, times: None };
    let slow = || Fault::Delay(Duration::from_secs(2));
    use Phase::*;
    use Target::*;
    vec![
        Row { target: Git, fault: cut(), phase: Poll, names: Some("(Connect)") },
        Row { target: Git, fault: status(500), phase: Poll, names: Some("HTTP status 500") },
        Row { target: Git, fault: slow(), phase: Poll, names: None },
        Row { target: Registry, fault: cut(), phase: Poll, names: Some("cannot connect") },
        Row { target: Registry, fault: status(429), phase: Poll, names: Some("HTTP 429") },
        Row { target: Registry, fault: status(500), phase: Poll, names: Some("HTTP 500") },
        Row { target: TokenService, fault: cut(), phase: Poll, names: Some("retrying at") },
        Row { target: TokenService, fault: status(500), phase: Poll, names: Some("HTTP 500") },
        Row { target: ApiServer, fault: cut(), phase: Poll, names: Some("API server: ") },
        // The bundle's own line names it (the records come from the state Secret watch, which a
        // 500 to new requests does not interrupt, so no records warning says it instead).
        Row { target: ApiServer, fault: status(500), phase: Poll, names: Some("(HTTP 500)") },
        Row { target: ApiServer, fault: slow(), phase: Poll, names: None },
        // The plan's dry runs pass; the apply of the bundle's objects meets the fault.
        Row { target: ApiServer, fault: Fault::RejectApplies { status: 500 }, phase: Poll, names: Some("retrying in") },
        Row { target: ApiServer, fault: Fault::RejectApplies { status: 409 }, phase: Poll, names: Some("retrying in") },
        Row { target: ApiServer, fault: Fault::RejectApplies { status: 429 }, phase: Poll, names: Some("retrying in") },
        // The link dies during the apply alone: the first apply reaches the API server and its
        // answer is lost, then nothing gets through until the fault ends; or only the applies
        // are slow.
        Row { target: ApiServer, fault: Fault::CutAtApply, phase: Poll, names: Some("retrying in") },
        Row { target: ApiServer, fault: Fault::DelayApplies(Duration::from_secs(2)), phase: Poll, names: None },
        Row { target: ApiServer, fault: cut(), phase: Watch, names: None },
        Row { target: ApiServer, fault: status(500), phase: Watch, names: None },
        Row { target: ApiServer, fault: slow(), phase: Watch, names: None },
        Row { target: ApiServer, fault: cut(), phase: Rollback, names: None },
        Row { target: ApiServer, fault: status(500), phase: Rollback, names: None },
        Row { target: ApiServer, fault: slow(), phase: Rollback, names: None },
        Row { target: StateDirReadOnly, fault: Fault::Pass, phase: Poll, names: Some("Read-only file system") },
        Row { target: StateDirFull, fault: Fault::Pass, phase: Poll, names: Some("No space left") },
        Row { target: StateSecretDeleted, fault: Fault::Pass, phase: Poll, names: None },
        Row { target: StateSecretCorrupted, fault: Fault::Pass, phase: Poll, names: None },
    ]
}

/// A small file system mounted over a folder for one row, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(at));
        Mount(at.to_owned())
    }

    fn read_only(at: &Path) -> Mount {
        run(Command::new("mount").arg("--bind").arg(at).arg(at));
        run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(at));
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// What one row showed, for the table.
struct Outcome {
    row: String,
    named: String,
    recovered: Duration,
    /// Requests the proxy faulted (cut, answered itself, or delayed).
    met: usize,
}

fn web(status: &Value) -> Value {
    status["bundles"].as_array().and_then(|b| b.iter().find(|b| b["bundle"] == "web")).cloned().unwrap_or_default()
}

async fn run_row(env: &'static TestEnv, row: Row) -> Outcome {
    let label = format!("{:?} {} during {:?}", row.target, fault_name(&row.fault), row.phase);
    let app = App::new(env, &format!("matrix-{}", row_hint(&row))).await;
    let digest = |tag: &str| env.push_image(&app.image_repo, tag);
    let (good_digest, mut next_digest) = (digest("1.0.0"), digest("1.1.0"));
    let broken_digest = digest("1.2.0-broken");

    // The service the row breaks sits behind a fault proxy of the row's own.
    let mut proxy: Option<FaultProxy> = None;
    let mut _kubeconfig_dir = None;
    let mut _registry_proxy: Option<FaultProxy> = None;
    let mut image = app.image.clone();
    match row.target {
        Target::Git => {
            let p = env.fault_proxy(Upstream::Git).await;
            app.edit_config(&app.repo.url, &app.repo.url.replace(&env.url(Upstream::Git), &p.url()));
            proxy = Some(p);
        }
        Target::Registry => {
            let (p, through) = app.through_registry_proxy(env).await;
            image = through;
            proxy = Some(p);
        }
        Target::TokenService => {
            let token = env.fault_proxy(Upstream::TokenService).await;
            let registry = env.fault_proxy(Upstream::Registry).await;
            registry.rewrite_headers(&env.url(Upstream::TokenService), &token.url());
            let host = registry.addr().to_string();
            app.edit_config(&format!("- host: {}\n", env.info.registry), &format!("- host: {host}\n"));
            image = format!("{host}/{}", app.image_repo);
            proxy = Some(token);
            _registry_proxy = Some(registry);
        }
        Target::ApiServer => {
            let (p, dir) = app.through_api_proxy(env).await;
            proxy = Some(p);
            _kubeconfig_dir = Some(dir);
        }
        _ => {}
    }
    let _full = (row.target == Target::StateDirFull).then(|| Mount::tmpfs(&app.state_dir, "8m"));
    let set_tag =
        |tag: &str| app.write("apps/web/deployment.yaml", &DEPLOYMENT.replace("IMAGE", &format!("{image}:{tag}")));
    if matches!(row.target, Target::Registry | Target::TokenService) {
        // The image through the row's proxy (App committed it at the registry's own address).
        set_tag("1.0.0");
        app.commit(env, "1.0.0 through the proxy");
    }
    // The token service row's release: an image in another repository (a token for the first
    // one is kept between polls, so only a new scope needs the token service).
    let next_repo = format!("{}-next", app.image_repo);
    if row.target == Target::TokenService {
        next_digest = env.push_image(&next_repo, "1.1.0");
    }
    let first = app.head();
    let port = serve(&app, "", "5s", "15s");
    let d = Daemon::start(&app.config, app.config.with_file_name("agent.log"), port, &[]);
    d.wait_ready().await;
    d.wait_running("web", &first, Duration::from_secs(120)).await;
    let good_image = app.deployment_image(env).await;
    assert!(good_image.ends_with(&good_digest), "{label}: {good_image}");

    // The fault, and the release that meets it.
    let (tag, want) =
        if row.phase == Phase::Rollback { ("1.2.0-broken", &broken_digest) } else { ("1.1.0", &next_digest) };
    let mut holds: Vec<Mount> = Vec::new();
    let start_fault = |holds: &mut Vec<Mount>| match row.target {
        Target::Git | Target::Registry | Target::TokenService | Target::ApiServer => {
            let p = proxy.as_ref().unwrap();
            p.reset_seen();
            p.set(row.fault.clone());
        }
        Target::StateDirReadOnly => holds.push(Mount::read_only(&app.state_dir)),
        Target::StateDirFull => {
            let filler = app.state_dir.join("filler");
            let _ =
                Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).arg("bs=64k").output();
        }
        Target::StateSecretDeleted | Target::StateSecretCorrupted => {}
    };
    if row.phase == Phase::Poll {
        start_fault(&mut holds);
    }
    match row.target {
        Target::StateSecretDeleted => {
            let api: Api<Secret> = Api::namespaced(env.client().await, &app.ns.name);
            let lp = ListParams::default().labels(&format!("gitops-agent.io/state-of={}", app.ns.name));
            for s in api.list(&lp).await.unwrap().items {
                api.delete(&s.metadata.name.unwrap(), &DeleteParams::default()).await.unwrap();
            }
        }
        Target::StateSecretCorrupted => {
            let api: Api<Secret> = Api::namespaced(env.client().await, &app.ns.name);
            let lp = ListParams::default().labels(&format!("gitops-agent.io/state-of={}", app.ns.name));
            for s in api.list(&lp).await.unwrap().items {
                let patch = json!({"data": {"record.json.gz": "bm90IGd6aXA="}});
                api.patch(&s.metadata.name.unwrap(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
        }
        _ => {}
    }
    if row.target == Target::TokenService {
        let host = image.split('/').next().expect("a host").to_owned();
        app.write("apps/web/deployment.yaml", &DEPLOYMENT.replace("IMAGE", &format!("{host}/{next_repo}:{tag}")));
    } else {
        set_tag(tag);
    }
    app.commit(env, tag);
    let release = app.head();
    if row.phase != Phase::Poll {
        // Once the new image is applied, the watch (and for a broken one, the rollback) meet it.
        wait_for(&format!("{label}: {tag} applied"), Duration::from_secs(90), || async {
            let i = app.deployment_image(env).await;
            if i.ends_with(want.as_str()) { Ok(()) } else { Err(i) }
        })
        .await;
        start_fault(&mut holds);
    }

    // While it lasts: the last-known-good runs, the record keeps it, status names the fault.
    let mut named = String::from("-");
    if let Some(needle) = row.names {
        // The bundle's line, a source's last error, or the warning (a cycle that failed before
        // the bundles): the fields of `agent status` that say what is wrong (never a URL or a
        // kind, which are there when all is well).
        named = wait_for(&format!("{label}: status names the fault ({needle})"), Duration::from_secs(90), || async {
            let s = d.status().await;
            // A registry that does not answer is the environment's fault, as an API server's
            // is: the bundle is retrying, never blocked for what it is.
            let registry = matches!(row.target, Target::Registry | Target::TokenService);
            let state_ok = !registry || web(&s)["state"] == "retrying";
            match fault_fields(&s).into_iter().find(|t| t.contains(needle)) {
                Some(t) if state_ok => Ok(t),
                _ => Err(format!("{s:#}\nlog: {}", tail(&d.logs()))),
            }
        })
        .await;
        let b = web(&d.status().await);
        let running = app.deployment_image(env).await;
        assert_eq!(running, good_image, "{label}: the last-known-good keeps running while the fault lasts");
        assert_eq!(b["running"]["commit"], first.as_str(), "{label}: the record keeps the last-known-good: {b:#}");
    }
    if let Some(p) = proxy.as_ref().filter(|_| row.fault != Fault::Cut) {
        // The fault meets the agent's requests before it ends (a row whose fault nothing met
        // proves nothing; a slow service is no error, so this is all such a row waits for). A
        // cut refuses connections before any request is read, so it is not counted: its rows
        // show it in status, or cut the watch the agent holds open.
        wait_for(&format!("{label}: a request of the agent meets the fault"), Duration::from_secs(90), || async {
            let n = p.count(|s| met_by(&row.fault, s));
            if n > 0 { Ok(()) } else { Err(format!("{:?}", p.seen())) }
        })
        .await;
    }

    // It ends: the agent finishes by itself.
    let healed = Instant::now();
    let mut met = 0;
    if let Some(p) = &proxy {
        met = p.count(|s| met_by(&row.fault, s));
        p.set(Fault::Pass);
    }
    holds.clear();
    if row.target == Target::StateDirFull {
        std::fs::remove_file(app.state_dir.join("filler")).unwrap();
    }
    let end = wait_for(&format!("{label}: recovered by itself"), Duration::from_secs(240), || async {
        let b = web(&d.status().await);
        let done = if row.phase == Phase::Rollback {
            b["last"]["commit"] == release.as_str()
                && b["last"]["result"] == "rolledBack"
                && b["state"] == "rolled-back"
        } else {
            b["running"]["commit"] == release.as_str() && b["state"] == "synced"
        };
        if done { Ok(b) } else { Err(format!("{b:#}\nlog: {}", tail(&d.logs()))) }
    })
    .await;
    let recovered = healed.elapsed();

    // Every row: only verified digests ran, no rollback loop, the records whole.
    let running = app.deployment_image(env).await;
    let expected = if row.phase == Phase::Rollback { &good_digest } else { &next_digest };
    assert!(running.ends_with(expected.as_str()), "{label}: runs {running}, not the digest the registry holds");
    let rolled_back = end["counts"]["rolledBack"].as_u64().unwrap_or_default();
    assert_eq!(rolled_back, u64::from(row.phase == Phase::Rollback), "{label}: no rollback loop: {end:#}");
    if row.phase != Phase::Rollback {
        assert_eq!(end["quarantined"], Value::Null, "{label}: nothing quarantined: {end:#}");
    }
    // The state Secret catches up by itself (a write that failed during the fault is done again
    // at a later cycle): it ends holding the record status shows.
    let status_seq = state_file_seq(&app.state_dir);
    let record = wait_for(&format!("{label}: the state Secret caught up"), Duration::from_secs(60), || async {
        let record = app.secret_record(env).await;
        if record["seq"].as_u64() >= status_seq { Ok(record) } else { Err(format!("{record:#}")) }
    })
    .await;
    let history: Vec<&str> =
        record["history"].as_array().unwrap().iter().filter_map(|h| h["revision"]["commit"].as_str()).collect();
    if row.phase != Phase::Rollback {
        assert!(
            history.contains(&first.as_str()),
            "{label}: the earlier last-known-good is in the history: {record:#}"
        );
    }
    drop(d);
    Outcome { row: label, named, recovered, met }
}

/// What `agent status` says is wrong: the bundle's next step and last message, each source's
/// last error, the warning.
fn fault_fields(s: &Value) -> Vec<String> {
    let b = web(s);
    let mut out: Vec<String> = [&b["next"], &b["desired"]["message"], &s["warning"]]
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for src in s["sources"].as_array().into_iter().flatten() {
        out.extend(src["lastError"].as_str().map(str::to_owned));
    }
    out
}

/// Whether `fault` met request `s`: delayed it (its answer took at least the delay), answered it
/// itself, or cut it before its answer.
fn met_by(fault: &Fault, s: &Seen) -> bool {
    match fault {
        Fault::Delay(d) => s.took >= *d,
        Fault::DelayApplies(d) => is_apply(&s.method, &s.target) && s.took >= *d,
        _ => s.injected || s.status == 0,
    }
}

/// The `seq` of the one record in the node's state folder (the copy the agent wrote last).
fn state_file_seq(state_dir: &Path) -> Option<u64> {
    let files: Vec<_> = std::fs::read_dir(state_dir.join("state")).ok()?.flatten().collect();
    let file = files.iter().find(|e| e.path().extension().is_some_and(|x| x == "json"))?;
    let record: Value = serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    record["seq"].as_u64()
}

fn fault_name(f: &Fault) -> String {
    match f {
        Fault::Pass => "fault".into(),
        Fault::Cut => "cut".into(),
        Fault::Delay(d) => format!("slow ({}s per request)", d.as_secs()),
        Fault::Respond { status, .. } => format!("{status}"),
        Fault::RejectApplies { status } => format!("{status} to every apply"),
        Fault::CutAtApply => "cut at the first apply (applied, its answer lost)".into(),
        Fault::DelayApplies(d) => format!("slow applies ({}s each)", d.as_secs()),
    }
}

fn row_hint(row: &Row) -> String {
    let t = format!("{:?}", row.target).to_lowercase();
    let f = match &row.fault {
        Fault::Pass => "x".to_owned(),
        Fault::Cut => "cut".to_owned(),
        Fault::Delay(_) => "slow".to_owned(),
        Fault::Respond { status, .. } => status.to_string(),
        Fault::RejectApplies { status } => format!("apply{status}"),
        Fault::CutAtApply => "applycut".to_owned(),
        Fault::DelayApplies(_) => "applyslow".to_owned(),
    };
    format!("{}-{f}-{:?}", &t[..t.len().min(10)], row.phase).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fault_matrix_keeps_the_last_known_good_names_the_fault_and_recovers_by_itself() {
    let env = TestEnv::get();
    // Four rows at a time: each is an agent, a namespace and a fault proxy of its own.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, row) in rows().into_iter().enumerate() {
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            (i, run_row(env, row).await)
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        done.push(r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    done.sort_by_key(|(i, _)| *i);
    println!("| Fault | Requests it met | Status said | Recovered after the fault ended |");
    println!("|---|---|---|---|");
    for (_, o) in &done {
        let said = o.named.replace('|', "/");
        let said: String = said.chars().take(110).collect();
        let met = if o.met == 0 { "-".to_owned() } else { o.met.to_string() };
        println!("| {} | {met} | {said} | {:.1} s |", o.row, o.recovered.as_secs_f64());
    }
}
