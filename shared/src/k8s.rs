//! The leaf of `shared`: Kubernetes facts every other module uses (time, object ids, and, as
//! they move here, label selectors, quantities, workload kinds, pod helpers). It imports no other
//! module of the crate.

use serde_json::Value;

/// Unix seconds.
pub type Time = i64;

/// `Kind/namespace/name` (or `Kind/name`), as `shared::render::Manifest::id`.
pub fn object_id(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}
