//! Spacing between the calls in one channel, and the channel's own back-off after a 429.
//!
//! Platforms limit writes per channel as well as per bot (Discord: about 5 per 5 s in a
//! channel; a room's own pace on Matrix). One pacer per channel, shared by every renderer
//! and notice writing there.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct ChannelPacer {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl ChannelPacer {
    pub fn new(interval: Duration) -> Self {
        ChannelPacer {
            interval,
            next_slot: Mutex::new(Instant::now()),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Instant> {
        self.next_slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the channel's next call may go, without taking the slot.
    pub fn ready_at(&self) -> Instant {
        (*self.slot()).max(Instant::now())
    }

    /// Waits for this channel's next free slot and takes it.
    pub async fn wait_turn(&self) {
        let turn = {
            let mut next = self.slot();
            let turn = (*next).max(Instant::now());
            *next = turn + self.interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Nothing is scheduled: a new pacer would behave the same.
    pub fn is_idle(&self) -> bool {
        *self.slot() <= Instant::now()
    }

    /// The platform said to wait: nothing goes out in this channel before then.
    pub fn back_off(&self, retry_after: Duration) {
        let mut next = self.slot();
        *next = (*next).max(Instant::now() + retry_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pacer_is_idle_only_once_its_next_slot_has_passed() {
        let pacer = ChannelPacer::new(Duration::from_millis(250));
        assert!(pacer.is_idle());
        pacer.wait_turn().await;
        assert!(!pacer.is_idle(), "the next slot is 250 ms away");
        assert_eq!(
            pacer.ready_at(),
            Instant::now() + Duration::from_millis(250)
        );
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(pacer.is_idle());
        // A platform's back-off is kept as long as it lasts.
        pacer.back_off(Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(!pacer.is_idle());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(pacer.is_idle());
    }
}
