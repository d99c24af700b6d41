//! Per-key serial work: one worker task per key (a channel, a room) handles that key's
//! items in the order they came, while different keys run side by side.
//!
//! A worker that has had nothing to do for a while ends and frees its entry, so a daemon
//! that runs for months does not keep a task and a queue for every channel it has ever
//! seen. The next item for that key starts a fresh worker.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;

/// How long a worker waits for more work before it ends.
pub const IDLE: Duration = Duration::from_secs(300);

/// The queues of the live workers, by key. Cheap to clone.
pub struct Lanes<K, T> {
    senders: Arc<Mutex<HashMap<K, mpsc::UnboundedSender<T>>>>,
    idle: Duration,
}

impl<K, T> Clone for Lanes<K, T> {
    fn clone(&self) -> Self {
        Lanes {
            senders: self.senders.clone(),
            idle: self.idle,
        }
    }
}

fn locked<K, T>(
    senders: &Mutex<HashMap<K, mpsc::UnboundedSender<T>>>,
) -> MutexGuard<'_, HashMap<K, mpsc::UnboundedSender<T>>> {
    senders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K, T> Lanes<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Send + 'static,
{
    pub fn new(idle: Duration) -> Self {
        Lanes {
            senders: Arc::new(Mutex::new(HashMap::new())),
            idle,
        }
    }

    /// Queues `item` behind the key's earlier items. `handle` is used only when the key has
    /// no live worker: it becomes the new worker's handler.
    pub fn push<F, Fut>(&self, key: K, item: T, handle: F)
    where
        F: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut senders = locked(&self.senders);
        if let Some(queue) = senders.get(&key) {
            // A live worker's queue is open: it closes only under this lock, after the
            // worker removed its entry.
            match queue.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(returned)) => {
                    tracing::error!("a worker's queue closed while listed; starting a new one");
                    return self.start(&mut senders, key, returned, handle);
                }
            }
        }
        self.start(&mut senders, key, item, handle);
    }

    fn start<F, Fut>(
        &self,
        senders: &mut HashMap<K, mpsc::UnboundedSender<T>>,
        key: K,
        item: T,
        handle: F,
    ) where
        F: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, mut queue) = mpsc::unbounded_channel();
        // The receiver is alive right here: this cannot fail.
        let _ = sender.send(item);
        senders.insert(key.clone(), sender);
        let all = self.senders.clone();
        let idle = self.idle;
        tokio::spawn(async move {
            loop {
                let item = match tokio::time::timeout(idle, queue.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => return,
                    Err(_) => {
                        // Items are only queued under this lock, so once it is held and the
                        // queue is empty, nothing can slip in before the entry is gone.
                        let mut senders = locked(&all);
                        match queue.try_recv() {
                            Ok(item) => item,
                            Err(_) => {
                                senders.remove(&key);
                                return;
                            }
                        }
                    }
                };
                // A bug in one item must not end the worker and drop the items behind it.
                if AssertUnwindSafe(handle(item)).catch_unwind().await.is_err() {
                    tracing::error!(
                        "a queued piece of work failed unexpectedly (a bug); its queue goes on"
                    );
                }
            }
        });
    }

    /// How many workers are alive.
    #[cfg(test)]
    fn len(&self) -> usize {
        locked(&self.senders).len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<(u32, u32)>>>;

    fn recorder(seen: &Seen) -> impl Fn((u32, u32)) -> std::future::Ready<()> + Send + 'static {
        let seen = seen.clone();
        move |item| {
            seen.lock().unwrap().push(item);
            std::future::ready(())
        }
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        for _ in 0..2_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn each_key_keeps_its_order_while_keys_run_side_by_side() {
        let lanes = Lanes::new(IDLE);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = tokio::sync::watch::channel(false);
        for (key, n) in [(1u32, 0u32), (1, 1), (2, 0), (1, 2), (2, 1)] {
            let order = order.clone();
            let gate = gate.clone();
            lanes.push(key, n, move |n| {
                let order = order.clone();
                let mut gate = gate.clone();
                async move {
                    // Key 1 is held up; key 2 must not wait for it.
                    if key == 1 {
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    order.lock().unwrap().push((key, n));
                }
            });
        }
        wait_until(|| order.lock().unwrap().len() == 2).await;
        assert_eq!(*order.lock().unwrap(), vec![(2, 0), (2, 1)]);
        assert_eq!(lanes.len(), 2);
        release.send(true).unwrap();
        wait_until(|| order.lock().unwrap().len() == 5).await;
        assert_eq!(
            order.lock().unwrap()[2..],
            [(1, 0), (1, 1), (1, 2)],
            "key 1 out of order"
        );
    }

    #[tokio::test]
    async fn an_idle_worker_ends_and_a_new_item_starts_another() {
        let lanes = Lanes::new(Duration::from_millis(50));
        let seen = Seen::default();
        lanes.push(7, (7, 0), recorder(&seen));
        lanes.push(8, (8, 0), recorder(&seen));
        assert_eq!(lanes.len(), 2);
        wait_until(|| lanes.is_empty()).await;
        assert_eq!(seen.lock().unwrap().len(), 2);
        lanes.push(7, (7, 1), recorder(&seen));
        wait_until(|| seen.lock().unwrap().len() == 3).await;
        assert_eq!(seen.lock().unwrap()[2], (7, 1));
        wait_until(|| lanes.is_empty()).await;
    }

    #[tokio::test]
    async fn an_item_that_panics_does_not_take_the_items_behind_it() {
        let lanes = Lanes::new(IDLE);
        let seen = Seen::default();
        for n in 0..3u32 {
            let seen = seen.clone();
            lanes.push(1u32, n, move |n| {
                let seen = seen.clone();
                async move {
                    assert_ne!(n, 1, "a bug");
                    seen.lock().unwrap().push((1, n));
                }
            });
        }
        wait_until(|| seen.lock().unwrap().len() == 2).await;
        assert_eq!(*seen.lock().unwrap(), vec![(1, 0), (1, 2)]);
        assert_eq!(lanes.len(), 1, "the same worker goes on");
    }

    /// Items pushed while workers keep ending (an idle time of 1 ms) are each handled
    /// exactly once, in order: none is lost in a queue that is being closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_lost_while_workers_come_and_go() {
        let lanes = Lanes::new(Duration::from_millis(1));
        let seen = Seen::default();
        let mut pushers = Vec::new();
        for key in 0..2u32 {
            let lanes = lanes.clone();
            let seen = seen.clone();
            pushers.push(tokio::spawn(async move {
                for n in 0..2_000u32 {
                    lanes.push(key, (key, n), recorder(&seen));
                    if n % 7 == 0 {
                        tokio::time::sleep(Duration::from_micros(1_500)).await;
                    }
                }
            }));
        }
        for pusher in pushers {
            pusher.await.unwrap();
        }
        wait_until(|| seen.lock().unwrap().len() == 4_000).await;
        wait_until(|| lanes.is_empty()).await;
        let seen = seen.lock().unwrap();
        for key in 0..2u32 {
            let got: Vec<u32> = seen
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(got, (0..2_000).collect::<Vec<_>>(), "key {key}");
        }
    }
}
