//! Per-user point budgets: reserve before a request, settle after it, and report.
//!
//! A reservation is checked and recorded while the user's lock is held, so concurrent
//! requests by one user see each other's reservations: together they can overspend the
//! budget by at most what one request costs beyond its reservation, never by a second
//! reservation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::BudgetConfig;
use crate::core::period;
use crate::store::{LedgerEntry, LedgerState, Store, StoreError, UserBudget};

/// Who spends: the platform and the user's id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spender {
    pub key: String,
    pub name: String,
    pub is_admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("over budget: {spent} of {limit} points spent, {needed} more needed")]
    Over {
        spent: i64,
        limit: i64,
        needed: i64,
        resets_at_ms: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BudgetError {
    pub fn user_message(&self, period: crate::config::BudgetPeriod) -> String {
        match self {
            BudgetError::Over {
                spent,
                limit,
                needed,
                resets_at_ms,
            } => {
                let per = match period {
                    crate::config::BudgetPeriod::Day => "today",
                    crate::config::BudgetPeriod::Week => "this week",
                    crate::config::BudgetPeriod::Month => "this month",
                };
                format!(
                    "You have used {spent} of your {limit} points {per}, and this question needs up to {needed}. \
                     Your budget resets at {}. Nothing was sent to Poe.",
                    period::format_utc(*resets_at_ms)
                )
            }
            BudgetError::Store(_) => {
                "The bot cannot read its budget records right now. Try again later.".into()
            }
        }
    }
}

/// A held reservation; settle or release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub ledger_id: u64,
    pub points: i64,
}

/// One user's standing in the current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub spent: i64,
    /// `None`: no limit (an exempt admin).
    pub limit: Option<i64>,
    pub resets_at_ms: i64,
    pub requests: usize,
}

/// How many per-user locks are kept before unused ones are dropped.
const PRUNE_LOCKS_AT: usize = 1_024;

