//! Hostile repository content (issue 18, item 5): a kustomization listing a URL, a chart whose
//! symlink leads out of its bundle, Helm's `lookup` and `.Files` reaching for what is not the
//! chart's, renderers that run too long or print too much. Nothing in a repository may make the
//! agent fetch from the network, read outside its bundle, or reach the cluster while rendering.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtask::support::TestEnv;

use agent::render::{Capabilities, RenderError, Renderers};
use shared::desired::RenderSpec;

use crate::rollout::{App, bundle};

/// A plain HTTP server on loopback that answers every request with `body` and counts the
/// connections it accepted, so a test can prove that nobody asked.
struct Served {
    port: u16,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(body: String) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        Served { port, connections, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kustomization_listing_a_url_is_refused_naming_file_and_line_and_nothing_is_fetched_or_applied() {
    let env = TestEnv::get();
    let app = App::new(env, "hostile-url").await;
    let ns = &app.ns.name;
    let server = Served::start(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fetched\ndata:\n  from: the-network\n".to_owned(),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/cm.yaml", server.port);
    // Beside the app: a kustomize bundle fetching a URL, and a chart whose symlink leads out of
    // its bundle.
    app.write("apps/remote/kustomization.yaml", &format!("namespace: {ns}\nresources:\n- local.yaml\n- {url}\n"));
    app.write("apps/remote/local.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local\ndata:\n  a: b\n");
    app.write("apps/chart/Chart.yaml", "apiVersion: v2\nname: chart\nversion: 0.1.0\n");
    app.write(
        "apps/chart/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leaked\ndata:\n  token: {{ .Files.Get \"token\" | quote }}\n",
    );
    app.write("secrets/token", "s3cr3t\n");
    std::os::unix::fs::symlink("../../secrets/token", app.work.join("apps/chart/token")).unwrap();
    app.commit(env, "hostile bundles beside the app");

    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "a bundle was blocked: {human}");
    let remote = bundle(&doc, "remote");
    assert_eq!(remote["result"], "blocked", "{human}");
    assert_eq!(
        remote["message"],
        format!(
            "render failed: kustomization.yaml: resources[1]: line 4: remote reference {url:?} refused: a store \
             renders only what Git holds, and kustomize would fetch it"
        ),
        "{human}"
    );
    let chart = bundle(&doc, "chart");
    assert_eq!(chart["result"], "blocked", "{human}");
    let message = chart["message"].as_str().unwrap();
    assert!(message.starts_with("source failed: "), "{message}");
    assert!(message.contains("chart/token: symlink to \"../../secrets/token\" points outside its bundle"), "{message}");
    assert!(!human.contains("s3cr3t"), "{human}");
    // The other bundle is not held back by them.
    assert_eq!(bundle(&doc, "web")["result"], "rolledOut", "{human}");

    assert_eq!(server.connections(), 0, "the agent (or kustomize) asked the URL");
    let writes = app.writes(env).await;
    assert!(writes.iter().any(|w| w.ends_with("deployments/web")), "the audit log shows the app's apply: {writes:?}");
    let hostile: Vec<&String> = writes
        .iter()
        .filter(|w| ["fetched", "local", "leaked"].iter().any(|n| w.ends_with(&format!("/{n}"))))
        .collect();
    assert!(hostile.is_empty(), "nothing of the refused bundles is applied: {hostile:?}");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, ns);
    for name in ["fetched", "local", "leaked"] {
        assert!(cms.get_opt(name).await.unwrap().is_none(), "{name} exists");
    }

    // The control: the same kustomization given to kustomize directly does fetch the URL, so the
    // zero above is the check's doing, not an unreachable server.
    let copy = tempfile::tempdir().unwrap();
    for f in ["kustomization.yaml", "local.yaml"] {
        std::fs::copy(app.work.join("apps/remote").join(f), copy.path().join(f)).unwrap();
    }
    let out = std::process::Command::new(&env.info.kustomize).arg("build").arg(copy.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from: the-network"));
    assert!(server.connections() > 0, "kustomize by itself fetches the URL");
}

fn renderers(env: &TestEnv) -> Renderers {
    Renderers {
        helm: env.info.helm.display().to_string(),
        kustomize: env.info.kustomize.display().to_string(),
        timeout: Duration::from_secs(60),
        max_output: agent::render::MAX_OUTPUT,
    }
}

/// A chart folder `bundle/chart` under `root` with one template.
fn chart(root: &Path, template: &str) -> RenderSpec {
    let dir = root.join("bundle/chart");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("Chart.yaml"), "apiVersion: v2\nname: chart\nversion: 0.1.0\n").unwrap();
    std::fs::write(dir.join("templates/t.yaml"), template).unwrap();
    std::fs::write(dir.join("data.txt"), "inside").unwrap();
    RenderSpec::Helm { chart: "chart".into(), release_name: "r".into(), namespace: "ns".into(), values: json!({}) }
}

