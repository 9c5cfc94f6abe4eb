//! Test support (see `support`).
