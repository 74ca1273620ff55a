//! A sans-IO token bucket for per-connection request rate limits.

/// Tokens refill continuously at `rate` per second up to `burst`; each request takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket. A `rate_per_sec` of 0 disables limiting.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last_ms: 0,
        }
    }

    /// Takes a token at monotonic time `now_ms`; `false` if the bucket is empty.
    pub fn take(&mut self, now_ms: u64) -> bool {
        if self.rate_per_sec <= 0.0 {
            return true;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(10, 3);
        assert!(b.take(0) && b.take(0) && b.take(0));
        assert!(!b.take(0));
        assert!(!b.take(50));
        assert!(b.take(100));
        assert!(!b.take(100));
        assert!(b.take(10_000) && b.take(10_000) && b.take(10_000));
        assert!(!b.take(10_000));
        let mut off = TokenBucket::new(0, 1);
        assert!((0..100).all(|_| off.take(0)));
    }
}
