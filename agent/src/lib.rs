//! gitops-agent: adapters (sources, renderers, cluster; later the server) and the command line.
//! Decisions live in `shared`; this crate does the I/O around them.

pub mod cli;
pub mod cluster;
pub mod cycle;
pub mod daemon;
pub mod desired;
pub mod reconcile;
pub mod render;
pub mod source;
pub mod state;
pub mod watch;