async fn render_chart(template: &str, r: &Renderers) -> Result<Vec<Value>, RenderError> {
    let root = tempfile::tempdir().unwrap();
    let spec = chart(root.path(), template);
    // Beside the bundle, where `..` from the chart leads.
    std::fs::write(root.path().join("outside.txt"), "outside").unwrap();
    std::fs::write(root.path().join("bundle/outside.txt"), "beside the chart").unwrap();
    let out = agent::render::render(&root.path().join("bundle"), &spec, &Capabilities::default(), r).await?;
    Ok(out.into_iter().map(|m| m.object).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_lookup_never_reaches_the_cluster_even_with_a_kubeconfig_in_the_agents_environment() {
    let env = TestEnv::get();
    let ns = env.namespace("hostile-lookup").await;
    // Something `lookup` would find if it asked the API server.
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns.name);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "findme"}, "data": {"k": "v"}})).unwrap();
    cms.create(&Default::default(), &cm).await.unwrap();

    let repo = tempfile::tempdir().unwrap();
    let work = repo.path().join("work");
    std::fs::create_dir_all(work.join("chart/templates")).unwrap();
    std::fs::write(work.join("chart/Chart.yaml"), "apiVersion: v2\nname: chart\nversion: 0.1.0\n").unwrap();
    std::fs::write(
        work.join("chart/templates/t.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: looked-up\ndata:\n  one: {{{{ lookup \"v1\" \"ConfigMap\" {ns:?} \"findme\" | toJson | quote }}}}\n  all: {{{{ lookup \"v1\" \"Namespace\" \"\" \"\" | toJson | quote }}}}\n",
            ns = ns.name
        ),
    )
    .unwrap();
    crate::util::git(&work, &["init", "-q", "-b", "main"]);
    crate::util::git(&work, &["add", "-A"]);
    crate::util::git(&work, &["commit", "-qm", "lookup"]);
    let cfg = repo.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity:\n  nodeName: n\ngit:\n  url: file://{}\nrender:\n  helm: {}\n  kustomize: {}\nstateDir: {}\n",
            work.display(),
            env.info.helm.display(),
            env.info.kustomize.display(),
            repo.path().join("state").display()
        ),
    )
    .unwrap();
    // The agent's own environment names the testenv's admin kubeconfig; Helm must not see it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["render", "chart", "-c", cfg.to_str().unwrap(), "--kube-version", "v1.33.0", "--no-resolve"])
        .args(["-o", "json"])
        .env("KUBECONFIG", &env.info.kubeconfig)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    let obj = &doc["objects"][0]["object"];
    assert_eq!(obj["metadata"]["name"], "looked-up", "{doc}");
    assert_eq!(obj["data"], json!({"one": "{}", "all": "{}"}), "lookup returned something: {doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_files_get_stays_inside_the_chart() {
    let env = TestEnv::get();
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: files\ndata:\n  up: {{ .Files.Get \"../outside.txt\" | quote }}\n  upup: {{ .Files.Get \"../../outside.txt\" | quote }}\n  abs: {{ .Files.Get \"/etc/hostname\" | quote }}\n  glob: {{ .Files.Glob \"../**\" | len | quote }}\n  own: {{ .Files.Get \"data.txt\" | quote }}\n";
    let objects = render_chart(template, &renderers(env)).await.unwrap();
    let data = &objects[0]["data"];
    assert_eq!(data["up"], "", "{data}");
    assert_eq!(data["upup"], "", "{data}");
    assert_eq!(data["abs"], "", "{data}");
    assert_eq!(data["glob"], "0", "{data}");
    // The chart's own files are there: the lookups above were answered, not broken.
    assert_eq!(data["own"], "inside", "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chart_printing_too_much_or_rendering_too_long_is_stopped_with_the_limit_named() {
    let env = TestEnv::get();
    // About 5 MiB of output against a 1 MiB limit.
    let big = "{{ range until 20000 }}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{{ . }}\ndata:\n  pad: {{ repeat 200 \"x\" }}\n{{ end }}";
    let small = Renderers { max_output: 1024 * 1024, ..renderers(env) };
    let err = render_chart(big, &small).await.unwrap_err();
    assert_eq!(err.to_string(), "helm wrote more than 1 MiB of output and was stopped");

    // A template that loops for long (4e8 steps, in little memory) without printing: stopped at
    // the timeout.
    let slow = "{{ range until 20000 }}{{ range until 20000 }}{{ end }}{{ end }}";
    let quick = Renderers { timeout: Duration::from_secs(2), ..renderers(env) };
    let started = Instant::now();
    let err = render_chart(slow, &quick).await.unwrap_err();
    assert_eq!(err.to_string(), "helm did not finish within 2s and was stopped");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}
