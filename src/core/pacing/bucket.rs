//! A token bucket whose rate adapts to what the platform says.
//!
//! The bucket holds up to `burst` tokens and refills at `rate` per second; one call takes one
//! token. Its rate starts at the configured ceiling. When the platform answers "slow down"
//! for the whole bot (Discord's global 429, Synapse's `M_LIMIT_EXCEEDED`), the rate is halved
//! for every channel at once, the bucket is emptied and nothing is granted before the
//! platform's retry-after (a floor, never shortened). Every call that succeeds afterwards
//! adds a little back (additive increase, multiplicative decrease, as TCP does): a sixteenth
//! of the ceiling while the rate is well under the one that met the limit, so one stray 429
//! costs little, and a 256th near and above it, so a platform that allows less than it was
//! configured for is probed rarely instead of every few calls.
//!
//! Pure arithmetic on the times it is given: the scheduler owns the clock, tests drive it.

use std::time::Duration;

use tokio::time::Instant;

/// Each "slow down" multiplies the rate by this.
const DECREASE: f64 = 0.5;

/// The rate never falls below this share of the ceiling.
const FLOOR: f64 = 1.0 / 32.0;

/// Each success adds this share of the ceiling back, well under the rate that met the limit...
const INCREASE: f64 = 1.0 / 16.0;

/// ...and this share near or above it.
const PROBE: f64 = 1.0 / 256.0;

/// "Well under" the rate that met the limit.
const WELL_UNDER: f64 = 0.85;

#[derive(Debug, Clone)]
pub struct Bucket {
    ceiling: f64,
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
    /// The platform said to wait: nothing is granted before this.
    paused_until: Instant,
    /// The rate at which the platform last said "slow down", or a higher one reached since.
    met_limit_at: Option<f64>,
}

impl Bucket {
    /// A full bucket: `rate` tokens per second, at most `burst` at once (at least one).
    pub fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        let rate = rate.max(f64::MIN_POSITIVE);
        let burst = burst.max(1.0);
        Bucket {
            ceiling: rate,
            rate,
            burst,
            tokens: burst,
            updated: now,
            paused_until: now,
            met_limit_at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.updated {
            let elapsed = (now - self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            self.updated = now;
        }
    }

    /// Takes a token if one is there and the platform has not asked for a pause.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if now < self.paused_until || self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// A token taken but not used (its caller went away) goes back.
    pub fn give_back(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// When the next token can be taken: now, or later.
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let refilled = if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        };
        refilled.max(self.paused_until)
    }

    /// The platform refused a call for the whole bot and said when to come back.
    pub fn limited(&mut self, now: Instant, retry_after: Duration) {
        self.refill(now);
        self.met_limit_at = Some(self.rate);
        self.rate = (self.rate * DECREASE).max(self.ceiling * FLOOR);
        self.tokens = 0.0;
        self.paused_until = self.paused_until.max(now + retry_after);
    }

    /// A call went through: the rate climbs back towards the ceiling.
    pub fn succeeded(&mut self, now: Instant) {
        self.refill(now);
        let rate = match self.met_limit_at {
            Some(limit) if self.rate >= limit * WELL_UNDER => self.rate + self.ceiling * PROBE,
            Some(limit) => (self.rate + self.ceiling * INCREASE).min(limit * WELL_UNDER),
            None => self.rate + self.ceiling * INCREASE,
        };
        self.rate = rate.min(self.ceiling);
        if let Some(limit) = &mut self.met_limit_at {
            *limit = limit.max(self.rate);
        }
    }

