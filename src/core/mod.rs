//! The platform-free core: conversation manager, history, budgets, commands and the
//! streaming renderer. Nothing here knows Discord or Matrix; adapters meet it through
//! [`boundary`], which the core defines and the adapters import.

pub mod boundary;
pub mod budget;
pub mod catalog;
pub mod commands;
pub mod controls;
pub mod cost;
pub mod flood;
pub mod loops;
pub mod manager;
pub mod pacing;
pub mod period;
pub mod queued;
pub mod reconcile;
pub mod render;
pub mod reply;
pub mod running;
pub mod services;
pub mod turn;
