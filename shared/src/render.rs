//! What renderers print, made into objects: multi-document YAML split and parsed with errors that
//! name the source file and line, Helm hooks set apart, and the container images of every pod
//! template found and pinned. Pure: the renderer's output comes in as text.

use std::collections::BTreeMap;

use serde_json::Value;

/// One rendered object and the file it came from (Helm's `# Source:` comment, or the manifest
/// file of a raw bundle).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

impl Manifest {
    /// `Kind/namespace/name`, or `Kind/name` for cluster-scoped and namespace-less objects.
    pub fn id(&self) -> String {
        let kind = self.object["kind"].as_str().unwrap_or("?");
        let name = self.object["metadata"]["name"].as_str().unwrap_or("?");
        match self.object["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        }
    }
}

/// Renderer output that is not a list of Kubernetes objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{file}: line {line}: {message}")]
    Yaml { file: String, line: usize, message: String },
    #[error("{file}: line {line}: not a Kubernetes object: {message}")]
    NotAnObject { file: String, line: usize, message: String },
}

/// Splits `text` (documents separated by `---` lines) into objects. `default_source` names the
/// file when no `# Source:` comment does. Empty documents are skipped; a `List` is unpacked.
pub fn parse_manifests(text: &str, default_source: &str) -> Result<Vec<Manifest>, ParseError> {
    let mut out = Vec::new();
    let mut doc = String::new();
    let mut doc_line = 1;
    let mut source: Option<String> = None;
    let mut flush = |doc: &mut String, start: usize, source: &mut Option<String>| -> Result<(), ParseError> {
        let name = source.take().unwrap_or_else(|| default_source.to_owned());
        let text = std::mem::take(doc);
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(());
        }
        let value: Value = serde_saphyr::from_str(&text).map_err(|e| {
            let message = e.to_string();
            let line = yaml_error_line(&message).map_or(start, |l| start + l - 1);
            ParseError::Yaml { file: name.clone(), line, message: first_line(&message) }
        })?;
        match value {
            Value::Null => Ok(()),
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in o.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                    out.push(check_object(item, &name, start)?);
                }
                Ok(())
            }
            v => {
                out.push(check_object(v, &name, start)?);
                Ok(())
            }
        }
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            flush(&mut doc, doc_line, &mut source)?;
            doc_line = i + 2;
            continue;
        }
        if let Some(s) = line.strip_prefix("# Source: ") {
            source = Some(s.trim().to_owned());
        }
        doc.push_str(line);
        doc.push('\n');
    }
    flush(&mut doc, doc_line, &mut source)?;
    Ok(out)
}

fn check_object(v: Value, source: &str, line: usize) -> Result<Manifest, ParseError> {
    let bad = |message: &str| ParseError::NotAnObject { file: source.to_owned(), line, message: message.to_owned() };
    if !v.is_object() {
        return Err(bad("expected a mapping"));
    }
    for (field, what) in [("apiVersion", "no apiVersion"), ("kind", "no kind")] {
        if v[field].as_str().is_none_or(str::is_empty) {
            return Err(bad(what));
        }
    }
    if v["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        return Err(bad("no metadata.name"));
    }
    Ok(Manifest { source: source.to_owned(), object: v })
}

/// serde-saphyr reports `... at line N column M`; the line within the document.
fn yaml_error_line(message: &str) -> Option<usize> {
    let at = message.find("line ")?;
    message[at + 5..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The parser's first line without its own `error: line N column M:` prefix (the caller
/// names file and line already).
fn first_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim_start_matches("error: ");
    let without_position = first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(pos, _)| pos.chars().all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_alphabetic()))
        .map(|(_, m)| m);
    without_position.unwrap_or(first).to_owned()
}

/// Helm hooks (`helm.sh/hook` annotation) set apart from the objects to apply. The agent does
/// not run hooks: they are Helm's own lifecycle (tests, pre-install jobs), not desired state;
/// callers report them as warnings so nothing is dropped silently.
pub fn split_hooks(manifests: Vec<Manifest>) -> (Vec<Manifest>, Vec<Manifest>) {
    manifests.into_iter().partition(|m| m.object["metadata"]["annotations"]["helm.sh/hook"].as_str().is_none())
}

/// One container image reference in a rendered object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// `Kind/namespace/name` of the object.
    pub object: String,
    pub container: String,
    pub init: bool,
    pub image: String,
}

/// Where the pod spec sits in each workload kind.
pub(crate) fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            &["spec", "template", "spec"]
        }
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => return None,
    })
}

fn pod_spec_mut(object: &mut Value) -> Option<&mut Value> {
    let path = pod_spec_path(object["kind"].as_str()?)?;
    let mut cur = object;
    for p in path {
        cur = cur.get_mut(*p)?;
    }
    Some(cur)
}