    /// Calls per second allowed now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Tokens available now.
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Whether the platform's pause is still on.
    pub fn paused(&self, now: Instant) -> bool {
        now < self.paused_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Takes as many tokens as possible at `at`.
    fn drain(bucket: &mut Bucket, at: Instant) -> usize {
        let mut taken = 0;
        while bucket.try_take(at) {
            taken += 1;
        }
        taken
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(40.0, 5.0, start);
        assert_eq!(drain(&mut bucket, start), 5);
        assert_eq!(bucket.ready_at(start), start + ms(25));
        assert!(!bucket.try_take(start + ms(24)));
        assert!(bucket.try_take(start + ms(25)));
        // A second later: 40 more at most, never more than the burst at once.
        assert_eq!(drain(&mut bucket, start + ms(1025)), 5);
    }

    #[test]
    fn any_second_sees_at_most_the_burst_plus_the_rate() {
        // The guarantee Discord's global limit needs: 40/s with a burst of 5 never puts more
        // than 45 calls into any one-second window, however the calls are timed.
        let start = Instant::now();
        let mut bucket = Bucket::new(40.0, 5.0, start);
        let mut taken = Vec::new();
        for step in 0..5_000 {
            let at = start + Duration::from_micros(step * 997);
            while bucket.try_take(at) {
                taken.push(at);
            }
        }
        for (index, first) in taken.iter().enumerate() {
            let within = taken[index..]
                .iter()
                .take_while(|at| **at - *first < Duration::from_secs(1))
                .count();
            assert!(within <= 45, "{within} calls within a second of {index}");
        }
    }

    #[test]
    fn a_slow_down_halves_the_rate_and_pauses_for_the_retry_after() {
        let start = Instant::now();
        let mut bucket = Bucket::new(0.2, 10.0, start);
        bucket.limited(start, Duration::from_secs(3));
        assert!((bucket.rate() - 0.1).abs() < 1e-9);
        // Nothing before the retry-after, though the refill alone would allow it sooner.
        assert!(!bucket.try_take(start + ms(2999)));
        // The bucket was emptied: the next token comes at the halved rate.
        assert_eq!(bucket.ready_at(start + ms(3000)), start + ms(10_000));
        assert!(bucket.try_take(start + ms(10_000)));
    }

    #[test]
    fn the_retry_after_is_a_floor_a_shorter_one_never_shortens_it() {
        let start = Instant::now();
        let mut bucket = Bucket::new(100.0, 10.0, start);
        bucket.limited(start, Duration::from_secs(5));
        bucket.limited(start + ms(100), Duration::from_secs(1));
        assert!(bucket.paused(start + ms(4999)));
        assert!(!bucket.paused(start + ms(5000)));
    }

    #[test]
    fn halving_stops_at_the_floor() {
        let start = Instant::now();
        let mut bucket = Bucket::new(32.0, 5.0, start);
        for _ in 0..10 {
            bucket.limited(start, ms(1));
        }
        assert!((bucket.rate() - 1.0).abs() < 1e-9, "{}", bucket.rate());
    }

    #[test]
    fn the_rate_climbs_back_fast_below_where_it_met_the_limit_then_slowly() {
        let start = Instant::now();
        let mut bucket = Bucket::new(32.0, 5.0, start);
        // One stray 429 at the ceiling: back near it in a few calls, then probing.
        bucket.limited(start, ms(1));
        assert!((bucket.rate() - 16.0).abs() < 1e-9);
        for _ in 0..6 {
            bucket.succeeded(start);
        }
        // 85% of the rate that met the limit, fast...
        assert!((bucket.rate() - 27.2).abs() < 1e-9, "{}", bucket.rate());
        // ...then a 256th of the ceiling a call.
        bucket.succeeded(start);
        assert!((bucket.rate() - 27.325).abs() < 1e-9, "{}", bucket.rate());
        for _ in 0..100 {
            bucket.succeeded(start);
        }
        assert!(
            (bucket.rate() - 32.0).abs() < 1e-9,
            "never past the ceiling"
        );
    }

    #[test]
    fn a_platform_that_allows_less_is_probed_rarely() {
        // Configured for 32 a second, the platform takes 8: after two 429s the rate settles
        // under 8 and takes many calls to reach it again.
        let start = Instant::now();
        let mut bucket = Bucket::new(32.0, 5.0, start);
        bucket.limited(start, ms(1)); // at 32
        bucket.limited(start, ms(1)); // at 16
        assert!((bucket.rate() - 8.0).abs() < 1e-9);
        bucket.limited(start, ms(1)); // at 8
        assert!((bucket.rate() - 4.0).abs() < 1e-9);
        let mut calls = 0;
        while bucket.rate() < 8.0 {
            bucket.succeeded(start);
            calls += 1;
        }
        assert!(calls >= 10, "only {calls} calls until the next 429");
    }

    #[test]
    fn a_token_given_back_is_there_again_but_the_burst_is_the_limit() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1.0, 2.0, start);
        assert!(bucket.try_take(start));
        bucket.give_back(start);
        bucket.give_back(start);
        assert_eq!(drain(&mut bucket, start), 2);
    }
}
