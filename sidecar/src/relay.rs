//! Relay accounting: the bytes and frames this member relays for others (per neighbour they
//! came from and per source), the bytes its neighbours relay for it, and whether it has relayed
//! beyond its configured share of its traffic.
//!
//! Sans-IO: the caller passes the time in. The driver keeps one ledger behind a mutex; the link
//! readers and stream writers record into it, the admin API and metrics read it, and the node's
//! tick turns [`RelayLedger::saturated`] into a transit penalty on the routes it advertises.

use std::collections::HashMap;
use std::time::Duration;

use crate::routing::Time;

/// The share is measured over this much recent time, in one-second buckets.
pub const WINDOW: Duration = Duration::from_secs(10);
const BUCKETS: usize = 10;
/// Below this many bytes relayed in the window a member is never saturated: a few relayed
/// frames in an otherwise quiet member are 100 % of its traffic and no load at all.
pub const FLOOR_BYTES: u64 = 1 << 20;
/// A saturated member leaves that state once its share falls this far below the limit
/// (hysteresis, so routes do not flap around the limit).
const HYSTERESIS: f64 = 0.05;
/// Neighbours and sources tracked; past it the one with the least bytes makes room (the
/// "space-saving" top-k count: a heavy source is never lost, a light one may be).
pub const TRACKED: usize = 256;

/// Bytes and frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub bytes: u64,
    pub frames: u64,
}

impl Counts {
    fn add(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.frames += 1;
    }
}

/// One neighbour's account.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NeighbourAccount {
    /// What we relayed that arrived from this neighbour.
    pub relayed_for_it: Counts,
    /// What this neighbour relayed for us: our frames it had to pass on, and frames for us it
    /// passed on from others.
    pub relayed_for_us: Counts,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    relayed: u64,
    own: u64,
}

/// The ledger.
#[derive(Debug)]
pub struct RelayLedger {
    /// Relayed bytes may be at most this share of all data bytes in the window (1: no limit).
    max_share: f64,
    buckets: [Bucket; BUCKETS],
    neighbours: HashMap<String, NeighbourAccount>,
    sources: HashMap<String, Counts>,
    relayed: Counts,
    relayed_for_us: Counts,
    refused: u64,
    saturated: bool,
}

