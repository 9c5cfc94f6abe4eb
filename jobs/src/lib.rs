//! culm's job catalog.
//!
//! One module per integration family; each job type is a payload struct implementing
//! [`culm_core::Job`] with its routing next to it. [`registry`] registers every job type
//! this binary runs; the worker validates the routing against the configured queues at
//! start. Every third-party call goes through the client stack in [`http`]. With the
//! `testing` feature, `testing` holds the test kit for job types.

// A library every job author reads: public items are documented, and it never prints
// (handlers log through `tracing`).
#![warn(missing_docs, clippy::print_stdout, clippy::print_stderr)]

pub mod bamboo;
pub mod crm;
pub mod crossborder;
pub mod ding;
pub mod files;
pub mod galileo;
pub mod health;
pub mod http;
pub mod mail;
pub mod platform;
pub mod support;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unit21;

use culm_core::{Registry, RegistryError};

/// Every job type in the catalog.
pub fn registry() -> Result<Registry, RegistryError> {
    let mut r = Registry::new();
    platform::register(&mut r)?;
    galileo::register(&mut r)?;
    crossborder::register(&mut r)?;
    ding::register(&mut r)?;
    bamboo::register(&mut r)?;
    crm::register(&mut r)?;
    unit21::register(&mut r)?;
    mail::register(&mut r)?;
    files::register(&mut r)?;
    health::register(&mut r)?;
    Ok(r)
}