pub struct Budgets {
    store: Store,
    config: BudgetConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Budgets {
    pub fn new(store: Store, config: BudgetConfig) -> Self {
        Budgets {
            store,
            config,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    fn lock_for(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if locks.len() >= PRUNE_LOCKS_AT {
            // A lock nobody holds or waits for is as good as a new one.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(user.to_owned()).or_default().clone()
    }

    fn limit(&self, spender: &Spender) -> Result<Option<i64>, StoreError> {
        if spender.is_admin && self.config.admins_exempt {
            return Ok(None);
        }
        Ok(Some(
            self.store
                .user_budget(&spender.key)?
                .map(|budget| budget.points)
                .unwrap_or(self.config.default_points),
        ))
    }

    pub fn standing(&self, spender: &Spender, now_ms: i64) -> Result<Standing, StoreError> {
        let (start, end) = period::bounds(self.config.period, now_ms);
        let entries = self
            .store
            .ledger_for_user_since(&spender.key, start * 1000)?;
        Ok(Standing {
            spent: entries.iter().map(LedgerEntry::charge).sum(),
            limit: self.limit(spender)?,
            resets_at_ms: end,
            requests: entries.len(),
        })
    }

    /// Holds `points` for a request, or refuses if the user's budget cannot cover them.
    pub async fn reserve(
        &self,
        spender: &Spender,
        channel: &str,
        model: &str,
        points: i64,
        now_ms: i64,
    ) -> Result<Reservation, BudgetError> {
        let lock = self.lock_for(&spender.key);
        let _held = lock.lock().await;
        let standing = self.standing(spender, now_ms)?;
        if let Some(limit) = standing.limit
            && standing.spent.saturating_add(points) > limit
        {
            return Err(BudgetError::Over {
                spent: standing.spent,
                limit,
                needed: points,
                resets_at_ms: standing.resets_at_ms,
            });
        }
        let entry = LedgerEntry {
            id: self.store.next_id()?,
            user: spender.key.clone(),
            user_name: spender.name.clone(),
            channel: channel.to_owned(),
            model: model.to_owned(),
            created_us: now_ms * 1000,
            finished_us: None,
            reserved: points,
            estimated: None,
            reconciled: None,
            state: LedgerState::Reserved,
        };
        self.store.insert_ledger(&entry)?;
        Ok(Reservation {
            ledger_id: entry.id,
            points,
        })
    }

    /// Replaces the reservation with the estimated cost.
    pub fn settle(&self, ledger_id: u64, estimated: i64, now_ms: i64) -> Result<(), StoreError> {
        self.store.update_ledger(ledger_id, |entry| {
            entry.state = LedgerState::Settled;
            entry.estimated = Some(estimated);
            entry.finished_us = Some(now_ms * 1000);
        })?;
        Ok(())
    }

    /// Gives the reservation back (the request never reached Poe, or was interrupted).
    pub fn release(&self, ledger_id: u64, now_ms: i64) -> Result<(), StoreError> {
        self.store.update_ledger(ledger_id, |entry| {
            if entry.state == LedgerState::Reserved {
                entry.state = LedgerState::Released;
                entry.finished_us = Some(now_ms * 1000);
            }
        })?;
        Ok(())
    }

    pub fn set_limit(&self, user_key: &str, points: Option<i64>) -> Result<(), StoreError> {
        self.store
            .set_user_budget(user_key, points.map(|points| UserBudget { points }))
    }

    /// The biggest spenders of the current period: (name, points), most first; with
    /// `within`, only what was spent in that channel (and its threads).
    pub fn top_spenders(
        &self,
        now_ms: i64,
        count: usize,
        within: Option<&str>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let (start, _) = period::bounds(self.config.period, now_ms);
        let mut totals: HashMap<String, (String, i64)> = HashMap::new();
        let inside = |channel: &str| {
            within.is_none_or(|within| {
                channel == within
                    || channel
                        .strip_prefix(within)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        for entry in self.store.ledger_since(start * 1000)? {
            if !inside(&entry.channel) {
                continue;
            }
            let total = totals
                .entry(entry.user.clone())
                .or_insert((entry.user_name.clone(), 0));
            total.1 += entry.charge();
        }
        let mut totals: Vec<(String, i64)> = totals.into_values().collect();
        totals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        totals.truncate(count);
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spender(is_admin: bool) -> Spender {
        Spender {
            key: "memory:ann".into(),
            name: "Ann".into(),
            is_admin,
        }
    }

    #[tokio::test]
    async fn reserve_settle_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = BudgetConfig {
            default_points: 100,
            ..BudgetConfig::default()
        };
        let budgets = Budgets::new(store, config);
        let now = 1_795_644_440_000;
        let first = budgets
            .reserve(&spender(false), "c", "m", 60, now)
            .await
            .unwrap();
        let refused = budgets
            .reserve(&spender(false), "c", "m", 60, now)
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                BudgetError::Over {
                    spent: 60,
                    limit: 100,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(
            refused
                .user_message(crate::config::BudgetPeriod::Day)
                .contains("resets at 2026-11-26 00:00 UTC")
        );
        budgets.settle(first.ledger_id, 10, now).unwrap();
        budgets
            .reserve(&spender(false), "c", "m", 60, now)
            .await
            .unwrap();
        assert_eq!(budgets.standing(&spender(false), now).unwrap().spent, 70);
        // Admins are exempt but recorded.
        budgets
            .reserve(&spender(true), "c", "m", 1000, now)
            .await
            .unwrap();
        assert_eq!(budgets.standing(&spender(true), now).unwrap().limit, None);
        assert_eq!(budgets.top_spenders(now, 5, None).unwrap()[0].1, 1070);
        // An override applies; the next period starts clean.
        budgets.set_limit("memory:ann", Some(2000)).unwrap();
        assert_eq!(
            budgets.standing(&spender(false), now).unwrap().limit,
            Some(2000)
        );
        let tomorrow = now + 86_400_000;
        assert_eq!(
            budgets.standing(&spender(false), tomorrow).unwrap().spent,
            0
        );
    }

    #[test]
    fn locks_of_past_users_are_dropped_and_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let budgets = Budgets::new(Store::open(dir.path()).unwrap(), BudgetConfig::default());
        let held = budgets.lock_for("memory:held");
        let _guard = held.try_lock().unwrap();
        for n in 0..3 * PRUNE_LOCKS_AT {
            budgets.lock_for(&format!("memory:user{n}"));
        }
        let locks = budgets.locks.lock().unwrap();
        assert!(locks.len() <= PRUNE_LOCKS_AT, "{} locks kept", locks.len());
        // The held lock is still the one handed out: a second caller would wait for it.
        assert!(Arc::ptr_eq(&locks["memory:held"], &held));
    }
}
