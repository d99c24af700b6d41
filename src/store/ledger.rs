//! The budget ledger: one entry per request to Poe, with the reservation made before it,
//! the estimate settled after it, and the cost Poe reported later (reconciled), side by side.
//! Also per-user budget overrides and the Poe history entries already matched.
//!
//! Keys: `ledger` by entry id; `ledger_by_user` by user ++ creation time ++ id (an index for
//! "what did this user spend this period"); `budgets` by user; `claimed_queries` by Poe's
//! `query_id`.

use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::{Store, StoreError, decode, encode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerState {
    /// The request is running; `reserved` points are held.
    Reserved,
    /// Finished; `estimated` is what we think it cost.
    Settled,
    /// Interrupted before a cost could be estimated; nothing is held.
    Released,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: u64,
    /// `platform:user id`.
    pub user: String,
    pub user_name: String,
    pub channel: String,
    pub model: String,
    /// Microseconds since the epoch.
    pub created_us: i64,
    pub finished_us: Option<i64>,
    pub reserved: i64,
    pub estimated: Option<i64>,
    pub reconciled: Option<i64>,
    pub state: LedgerState,
}

impl LedgerEntry {
    /// What the entry counts against the user's budget now: Poe's figure when known, else our
    /// estimate, else the reservation while the request runs.
    pub fn charge(&self) -> i64 {
        if let Some(points) = self.reconciled {
            return points;
        }
        match self.state {
            LedgerState::Reserved => self.reserved,
            LedgerState::Settled => self.estimated.unwrap_or(0),
            LedgerState::Released => 0,
        }
    }
}

/// An admin's override of one user's budget per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBudget {
    pub points: i64,
}

/// Entry ids grow with time, but an entry's `created_us` may lag its id a little (the time
/// is taken before the user's lock is) or the clock may step back: scans in id order stop
/// only this far past the time they look for.
const ORDER_SLACK_US: i64 = 3_600 * 1_000_000;