/// Every container and initContainer image of every pod template, in object order.
pub fn images(manifests: &[Manifest]) -> Vec<ImageUse> {
    let mut out = Vec::new();
    for m in manifests {
        let mut object = m.object.clone();
        let Some(spec) = pod_spec_mut(&mut object) else { continue };
        for (field, init) in [("initContainers", true), ("containers", false)] {
            for c in spec[field].as_array().into_iter().flatten() {
                if let Some(image) = c["image"].as_str() {
                    out.push(ImageUse {
                        object: m.id(),
                        container: c["name"].as_str().unwrap_or("?").to_owned(),
                        init,
                        image: image.to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// Replaces every container and initContainer image found in `replace` (written image -> image
/// to run, e.g. `repo:tag@sha256:...`). Returns how many references were replaced.
pub fn replace_images(manifests: &mut [Manifest], replace: &BTreeMap<String, String>) -> usize {
    let mut n = 0;
    for m in manifests {
        let Some(spec) = pod_spec_mut(&mut m.object) else { continue };
        for field in ["initContainers", "containers"] {
            for c in spec.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(new) = c["image"].as_str().and_then(|i| replace.get(i)) else { continue };
                c["image"] = Value::String(new.clone());
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELM_OUT: &str = "---
# Source: kiosk/templates/cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: kiosk-config
  namespace: kiosk
data:
  a: \"1\"
---
# Source: kiosk/templates/deploy.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      initContainers:
      - name: migrate
        image: reg.example/app:1.0.0
      containers:
      - name: web
        image: reg.example/app:1.0.0
      - name: sidecar
        image: reg.example/proxy:2
---
# Source: kiosk/templates/test.yaml
apiVersion: v1
kind: Pod
metadata:
  name: kiosk-test
  annotations:
    helm.sh/hook: test
spec:
  containers:
  - name: t
    image: busybox
";

    #[test]
    fn helm_output_becomes_objects_named_by_their_source_file() {
        let all = parse_manifests(HELM_OUT, "helm").unwrap();
        let ids: Vec<_> = all.iter().map(|m| (m.id(), m.source.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("ConfigMap/kiosk/kiosk-config".to_owned(), "kiosk/templates/cm.yaml"),
                ("Deployment/web".to_owned(), "kiosk/templates/deploy.yaml"),
                ("Pod/kiosk-test".to_owned(), "kiosk/templates/test.yaml"),
            ]
        );
        let (objects, hooks) = split_hooks(all);
        assert_eq!(objects.len(), 2);
        assert_eq!(hooks.iter().map(Manifest::id).collect::<Vec<_>>(), ["Pod/kiosk-test"]);
    }

    #[test]
    fn empty_documents_and_comment_only_documents_are_skipped_and_lists_unpacked() {
        let text = "---\n# just a comment\n---\n\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n";
        let ids: Vec<_> = parse_manifests(text, "raw/x.yaml").unwrap().iter().map(Manifest::id).collect();
        assert_eq!(ids, ["ConfigMap/a", "Secret/b"]);
    }

    #[test]
    fn bad_yaml_names_the_file_and_the_line_in_the_whole_output() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# Source: c/templates/bad.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n data: [\n";
        let err = parse_manifests(text, "helm").unwrap_err();
        let ParseError::Yaml { file, line, .. } = &err else { panic!("{err:?}") };
        assert_eq!(file, "c/templates/bad.yaml");
        assert!((8..=11).contains(line), "line {line} of the output: {err}");
        assert!(err.to_string().starts_with("c/templates/bad.yaml: line "), "{err}");
    }

    #[test]
    fn documents_that_are_not_objects_are_refused_by_name() {
        let cases = [
            ("- a\n- b\n", "expected a mapping"),
            ("kind: ConfigMap\nmetadata: {name: a}\n", "no apiVersion"),
            ("apiVersion: v1\nmetadata: {name: a}\n", "no kind"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "no metadata.name"),
        ];
        for (text, want) in cases {
            let err = parse_manifests(text, "raw/m.yaml").unwrap_err().to_string();
            assert_eq!(err, format!("raw/m.yaml: line 1: not a Kubernetes object: {want}"));
        }
    }

    #[test]
    fn images_of_containers_and_init_containers_are_found_and_pinned() {
        let (mut objects, _) = split_hooks(parse_manifests(HELM_OUT, "helm").unwrap());
        let found: Vec<_> = images(&objects).into_iter().map(|u| (u.container, u.init, u.image)).collect();
        assert_eq!(
            found,
            [
                ("migrate".to_owned(), true, "reg.example/app:1.0.0".to_owned()),
                ("web".to_owned(), false, "reg.example/app:1.0.0".to_owned()),
                ("sidecar".to_owned(), false, "reg.example/proxy:2".to_owned()),
            ]
        );
        let pinned = "reg.example/app:1.0.0@sha256:aaaa".to_owned();
        let map = BTreeMap::from([("reg.example/app:1.0.0".to_owned(), pinned.clone())]);
        assert_eq!(replace_images(&mut objects, &map), 2);
        let spec = &objects[1].object["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["image"], pinned.as_str());
        assert_eq!(spec["containers"][0]["image"], pinned.as_str());
        assert_eq!(spec["containers"][1]["image"], "reg.example/proxy:2");
    }

    #[test]
    fn every_workload_kind_has_its_pod_template_found() {
        let pod = |path: &[&str]| {
            let mut v = serde_json::json!({"containers": [{"name": "c", "image": "x:1"}]});
            for p in path.iter().rev() {
                v = serde_json::json!({ *p: v });
            }
            v
        };
        for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"] {
            let mut object = serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "n"}});
            let path = pod_spec_path(kind).unwrap();
            object[path[0]] = pod(&path[1..]);
            let m = Manifest { source: "s".into(), object };
            assert_eq!(images(&[m]).len(), 1, "{kind}");
        }
    }
}