/// What `/admin/relay` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayView {
    pub max_share: f64,
    pub window_secs: u64,
    /// Relayed bytes / all data bytes (relayed, sent and received) over the window.
    pub share: f64,
    pub relayed_bytes_in_window: u64,
    pub saturated: bool,
    /// New streams refused for relay while saturated.
    pub refused_streams: u64,
    pub relayed: Counts,
    pub relayed_for_us: Counts,
    /// By bytes relayed for them, most first.
    pub neighbours: Vec<NeighbourView>,
    /// The sources whose frames we relayed most, most first.
    pub sources: Vec<SourceView>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NeighbourView {
    pub node: String,
    #[serde(flatten)]
    pub account: NeighbourAccount,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceView {
    pub source: String,
    #[serde(flatten)]
    pub counts: Counts,
}

impl RelayLedger {
    /// A ledger whose member refuses new relay load above `max_share` (in (0, 1]; 1 never
    /// refuses).
    pub fn new(max_share: f64) -> Self {
        RelayLedger {
            max_share,
            buckets: [Bucket::default(); BUCKETS],
            neighbours: HashMap::new(),
            sources: HashMap::new(),
            relayed: Counts::default(),
            relayed_for_us: Counts::default(),
            refused: 0,
            saturated: false,
        }
    }

    fn bucket(&mut self, now: Time) -> &mut Bucket {
        let second = now.as_secs();
        let b = &mut self.buckets[second as usize % BUCKETS];
        if b.second != second {
            *b = Bucket { second, ..Bucket::default() };
        }
        b
    }

    /// A frame of `bytes` from neighbour `from`, sourced by `source`, relayed on.
    pub fn relayed(&mut self, now: Time, from: &str, source: &str, bytes: usize) {
        self.bucket(now).relayed += bytes as u64;
        self.relayed.add(bytes);
        track(&mut self.neighbours, from, |a| a.relayed_for_it.bytes).relayed_for_it.add(bytes);
        track(&mut self.sources, source, |c| c.bytes).add(bytes);
        self.update(now);
    }

    /// A frame of ours (sent, or delivered to us) of `bytes`. `relay`: the neighbour that
    /// relays it for us (sent to it for a member beyond it, or passed on to us from another).
    pub fn own(&mut self, now: Time, relay: Option<&str>, bytes: usize) {
        self.bucket(now).own += bytes as u64;
        if let Some(n) = relay {
            self.relayed_for_us.add(bytes);
            track(&mut self.neighbours, n, |a| a.relayed_for_it.bytes).relayed_for_us.add(bytes);
        }
        self.update(now);
    }

    /// A new stream was refused for relay.
    pub fn refused(&mut self) {
        self.refused += 1;
    }

    /// (relayed, all) data bytes over the window ending now.
    fn window(&self, now: Time) -> (u64, u64) {
        let now = now.as_secs();
        let recent = self.buckets.iter().filter(|b| now.saturating_sub(b.second) < BUCKETS as u64);
        recent.fold((0, 0), |(r, a), b| (r + b.relayed, a + b.relayed + b.own))
    }

    /// Relayed bytes' share of all data bytes over the window.
    pub fn share(&self, now: Time) -> f64 {
        match self.window(now) {
            (_, 0) => 0.0,
            (relayed, all) => relayed as f64 / all as f64,
        }
    }

    /// Re-evaluates saturation; the tick calls it too, so a member that stops relaying leaves
    /// the state without new frames.
    pub fn update(&mut self, now: Time) -> bool {
        if self.max_share >= 1.0 {
            return false;
        }
        let (relayed, _) = self.window(now);
        let share = self.share(now);
        self.saturated = if self.saturated {
            relayed >= FLOOR_BYTES / 2 && share > self.max_share - HYSTERESIS
        } else {
            relayed >= FLOOR_BYTES && share > self.max_share
        };
        self.saturated
    }

    /// Whether new relay load is refused now.
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    /// Why a new stream is refused, for its source.
    pub fn refusal(&self, me: &str, now: Time) -> String {
        format!(
            "relay refused: {me} relayed {:.0} % of its traffic over the last {} s, above its \
             limit of {:.0} % (--max-relay-share); routes steer around it, retry to take another \
             path",
            self.share(now) * 100.0,
            WINDOW.as_secs(),
            self.max_share * 100.0
        )
    }

    pub fn totals(&self) -> (Counts, Counts) {
        (self.relayed, self.relayed_for_us)
    }

    pub fn view(&self, now: Time, top: usize) -> RelayView {
        let mut neighbours: Vec<NeighbourView> = self
            .neighbours
            .iter()
            .map(|(n, a)| NeighbourView { node: n.clone(), account: *a })
            .collect();
        neighbours.sort_by(|a, b| {
            let key = |v: &NeighbourView| {
                (v.account.relayed_for_it.bytes, v.account.relayed_for_us.bytes)
            };
            key(b).cmp(&key(a)).then_with(|| a.node.cmp(&b.node))
        });
        neighbours.truncate(top);
        let mut sources: Vec<SourceView> = self
            .sources
            .iter()
            .map(|(s, c)| SourceView { source: s.clone(), counts: *c })
            .collect();
        sources.sort_by(|a, b| {
            b.counts.bytes.cmp(&a.counts.bytes).then_with(|| a.source.cmp(&b.source))
        });
        sources.truncate(top);
        RelayView {
            max_share: self.max_share,
            window_secs: WINDOW.as_secs(),
            share: self.share(now),
            relayed_bytes_in_window: self.window(now).0,
            saturated: self.saturated,
            refused_streams: self.refused,
            relayed: self.relayed,
            relayed_for_us: self.relayed_for_us,
            neighbours,
            sources,
        }
    }
}

/// The entry for `key`, making room (the entry with the least `weight` goes) when the table is
/// full.
fn track<'a, V: Default>(
    table: &'a mut HashMap<String, V>,
    key: &str,
    weight: impl Fn(&V) -> u64,
) -> &'a mut V {
    if !table.contains_key(key) && table.len() >= TRACKED {
        let lightest = table.iter().min_by_key(|(_, v)| weight(v)).map(|(k, _)| k.clone());
        if let Some(k) = lightest {
            table.remove(&k);
        }
    }
    table.entry(key.to_owned()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn at(secs: u64) -> Time {
        Duration::from_secs(secs)
    }

    #[test]
    fn relayed_bytes_are_counted_per_neighbour_and_source_and_for_us_per_relay() {
        let mut l = RelayLedger::new(1.0);
        l.relayed(at(0), "a", "s1", 100);
        l.relayed(at(0), "a", "s2", 50);
        l.relayed(at(0), "b", "s1", 10);
        l.own(at(0), Some("b"), 7);
        l.own(at(0), None, 3);
        let v = l.view(at(0), 10);
        assert_eq!(v.relayed, Counts { bytes: 160, frames: 3 });
        assert_eq!(v.relayed_for_us, Counts { bytes: 7, frames: 1 });
        assert_eq!(v.neighbours[0].node, "a");
        assert_eq!(v.neighbours[0].account.relayed_for_it, Counts { bytes: 150, frames: 2 });
        assert_eq!(v.neighbours[1].account.relayed_for_us, Counts { bytes: 7, frames: 1 });
        assert_eq!(v.sources[0].source, "s1");
        assert_eq!(v.sources[0].counts.bytes, 110);
        assert!((v.share - 160.0 / 170.0).abs() < 1e-9);
        assert!(!v.saturated, "a share of 1 never refuses");
    }

    #[test]
    fn saturation_needs_the_floor_and_the_share_and_ends_with_hysteresis() {
        let mut l = RelayLedger::new(0.5);
        // All relay, but below the floor: not saturated.
        l.relayed(at(0), "a", "s", MIB / 2);
        assert!(!l.saturated());
        // Above the floor and the share.
        l.relayed(at(1), "a", "s", MIB);
        assert!(l.saturated());
        assert!(l.refusal("me", at(1)).contains("above its limit of 50 %"));
        // Own traffic brings the share to 0.47: inside the hysteresis band, still saturated.
        l.own(at(2), None, MIB * 17 / 10);
        assert!(l.saturated(), "share {}", l.share(at(2)));
        // Further down: it leaves.
        l.own(at(2), None, MIB);
        assert!(!l.saturated(), "share {}", l.share(at(2)));
        // Alone again, then the window passes: nothing relayed, nothing refused.
        let mut l = RelayLedger::new(0.5);
        l.relayed(at(0), "a", "s", 2 * MIB);
        assert!(l.saturated());
        assert!(!l.update(at(0) + WINDOW + Duration::from_secs(1)));
        assert_eq!(l.share(at(30)), 0.0);
    }

    #[test]
    fn the_tables_stay_bounded_and_keep_the_heavy_entries() {
        let mut l = RelayLedger::new(1.0);
        l.relayed(at(0), "n", "heavy", 1_000_000);
        for i in 0..(TRACKED * 3) {
            l.relayed(at(0), &format!("n{i}"), &format!("s{i}"), 10);
        }
        assert!(l.sources.len() <= TRACKED);
        assert!(l.neighbours.len() <= TRACKED);
        let v = l.view(at(0), 5);
        assert_eq!(v.sources[0].source, "heavy");
        assert_eq!(v.neighbours[0].node, "n");
        assert_eq!(v.sources.len(), 5);
    }
}
