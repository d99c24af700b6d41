//! One platform's request budget, shared fairly by every reply.
//!
//! Calls that find a token and nobody waiting go at once. The others queue, and a dispatcher
//! task hands out tokens as the bucket refills, in this order: first messages, final edits
//! and command answers ([`Priority::Urgent`], first come first served), then intermediate
//! edits, the reply whose chat text has lagged its answer the longest first
//! ([`Priority::CatchUp`]), then typing notices ([`Priority::Typing`]), which give up
//! instead of waiting long. So when many replies stream at once each one's edits simply come
//! further apart, and they come closer again as the crowd thins: nobody configures an edit
//! interval for the load.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::bucket::Bucket;

/// What a call is for, which decides who goes first when calls wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// What someone waits to see: a first message, a final edit, a command's answer, a note.
    Urgent,
    /// An intermediate edit of a reply whose chat text has been behind its answer since
    /// `behind_since`: the longest behind goes first.
    CatchUp { behind_since: Instant },
    /// A typing notice: the first thing dropped.
    Typing,
}

impl Priority {
    fn class(&self) -> u8 {
        match self {
            Priority::Urgent => 0,
            Priority::CatchUp { .. } => 1,
            Priority::Typing => 2,
        }
    }
}

/// A platform's bot-wide allowance: `per_second` calls on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRate {
    pub per_second: f64,
    pub burst: f64,
}

/// How busy the budget was while calls waited for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BusyStats {
    /// Time during which at least one call waited (pauses a platform asked for left out).
    pub contended: Duration,
    /// Tokens handed out during that time...
    pub granted: u64,
    /// ...and how many the rate allowed in it.
    pub allowed: f64,
}

impl BusyStats {
    /// Used ÷ allowed while calls waited, or `None` if nothing ever waited.
    pub fn busy(&self) -> Option<f64> {
        (self.allowed >= 1.0).then(|| self.granted as f64 / self.allowed)
    }
}

/// A snapshot for gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub tokens: f64,
    pub per_second: f64,
    pub waiting: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WaitKey {
    class: u8,
    at: Instant,
    seq: u64,
}

struct State {
    bucket: Bucket,
    waiting: BTreeMap<WaitKey, oneshot::Sender<()>>,
    next_seq: u64,
    stats: BusyStats,
    /// Since when `stats` last counted, while calls wait.
    counted_to: Option<Instant>,
}

impl State {
    /// Brings the busy accounting up to `now`; call before `waiting` changes.
    fn account(&mut self, now: Instant) {
        if let Some(since) = self.counted_to.take()
            && now > since
            && !self.bucket.paused(now)
        {
            let elapsed = now - since;
            self.stats.contended += elapsed;
            self.stats.allowed += elapsed.as_secs_f64() * self.bucket.rate();
        }
        if !self.waiting.is_empty() {
            self.counted_to = Some(now);
        }
    }
}

/// The budget of one platform. Unlimited when the platform sets no rate.
pub struct RequestBudget {
    /// `None`: no bot-wide limit, every call goes at once.
    state: Option<Mutex<State>>,
    wake: Arc<Notify>,
}

impl Drop for RequestBudget {
    fn drop(&mut self) {
        // Lets the dispatcher see the budget is gone and end.
        self.wake.notify_one();
    }
}

