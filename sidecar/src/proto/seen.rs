//! `SeenSet`: the bounded memory of what was already handled (broadcast ids, control
//! envelopes), so a flood is forwarded once per member however many neighbours repeat it.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// Remembers up to `capacity` keys; the oldest is forgotten first.
#[derive(Debug)]
pub struct SeenSet<K> {
    keys: HashSet<K>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> SeenSet<K> {
    pub fn new(capacity: usize) -> Self {
        SeenSet { keys: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `key`; `true` if it was new.
    pub fn insert(&mut self, key: K) -> bool {
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_new_once_and_the_oldest_is_forgotten_past_the_bound() {
        let mut seen = SeenSet::new(2);
        assert!(seen.insert(1));
        assert!(!seen.insert(1));
        assert!(seen.insert(2));
        assert!(seen.insert(3));
        assert_eq!(seen.len(), 2);
        assert!(!seen.contains(&1) && seen.contains(&3));
        assert!(seen.insert(1), "1 was the oldest and is forgotten");
        assert!(!seen.insert(3));
    }
}
