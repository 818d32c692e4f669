//! The bench's measuring tools and peers: CPU and RSS of a process tree from /proc, the spans of
//! requests a fault proxy saw, the peer commands timed against the agent over the same proxies
//! (one keep-alive curl of HEADs, a `skopeo inspect` loop, `git ls-remote`, `git fetch` + `git
//! diff`), the large history the git figures are measured on (built once with `git
//! fast-import`, cached under target/bench), and the CPU of planning many bundles with the pure
//! `shared` functions on synthetic input.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xtask::fault_proxy::Seen;
use xtask::support::TestEnv;

/// Clock ticks per second of /proc/PID/stat's CPU fields (USER_HZ: 100 on every Linux ABI).
const TICKS: f64 = 100.0;

/// Bundle `i`'s folder name: even ones are Helm charts, odd ones raw manifests.
pub(crate) fn bundle_name(i: usize) -> String {
    if i.is_multiple_of(2) { format!("h{i:02}") } else { format!("r{i:02}") }
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces): [0] is the state,
/// [1] the parent's pid, [11..15] utime, stime, cutime, cstime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds of `pid` and all its descendants: its own user + system time, that of children
/// it has waited for (cutime + cstime: finished helm and kustomize runs), and that of the
/// descendants still running.
pub(crate) fn tree_cpu_seconds(pid: u32) -> f64 {
    let num = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let Some(own) = stat_fields(pid) else { return 0.0 };
    let mut ticks = num(&own, 11) + num(&own, 12) + num(&own, 13) + num(&own, 14);
    let all: Vec<(u32, Vec<String>)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_fields(p)?)))
        .collect();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for (child, f) in all.iter().filter(|(_, f)| f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)) {
            ticks += num(f, 11) + num(f, 12);
            parents.push(*child);
        }
    }
    ticks / TICKS
}

/// From the first request's arrival to the last answer among `seen`: the wall time of a poll
/// as its server saw it (zero for no request).
pub(crate) fn span(seen: &[Seen]) -> Duration {
    let Some(first) = seen.iter().map(|s| s.at).min() else { return Duration::ZERO };
    let last = seen.iter().map(|s| s.at + s.took).max().expect("not empty");
    last - first
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The nearest-rank percentile `p` (0..=100) of `v`.
pub(crate) fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn timed(what: &str, cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = started.elapsed();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// A pull token of the agent's robot for each of `repos` (as the agent holds them between
/// polls), from the testenv's token service.
pub(crate) async fn pull_tokens(env: &TestEnv, repos: &[String]) -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&env.info.ca_cert).unwrap()).unwrap();
    let client =
        reqwest::Client::builder().add_root_certificate(ca).no_proxy().build().expect("a client for the token service");
    let creds = &env.info.registry_agent;
    let mut tokens = Vec::new();
    for repo in repos {
        let scope = format!("repository:{repo}:pull");
        let url = url::Url::parse_with_params(
            &env.info.token_realm,
            [("service", env.info.registry_service.as_str()), ("scope", scope.as_str())],
        )
        .expect("the token realm is a URL");
        let text = client
            .get(url)
            .basic_auth(&creds.username, Some(&creds.password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("a pull token")
            .text()
            .await
            .expect("the token service answers");
        let answer: Value = serde_json::from_str(&text).expect("the token service answers JSON");
        tokens.push(answer["token"].as_str().expect("a token field").to_owned());
    }
    tokens
}

/// The Accept header the agent's HEADs send (every manifest type a tag may name).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// One `curl` over one keep-alive connection: a HEAD of each `host/repo:tag` manifest with its
/// token (`--next` between them keeps the connection). The config goes through stdin (`-K -`),
/// so no token is in argv.
pub(crate) fn curl_heads(env: &TestEnv, host: &str, images: &[(String, String)], tokens: &[String]) -> Duration {
    let mut config = String::new();
    for (i, ((repo, tag), token)) in images.iter().zip(tokens).enumerate() {
        if i > 0 {
            config.push_str("next\n");
        }
        config.push_str(&format!(
            "head\nsilent\nfail\noutput = \"/dev/null\"\ncacert = \"{}\"\nheader = \"Accept: {ACCEPT}\"\n\
             header = \"Authorization: Bearer {token}\"\nurl = \"https://{host}/v2/{repo}/manifests/{tag}\"\n",
            env.info.ca_cert.display()
        ));
    }
    let started = Instant::now();
    let mut child = Command::new("curl")
        .args(["--no-progress-meter", "-K", "-"])
        .env("NO_PROXY", "*")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl (Debian package curl)");
    child.stdin.take().expect("piped").write_all(config.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "curl HEADs failed: {}", String::from_utf8_lossy(&out.stderr));
    took
}

/// `skopeo inspect --raw` of each image in turn: a process, a token request and a manifest GET
/// each (what a shell loop over images costs).
pub(crate) fn skopeo_loop(env: &TestEnv, host: &str, images: &[(String, String)]) -> Duration {
    let creds = &env.info.registry_agent;
    let auth = tempfile::tempdir().unwrap();
    let auth_file = auth.path().join("auth.json");
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.username, creds.password));
    std::fs::write(&auth_file, json!({"auths": {host: {"auth": basic}}}).to_string()).unwrap();
    // skopeo reads CAs from a folder of *.crt files.
    let certs = auth.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&env.info.ca_cert, certs.join("ca.crt")).unwrap();
    let started = Instant::now();
    for (repo, tag) in images {
        timed(
            "skopeo inspect",
            Command::new("skopeo")
                .args(["inspect", "--raw", "--authfile"])
                .arg(&auth_file)
                .arg("--cert-dir")
                .arg(&certs)
                .arg(format!("docker://{host}/{repo}:{tag}"))
                .env("NO_PROXY", "*")
                .stdout(Stdio::null()),
        );
    }
    started.elapsed()
}

