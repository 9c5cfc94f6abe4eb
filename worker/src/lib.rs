//! The culm worker: configuration, culm's Redis store, the worker runtime, telemetry and
//! the CLI behind the `culm` binary. See ARCHITECTURE.md for the map.
pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod events;
pub mod examples;
pub mod integrations;
pub mod otel;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod store;
pub mod telemetry;
