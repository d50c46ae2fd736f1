//! The stores' clock, injectable: cooldowns and stale claims are decided on
//! wall-clock milliseconds, and tests step a [`ManualClock`] instead of
//! sleeping through a cooldown (or racing one: two fsynced writes can take
//! longer than a short test cooldown on a loaded machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system's clock: what the CNI binary uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The system clock, shared: the default of the stores' options.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at the system's current time (so records it stamps look
    /// like real ones).
    pub fn new() -> Self {
        ManualClock(Arc::new(AtomicU64::new(SystemClock.now_ms())))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// As a store option.
    pub fn shared(&self) -> Arc<dyn Clock> {
        Arc::new(self.clone())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_stepped_and_clones_share_it() {
        let c = ManualClock::new();
        let t0 = c.now_ms();
        assert!(t0 > 1_600_000_000_000, "{t0}");
        let shared = c.shared();
        assert_eq!(shared.now_ms(), t0);
        c.advance(Duration::from_millis(400));
        assert_eq!(shared.now_ms(), t0 + 400);
        assert_eq!(c.now_ms(), t0 + 400);
    }
}
