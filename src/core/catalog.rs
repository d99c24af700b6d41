//! Poe's model list, fetched when first needed and refreshed hourly in the background.
//! While a refresh runs, and when Poe cannot be reached, the last list is used; with no list
//! at all, callers work without prices and parameter checks rather than fail.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::poe::{ModelInfo, PoeClient};

const REFRESH: Duration = Duration::from_secs(3600);
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Cached {
    list: Option<Arc<Vec<ModelInfo>>>,
    fetched_at: Option<Instant>,
    failed_at: Option<Instant>,
    refreshing: bool,
}

pub struct Catalog {
    poe: PoeClient,
    cached: Arc<Mutex<Cached>>,
    /// Serializes the first fetch, so a burst of callers makes one request.
    first_fetch: tokio::sync::Mutex<()>,
}

impl Catalog {
    pub fn new(poe: PoeClient) -> Self {
        Catalog {
            poe,
            cached: Arc::new(Mutex::new(Cached::default())),
            first_fetch: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(cached: &Mutex<Cached>) -> MutexGuard<'_, Cached> {
        cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn fetch(poe: &PoeClient, cached: &Mutex<Cached>) {
        let result = poe.list_models().await;
        let mut state = Self::lock(cached);
        state.refreshing = false;
        match result {
            Ok(list) => {
                state.list = Some(Arc::new(list));
                state.fetched_at = Some(Instant::now());
            }
            Err(err) => {
                tracing::warn!(%err, "cannot fetch Poe's model list; using what is cached");
                state.failed_at = Some(Instant::now());
            }
        }
    }

    /// The model list, if one could ever be fetched.
    pub async fn models(&self) -> Option<Arc<Vec<ModelInfo>>> {
        let recently_failed = |state: &Cached| {
            state
                .failed_at
                .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        };
        {
            let mut state = Self::lock(&self.cached);
            if let Some(list) = state.list.clone() {
                let stale = state.fetched_at.is_none_or(|at| at.elapsed() >= REFRESH);
                if stale && !state.refreshing && !recently_failed(&state) {
                    state.refreshing = true;
                    let poe = self.poe.clone();
                    let cached = self.cached.clone();
                    tokio::spawn(async move { Self::fetch(&poe, &cached).await });
                }
                return Some(list);
            }
        }
        // Nothing cached yet: fetch once, with later callers waiting for that fetch.
        let _first = self.first_fetch.lock().await;
        {
            let state = Self::lock(&self.cached);
            if state.list.is_some() || recently_failed(&state) {
                return state.list.clone();
            }
        }
        Self::fetch(&self.poe, &self.cached).await;
        Self::lock(&self.cached).list.clone()
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
