//! The e2e suite: one test binary (one link step), run by `cargo xtask test` against the testenv.
//! Every test isolates itself (own namespace, git repo, registry repository, fault proxy), so the
//! suite runs in parallel; waits are conditions with deadlines, never fixed sleeps.

// Helpers outside #[test] functions unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod bench;
mod bench_flux;
mod bench_peers;
mod cli;
mod daemon;
mod desired_state;
mod drain;
mod fault_matrix;
mod faults;
mod git_source;
mod hostile;
mod install;
mod no_change;
mod prepull;
mod real_node;
mod records;
mod registry_source;
mod removal;
mod rollout;
mod rollout_policy;
mod stack_b_fixture;
mod testenv_is_real;
mod util;
mod verification;
mod waves;
mod webhook_load;
mod windows;
