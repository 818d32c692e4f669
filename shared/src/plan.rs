//! The plan of one bundle: desired objects against what runs, object by object.
//!
//! The adapter asks the API server what each desired object would become (server-side apply,
//! dry-run) and reads the live object. Comparing those two, not the rendered object, is what
//! keeps API defaults (`imagePullPolicy`, `strategy`, `protocol: TCP`) from ever showing as a
//! difference. Objects the agent owns (its labels) that are no longer desired are pruned;
//! objects another agent identity owns are never touched. Pure: objects come in as JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::desired::ownership;
use crate::render::{ImageUse, Manifest, images};

/// What applying the bundle does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    /// Owned by this agent and bundle, gone from Git.
    Prune,
    /// Exists and belongs to another agent identity (or another bundle): never touched.
    Refused,
}

/// An image that changes, per container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChange {
    pub container: String,
    pub init: bool,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One changed field: a readable path (list items named by their `name` where they have one)
/// with the old and new value; `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

/// The plan for one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectPlan {
    /// `Kind/namespace/name`.
    pub id: String,
    pub api_version: String,
    pub action: Action,
    /// The file it was rendered from (empty for prunes).
    pub source: String,
    pub images: Vec<ImageChange>,
    /// Changes other than images.
    pub changes: Vec<FieldChange>,
    /// Why an object is refused, or a conflict the API server reported.
    pub note: Option<String>,
}

/// Fields the API server changes on every write or fills in by itself; never a difference.
const VOLATILE_METADATA: &[&str] =
    &["managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink"];

/// The object without server bookkeeping and status.
pub fn normalize(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in VOLATILE_METADATA {
                meta.remove(*k);
            }
            // `kubectl.kubernetes.io/last-applied-configuration` belongs to client-side apply.
            if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                if a.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    o
}

/// Inputs for one object of the bundle.
#[derive(Debug, Clone)]
pub struct Observed {
    /// What the API server would make of the desired object (SSA dry-run); `None` when it could
    /// not say (the namespace does not exist yet: the object is a create).
    pub applied: Option<Value>,
    pub live: Option<Value>,
    /// A conflict the API server reported for the apply (fields owned by another manager).
    pub conflict: Option<String>,
}

/// Plans one bundle. `observed` is keyed by [`Manifest::id`]; `owned` are the live objects that
/// carry this agent's owner label for this bundle (prune candidates).
pub fn plan(
    desired: &[Manifest],
    observed: &BTreeMap<String, Observed>,
    owned: &[Value],
    owner: &str,
    bundle: &str,
) -> Vec<ObjectPlan> {
    let mut out = Vec::new();
    let mut wanted = BTreeSet::new();
    for m in desired {
        let id = m.id();
        wanted.insert(id.clone());
        let api_version = m.object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let obs = observed.get(&id);
        let live = obs.and_then(|o| o.live.as_ref());
        let mut p = ObjectPlan {
            id,
            api_version,
            action: Action::Create,
            source: m.source.clone(),
            images: Vec::new(),
            changes: Vec::new(),
            note: obs.and_then(|o| o.conflict.clone()),
        };
        let Some(live) = live else {
            p.images = image_changes(None, &m.object);
            out.push(p);
            continue;
        };
        match ownership(live) {
            Some((o, b)) if o != owner || b != bundle => {
                p.action = Action::Refused;
                p.note = Some(format!("owned by agent {o:?}, bundle {b:?}; not touched"));
                out.push(p);
                continue;
            }
            _ => {}
        }
        let applied = obs.and_then(|o| o.applied.as_ref()).unwrap_or(&m.object);
        let (after, before) = (normalize(applied), normalize(live));
        p.images = image_changes(Some(&before), &after);
        let image_paths = image_field_paths(&after).into_iter().chain(image_field_paths(&before)).collect();
        diff(&before, &after, "", &image_paths, &mut p.changes);
        p.action = if p.images.is_empty() && p.changes.is_empty() { Action::Unchanged } else { Action::Update };
        out.push(p);
    }
    let mut prunes: Vec<ObjectPlan> = owned
        .iter()
        .filter(|o| ownership(o).is_some_and(|(o, b)| o == owner && b == bundle))
        .map(|o| Manifest { source: String::new(), object: o.clone() })
        .filter(|m| !wanted.contains(&m.id()))
        .map(|m| ObjectPlan {
            id: m.id(),
            api_version: m.object["apiVersion"].as_str().unwrap_or_default().to_owned(),
            action: Action::Prune,
            source: String::new(),
            images: image_changes(Some(&m.object), &Value::Null),
            changes: Vec::new(),
            note: None,
        })
        .collect();
    prunes.sort_by(|a, b| a.id.cmp(&b.id));
    out.extend(prunes);
    out
}

