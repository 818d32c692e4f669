//! gitops-agent: adapters (sources, renderers, cluster, the daemon) and the command line.
//! Decisions live in `shared`; this crate does the I/O around them.

pub mod answer;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod desired;
pub mod drain;
pub mod prepull;
pub mod reconcile;
pub mod render;
pub mod session;
pub mod source;
pub mod state;
pub mod watch;