/// A call's place in the queue; leaving it (the call gave up or was cancelled) removes it,
/// and a token that arrived too late goes back.
struct Waiting<'a> {
    budget: &'a RequestBudget,
    key: WaitKey,
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(state) = &self.budget.state else {
            return;
        };
        let mut state = lock(state);
        let now = Instant::now();
        state.account(now);
        state.waiting.remove(&self.key);
        if let Some(mut granted) = self.granted.take()
            && granted.try_recv().is_ok()
        {
            state.bucket.give_back(now);
        }
        state.account(now);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RequestBudget {
    /// A budget of `rate`, or an unlimited one for `None`. Starts its dispatcher task, so it
    /// must be made inside the runtime.
    pub fn new(rate: Option<RequestRate>) -> Arc<RequestBudget> {
        let now = Instant::now();
        let budget = Arc::new(RequestBudget {
            state: rate.map(|rate| {
                Mutex::new(State {
                    bucket: Bucket::new(rate.per_second, rate.burst, now),
                    waiting: BTreeMap::new(),
                    next_seq: 0,
                    stats: BusyStats::default(),
                    counted_to: None,
                })
            }),
            wake: Arc::new(Notify::new()),
        });
        if budget.state.is_some() {
            tokio::spawn(dispatch(Arc::downgrade(&budget), budget.wake.clone()));
        }
        budget
    }

    /// Whether calls are limited at all.
    pub fn is_limited(&self) -> bool {
        self.state.is_some()
    }

    /// Waits for a token. Cancel-safe: dropping the future leaves the queue.
    pub async fn acquire(&self, priority: Priority) {
        let Some(state) = &self.state else {
            return;
        };
        let (key, granted) = {
            let mut state = lock(state);
            let now = Instant::now();
            if state.waiting.is_empty() && state.bucket.try_take(now) {
                return;
            }
            state.account(now);
            let at = match priority {
                Priority::CatchUp { behind_since } => behind_since,
                Priority::Urgent | Priority::Typing => now,
            };
            let key = WaitKey {
                class: priority.class(),
                at,
                seq: state.next_seq,
            };
            state.next_seq += 1;
            let (sender, granted) = oneshot::channel();
            state.waiting.insert(key, sender);
            state.account(now);
            (key, granted)
        };
        self.wake.notify_one();
        let mut waiting = Waiting {
            budget: self,
            key,
            granted: Some(granted),
        };
        if let Some(granted) = waiting.granted.as_mut() {
            // An error means the budget is going away: do not hold the caller up either.
            let _ = granted.await;
        }
        // The token is used (or there is none): nothing to give back.
        waiting.granted = None;
    }

    /// Takes a token only if one comes within `patience`; for calls better dropped than
    /// late (typing).
    pub async fn acquire_within(&self, priority: Priority, patience: Duration) -> bool {
        tokio::time::timeout(patience, self.acquire(priority))
            .await
            .is_ok()
    }

    /// The platform refused a call for the whole bot: slower, and nothing until
    /// `retry_after` has passed.
    pub fn limited(&self, retry_after: Duration) {
        if let Some(state) = &self.state {
            let mut state = lock(state);
            let now = Instant::now();
            state.account(now);
            state.bucket.limited(now, retry_after);
            state.account(now);
        }
        self.wake.notify_one();
    }

    /// A call that drew from the budget went through.
    pub fn succeeded(&self) {
        if let Some(state) = &self.state {
            let mut state = lock(state);
            let now = Instant::now();
            state.account(now);
            state.bucket.succeeded(now);
            state.account(now);
        }
    }

    pub fn level(&self) -> Option<Level> {
        let state = self.state.as_ref()?;
        let mut state = lock(state);
        let now = Instant::now();
        Some(Level {
            tokens: state.bucket.level(now),
            per_second: state.bucket.rate(),
            waiting: state.waiting.len(),
        })
    }

    pub fn busy_stats(&self) -> BusyStats {
        let Some(state) = &self.state else {
            return BusyStats::default();
        };
        let mut state = lock(state);
        state.account(Instant::now());
        state.stats
    }
}

