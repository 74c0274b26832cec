//! The one relay / deliver / drop decision for a data frame, used by the node and by the link
//! readers' fast path alike.

use crate::frame::Data;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DataKind;

    fn data(dst: &str, ttl: u8) -> Data {
        Data {
            src: "a".into(),
            dst: dst.into(),
            ttl,
            kind: DataKind::StreamData,
            flow: 1,
            payload: vec![],
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
}