/// `git` as the agent's robot (its credentials through the environment, the testenv CA).
fn git_as_agent(env: &TestEnv, dir: &Path) -> Command {
    let mut cmd = env.git(Some(&env.info.git_agent));
    cmd.current_dir(dir).env("NO_PROXY", "*").stdout(Stdio::null());
    cmd
}

pub(crate) fn git_ls_remote(env: &TestEnv, url: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    timed("git ls-remote", git_as_agent(env, dir.path()).args(["ls-remote", url, "refs/heads/main"]))
}

/// A clone of `url` at its head now (untimed), for [`git_fetch_diff`] after the next commit.
pub(crate) fn git_clone(env: &TestEnv, url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    timed("git clone", git_as_agent(env, dir.path()).args(["clone", "-q", "--bare", url, "clone.git"]));
    dir
}

/// `git fetch` of the new commit and `git diff --stat` of it against the old head.
pub(crate) fn git_fetch_diff(env: &TestEnv, clone: &Path) -> Duration {
    let repo = clone.join("clone.git");
    let started = Instant::now();
    timed(
        "git fetch",
        git_as_agent(env, &repo).args(["fetch", "-q", "origin", "+refs/heads/main:refs/remotes/origin/main"]),
    );
    timed("git diff", git_as_agent(env, &repo).args(["diff", "--stat", "main", "origin/main"]));
    started.elapsed()
}

