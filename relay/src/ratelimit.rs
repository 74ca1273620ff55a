//! Sans-IO rate limits: a token bucket (per connection) and a table of token buckets per client
//! address ([`AddressLimits`]).
//!
//! Addresses live only in memory, in a bounded table, and are never logged or exported.

use std::collections::BTreeMap;
use std::net::IpAddr;

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
        Self::with_rate(f64::from(rate_per_sec), burst)
    }

    /// A full bucket refilling at `per_min` tokens per minute. 0 disables limiting.
    pub fn per_minute(per_min: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(per_min) / 60.0, burst)
    }

    fn with_rate(rate_per_sec: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_sec,
            burst,
            tokens: burst,
            last_ms: 0,
        }
    }

    /// True if the bucket would hold its whole burst at `now_ms` (nothing taken lately).
    fn is_full(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * self.rate_per_sec >= self.burst
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

/// Most client addresses with a bucket of their own; see [`AddressLimits`].
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// The key a client address is limited under: an IPv4 address, or the /64 prefix of an IPv6
/// address (one subscriber's network usually gets a whole /64, so limiting single IPv6 addresses
/// would limit nothing). IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

// Client addresses are never logged: `Debug` names no address.
impl std::fmt::Debug for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4(_) => "AddressKey::V4(..)",
            Self::V6(_) => "AddressKey::V6(..)",
        })
    }
}

impl std::fmt::Debug for AddressLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            template,
            buckets,
            overflow,
        } = self;
        f.debug_struct("AddressLimits")
            .field("template", template)
            .field("addresses", &buckets.len())
            .field("overflow", overflow)
            .finish()
    }
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Token buckets per client address, for limits shared by all connections from one address
/// (requests, mailbox creations).
///
/// The table holds at most [`MAX_TRACKED_ADDRESSES`] buckets. When it is full, buckets that are
/// full again (their address has been idle long enough to earn its whole burst back, so
/// forgetting them changes nothing) are dropped; if none is, addresses without a bucket share one
/// overflow bucket, so an attacker with many addresses gets one address's budget, not many.
pub struct AddressLimits {
    /// A full bucket as every address starts with.
    template: TokenBucket,
    buckets: BTreeMap<AddressKey, TokenBucket>,
    overflow: TokenBucket,
}

impl AddressLimits {
    /// A bucket like `template` (a full one; a rate of 0 disables limiting) per address.
    pub fn new(template: TokenBucket) -> Self {
        Self {
            overflow: template.clone(),
            template,
            buckets: BTreeMap::new(),
        }
    }

    /// Takes a token from `address`'s bucket at monotonic time `now_ms`; `false` if it is empty.
    pub fn take(&mut self, address: IpAddr, now_ms: u64) -> bool {
        if self.template.rate_per_sec <= 0.0 {
            return true;
        }
        let key = AddressKey::from(address);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.buckets.retain(|_, bucket| !bucket.is_full(now_ms));
            if self.buckets.len() >= MAX_TRACKED_ADDRESSES {
                return self.overflow.take(now_ms);
            }
        }
        let mut fresh = self.template.clone();
        fresh.last_ms = now_ms;
        self.buckets.entry(key).or_insert(fresh).take(now_ms)
    }

    /// Addresses with a bucket of their own.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_no_address() {
        let mut limits = AddressLimits::new(TokenBucket::new(1, 2));
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(limits.take(ip, 0));
        let key = AddressKey::from(ip);
        for shown in [
            format!("{limits:?}"),
            format!("{key:?}"),
            format!("{key:#x?}"),
        ] {
            for needle in [
                "192",
                "77",
                &u32::from_be_bytes([192, 0, 2, 77]).to_string(),
                "c000024d",
            ] {
                assert!(!shown.contains(needle), "{shown}");
            }
        }
    }

    #[test]
    fn addresses_share_a_bucket_per_ipv4_address_and_ipv6_prefix() {
        let mut limits = AddressLimits::new(TokenBucket::new(1, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.take(a, 0) && limits.take(mapped, 0));
        assert!(!limits.take(a, 0));
        assert!(limits.take(b, 0));
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_prefix: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_prefix: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limits.take(v6, 0) && limits.take(same_prefix, 0));
        assert!(!limits.take(v6, 0));
        assert!(limits.take(other_prefix, 0));
        assert!(limits.take(a, 1000));
        let mut off = AddressLimits::new(TokenBucket::new(0, 1));
        assert!((0..10).all(|_| off.take(a, 0)));
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn the_address_table_is_bounded() {
        let mut limits = AddressLimits::new(TokenBucket::new(1, 1));
        for n in 0..MAX_TRACKED_ADDRESSES as u32 {
            assert!(limits.take(IpAddr::from(n.to_be_bytes()), 0));
        }
        assert_eq!(limits.tracked(), MAX_TRACKED_ADDRESSES);
        // Full table, every bucket empty: new addresses share the overflow bucket.
        let late = |n: u32| IpAddr::from((u32::MAX - n).to_be_bytes());
        assert!(limits.take(late(0), 0));
        assert!(!limits.take(late(1), 0));
        assert_eq!(limits.tracked(), MAX_TRACKED_ADDRESSES);
        // Once the buckets have refilled, they are forgotten and a new address gets its own.
        assert!(limits.take(late(2), 5_000));
        assert_eq!(limits.tracked(), 1);
    }

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
