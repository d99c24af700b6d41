//! When to try a failed request again, and how long to wait first.
//!
//! Exponential backoff with full jitter (a uniformly random wait between zero and the capped
//! exponential step), never shorter than a `Retry-After` the server sent, bounded both in
//! attempts and in total time.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::error::PoeError;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    pub budget: Duration,
}

/// The retry state of one request.
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    attempts: u32,
    started: Instant,
}

impl Retries {
    pub fn new(policy: RetryPolicy) -> Self {
        Retries {
            policy,
            attempts: 0,
            started: Instant::now(),
        }
    }

    /// Counts an attempt about to be made.
    pub fn begin_attempt(&mut self) {
        self.attempts += 1;
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the next attempt, or `None` if `error` must be given to the caller.
    pub fn delay_after(&self, error: &PoeError) -> Option<Duration> {
        if !error.is_retryable() || self.attempts >= self.policy.max_attempts {
            return None;
        }
        let exponent = self.attempts.saturating_sub(1).min(20);
        let step = self
            .policy
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.policy.max_backoff);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=step.as_millis() as u64));
        let delay = match error.retry_after() {
            Some(asked) => asked.max(jitter),
            None => jitter,
        };
        let elapsed = self.started.elapsed();
        (elapsed + delay <= self.policy.budget).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            budget: Duration::from_secs(10),
        }
    }

    fn unavailable() -> PoeError {
        PoeError::Unavailable {
            detail: "x".into(),
            retry_after: None,
            retryable: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_is_capped_and_stops_after_max_attempts() {
        let mut retries = Retries::new(policy());
        let caps = [100, 200, 400];
        for cap in caps {
            retries.begin_attempt();
            let delays: Vec<Duration> = (0..200)
                .map(|_| retries.delay_after(&unavailable()).unwrap())
                .collect();
            let longest = delays.iter().max().unwrap();
            assert!(
                *longest <= Duration::from_millis(cap),
                "{longest:?} > {cap}"
            );
            // Full jitter: spread over the whole step, not pinned to it or to zero.
            assert!(
                *longest > Duration::from_millis(cap / 2),
                "{longest:?} for {cap}"
            );
            let distinct: std::collections::HashSet<_> = delays.iter().collect();
            assert!(
                distinct.len() > 10,
                "only {} distinct delays",
                distinct.len()
            );
        }
        retries.begin_attempt();
        assert_eq!(retries.delay_after(&unavailable()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_floor_and_the_budget_a_ceiling() {
        let mut retries = Retries::new(policy());
        retries.begin_attempt();
        let limited = PoeError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(retries.delay_after(&limited).unwrap() >= Duration::from_secs(3));
        let too_long = PoeError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(retries.delay_after(&too_long), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(retries.delay_after(&unavailable()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_never_retried() {
        let mut retries = Retries::new(policy());
        retries.begin_attempt();
        assert_eq!(retries.delay_after(&PoeError::OutOfPoints), None);
        assert_eq!(
            retries.delay_after(&PoeError::BadRequest { detail: "x".into() }),
            None
        );
    }
}
