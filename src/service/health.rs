//! Whether the daemon can do its work: the store answers and every enabled platform is
//! connected. Adapters report their connection through a [`PlatformStatus`]; `/readyz`
//! reads the whole picture.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::store::Store;

#[derive(Default)]
pub struct Health {
    platforms: Mutex<BTreeMap<String, bool>>,
    stopping: AtomicBool,
}

/// One platform's line to [`Health`].
#[derive(Clone)]
pub struct PlatformStatus {
    name: String,
    health: Arc<Health>,
}

impl PlatformStatus {
    pub fn set_connected(&self, connected: bool) {
        let previous = self.health.lock().insert(self.name.clone(), connected);
        if previous != Some(connected) {
            tracing::debug!(platform = %self.name, connected, "platform connection changed");
        }
    }
}

/// What `/readyz` answers.
pub struct Readiness {
    pub ready: bool,
    pub body: Value,
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, bool>> {
        self.platforms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An enabled platform, not connected until it says so.
    pub fn register(self: &Arc<Self>, name: &str) -> PlatformStatus {
        self.lock().insert(name.to_owned(), false);
        PlatformStatus {
            name: name.to_owned(),
            health: self.clone(),
        }
    }

    /// From now on the daemon is draining: not ready for new work.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn readiness(&self, store: &Store) -> Readiness {
        let store_state = match store.check() {
            Ok(()) => "ok".to_owned(),
            Err(err) => format!("error: {err}"),
        };
        let platforms = self.lock().clone();
        let stopping = self.stopping.load(Ordering::SeqCst);
        let ready = store_state == "ok" && platforms.values().all(|up| *up) && !stopping;
        let platforms: serde_json::Map<String, Value> = platforms
            .into_iter()
            .map(|(name, up)| {
                let state = if up { "connected" } else { "disconnected" };
                (name, json!(state))
            })
            .collect();
        Readiness {
            ready,
            body: json!({
                "ready": ready,
                "stopping": stopping,
                "store": store_state,
                "platforms": platforms,
            }),
        }
    }
}