/// Hands out tokens to waiting calls, best first, as the bucket allows. Ends when the
/// budget is dropped.
async fn dispatch(budget: Weak<RequestBudget>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(budget) = budget.upgrade() else {
                return;
            };
            let Some(state) = &budget.state else {
                return;
            };
            let mut state = lock(state);
            let now = Instant::now();
            state.account(now);
            let mut next = None;
            while !state.waiting.is_empty() {
                let ready_at = state.bucket.ready_at(now);
                if ready_at > now {
                    next = Some(ready_at);
                    break;
                }
                let Some((_, sender)) = state.waiting.pop_first() else {
                    break;
                };
                if sender.send(()).is_ok() {
                    state.bucket.try_take(now);
                    state.stats.granted += u64::from(state.counted_to.is_some());
                }
            }
            state.account(now);
            next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: f64) -> Option<RequestRate> {
        Some(RequestRate { per_second, burst })
    }

    /// Starts `count` waiters with the given priorities and returns the order they were
    /// served in.
    async fn served_in_order(
        budget: &Arc<RequestBudget>,
        priorities: Vec<(&'static str, Priority)>,
    ) -> Vec<&'static str> {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in priorities {
            let budget = budget.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                budget.acquire(priority).await;
                order.lock().unwrap().push(name);
            }));
            // Each is queued before the next arrives.
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn calls_go_at_once_until_the_burst_is_spent_then_at_the_rate() {
        let budget = RequestBudget::new(rate(10.0, 3.0));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire(Priority::Urgent).await;
        }
        assert_eq!(Instant::now(), start, "the burst waits for nothing");
        for _ in 0..10 {
            budget.acquire(Priority::Urgent).await;
        }
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_millis(1000) && waited < Duration::from_millis(1010),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_messages_and_final_edits_go_before_intermediate_edits_then_typing() {
        let budget = RequestBudget::new(rate(10.0, 1.0));
        budget.acquire(Priority::Urgent).await; // the bucket is empty now
        let long_ago = Instant::now() - Duration::from_secs(30);
        let recently = Instant::now() - Duration::from_secs(1);
        let order = served_in_order(
            &budget,
            vec![
                ("typing", Priority::Typing),
                (
                    "edit behind 1 s",
                    Priority::CatchUp {
                        behind_since: recently,
                    },
                ),
                ("first message", Priority::Urgent),
                (
                    "edit behind 30 s",
                    Priority::CatchUp {
                        behind_since: long_ago,
                    },
                ),
                ("final edit", Priority::Urgent),
            ],
        )
        .await;
        assert_eq!(
            order,
            [
                "first message",
                "final edit",
                "edit behind 30 s",
                "edit behind 1 s",
                "typing"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn typing_gives_up_when_the_budget_is_busy() {
        let budget = RequestBudget::new(rate(1.0, 1.0));
        assert!(
            budget
                .acquire_within(Priority::Typing, Duration::from_millis(300))
                .await,
            "an idle budget takes typing at once"
        );
        // The bucket is empty: the next token is a second away.
        assert!(
            !budget
                .acquire_within(Priority::Typing, Duration::from_millis(300))
                .await
        );
        assert_eq!(budget.level().unwrap().waiting, 0, "it left the queue");
        // The token it did not wait for is still there for others.
        tokio::time::advance(Duration::from_millis(700)).await;
        let start = Instant::now();
        budget.acquire(Priority::Urgent).await;
        assert!(Instant::now() - start <= Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_down_holds_every_call_for_the_retry_after() {
        let budget = RequestBudget::new(rate(100.0, 10.0));
        let start = Instant::now();
        budget.limited(Duration::from_secs(2));
        budget.acquire(Priority::Urgent).await;
        assert!(Instant::now() - start >= Duration::from_secs(2));
        assert!((budget.level().unwrap().per_second - 50.0).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_fully_used_while_calls_wait() {
        let budget = RequestBudget::new(rate(20.0, 1.0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let budget = budget.clone();
            tasks.push(tokio::spawn(async move {
                budget.acquire(Priority::Urgent).await
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let busy = budget.busy_stats();
        let ratio = busy.busy().unwrap();
        assert!(ratio > 0.95 && ratio <= 1.05, "{busy:?}");
        assert!(
            busy.contended >= Duration::from_millis(4900),
            "99 calls at 20/s wait about 5 s: {busy:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlimited_budget_never_waits() {
        let budget = RequestBudget::new(None);
        let start = Instant::now();
        for _ in 0..10_000 {
            budget
                .acquire(Priority::CatchUp {
                    behind_since: start,
                })
                .await;
        }
        assert_eq!(Instant::now(), start);
        assert!(budget.level().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_leaves_the_queue_and_loses_no_token() {
        let budget = RequestBudget::new(rate(1.0, 1.0));
        budget.acquire(Priority::Urgent).await;
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(Priority::Urgent).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(budget.level().unwrap().waiting, 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(budget.level().unwrap().waiting, 0);
        tokio::time::advance(Duration::from_millis(1000)).await;
        let start = Instant::now();
        budget.acquire(Priority::Urgent).await;
        assert!(Instant::now() - start <= Duration::from_millis(1));
    }
}
