//! Which answers are streaming now and which have a control on its way, so a stop reaches
//! the right stream and a control pressed twice never asks Poe twice.
//!
//! Both are in memory only: after a restart nothing streams, and a control that was queued
//! when the bot stopped was dropped with its queue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

#[derive(Default)]
pub struct Running {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Answer id → who may stop it, and the stream's stop signal.
    streaming: HashMap<u64, watch::Sender<Option<String>>>,
    /// Answers with a regenerate or continue queued or running.
    claimed: HashSet<u64>,
}

fn locked(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An answer streaming; dropped when its stream ends.
pub struct Streaming {
    inner: Arc<Mutex<State>>,
    id: u64,
    /// Becomes `Some(name)` when someone stops the answer.
    pub stopped: watch::Receiver<Option<String>>,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        locked(&self.inner).streaming.remove(&self.id);
    }
}

/// A control's hold on an answer until its job is done.
pub struct Claim {
    inner: Arc<Mutex<State>>,
    id: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        locked(&self.inner).claimed.remove(&self.id);
    }
}

impl Running {
    /// Registers answer `id` as streaming.
    pub fn start(&self, id: u64) -> Streaming {
        let (sender, stopped) = watch::channel(None);
        locked(&self.inner).streaming.insert(id, sender);
        Streaming {
            inner: self.inner.clone(),
            id,
            stopped,
        }
    }

    pub fn is_streaming(&self, id: u64) -> bool {
        locked(&self.inner).streaming.contains_key(&id)
    }

    /// Stops answer `id` in the name of `by`; false when it is not streaming (or was
    /// stopped already).
    pub fn stop(&self, id: u64, by: &str) -> bool {
        let state = locked(&self.inner);
        let Some(sender) = state.streaming.get(&id) else {
            return false;
        };
        sender.send_if_modified(|stopped| {
            if stopped.is_some() {
                return false;
            }
            *stopped = Some(by.to_owned());
            true
        })
    }

    /// Takes answer `id` for a regenerate or continue; `None` while another has it.
    pub fn claim(&self, id: u64) -> Option<Claim> {
        locked(&self.inner).claimed.insert(id).then(|| Claim {
            inner: self.inner.clone(),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_reaches_the_stream_once_and_only_while_it_runs() {
        let running = Running::default();
        assert!(!running.stop(7, "Ann"));
        let streaming = running.start(7);
        assert!(running.is_streaming(7));
        assert!(running.stop(7, "Ann"));
        assert!(!running.stop(7, "Bob"), "a second stop changes nothing");
        assert_eq!(streaming.stopped.borrow().as_deref(), Some("Ann"));
        drop(streaming);
        assert!(!running.is_streaming(7));
        assert!(!running.stop(7, "Ann"));
    }

    #[test]
    fn an_answer_takes_one_control_at_a_time() {
        let running = Running::default();
        let claim = running.claim(3).unwrap();
        assert!(running.claim(3).is_none());
        assert!(running.claim(4).is_some());
        drop(claim);
        assert!(running.claim(3).is_some());
    }
}
