//! The platform-free core: conversation manager, history, budgets, commands and the
//! streaming renderer. Nothing here knows Discord or Matrix; adapters meet it through
//! [`crate::platform`].

pub mod budget;
pub mod catalog;
pub mod commands;
pub mod cost;
pub mod flood;
pub mod loops;
pub mod manager;
pub mod pacing;
pub mod period;
pub mod queued;
pub mod reconcile;
pub mod render;
