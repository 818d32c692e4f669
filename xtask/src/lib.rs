//! Development tasks for gitops-agent, and the test support the e2e suite uses.
//!
//! `cargo xtask testenv ...` runs a real local environment: Kubernetes control plane with KWOK
//! nodes, an OCI registry with Harbor-style token auth, and a Git server, all on 127.0.0.1.

pub mod agent_image;
pub mod chart;
pub mod env_info;
pub mod fault_proxy;
pub mod http;
pub mod images;
pub mod kube;
pub mod kwok_stages;
pub mod node;
pub mod node_support;
pub mod paths;
pub mod pki;
pub mod proc;
pub mod seed;
pub mod session;
pub mod support;
pub mod testenv;
#[cfg(test)]
mod tidy;
pub mod tls;
pub mod token_service;
pub mod tools;
pub mod unit_file;
