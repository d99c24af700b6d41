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

    /// Every entry created at or after `since_us`.
    pub fn ledger_since(&self, since_us: i64) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.ledger.iter() {
            let (_, value) = item?;
            let entry: LedgerEntry = decode("ledger entry", &value)?;
            if entry.created_us >= since_us {
                entries.push(entry);
            }
        }
        Ok(entries)
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

    /// Marks Poe's history entry `query_id` as matched; `false` if it already was.
    pub fn claim_query(&self, query_id: &str) -> Result<bool, StoreError> {
        let previous = self.claimed_queries.compare_and_swap(
            query_id,
            None as Option<&[u8]>,
            Some(&[1u8][..]),
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
        assert!(store.claim_query("q1").unwrap());
        assert!(!store.claim_query("q1").unwrap());
    }
}
