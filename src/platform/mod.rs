//! The chat platforms' adapters. Each translates its platform's events into the core's
//! [`Inbound`] and implements [`Outbound`] for it, and decides nothing the core decides.
//! [`memory`] is a platform that lives in memory, for tests and benchmarks.
//!
//! [`Inbound`]: crate::core::boundary::Inbound
//! [`Outbound`]: crate::core::boundary::Outbound

pub mod discord;
pub mod download;
pub mod matrix;
pub mod memory;
