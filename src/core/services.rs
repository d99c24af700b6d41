//! What the core is built from (the Poe client, the store, budgets, the model catalog, the
//! configuration, metrics), shared by the manager, the turn and the commands.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::boundary::Inbound;
use super::budget::{Budgets, Spender};
use super::catalog::Catalog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::poe::PoeClient;
use crate::store::{ChannelSettings, Store};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// What the core is built from; commands use it too.
pub struct Services {
    pub poe: PoeClient,
    pub store: Store,
    pub budgets: Budgets,
    pub catalog: Catalog,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

impl Services {
    pub fn new(config: Config, poe: PoeClient, store: Store) -> Services {
        Services {
            budgets: Budgets::new(store.clone(), config.budget.clone()),
            catalog: Catalog::new(poe.clone()),
            poe,
            store,
            config,
            metrics: Arc::default(),
        }
    }

    pub fn spender(&self, inbound: &Inbound) -> Spender {
        Spender {
            key: format!("{}:{}", inbound.channel.platform, inbound.user_id),
            name: inbound.user_name.clone(),
            is_admin: inbound.is_bot_admin,
        }
    }

    pub fn model_for(&self, settings: &ChannelSettings) -> String {
        settings
            .model
            .clone()
            .unwrap_or_else(|| self.config.chat.default_model.clone())
    }
}
