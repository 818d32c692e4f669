//! Sources of desired state: the registry (and, next, the git repository).

pub mod registry;