/// A bare repository of `files` files and `commits` commits (the first adds every file, each
/// other changes 5 of them), under `data/` so the agent's `apps` path never reads them; built
/// once per size with `git fast-import` and kept under target/bench.
pub(crate) fn big_history(files: usize, commits: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let repo = dir.join(format!("history-{files}-files-{commits}-commits.git"));
    if repo.join("refs/heads/main").exists() || repo.join("packed-refs").exists() {
        return repo;
    }
    let tmp = dir.join(format!("history-{files}-{commits}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let ok = Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(&tmp).status().unwrap();
    assert!(ok.success(), "git init");
    let mut stream = Vec::new();
    let file = |i: usize| format!("data/d{:03}/f{i:05}.txt", i / 100);
    let push_commit = |stream: &mut Vec<u8>, n: usize, changes: &[(String, String)]| {
        let msg = format!("history {n}\n");
        writeln!(stream, "commit refs/heads/main").unwrap();
        writeln!(stream, "committer bench <bench@example.invalid> {} +0000", 1_700_000_000 + n * 60).unwrap();
        write!(stream, "data {}\n{msg}", msg.len()).unwrap();
        for (path, text) in changes {
            write!(stream, "M 100644 inline {path}\ndata {}\n{text}\n", text.len()).unwrap();
        }
    };
    let first: Vec<(String, String)> = (0..files).map(|i| (file(i), format!("file {i} version 0\n"))).collect();
    push_commit(&mut stream, 0, &first);
    for n in 1..commits {
        let changes: Vec<(String, String)> =
            (0..5).map(|k| (n * 5 + k) % files).map(|i| (file(i), format!("file {i} version {n}\n"))).collect();
        push_commit(&mut stream, n, &changes);
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&tmp)
        .env("GIT_DIR", &tmp)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    child.stdin.take().expect("piped").write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success(), "git fast-import of the bench history");
    let ok = Command::new("git").arg("-C").arg(&tmp).args(["gc", "-q"]).status().unwrap();
    assert!(ok.success(), "git gc");
    // Another run may have built it meanwhile: either copy is the same history.
    if std::fs::rename(&tmp, &repo).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    repo
}

/// CPU time this thread has used: /proc/thread-self/schedstat's first field (nanoseconds on a
/// CPU), else utime + stime of /proc/thread-self/stat (clock ticks).
fn thread_cpu() -> Duration {
    if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
    {
        return Duration::from_nanos(ns);
    }
    let text = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = text.rfind(')').map_or("", |i| &text[i + 2..]);
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    Duration::from_secs_f64((f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / TICKS)
}

/// Plans `bundles` synthetic bundles (each a Deployment and a ConfigMap, rendered text as
/// `helm template` prints it, live objects as the API server returns them) with the pure
/// `shared` functions the agent's cycle calls between render and apply: discover, fleet.yaml,
/// render parse, image requests, ownership labels, apply order, plan, summary, blockers, and
/// the dependency order of all bundles. Returns the thread's CPU time (not wall time: the
/// machine is shared) and how many objects were planned unchanged.
pub(crate) fn plan_cpu(bundles: usize) -> (Duration, usize) {
    std::thread::spawn(move || {
        let owner = "bench-agent";
        let files: Vec<String> =
            (0..bundles).flat_map(|i| [format!("b{i:04}/fleet.yaml"), format!("b{i:04}/all.yaml")]).collect();
        let fleet_text = |i: usize| {
            if i == 0 { "defaultNamespace: bench\n".to_owned() } else { "defaultNamespace: bench\ndependsOn:\n- name: b0000\n".to_owned() }
        };
        let rendered = |i: usize| {
            format!(
                "---\n# Source: b{i:04}/templates/deployment.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  \
                 name: b{i:04}\n  namespace: bench\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: b{i:04}}}\n  \
                 template:\n    metadata:\n      labels: {{app: b{i:04}}}\n    spec:\n      containers:\n      - name: app\n        \
                 image: registry.example:5000/store/b{i:04}:1.0.0\n        ports:\n        - containerPort: 8080\n---\n\
                 # Source: b{i:04}/templates/config.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b{i:04}-config\n  \
                 namespace: bench\ndata:\n  greeting: hello\n  index: \"{i}\"\n"
            )
        };
        // What the API server holds after our apply: our object plus the fields it adds.
        let served = |desired: &Value| {
            let mut live = desired.clone();
            live["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
            live["metadata"]["resourceVersion"] = json!("12345");
            live["metadata"]["generation"] = json!(1);
            live["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            live["metadata"]["managedFields"] = json!([{"manager": "gitops-agent", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
            live["status"] = json!({"observedGeneration": 1, "replicas": 1});
            live
        };
        let started = thread_cpu();
        let found = shared::bundle::discover(files.iter().map(String::as_str));
        assert_eq!(found.len(), bundles, "every synthetic bundle discovered");
        let mut deps = Vec::new();
        let mut unchanged = 0;
        for (i, b) in found.iter().enumerate() {
            let (fleet, _) = shared::fleet::parse(&fleet_text(i)).expect("a valid fleet.yaml");
            deps.push((b.dir.clone(), fleet.depends_on.iter().map(|d| d.name.clone()).collect::<Vec<_>>()));
            let mut manifests = shared::render::parse_manifests(&rendered(i), &b.dir).expect("valid rendered YAML");
            let uses = shared::render::images(&manifests);
            let requests = shared::desired::image_requests(&uses, &fleet.gitops_agent, &|a, b| a == b)
                .expect("valid image references");
            assert_eq!(requests.len(), 1);
            shared::desired::label_owned(&mut manifests, owner, &b.dir);
            shared::desired::in_apply_order(&mut manifests);
            let observed: BTreeMap<String, shared::plan::Observed> = manifests
                .iter()
                .map(|m| {
                    let live = served(&m.object);
                    (m.id(), shared::plan::Observed { applied: Some(live.clone()), live: Some(live), conflict: None })
                })
                .collect();
            let owned: Vec<Value> = observed.values().filter_map(|o| o.live.clone()).collect();
            let plans = shared::plan::plan(&manifests, &observed, &owned, owner, &b.dir);
            assert!(shared::plan::blockers(&plans, false).is_empty());
            unchanged += shared::plan::Summary::of(&plans).unchanged;
        }
        let (order, _) = shared::desired::bundle_order(&deps).expect("no dependency cycle");
        assert_eq!(order.len(), bundles);
        (thread_cpu() - started, unchanged)
    })
    .join()
    .expect("the planning thread")
}
