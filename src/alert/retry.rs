//! Delivery retries (exponential backoff with jitter inside a time budget) and per-channel rate
//! limits (token buckets).

use std::time::{Duration, Instant};

use super::settings::RetryConfig;

/// When to try again after a failed delivery attempt.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// No attempt starts after this much time since the first one.
    pub budget: Duration,
    /// ± share of each delay that is random, so a fleet does not retry in lockstep.
    pub jitter: f64,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            initial: Duration::from_millis(c.initial_backoff_ms),
            max: Duration::from_millis(c.max_backoff_ms),
            budget: Duration::from_secs(c.budget_seconds),
            jitter: c.jitter,
        }
    }
}

impl RetryPolicy {
    /// Nominal delay after failed attempt number `attempt` (1-based): initial·2^(attempt-1),
    /// capped at `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 2u64.saturating_pow(attempt.saturating_sub(1).min(32));
        let ms = (self.initial.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// The delay with jitter; `unit` is a random number in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * factor).max(0.001))
    }

    /// What to do after attempt `attempt` failed, `elapsed` after the first attempt started:
    /// wait this long and try again, or give up (None) because the next attempt would start
    /// past the budget.
    pub fn next(&self, attempt: u32, elapsed: Duration, unit: f64) -> Option<Duration> {
        let d = self.delay(attempt, unit);
        (elapsed + d <= self.budget).then_some(d)
    }

    /// Nominal attempt start times (no jitter, instant failures) within the budget.
    pub fn schedule(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        let mut out = vec![at];
        let mut attempt = 1;
        while let Some(d) = self.next(attempt, at, 0.5) {
            at += d;
            out.push(at);
            attempt += 1;
        }
        out
    }
}

/// A token bucket: `burst` tokens, refilled at `per_minute` per minute.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket { capacity, per_sec: f64::from(per_minute.max(1)) / 60.0, tokens: capacity, last: now }
    }

    /// Take a token, or say how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

/// A token bucket shared by the tasks of one channel; waiting never holds the lock.
#[derive(Debug)]
pub struct RateLimiter(tokio::sync::Mutex<TokenBucket>);

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter(tokio::sync::Mutex::new(TokenBucket::new(per_minute, burst, Instant::now())))
    }

    /// Wait for a token. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let wait = { self.0.lock().await.try_take(Instant::now()) };
            match wait {
                Ok(()) => return start.elapsed(),
                Err(d) => tokio::time::sleep(d).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetryConfig::default())
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let p = policy();
        let d: Vec<u64> = (1..=8).map(|a| p.base_delay(a).as_millis() as u64).collect();
        assert_eq!(d, [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
        assert_eq!(p.base_delay(1000), Duration::from_secs(30), "no overflow");
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let p = policy();
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(3200));
        assert_eq!(p.delay(3, 1.0), Duration::from_millis(4800));
        for i in 0..100 {
            let d = p.delay(2, fastrand::f64()).as_millis();
            assert!((1600..=2400).contains(&d), "attempt {i}: {d}");
        }
    }

    #[test]
    fn default_budget_outlasts_a_minute_long_outage() {
        let s = policy().schedule();
        // attempts at 0, 1, 3, 7, 15, 31, 61, 91, … s: a 30 s SMTP outage is survived with
        // room to spare, and the budget of 300 s bounds the total.
        let secs: Vec<u64> = s.iter().map(Duration::as_secs).collect();
        assert_eq!(&secs[..8], &[0, 1, 3, 7, 15, 31, 61, 91]);
        assert!(*s.last().unwrap() <= Duration::from_secs(300));
        assert!(*s.last().unwrap() >= Duration::from_secs(270));
        // give up once the next attempt would start past the budget
        assert_eq!(policy().next(7, Duration::from_secs(290), 0.5), None);
        assert_eq!(policy().next(1, Duration::ZERO, 0.5), Some(Duration::from_secs(1)));
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, 3, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(990) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(1000)).is_ok(), "one token per second");
        // refill never exceeds the burst
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[tokio::test]
    async fn limiter_waits_instead_of_dropping() {
        let l = RateLimiter::new(600, 1); // one per 100 ms
        assert!(l.acquire().await < Duration::from_millis(20));
        let waited = l.acquire().await;
        assert!(waited >= Duration::from_millis(80), "{waited:?}");
    }
}
