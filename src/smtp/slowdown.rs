//! Slowing down password guessing: failed AUTH attempts are remembered per client address, and
//! that address's next attempts wait `smtp.auth_failure_delay` times its recent failures (at
//! most [`MAX_STEPS`] steps) before their password is even checked. Other addresses are not
//! affected; a success, or [`FORGET_AFTER`] without failures, clears an address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Most delay steps (so the longest wait is this times the step).
pub const MAX_STEPS: u32 = 10;
/// An address without failures for this long starts again from no delay.
pub const FORGET_AFTER: Duration = Duration::from_mins(15);
/// Addresses remembered at most (the oldest are dropped beyond it).
const MAX_ADDRESSES: usize = 10_000;

/// Failed AUTH attempts per client address.
#[derive(Debug)]
pub struct AuthFailures {
    step: Duration,
    /// Failures and when the last one happened.
    by_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthFailures {
    /// A tracker waiting `step` per recent failure.
    pub fn new(step: Duration) -> AuthFailures {
        AuthFailures {
            step,
            by_address: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long an attempt from `ip` waits now.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        match self.map().get(&ip.to_canonical()) {
            Some(&(n, last)) if now.duration_since(last) < FORGET_AFTER => {
                self.step * n.min(MAX_STEPS)
            }
            _ => Duration::ZERO,
        }
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(a, _)| *a) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip.to_canonical()).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    /// Forgets `ip`'s failures (it authenticated).
    pub fn succeeded(&self, ip: IpAddr) {
        self.map().remove(&ip.to_canonical());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_per_address_up_to_the_cap() {
        let f = AuthFailures::new(Duration::from_millis(10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(f.delay(a), Duration::ZERO);
        f.failed(a);
        f.failed(a);
        assert_eq!(f.delay(a), Duration::from_millis(20));
        assert_eq!(f.delay(b), Duration::ZERO);
        for _ in 0..100 {
            f.failed(a);
        }
        assert_eq!(f.delay(a), Duration::from_millis(10) * MAX_STEPS);
        // The IPv4-mapped form is the same client.
        assert_eq!(
            f.delay("::ffff:192.0.2.1".parse().unwrap()),
            Duration::from_millis(100)
        );
        f.succeeded(a);
        assert_eq!(f.delay(a), Duration::ZERO);
    }
}
