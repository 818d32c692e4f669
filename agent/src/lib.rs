//! gitops-agent: adapters (sources, later cluster and server) and the command line.
//! Decisions live in `shared`; this crate does the I/O around them.

pub mod cli;
pub mod source;