fn user_index_key(user: &str, created_us: i64, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(user.len() + 20);
    key.extend_from_slice(&(user.len() as u32).to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key.extend_from_slice(&created_us.to_be_bytes());
    key.extend_from_slice(&id.to_be_bytes());
    key
}

impl Store {
    pub fn insert_ledger(&self, entry: &LedgerEntry) -> Result<(), StoreError> {
        let value = encode(entry)?;
        let index = user_index_key(&entry.user, entry.created_us, entry.id);
        (&self.ledger, &self.ledger_by_user).transaction(|(ledger, by_user)| {
            ledger.insert(&entry.id.to_be_bytes(), value.as_slice())?;
            by_user.insert(index.as_slice(), &entry.id.to_be_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn ledger_entry(&self, id: u64) -> Result<Option<LedgerEntry>, StoreError> {
        self.ledger
            .get(id.to_be_bytes())?
            .map(|bytes| decode("ledger entry", &bytes))
            .transpose()
    }

    /// Rewrites entry `id` with `change` applied; `None` if there is no such entry.
    pub fn update_ledger(
        &self,
        id: u64,
        change: impl FnOnce(&mut LedgerEntry),
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let Some(mut entry) = self.ledger_entry(id)? else {
            return Ok(None);
        };
        change(&mut entry);
        self.ledger.insert(id.to_be_bytes(), encode(&entry)?)?;
        Ok(Some(entry))
    }

    /// The user's entries created at or after `since_us`, oldest first.
    pub fn ledger_for_user_since(
        &self,
        user: &str,
        since_us: i64,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let start = user_index_key(user, since_us, 0);
        let end = user_index_key(user, i64::MAX, u64::MAX);
        let mut entries = Vec::new();
        for item in self.ledger_by_user.range(start..=end) {
            let (_, id) = item?;
            let id: [u8; 8] = id.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "ledger index",
                detail: format!("{} bytes", id.len()),
            })?;
            if let Some(entry) = self.ledger_entry(u64::from_be_bytes(id))? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Every entry created at or after `since_us`, oldest first.
    ///
    /// Read newest first and stopped well before `since_us`, so the cost follows the span
    /// asked for, not the size of the ledger.
    pub fn ledger_since(&self, since_us: i64) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.ledger.iter().rev() {
            let (_, value) = item?;
            let entry: LedgerEntry = decode("ledger entry", &value)?;
            if entry.created_us >= since_us {
                entries.push(entry);
            } else if entry.created_us < since_us.saturating_sub(ORDER_SLACK_US) {
                break;
            }
        }
        entries.reverse();
        Ok(entries)
    }

    /// Deletes finished entries created before `cutoff_us`, and the claims on Poe's history
    /// made before `cutoff_ms`; returns how many entries went. A reservation still held is
    /// kept whatever its age.
    pub fn prune_ledger_before(&self, cutoff_us: i64, now_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.ledger.iter() {
            let (key, value) = item?;
            let entry: LedgerEntry = decode("ledger entry", &value)?;
            if entry.created_us > cutoff_us.saturating_add(ORDER_SLACK_US) {
                break;
            }
            if entry.created_us >= cutoff_us || entry.state == LedgerState::Reserved {
                continue;
            }
            let index = user_index_key(&entry.user, entry.created_us, entry.id);
            (&self.ledger, &self.ledger_by_user).transaction(|(ledger, by_user)| {
                ledger.remove(&key)?;
                by_user.remove(index.as_slice())?;
                Ok(())
            })?;
            removed += 1;
        }
        let cutoff_ms = cutoff_us / 1000;
        for item in self.claimed_queries.iter() {
            let (key, value) = item?;
            match <[u8; 8]>::try_from(value.as_ref()) {
                Ok(at) if i64::from_be_bytes(at) < cutoff_ms => {
                    self.claimed_queries.remove(key)?;
                }
                Ok(_) => {}
                // A claim from before claims carried their time: its age is unknown, so it
                // starts aging now.
                Err(_) => {
                    self.claimed_queries.insert(key, &now_ms.to_be_bytes())?;
                }
            }
        }
        Ok(removed)
    }

    pub fn user_budget(&self, user: &str) -> Result<Option<UserBudget>, StoreError> {
        self.budgets
            .get(user)?
            .map(|bytes| decode("user budget", &bytes))
            .transpose()
    }

    pub fn set_user_budget(
        &self,
        user: &str,
        budget: Option<UserBudget>,
    ) -> Result<(), StoreError> {
        match budget {
            Some(budget) => {
                self.budgets.insert(user, encode(&budget)?)?;
            }
            None => {
                self.budgets.remove(user)?;
            }
        }
        Ok(())
    }

    /// Marks Poe's history entry `query_id` as matched at `now_ms`; `false` if it already
    /// was.
    pub fn claim_query(&self, query_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let previous = self.claimed_queries.compare_and_swap(
            query_id,
            None as Option<&[u8]>,
            Some(&now_ms.to_be_bytes()),
        )?;
        Ok(previous.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(store: &Store, user: &str, created_us: i64, reserved: i64) -> LedgerEntry {
        LedgerEntry {
            id: store.next_id().unwrap(),
            user: user.into(),
            user_name: user.into(),
            channel: "memory:c".into(),
            model: "echo".into(),
            created_us,
            finished_us: None,
            reserved,
            estimated: None,
            reconciled: None,
            state: LedgerState::Reserved,
        }
    }

    #[test]
    fn per_user_queries_and_charges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a1 = entry(&store, "memory:a", 100, 50);
        let a2 = entry(&store, "memory:a", 200, 70);
        let b1 = entry(&store, "memory:ab", 150, 10);
        for e in [&a1, &a2, &b1] {
            store.insert_ledger(e).unwrap();
        }
        let a = store.ledger_for_user_since("memory:a", 150).unwrap();
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), [a2.id]);
        assert_eq!(a[0].charge(), 70);
        let settled = store
            .update_ledger(a2.id, |e| {
                e.state = LedgerState::Settled;
                e.estimated = Some(30);
            })
            .unwrap()
            .unwrap();
        assert_eq!(settled.charge(), 30);
        let reconciled = store
            .update_ledger(a2.id, |e| e.reconciled = Some(33))
            .unwrap()
            .unwrap();
        assert_eq!(reconciled.charge(), 33);
        assert_eq!(store.ledger_since(0).unwrap().len(), 3);
        assert!(store.claim_query("q1", 1).unwrap());
        assert!(!store.claim_query("q1", 2).unwrap());
    }

    const DAY_US: i64 = 86_400_000_000;
    const NOW_US: i64 = 1_795_644_440_000_000;

    #[test]
    fn recent_entries_are_read_without_reading_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ancient = entry(&store, "memory:a", NOW_US - 300 * DAY_US, 5);
        store.insert_ledger(&ancient).unwrap();
        // A value no scan of the last day should ever decode: the scan stops at the first
        // entry well before the day, which is the next one.
        store
            .ledger
            .insert(ancient.id.to_be_bytes(), &b"garbage"[..])
            .unwrap();
        let old = entry(&store, "memory:a", NOW_US - 200 * DAY_US, 5);
        store.insert_ledger(&old).unwrap();
        let first = entry(&store, "memory:a", NOW_US - 2_000_000, 1);
        // Its id is newer, its time a little older (it waited for a lock).
        let lagging = entry(&store, "memory:b", NOW_US - 3_000_000, 2);
        let last = entry(&store, "memory:a", NOW_US, 3);
        for e in [&first, &lagging, &last] {
            store.insert_ledger(e).unwrap();
        }
        let recent = store.ledger_since(NOW_US - DAY_US).unwrap();
        assert_eq!(
            recent.iter().map(|e| e.id).collect::<Vec<_>>(),
            [first.id, lagging.id, last.id]
        );
        // A scan that does reach the old value reports it rather than skipping it.
        assert!(store.ledger_since(0).is_err());
    }

    #[test]
    fn pruning_deletes_old_finished_entries_and_old_claims_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now_ms = NOW_US / 1000;
        let mut old = entry(&store, "memory:a", NOW_US - 400 * DAY_US, 5);
        old.state = LedgerState::Settled;
        let held = entry(&store, "memory:a", NOW_US - 399 * DAY_US, 7);
        let mut recent = entry(&store, "memory:a", NOW_US - DAY_US, 9);
        recent.state = LedgerState::Settled;
        for e in [&old, &held, &recent] {
            store.insert_ledger(e).unwrap();
        }
        assert!(store.claim_query("old", now_ms - 400 * 86_400_000).unwrap());
        assert!(store.claim_query("recent", now_ms - 86_400_000).unwrap());
        store.claimed_queries.insert("legacy", &[1u8][..]).unwrap();

        let removed = store
            .prune_ledger_before(NOW_US - 365 * DAY_US, now_ms)
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(store.ledger_entry(old.id).unwrap(), None);
        // The per-user index lost the entry too, and a held reservation stays whatever
        // its age.
        let left = store.ledger_for_user_since("memory:a", 0).unwrap();
        assert_eq!(
            left.iter().map(|e| e.id).collect::<Vec<_>>(),
            [held.id, recent.id]
        );
        assert!(
            store.claim_query("old", now_ms).unwrap(),
            "an old claim is gone"
        );
        assert!(!store.claim_query("recent", now_ms).unwrap());
        assert!(!store.claim_query("legacy", now_ms).unwrap());
        // A legacy claim now carries a time, so it ages out like the others.
        store
            .prune_ledger_before(NOW_US + 400 * DAY_US, now_ms + 400 * 86_400_000)
            .unwrap();
        assert!(store.claim_query("legacy", now_ms).unwrap());
    }
}
