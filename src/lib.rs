//! poe-relay: Poe's AI models in Discord and Matrix.
//!
//! The Poe client lives in [`poe`]; configuration, secrets and logging beside it.
//! [`fake_poe`] is a protocol-faithful stand-in for api.poe.com used by the tests and
//! benchmarks (and runnable as the `fake-poe` binary).

pub mod config;
pub mod core;
pub mod fake_poe;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod lanes;
pub mod logging;
pub mod metrics;
pub mod platform;
pub mod poe;
pub mod secret;
pub mod service;
pub mod store;
pub mod tls;
