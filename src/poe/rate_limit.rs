//! The client-side request limit shared by every conversation: at most N requests in any
//! sliding minute (Poe allows 500 per key).
//!
//! A sliding log rather than a token bucket: a bucket refilled at N per minute lets up to 2N
//! through in the first minute, which is exactly when Poe would start answering 429.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl RateLimiter {
    pub fn per_minute(limit: u32) -> Self {
        Self::new(limit.max(1) as usize, Duration::from_secs(60))
    }

    pub fn new(limit: usize, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            sent: Mutex::new(VecDeque::with_capacity(limit)),
        }
    }

    /// Waits until one more request fits in the window, then counts it.
    pub async fn acquire(&self) {
        loop {
            let wake_at = {
                let mut sent = self.sent.lock().await;
                let now = Instant::now();
                while sent
                    .front()
                    .is_some_and(|&at| now.duration_since(at) >= self.window)
                {
                    sent.pop_front();
                }
                if sent.len() < self.limit {
                    sent.push_back(now);
                    return;
                }
                match sent.front() {
                    Some(&oldest) => oldest + self.window,
                    None => now,
                }
            };
            tokio::time::sleep_until(wake_at).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window() {
        let limiter = Arc::new(RateLimiter::new(5, Duration::from_secs(60)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                limiter.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap().duration_since(start));
        }
        times.sort();
        for (index, at) in times.iter().enumerate() {
            let in_window = times
                .iter()
                .filter(|other| **other <= *at && *at - **other < Duration::from_secs(60))
                .count();
            assert!(in_window <= 5, "request {index} at {at:?} saw {in_window}");
        }
        assert_eq!(times[4], Duration::ZERO);
        assert_eq!(times[5], Duration::from_secs(60));
        assert_eq!(times[11], Duration::from_secs(120));
    }
}