fn uses_of(object: &Value) -> Vec<ImageUse> {
    if object.is_null() {
        return Vec::new();
    }
    images(&[Manifest { source: String::new(), object: object.clone() }])
}

fn image_changes(before: Option<&Value>, after: &Value) -> Vec<ImageChange> {
    let key = |u: &ImageUse| (u.init, u.container.clone());
    let old: BTreeMap<(bool, String), String> =
        before.map(uses_of).unwrap_or_default().iter().map(|u| (key(u), u.image.clone())).collect();
    let new: BTreeMap<(bool, String), String> = uses_of(after).iter().map(|u| (key(u), u.image.clone())).collect();
    let keys: BTreeSet<&(bool, String)> = old.keys().chain(new.keys()).collect();
    let mut out: Vec<ImageChange> = keys
        .into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| ImageChange { container: k.1.clone(), init: k.0, from: old.get(k).cloned(), to: new.get(k).cloned() })
        .collect();
    // Init containers first, as they run.
    out.sort_by_key(|c| !c.init);
    out
}

/// The readable paths of `image` fields, so the field diff does not repeat image changes.
fn image_field_paths(object: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(kind) = object["kind"].as_str() else { return out };
    let base = match kind {
        "Pod" => "spec",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            "spec.template.spec"
        }
        "CronJob" => "spec.jobTemplate.spec.template.spec",
        _ => return out,
    };
    for u in uses_of(object) {
        let field = if u.init { "initContainers" } else { "containers" };
        out.insert(format!("{base}.{field}[{}].image", u.container));
    }
    out
}

