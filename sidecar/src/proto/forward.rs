//! The one relay / deliver / drop decision for a data frame, used by the node and by the link
//! readers' fast path alike.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::frame::{Data, DataKind};

/// What to do with a data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// It is for this member.
    Deliver,
    /// Send it on to `next` with hop limit `ttl` (already decremented for a relayed frame).
    Relay { next: String, ttl: u8 },
    /// It cannot go on: `label` for the drop counter, `reason` for its source.
    Drop { label: &'static str, reason: String },
}

/// Decides for `d` at member `me`. `relayed`: it arrived from a neighbour (its hop limit
/// counts this hop); `next_hop`: the routing table's answer for a destination.
pub fn decide(
    me: &str,
    d: &Data,
    relayed: bool,
    next_hop: impl FnOnce(&str) -> Option<String>,
) -> Forward {
    if d.dst == me {
        return Forward::Deliver;
    }
    let ttl = if relayed {
        if d.ttl <= 1 {
            return Forward::Drop { label: "ttl_expired", reason: "hop limit reached".into() };
        }
        d.ttl - 1
    } else {
        d.ttl
    };
    match next_hop(&d.dst) {
        Some(next) => Forward::Relay { next, ttl },
        None => Forward::Drop { label: "no_route", reason: format!("no route to {}", d.dst) },
    }
}

/// Streams remembered per incoming link; past it, idle ones are forgotten.
const PIN_CAPACITY: usize = 4096;
/// A stream silent this long is forgotten first.
const PIN_IDLE: Duration = Duration::from_secs(60);

/// The next hop each relayed stream took, kept by one link's reader. A stream stays on its
/// next hop while that link lives, even when the route changes to an equal or better path:
/// its end-to-end TLS records must arrive in order, and two paths would reorder them. The
/// source pins its first hop the same way, so a whole stream keeps one path.
#[derive(Debug, Default)]
pub struct FlowPins {
    pins: HashMap<(String, String, u64), (String, Instant)>,
}

impl FlowPins {
    /// [`decide`] for a relayed frame, with the stream's pinned next hop (if its link is still
    /// alive) ahead of the routing table.
    pub fn decide(
        &mut self,
        me: &str,
        d: &Data,
        now: Instant,
        link_alive: impl Fn(&str) -> bool,
        next_hop: impl FnOnce(&str) -> Option<String>,
    ) -> Forward {
        let stream =
            matches!(d.kind, DataKind::StreamOpen | DataKind::StreamData | DataKind::StreamClose);
        if !stream {
            return decide(me, d, true, next_hop);
        }
        let key = (d.src.clone(), d.dst.clone(), d.flow);
        let pinned = self.pins.get(&key).map(|(n, _)| n.clone()).filter(|n| link_alive(n));
        let decision = decide(me, d, true, |dst| pinned.or_else(|| next_hop(dst)));
        match &decision {
            Forward::Relay { next, .. } if d.kind != DataKind::StreamClose => {
                if self.pins.len() >= PIN_CAPACITY && !self.pins.contains_key(&key) {
                    self.pins.retain(|_, (_, used)| now.duration_since(*used) < PIN_IDLE);
                    if self.pins.len() >= PIN_CAPACITY {
                        self.pins.clear();
                    }
                }
                self.pins.insert(key, (next.clone(), now));
            }
            _ => {
                self.pins.remove(&key);
            }
        }
        decision
    }

    /// Forgets the streams pinned to links that are no longer alive and returns them as
    /// (src, dst, flow): both their ends should hear that the stream broke.
    pub fn sweep(&mut self, link_alive: impl Fn(&str) -> bool) -> Vec<(String, String, u64)> {
        let mut broken = Vec::new();
        self.pins.retain(|(src, dst, flow), (next, _)| {
            let alive = link_alive(next);
            if !alive {
                broken.push((src.clone(), dst.clone(), *flow));
            }
            alive
        });
        broken
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(dst: &str, ttl: u8) -> Data {
        Data {
            src: "a".into(),
            dst: dst.into(),
            ttl,
            kind: DataKind::StreamData,
            flow: 1,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn deliver_relay_or_drop_with_the_hop_limit_counted_once_per_relay() {
        let hop = |_: &str| Some("n".to_owned());
        assert_eq!(decide("me", &data("me", 1), true, hop), Forward::Deliver);
        assert_eq!(
            decide("me", &data("x", 5), true, hop),
            Forward::Relay { next: "n".into(), ttl: 4 }
        );
        // The source does not spend a hop on itself.
        assert_eq!(
            decide("me", &data("x", 5), false, hop),
            Forward::Relay { next: "n".into(), ttl: 5 }
        );
        assert!(matches!(
            decide("me", &data("x", 1), true, hop),
            Forward::Drop { label: "ttl_expired", .. }
        ));
        assert!(matches!(
            decide("me", &data("x", 5), true, |_| None),
            Forward::Drop { label: "no_route", .. }
        ));
    }

    #[test]
    fn a_stream_keeps_its_next_hop_when_the_route_changes_until_that_link_closes() {
        let mut pins = FlowPins::default();
        let now = Instant::now();
        let alive = |n: &str| n != "dead";
        let d = data("x", 9);
        let first = pins.decide("me", &d, now, alive, |_| Some("a".into()));
        assert_eq!(first, Forward::Relay { next: "a".into(), ttl: 8 });
        // The route moved to b: the stream stays on a.
        let again = pins.decide("me", &d, now, alive, |_| Some("b".into()));
        assert_eq!(again, Forward::Relay { next: "a".into(), ttl: 8 });
        // Another stream takes the new route.
        let mut other = data("x", 9);
        other.flow = 2;
        assert_eq!(
            pins.decide("me", &other, now, alive, |_| Some("b".into())),
            Forward::Relay { next: "b".into(), ttl: 8 }
        );
        // Its close forgets it.
        other.kind = DataKind::StreamClose;
        pins.decide("me", &other, now, alive, |_| Some("b".into()));
        assert_eq!(pins.len(), 1);
        // Pinned to a link that closed: a sweep names it for a reset at both ends...
        let mut pins = FlowPins::default();
        pins.decide("me", &d, now, alive, |_| Some("dead".into()));
        let mut live = data("x", 9);
        live.flow = 3;
        pins.decide("me", &live, now, alive, |_| Some("b".into()));
        assert_eq!(pins.sweep(alive), [("a".to_owned(), "x".to_owned(), 1)]);
        assert_eq!(pins.len(), 1, "the stream on a live link stays pinned");
        // ... and a frame arriving before the sweep is routed afresh.
        pins.decide("me", &d, now, alive, |_| Some("dead".into()));
        assert_eq!(
            pins.decide("me", &d, now, alive, |_| Some("b".into())),
            Forward::Relay { next: "b".into(), ttl: 8 }
        );
    }

    #[test]
    fn the_pin_table_stays_bounded() {
        let mut pins = FlowPins::default();
        let start = Instant::now();
        for flow in 0..(PIN_CAPACITY as u64 * 3) {
            let mut d = data("x", 9);
            d.flow = flow;
            pins.decide(
                "me",
                &d,
                start + PIN_IDLE * 2 * (flow as u32 / 1000),
                |_| true,
                |_| Some("a".into()),
            );
            assert!(pins.len() <= PIN_CAPACITY);
        }
    }
}
