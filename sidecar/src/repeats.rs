//! `Repeats`: lets the first of identical events through once per window and counts the rest,
//! so a flood of one refusal costs one audit record per window, not one per frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One identical event is written at most once per window.
pub const AUDIT_REPEAT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct events remembered; past it, those whose window ended are forgotten, then all.
const CAPACITY: usize = 1024;

#[derive(Debug, Default)]
pub struct Repeats {
    /// Event key → (when it was last let through, how many were held back since).
    seen: HashMap<String, (Instant, u64)>,
}

impl Repeats {
    /// `Some(n)`: let this event through, `n` identical ones were held back since the last one
    /// let through. `None`: hold it back (counted).
    pub fn check(&mut self, key: String, now: Instant) -> Option<u64> {
        if let Some((last, held)) = self.seen.get_mut(&key) {
            if now.duration_since(*last) < AUDIT_REPEAT_WINDOW {
                *held += 1;
                return None;
            }
            let n = std::mem::take(held);
            *last = now;
            return Some(n);
        }
        if self.seen.len() >= CAPACITY {
            self.seen.retain(|_, (last, _)| now.duration_since(*last) < AUDIT_REPEAT_WINDOW);
            if self.seen.len() >= CAPACITY {
                self.seen.clear();
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_events_pass_once_per_window_and_the_next_carries_the_count() {
        let mut r = Repeats::default();
        let t = Instant::now();
        assert_eq!(r.check("a".into(), t), Some(0));
        for i in 1..=500 {
            assert_eq!(r.check("a".into(), t + Duration::from_millis(i)), None);
        }
        // Another event is not held back by the first.
        assert_eq!(r.check("b".into(), t), Some(0));
        assert_eq!(r.check("a".into(), t + AUDIT_REPEAT_WINDOW), Some(500));
        assert_eq!(r.check("a".into(), t + AUDIT_REPEAT_WINDOW * 2), Some(0));
    }

    #[test]
    fn memory_stays_bounded_under_distinct_events() {
        let mut r = Repeats::default();
        let t = Instant::now();
        for i in 0..(CAPACITY * 5) {
            assert_eq!(r.check(i.to_string(), t), Some(0));
            assert!(r.seen.len() <= CAPACITY);
        }
    }
}
