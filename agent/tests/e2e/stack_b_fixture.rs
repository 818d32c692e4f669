//! The Stack B fixture, built by its script with real git, read by the agent's pure rules
//! (bundle discovery, fleet.yaml, values layering) and rendered by the real `helm`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use shared::{bundle, fleet};
use xtask::support::TestEnv;

fn make_repo(dest: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/stack-b/make-repo.sh");
    let out = Command::new("bash").arg(script).arg(dest).arg("registry.test:5000").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tracked_files(repo: &Path) -> Vec<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(["ls-tree", "-r", "--name-only", "HEAD"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn render(env: &TestEnv, chart: &Path, labels: &[(&str, &str)]) -> String {
    let (fleet, warnings) = fleet::parse(&std::fs::read_to_string(chart.join("fleet.yaml")).unwrap()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let read = |f: &str| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(chart.join(f)).map_err(|e| e.to_string())?;
        serde_saphyr::from_str(&text).map_err(|e| e.to_string())
    };
    let values = fleet.values_for(&labels, &read).unwrap();
    let values_file = chart.parent().unwrap().join(format!("values-{}.json", labels.len()));
    std::fs::write(&values_file, values.to_string()).unwrap();
    let out = Command::new(&env.info.helm)
        .args(["template", "kiosk"])
        .arg(chart)
        .arg("-f")
        .arg(&values_file)
        .output()
        .expect("helm");
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_stack_b_repo_is_one_fleet_bundle_and_every_values_layer_shows_in_the_render() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    make_repo(&repo);
    let files = tracked_files(&repo);
    let bundles = bundle::discover(files.iter().map(String::as_str));
    assert_eq!(bundles, vec![bundle::Bundle { dir: "stack-b/helm".into(), marker: bundle::Marker::Fleet }]);
    let chart = repo.join("stack-b/helm");

    // store1 node: chart values.yaml < fleet helm.values < values-qa.yaml < values-store1.yaml.
    let store1 = render(env, &chart, &[("store", "store1"), ("env", "qa")]);
    assert!(store1.contains("value: \"debug\""), "values-qa.yaml beats helm.values (info) and values.yaml (warn)");
    assert!(store1.contains("store: \"store1\"") && store1.contains("branding: \"store1-blue\""), "values-store1.yaml");
    assert!(store1.contains("language: \"en\""), "values-qa.yaml beats values.yaml (de)");
    assert!(store1.contains("terminationGracePeriodSeconds: 45"), "values-store1.yaml beats values.yaml (30)");
    assert!(store1.contains("image: registry.test:5000/library/u5-orchestrator:1.0.0"), "chart values.yaml");
    assert!(store1.contains("nvidia.com/gpu: 1"));

    // A qa node of another store: the qa target only.
    let qa = render(env, &chart, &[("store", "store2"), ("env", "qa")]);
    assert!(qa.contains("store: \"default\"") && qa.contains("terminationGracePeriodSeconds: 30"));
    assert!(qa.contains("value: \"debug\"") && qa.contains("language: \"en\""));

    // A node no target matches: fleet helm.values over the chart's defaults.
    let other = render(env, &chart, &[("env", "prod")]);
    assert!(other.contains("value: \"info\"") && other.contains("language: \"de\""));
}
