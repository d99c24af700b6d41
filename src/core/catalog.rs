//! Poe's model list, fetched when first needed and refreshed hourly. When Poe cannot be
//! reached the last list is kept; with no list at all, callers work without prices and
//! parameter checks rather than fail.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::poe::{ModelInfo, PoeClient};

const REFRESH: Duration = Duration::from_secs(3600);
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

pub struct Catalog {
    poe: PoeClient,
    cached: Mutex<Option<(Instant, Arc<Vec<ModelInfo>>)>>,
    last_failure: Mutex<Option<Instant>>,
}

impl Catalog {
    pub fn new(poe: PoeClient) -> Self {
        Catalog {
            poe,
            cached: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    /// The model list, if one could ever be fetched.
    pub async fn models(&self) -> Option<Arc<Vec<ModelInfo>>> {
        let mut cached = self.cached.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < REFRESH);
        if fresh {
            return cached.as_ref().map(|(_, list)| list.clone());
        }
        let recently_failed = self
            .last_failure
            .lock()
            .await
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if !recently_failed {
            match self.poe.list_models().await {
                Ok(list) => *cached = Some((Instant::now(), Arc::new(list))),
                Err(err) => {
                    tracing::warn!(%err, "cannot fetch Poe's model list; using what is cached");
                    *self.last_failure.lock().await = Some(Instant::now());
                }
            }
        }
        cached.as_ref().map(|(_, list)| list.clone())
    }

    /// One model by name (case-insensitive).
    pub async fn find(&self, name: &str) -> Option<ModelInfo> {
        self.models()
            .await?
            .iter()
            .find(|model| model.id.eq_ignore_ascii_case(name))
            .cloned()
    }
}
