//! Pure types and decisions of gitops-agent.
//!
//! Architecture invariant: nothing in this crate does I/O, reads the clock or the environment.
//! Callers pass file contents, environment look-ups and `now` in; the crate's dependency list
//! (no tokio, kube, gix, reqwest) keeps it that way.

pub mod bundle;
pub mod commit_sig;
pub mod config;
pub mod cosign;
pub mod desired;
pub mod drain;
pub mod drift;
pub mod duration;
pub mod fault;
pub mod fleet;
pub mod gate;
pub mod image;
pub mod k8s;
pub mod kustomize;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod prepull;
pub mod probe;
pub mod problem;
pub mod redact;
pub mod registry;
pub mod removal;
pub mod render;
pub mod replan;
pub mod report;
pub mod rollout;
pub mod state;
pub mod status;
pub mod tree;
pub mod trigger;
pub mod waves;
pub mod webhook;
pub mod window;
pub mod written;
pub mod yaml_lines;