/// A list whose items all have a unique `name` is shown keyed by name (`containers[web]`).
fn named_items(items: &[Value]) -> Option<BTreeMap<String, &Value>> {
    let mut map = BTreeMap::new();
    for i in items {
        let name = i.get("name")?.as_str()?;
        if map.insert(name.to_owned(), i).is_some() {
            return None;
        }
    }
    Some(map)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn diff(before: &Value, after: &Value, path: &str, skip: &BTreeSet<String>, out: &mut Vec<FieldChange>) {
    if before == after || skip.contains(path) {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                let p = join(path, k);
                match (b.get(k), a.get(k)) {
                    (Some(x), Some(y)) => diff(x, y, &p, skip, out),
                    (x, y) if !skip.contains(&p) => {
                        out.push(FieldChange { path: p, from: x.cloned(), to: y.cloned() });
                    }
                    _ => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => match (named_items(b), named_items(a)) {
            (Some(bn), Some(an)) if !bn.is_empty() || !an.is_empty() => {
                let names: BTreeSet<&String> = bn.keys().chain(an.keys()).collect();
                for n in names {
                    let p = format!("{path}[{n}]");
                    match (bn.get(n), an.get(n)) {
                        (Some(x), Some(y)) => diff(x, y, &p, skip, out),
                        (x, y) => out.push(FieldChange {
                            path: p,
                            from: x.map(|v| (*v).clone()),
                            to: y.map(|v| (*v).clone()),
                        }),
                    }
                }
                // Same items in another order is a change too (order matters for containers).
                let order = |items: &[Value]| -> Vec<String> {
                    items.iter().filter_map(|i| i["name"].as_str().map(str::to_owned)).collect()
                };
                if bn.len() == an.len() && bn.keys().eq(an.keys()) && order(b) != order(a) {
                    out.push(FieldChange {
                        path: format!("{path}[*]"),
                        from: Some(order(b).into()),
                        to: Some(order(a).into()),
                    });
                }
            }
            _ if b.len() == a.len() => {
                for (i, (x, y)) in b.iter().zip(a).enumerate() {
                    diff(x, y, &format!("{path}[{i}]"), skip, out);
                }
            }
            _ => out.push(FieldChange { path: path.to_owned(), from: Some(before.clone()), to: Some(after.clone()) }),
        },
        _ => out.push(FieldChange { path: path.to_owned(), from: Some(before.clone()), to: Some(after.clone()) }),
    }
}

/// Objects that keep a bundle from being applied: another identity's objects, and fields another
/// field manager owns (a conflict) unless the apply is forced. One reason per object.
pub fn blockers(plans: &[ObjectPlan], force: bool) -> Vec<String> {
    plans
        .iter()
        .filter(|p| {
            p.action == Action::Refused || (!force && p.note.as_deref().is_some_and(|n| n.starts_with("conflict")))
        })
        .map(|p| format!("{}: {}", p.id, p.note.clone().unwrap_or_default()))
        .collect()
}

/// Counts of a bundle's plan, for summaries and exit codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub prune: usize,
    pub refused: usize,
}

impl Summary {
    pub fn of(plans: &[ObjectPlan]) -> Summary {
        let mut s = Summary::default();
        for p in plans {
            *match p.action {
                Action::Create => &mut s.create,
                Action::Update => &mut s.update,
                Action::Unchanged => &mut s.unchanged,
                Action::Prune => &mut s.prune,
                Action::Refused => &mut s.refused,
            } += 1;
        }
        s
    }

    /// Whether applying would change anything.
    pub fn in_sync(&self) -> bool {
        self.create + self.update + self.prune == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::label_owned;
    use crate::render::parse_manifests;
    use serde_json::json;

    const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ns}
spec:
  template:
    spec:
      initContainers:
      - {name: init, image: 'r.example/init:1'}
      containers:
      - name: web
        image: r.example/web:1
        env:
        - {name: LOG_LEVEL, value: warn}
        - {name: STORE, value: s1}
";

    fn desired(text: &str) -> Vec<Manifest> {
        let mut ms = parse_manifests(text, "t.yaml").unwrap();
        label_owned(&mut ms, "me", "b");
        ms
    }

    /// What an API server adds: defaults, bookkeeping and status.
    fn defaulted(object: &Value, rv: &str) -> Value {
        let mut o = object.clone();
        o["metadata"]["resourceVersion"] = json!(rv);
        o["metadata"]["managedFields"] = json!([{"manager": "gitops-agent", "time": rv}]);
        o["metadata"]["uid"] = json!("u-1");
        o["status"] = json!({"replicas": 1});
        if o["kind"] == "Deployment" {
            o["spec"]["strategy"] = json!({"type": "RollingUpdate"});
            for c in o["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap() {
                c["imagePullPolicy"] = json!("IfNotPresent");
            }
        }
        o
    }

    fn observe(ms: &[Manifest], live: &[Value]) -> BTreeMap<String, Observed> {
        ms.iter()
            .map(|m| {
                let live = live
                    .iter()
                    .find(|l| Manifest { source: String::new(), object: (*l).clone() }.id() == m.id())
                    .cloned();
                (m.id(), Observed { applied: live.as_ref().map(|_| defaulted(&m.object, "2")), live, conflict: None })
            })
            .collect()
    }

    #[test]
    fn api_defaults_and_bookkeeping_are_never_a_difference() {
        let ms = desired(DEPLOY);
        let live = vec![defaulted(&ms[0].object, "1")];
        let p = plan(&ms, &observe(&ms, &live), &live, "me", "b");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].action, Action::Unchanged, "{:?}", p[0].changes);
        assert!(Summary::of(&p).in_sync());
    }

    #[test]
    fn an_absent_object_is_a_create_with_its_images() {
        let ms = desired(DEPLOY);
        let p = plan(&ms, &observe(&ms, &[]), &[], "me", "b");
        assert_eq!(p[0].action, Action::Create);
        let to: Vec<(bool, &str)> = p[0].images.iter().map(|c| (c.init, c.to.as_deref().unwrap())).collect();
        assert_eq!(to, [(true, "r.example/init:1"), (false, "r.example/web:1")]);
    }

    #[test]
    fn image_and_field_changes_are_reported_apart() {
        let old = desired(DEPLOY);
        let live = vec![defaulted(&old[0].object, "1")];
        let new = desired(&DEPLOY.replace("init:1", "init:2").replace("value: warn", "value: debug"));
        let p = plan(&new, &observe(&new, &live), &live, "me", "b");
        assert_eq!(p[0].action, Action::Update);
        assert_eq!(
            p[0].images,
            [ImageChange {
                container: "init".into(),
                init: true,
                from: Some("r.example/init:1".into()),
                to: Some("r.example/init:2".into())
            }]
        );
        assert_eq!(
            p[0].changes,
            [FieldChange {
                path: "spec.template.spec.containers[web].env[LOG_LEVEL].value".into(),
                from: Some(json!("warn")),
                to: Some(json!("debug"))
            }]
        );
    }

    #[test]
    fn added_and_removed_fields_and_list_items() {
        let table: &[(Value, Value, &[&str])] = &[
            (json!({"a": 1}), json!({"a": 1, "b": 2}), &["b"]),
            (json!({"a": 1, "b": 2}), json!({"a": 1}), &["b"]),
            (json!({"l": [1, 2]}), json!({"l": [1, 3]}), &["l[1]"]),
            (json!({"l": [1, 2]}), json!({"l": [1]}), &["l"]),
            (json!({"l": [{"name": "x", "v": 1}]}), json!({"l": [{"name": "x", "v": 1}, {"name": "y"}]}), &["l[y]"]),
            (json!({"l": [{"name": "x"}, {"name": "y"}]}), json!({"l": [{"name": "y"}, {"name": "x"}]}), &["l[*]"]),
            (json!({"s": "x"}), json!({"s": {"nested": true}}), &["s"]),
        ];
        for (before, after, want) in table {
            let mut out = Vec::new();
            diff(before, after, "", &BTreeSet::new(), &mut out);
            let paths: Vec<&str> = out.iter().map(|c| c.path.as_str()).collect();
            assert_eq!(&paths, want, "{before} -> {after}");
        }
    }

    #[test]
    fn prune_only_what_this_agent_and_bundle_own() {
        let ms = desired(DEPLOY);
        let ours_gone = desired("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: old, namespace: ns}\n");
        let mut other_bundle =
            desired("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other-bundle, namespace: ns}\n");
        label_owned(&mut other_bundle, "me", "another");
        let mut other_agent =
            desired("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other-agent, namespace: ns}\n");
        label_owned(&mut other_agent, "store2", "b");
        let owned: Vec<Value> =
            [&ours_gone, &other_bundle, &other_agent].iter().map(|m| defaulted(&m[0].object, "1")).collect();
        let p = plan(&ms, &observe(&ms, &[]), &owned, "me", "b");
        let got: Vec<(&str, Action)> = p.iter().map(|o| (o.id.as_str(), o.action)).collect();
        assert_eq!(got, [("Deployment/ns/web", Action::Create), ("ConfigMap/ns/old", Action::Prune)]);
    }

    #[test]
    fn an_object_of_another_agent_is_refused_not_updated() {
        let ms = desired(DEPLOY);
        let mut theirs = desired(DEPLOY);
        label_owned(&mut theirs, "store2", "b");
        let live = vec![defaulted(&theirs[0].object, "1")];
        let p = plan(&ms, &observe(&ms, &live), &[], "me", "b");
        assert_eq!(p[0].action, Action::Refused);
        assert!(p[0].note.as_deref().unwrap().contains("\"store2\""));
        // An object nobody owns yet (deployed by Fleet or Helm before) is simply updated.
        let mut unowned = defaulted(&desired(DEPLOY)[0].object, "1");
        unowned["metadata"]["labels"] = json!({"app": "web"});
        let p = plan(&ms, &observe(&ms, &[unowned.clone()]), &[], "me", "b");
        assert_eq!(p[0].action, Action::Update);
        assert!(p[0].changes.iter().any(|c| c.path == "metadata.labels.gitops-agent.io/owner"), "{:?}", p[0].changes);
    }

    #[test]
    fn refused_objects_always_block_and_conflicts_only_when_not_forced() {
        let p = |id: &str, action, note: Option<&str>| ObjectPlan {
            id: id.into(),
            api_version: "v1".into(),
            action,
            source: String::new(),
            images: vec![],
            changes: vec![],
            note: note.map(str::to_owned),
        };
        let plans = [
            p("ConfigMap/n/a", Action::Refused, Some("owned by agent other")),
            p("ConfigMap/n/b", Action::Update, Some("conflict: .data.x owned by kubectl-edit")),
            p("ConfigMap/n/c", Action::Update, None),
        ];
        assert_eq!(
            blockers(&plans, false),
            ["ConfigMap/n/a: owned by agent other", "ConfigMap/n/b: conflict: .data.x owned by kubectl-edit"]
        );
        assert_eq!(blockers(&plans, true), ["ConfigMap/n/a: owned by agent other"]);
    }
}
