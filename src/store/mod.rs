//! Everything poe-relay keeps on disk, in one sled database: the key layout, the encoding
//! (JSON values, big-endian integer keys), the schema version and migrations.
//!
//! sled stays behind this module so it could be replaced: nothing else names it.
//! Opening a store that another process holds, or one a newer poe-relay wrote, fails with a
//! message that says what to do.

mod channels;
mod history;
mod inflight;
mod ledger;
mod seen;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use channels::ChannelSettings;
pub use history::{Turn, TurnRole};
pub use inflight::InflightReply;
pub use ledger::{LedgerEntry, LedgerState, UserBudget};

use crate::platform::ChannelKey;

/// The layout this build writes. Bump it, and add a migration in [`Store::open`], whenever
/// the meaning of a stored byte changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is in use by another process (is another poe-relay running with \
         the same store.path?)"
    )]
    Locked { path: PathBuf },
    #[error(
        "the store at {path} was written by a newer poe-relay (schema {found}; this build knows \
         up to {SCHEMA_VERSION}); upgrade poe-relay or point store.path elsewhere"
    )]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("the store at {path} cannot be opened: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("the store failed: {0}")]
    Io(String),
    #[error("a stored record is corrupt ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Io(err.to_string())
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(err: sled::transaction::TransactionError<StoreError>) -> Self {
        match err {
            sled::transaction::TransactionError::Abort(inner) => inner,
            sled::transaction::TransactionError::Storage(err) => err.into(),
        }
    }
}

/// The open store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: std::sync::Arc<GroupFlush>,
    meta: sled::Tree,
    history: sled::Tree,
    channels: sled::Tree,
    ledger: sled::Tree,
    ledger_by_user: sled::Tree,
    budgets: sled::Tree,
    claimed_queries: sled::Tree,
    inflight: sled::Tree,
    seen: sled::Tree,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|err| match &err {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StoreError::Locked {
                        path: path.to_owned(),
                    }
                }
                _ => StoreError::Open {
                    path: path.to_owned(),
                    detail: err.to_string(),
                },
            })?;
        let store = Store {
            meta: db.open_tree("meta")?,
            history: db.open_tree("history")?,
            channels: db.open_tree("channels")?,
            ledger: db.open_tree("ledger")?,
            ledger_by_user: db.open_tree("ledger_by_user")?,
            budgets: db.open_tree("budgets")?,
            claimed_queries: db.open_tree("claimed_queries")?,
            inflight: db.open_tree("inflight")?,
            seen: db.open_tree("seen")?,
            flusher: GroupFlush::start(db.clone()),
            db,
        };
        match store.meta.get("schema_version")? {
            None => {
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(bytes) => {
                let found = u32::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        what: "schema version",
                        detail: format!("{} bytes", bytes.len()),
                    }
                })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path: path.to_owned(),
                        found,
                    });
                }
                // Older schemas would be migrated here; version 1 is the first.
            }
        }
        Ok(store)
    }

    /// Makes every write made so far durable. Concurrent callers share one fsync.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// A fresh unique, increasing id.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }
}

/// Group commit: one thread runs sled's (blocking) flush on behalf of every waiting caller.
///
/// sled's own `flush_async` was seen to hang with many concurrent callers, and a blocking
/// flush per caller would tie up a thread each; here a flush that starts after a request
/// covers it, so any number of callers cost one fsync per round.
struct GroupFlush {
    wanted: std::sync::Mutex<u64>,
    wake: std::sync::Condvar,
    done: tokio::sync::watch::Sender<(u64, Option<String>)>,
}

impl GroupFlush {
    fn start(db: sled::Db) -> std::sync::Arc<GroupFlush> {
        let (done, _) = tokio::sync::watch::channel((0, None));
        let flusher = std::sync::Arc::new(GroupFlush {
            wanted: std::sync::Mutex::new(0),
            wake: std::sync::Condvar::new(),
            done,
        });
        let weak = std::sync::Arc::downgrade(&flusher);
        std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || {
                let mut flushed = 0;
                loop {
                    let Some(flusher) = weak.upgrade() else {
                        return;
                    };
                    let target = {
                        let mut wanted = flusher.wanted.lock().unwrap_or_else(|p| p.into_inner());
                        while *wanted == flushed {
                            let (guard, timeout) = flusher
                                .wake
                                .wait_timeout(wanted, std::time::Duration::from_millis(500))
                                .unwrap_or_else(|p| p.into_inner());
                            wanted = guard;
                            if timeout.timed_out() && *wanted == flushed {
                                // Let the thread end once the store is gone.
                                drop(wanted);
                                if std::sync::Arc::strong_count(&flusher) == 1 {
                                    return;
                                }
                                wanted = flusher.wanted.lock().unwrap_or_else(|p| p.into_inner());
                            }
                        }
                        *wanted
                    };
                    let error = db.flush().err().map(|err| err.to_string());
                    flushed = target;
                    flusher.done.send_replace((target, error));
                }
            })
            .ok();
        flusher
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let mut done = self.done.subscribe();
        let target = {
            let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            *wanted += 1;
            *wanted
        };
        self.wake.notify_one();
        loop {
            {
                let (flushed, error) = &*done.borrow_and_update();
                if *flushed >= target {
                    return match error {
                        Some(error) => Err(StoreError::Io(error.clone())),
                        None => Ok(()),
                    };
                }
            }
            if done.changed().await.is_err() {
                return Err(StoreError::Io("the flush thread stopped".into()));
            }
        }
    }
}

/// The key prefix of a channel: length-prefixed so no channel's keys run into another's.
pub(crate) fn channel_prefix(channel: &ChannelKey) -> Vec<u8> {
    let name = format!(
        "{}\u{1f}{}\u{1f}{}",
        channel.platform,
        channel.channel,
        channel.thread.as_deref().unwrap_or("")
    );
    let mut key = Vec::with_capacity(name.len() + 4);
    key.extend_from_slice(&(name.len() as u32).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|err| StoreError::Io(format!("cannot encode: {err}")))
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        what,
        detail: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_path_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        // sled locks per process through the file; a second open in-process shares the
        // cache, so the refusal is proven across processes in tests/core_crash.rs.
        drop(_first);
        let reopened = Store::open(dir.path());
        assert!(reopened.is_ok());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .meta
                .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        assert!(err.to_string().contains("upgrade poe-relay"));
    }

    #[test]
    fn channel_prefixes_never_overlap() {
        let a = channel_prefix(&ChannelKey::new("discord", "1"));
        let b = channel_prefix(&ChannelKey::new("discord", "12"));
        let c = channel_prefix(&ChannelKey::new("discord", "1").in_thread("2"));
        assert!(!b.starts_with(&a) && !a.starts_with(&b) && !c.starts_with(&a));
    }
}
