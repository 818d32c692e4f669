//! Objects and bundles that leave Git: an object of a CRD's kind pruned from the recorded
//! inventory; a bundle deleted from Git removed (objects deleted, status `removed`, record kept,
//! back in Git treated as any bundle); the bundles' folder gone whole held with nothing deleted
//! until `agent prune --confirm`; `prune.removedBundles: keep`. "Nothing deleted" is proven from
//! the API server's audit log.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};
use xtask::support::TestEnv;

use crate::rollout::{App, agent, bundle, text};
use crate::util::{git, wait_for};

/// A CRD of a kind no other test uses (`Widget` in a group named after the test's namespace),
/// served once this returns; deleted when the guard drops.
struct Crd {
    name: String,
    group: String,
    kubeconfig: std::path::PathBuf,
}

impl Crd {
    async fn install(env: &TestEnv, ns: &str) -> Crd {
        let group = format!("{ns}.example.test");
        let name = format!("widgets.{group}");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": group, "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .unwrap();
        let client = env.client().await;
        Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &crd).await.unwrap();
        let crd = Crd { name, group, kubeconfig: env.info.kubeconfig.clone() };
        let widgets = crd.widgets(client, ns);
        wait_for("the Widget kind to be served", Duration::from_secs(30), || async {
            widgets.list(&Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        crd
    }

    fn widgets(&self, client: kube::Client, ns: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(&self.group, "v1", "Widget");
        Api::namespaced_with(client, ns, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
    }

    fn manifest(&self, name: &str) -> String {
        format!("apiVersion: {}/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  size: 1\n", self.group)
    }
}

impl Drop for Crd {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let client = xtask::kube::kube_client(&kubeconfig).await.ok()?;
                Api::<CustomResourceDefinition>::all(client).delete(&name, &DeleteParams::default()).await.ok()
            })
        })
        .join();
    }
}

/// A second bundle `apps/extra` (one ConfigMap `extra-cm` in `ns`) beside the app's `apps/web`.
fn add_extra(app: &App, ns: &str) {
    app.write("apps/extra/fleet.yaml", &format!("defaultNamespace: {ns}\n"));
    app.write("apps/extra/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra-cm\ndata:\n  a: b\n");
}

