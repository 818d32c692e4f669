//! Bundle discovery: which folders of the repo deploy as one unit.
//!
//! Rules (documented in docs/bundles.md):
//! - a folder holding `fleet.yaml`, `Chart.yaml` or `kustomization.yaml` (`.yml`, `Kustomization`)
//!   is a bundle and owns its whole subtree: nothing below it is a bundle of its own (a chart's
//!   `templates/`, `charts/` and `values-*.yaml` belong to the chart);
//! - a folder with `*.yaml`, `*.yml` or `*.json` files directly in it, outside every such subtree,
//!   is a raw-manifest bundle;
//! - folders whose name starts with `.` are skipped (`.git`, `.github`);
//! - the repository's waves file (`waves.yaml` at the scanned root, `shared::waves`) is no
//!   manifest.
//!
//! Pure: it sees the list of file paths of a commit's tree, never a filesystem.

use std::collections::BTreeMap;

/// What marks a bundle, strongest first when a folder has several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marker {
    /// `fleet.yaml`: its `helm`/`kustomize` sections say how to render.
    Fleet,
    /// `Chart.yaml`: a Helm chart rendered with its own values.
    Chart,
    Kustomization,
    /// Plain manifests.
    Raw,
}

/// A discovered bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Folder relative to the scanned root; `.` for the root itself.
    pub dir: String,
    pub marker: Marker,
}

fn marker_of(file_name: &str) -> Option<Marker> {
    match file_name {
        "fleet.yaml" => Some(Marker::Fleet),
        "Chart.yaml" => Some(Marker::Chart),
        "kustomization.yaml" | "kustomization.yml" | "Kustomization" => Some(Marker::Kustomization),
        _ => None,
    }
}

fn is_manifest(file_name: &str) -> bool {
    [".yaml", ".yml", ".json"].iter().any(|ext| file_name.ends_with(ext))
}

/// Finds the bundles among `files` (paths relative to the scanned root, `/`-separated).
pub fn discover<'a>(files: impl IntoIterator<Item = &'a str>) -> Vec<Bundle> {
    // Folder -> (strongest marker, has manifests).
    let mut dirs: BTreeMap<String, (Option<Marker>, bool)> = BTreeMap::new();
    for path in files {
        let path = path.trim_start_matches("./");
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => (".", path),
        };
        if dir.split('/').any(|c| c.starts_with('.') && c != ".") {
            continue;
        }
        if dir == "." && name == crate::waves::REPO_FILE {
            continue;
        }
        let entry = dirs.entry(dir.to_owned()).or_default();
        if let Some(m) = marker_of(name) {
            entry.0 = Some(entry.0.map_or(m, |old| old.min(m)));
        } else if is_manifest(name) {
            entry.1 = true;
        }
    }
    let owned_by = |dir: &str, owners: &[String]| {
        owners
            .iter()
            .any(|o| o == "." || dir == o || dir.strip_prefix(o.as_str()).is_some_and(|rest| rest.starts_with('/')))
    };
    // Marker folders first: the shallowest owns everything below it.
    let mut owners: Vec<String> = Vec::new();
    let mut bundles = Vec::new();
    let mut marked: Vec<(&String, Marker)> = dirs.iter().filter_map(|(d, (m, _))| m.map(|m| (d, m))).collect();
    marked.sort_by_key(|(d, _)| if d.as_str() == "." { 0 } else { d.matches('/').count() + 1 });
    for (dir, marker) in marked {
        if !owned_by(dir, &owners) {
            owners.push(dir.clone());
            bundles.push(Bundle { dir: dir.clone(), marker });
        }
    }
    for (dir, (marker, manifests)) in &dirs {
        if marker.is_none() && *manifests && !owned_by(dir, &owners) {
            bundles.push(Bundle { dir: dir.clone(), marker: Marker::Raw });
        }
    }
    bundles.sort_by(|a, b| a.dir.cmp(&b.dir));
    bundles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(files: &[&str]) -> Vec<(String, Marker)> {
        discover(files.iter().copied()).into_iter().map(|b| (b.dir, b.marker)).collect()
    }

    #[test]
    fn the_stack_b_layout_is_one_fleet_bundle_owning_its_chart() {
        let files = [
            "stack-b/helm/Chart.yaml",
            "stack-b/helm/fleet.yaml",
            "stack-b/helm/values.yaml",
            "stack-b/helm/values-qa.yaml",
            "stack-b/helm/templates/orchestrator.yaml",
            "stack-b/helm/charts/redis/Chart.yaml",
            "README.md",
        ];
        assert_eq!(found(&files), vec![("stack-b/helm".into(), Marker::Fleet)]);
    }

    #[test]
    fn the_repository_s_waves_file_is_no_bundle_but_one_in_a_folder_is_a_manifest() {
        assert_eq!(found(&["waves.yaml", "web/fleet.yaml"]), vec![("web".into(), Marker::Fleet)]);
        assert_eq!(found(&["raw/waves.yaml"]), vec![("raw".into(), Marker::Raw)]);
    }

    /// files in the tree -> bundles expected
    type Row = (&'static [&'static str], &'static [(&'static str, Marker)]);

    #[test]
    fn each_rule_in_a_table() {
        let table: &[Row] = &[
            (&["Chart.yaml", "templates/a.yaml"], &[(".", Marker::Chart)]),
            (
                &["a/kustomization.yaml", "a/base/deploy.yaml", "a/overlays/qa/kustomization.yaml"],
                &[("a", Marker::Kustomization)],
            ),
            (&["raw/cm.yaml", "raw/deploy.yml", "raw/notes.txt"], &[("raw", Marker::Raw)]),
            (&["raw/cm.yaml", "raw/sub/more.json"], &[("raw", Marker::Raw), ("raw/sub", Marker::Raw)]),
            (
                &["apps/x/Chart.yaml", "apps/y/cm.yaml", "apps/x/crds/crd.yaml"],
                &[("apps/x", Marker::Chart), ("apps/y", Marker::Raw)],
            ),
            (&[".github/workflows/ci.yaml", "docs/readme.md"], &[]),
            (&["b/fleet.yaml", "b/Chart.yaml", "b/kustomization.yaml"], &[("b", Marker::Fleet)]),
            (&["./c/fleet.yaml"], &[("c", Marker::Fleet)]),
        ];
        for (files, want) in table {
            let want: Vec<(String, Marker)> = want.iter().map(|(d, m)| ((*d).to_owned(), *m)).collect();
            assert_eq!(found(files), want, "{files:?}");
        }
    }

    #[test]
    fn a_manifest_folder_above_a_bundle_is_still_raw_but_never_owns_it() {
        assert_eq!(
            found(&["infra/ns.yaml", "infra/app/Chart.yaml", "infra/app/values.yaml"]),
            vec![("infra".into(), Marker::Raw), ("infra/app".into(), Marker::Chart)]
        );
    }
}
