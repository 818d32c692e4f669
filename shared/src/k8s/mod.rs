//! The leaf of `shared`: Kubernetes facts every other module uses. It imports no other module of
//! the crate. Here: time, object ids and names; in its files: label selectors (`selector`),
//! quantities (`quantity`), workload kinds and their pods (`workload`), and typed views of the
//! object fields decisions read (`view`). Everything is reachable as `shared::k8s::X`.

mod quantity;
mod selector;
mod view;
mod workload;

pub use quantity::*;
pub use selector::*;
pub use view::*;
pub use workload::*;

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

/// `metadata.name`.
pub fn name_of(object: &Value) -> Option<&str> {
    object["metadata"]["name"].as_str()
}