/// `agent status -o json`, from the records (no agent runs): the bundle's entry.
fn status_of(app: &App, name: &str) -> Value {
    let out = agent(&["status", "-c", app.config.to_str().unwrap(), "-o", "json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    doc["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bundle"] == name)
        .unwrap_or_else(|| panic!("no status of {name}: {doc}"))
        .clone()
}

/// Deletes the audit log recorded in the test's namespace (`delete RESOURCE/NAME`).
async fn deletes(app: &App, env: &TestEnv) -> Vec<String> {
    app.writes(env).await.into_iter().filter(|w| w.starts_with("delete ")).collect()
}

// Regression test for issue 18 item 4: prune looked only among a fixed list of common kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_a_crd_kind_that_leaves_git_is_pruned_from_the_recorded_inventory() {
    let env = TestEnv::get();
    let app = App::new(env, "prune-crd").await;
    let ns = app.ns.name.clone();
    let crd = Crd::install(env, &ns).await;
    let widgets = crd.widgets(env.client().await, &ns);
    app.write("apps/web/fleet.yaml", &format!("defaultNamespace: {ns}\ngitopsAgent:\n  prune: true\n"));
    app.write("apps/web/widget.yaml", &crd.manifest("w1"));
    app.commit(env, "a Widget");
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert!(widgets.get_opt("w1").await.unwrap().is_some(), "applied");
    // Someone else's Widget beside it.
    let foreign: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{}/v1", crd.group), "kind": "Widget", "metadata": {"name": "not-ours"}, "spec": {}
    }))
    .unwrap();
    widgets.create(&PostParams::default(), &foreign).await.unwrap();

    std::fs::remove_file(app.work.join("apps/web/widget.yaml")).unwrap();
    app.commit(env, "the Widget leaves Git");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    let b = bundle(&doc, "web");
    assert_eq!(b["summary"]["prune"], 1, "{human}");
    assert!(b["message"].as_str().unwrap().contains(&format!("pruned Widget/{ns}/w1")), "{human}");
    assert!(widgets.get_opt("w1").await.unwrap().is_none(), "ours, gone from Git: pruned");
    assert!(widgets.get_opt("not-ours").await.unwrap().is_some(), "not ours: kept");
    assert_eq!(deletes(&app, env).await, ["delete widgets/w1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_deleted_from_git_is_removed_its_record_kept_and_it_comes_back_as_any_bundle() {
    let env = TestEnv::get();
    let app = App::new(env, "removal").await;
    // The extra bundle's namespace does not exist: the agent creates it, as ours, for the bundle.
    let ns = format!("{}-x", app.ns.name);
    add_extra(&app, &ns);
    app.commit(env, "a second bundle");
    let (code, _, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns);
    let web_cms: Api<ConfigMap> = Api::namespaced(env.client().await, &app.ns.name);
    let namespaces: Api<Namespace> = Api::all(env.client().await);
    assert!(cms.get_opt("extra-cm").await.unwrap().is_some());

    git(&app.work, &["rm", "-rq", "apps/extra"]);
    app.commit(env, "the extra bundle leaves Git");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "one bundle of two is no accident: {human}");
    let b = bundle(&doc, "extra");
    assert_eq!(b["result"], "removed", "{human}");
    let message = b["message"].as_str().unwrap();
    assert!(message.contains(&format!("deleted 2 object(s) (ConfigMap/{ns}/extra-cm, Namespace/{ns})")), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "inSync", "{human}");
    assert!(cms.get_opt("extra-cm").await.unwrap().is_none(), "deleted");
    wait_for("the namespace made for the bundle to be gone", Duration::from_secs(90), || async {
        match namespaces.get_opt(&ns).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(n) => Err(format!("still there: {:?}", n.status)),
        }
    })
    .await;
    assert!(web_cms.get_opt("web-config").await.unwrap().is_some(), "the other bundle's objects stay");
    assert_eq!(deletes(&app, env).await, Vec::<String>::new(), "nothing of the other bundle's namespace deleted");
    assert!(
        namespaces.get_opt(&app.ns.name).await.unwrap().is_some_and(|n| n.metadata.deletion_timestamp.is_none()),
        "a namespace not made by the agent stays"
    );
    let s = status_of(&app, "extra");
    assert_eq!(s["state"], "removed", "{s}");
    assert!(s["next"].as_str().unwrap().contains("deleted 2 objects; the record is kept as history"), "{s}");
    assert_eq!(s["removal"]["deleted"], json!([format!("ConfigMap/{ns}/extra-cm"), format!("Namespace/{ns}")]), "{s}");
    assert_eq!(s["counts"]["rolledOut"], 1, "the record is kept as history: {s}");

    // Another cycle leaves the history alone.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert!(doc["bundles"].as_array().unwrap().iter().all(|b| b["bundle"] != "extra"), "{human}");

    add_extra(&app, &ns);
    app.commit(env, "the extra bundle is back");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "extra")["result"], "rolledOut", "{human}");
    assert!(cms.get_opt("extra-cm").await.unwrap().is_some(), "applied again");
    let s = status_of(&app, "extra");
    assert_eq!((s["state"].as_str(), s.get("removal")), (Some("synced"), None), "{s}");
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundles_folder_gone_whole_deletes_nothing_until_a_removal_is_confirmed() {
    let env = TestEnv::get();
    let app = App::new(env, "removal-held").await;
    add_extra(&app, &app.ns.name);
    app.commit(env, "a second bundle");
    assert_eq!(app.reconcile(&[]).0, Some(0));
    let ns = app.ns.name.clone();

    git(&app.work, &["rm", "-rq", "apps"]);
    app.commit(env, "git rm -r apps (an accident)");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "held: {human}");
    for name in ["web", "extra"] {
        let b = bundle(&doc, name);
        assert_eq!(b["result"], "removalHeld", "{human}");
        let message = b["message"].as_str().unwrap();
        assert!(message.contains("is gone from Git as a whole"), "{human}");
        assert!(message.contains(&format!("confirm with `agent prune --confirm {name}`")), "{human}");
    }
    assert!(bundle(&doc, "web")["message"].as_str().unwrap().contains("would delete 2 object(s)"), "{human}");
    assert_eq!(deletes(&app, env).await, Vec::<String>::new(), "nothing deleted");
    let s = status_of(&app, "web");
    assert_eq!(s["state"], "removal-held", "{s}");
    let next = s["next"].as_str().unwrap();
    assert!(next.contains(&format!("would delete 2 objects (Deployment/{ns}/web, ConfigMap/{ns}/web-config)")), "{s}");
    assert!(next.ends_with("confirm with `agent prune --confirm web`"), "{s}");

    // Without --confirm, it only shows.
    let out = agent(&["prune", "extra", "-c", app.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("would delete 1 object"), "{}", text(&out));

    let out = agent(&["prune", "--confirm", "extra", "-c", app.config.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["result"], "removed", "{result}");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns);
    assert!(cms.get_opt("extra-cm").await.unwrap().is_none(), "confirmed: deleted");
    let deployments: Api<Deployment> = Api::namespaced(env.client().await, &ns);
    assert!(deployments.get_opt("web").await.unwrap().is_some(), "web is still held");
    assert_eq!(status_of(&app, "extra")["state"], "removed");
    assert_eq!(deletes(&app, env).await, ["delete configmaps/extra-cm"], "only what was confirmed");

    // The next cycle holds web still, and deletes nothing more.
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "removalHeld", "{human}");
    assert_eq!(deletes(&app, env).await, ["delete configmaps/extra-cm"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_the_configured_share_of_bundles_gone_at_once_deletes_nothing_and_git_revert_ends_the_hold() {
    let env = TestEnv::get();
    let app = App::new(env, "removal-share").await;
    add_extra(&app, &app.ns.name);
    app.commit(env, "a second bundle");
    assert_eq!(app.reconcile(&[]).0, Some(0));

    // Both bundles go, the folder stays: two of two is more than half.
    git(&app.work, &["rm", "-rq", "apps/web", "apps/extra"]);
    app.write("apps/README.md", "bundles live here\n");
    app.commit(env, "git rm -r of the wrong folders");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(3), "held: {human}");
    for name in ["web", "extra"] {
        let b = bundle(&doc, name);
        assert_eq!(b["result"], "removalHeld", "{human}");
        let message = b["message"].as_str().unwrap();
        assert!(
            message.contains("2 of 2 bundles left Git at once, more than prune.maxRemovedPercent (50%)"),
            "{human}"
        );
    }
    assert_eq!(deletes(&app, env).await, Vec::<String>::new(), "nothing deleted");
    assert_eq!(status_of(&app, "extra")["state"], "removal-held");

    // The mistake is reverted: both bundles are in Git again, and nothing was lost.
    git(&app.work, &["revert", "--no-edit", "HEAD"]);
    xtask::seed::git_push(&env.info, &env.info.git_ci, &app.work, &app.repo.name, "main").unwrap();
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(bundle(&doc, "web")["result"], "inSync", "{human}");
    let s = status_of(&app, "extra");
    assert_eq!((s["state"].as_str(), s.get("removal")), (Some("synced"), None), "{s}");
    assert_eq!(deletes(&app, env).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_removed_bundles_keep_the_objects_stay_and_status_says_so() {
    let env = TestEnv::get();
    let app = App::new(env, "removal-keep").await;
    let mut config = std::fs::read_to_string(&app.config).unwrap();
    config.push_str("prune:\n  removedBundles: keep\n");
    std::fs::write(&app.config, config).unwrap();
    add_extra(&app, &app.ns.name);
    app.commit(env, "a second bundle");
    assert_eq!(app.reconcile(&[]).0, Some(0));

    git(&app.work, &["rm", "-rq", "apps/extra"]);
    app.commit(env, "the extra bundle leaves Git");
    let (code, doc, human) = app.reconcile(&[]);
    assert_eq!(code, Some(0), "{human}");
    let b = bundle(&doc, "extra");
    assert_eq!(b["result"], "removed", "{human}");
    assert!(b["message"].as_str().unwrap().contains("kept running (prune.removedBundles: keep)"), "{human}");
    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &app.ns.name);
    assert!(cms.get_opt("extra-cm").await.unwrap().is_some(), "kept");
    assert_eq!(deletes(&app, env).await, Vec::<String>::new(), "nothing deleted");
    let s = status_of(&app, "extra");
    assert_eq!(s["state"], "removed", "{s}");
    assert!(s["next"].as_str().unwrap().contains("its 1 object kept running (prune.removedBundles: keep)"), "{s}");
}
