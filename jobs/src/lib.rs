//! culm's job catalog.
//!
//! One module per integration family; each job type is a payload struct implementing
//! [`culm_core::Job`] with its routing next to it. [`registry`] registers every job type
//! this binary runs; the worker validates the routing against the configured queues at start.

pub mod platform;

use culm_core::{Registry, RegistryError};

/// Every job type in the catalog.
pub fn registry() -> Result<Registry, RegistryError> {
    let mut r = Registry::new();
    platform::register(&mut r)?;
    Ok(r)
}
