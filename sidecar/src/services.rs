//! Service names across the mesh (sans-IO).
//!
//! A member offers named services (`name → port`). It publishes them as one record, the whole
//! set at once, signed with its certificate key and flooded like a broadcast on a topic apps
//! cannot publish to ([`TOPIC`]). Every member holds the newest record of each source until it
//! expires ([`RECORD_TTL`], republished every [`REPUBLISH`]), is replaced (a set without a name
//! withdraws it), or its source is revoked. `CONNECT <name>.svc.<network>:<port>` picks among
//! the members holding `name` on that port by route metric, nearest first.

use std::collections::BTreeMap;
use std::time::Duration;

use genesis_trust::Serial;

use crate::frame::Broadcast;
use crate::routing::Time;

/// The broadcast topic service records travel on (apps' topics cannot hold ':').
pub const TOPIC: &str = "genesis:services";
/// How long a record is good for after it was issued.
pub const RECORD_TTL: Duration = Duration::from_secs(90);
/// How often a member republishes its record (three times per [`RECORD_TTL`], so one lost
/// flood does not make its services vanish).
pub const REPUBLISH: Duration = Duration::from_secs(30);
/// Longest lifetime a record may claim.
const MAX_TTL_SECS: u32 = 600;
/// A record issued further ahead of our clock than this is refused (clock skew allowance).
const MAX_SKEW_MS: u64 = 60_000;
/// Services one member may offer.
pub const MAX_SERVICES: usize = 32;
/// Sources held; past it, records from new sources are refused until some expire.
pub const MAX_SOURCES: usize = 10_000;

/// What a record says, as its payload carries it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Wall-clock Unix milliseconds when it was issued; a newer record replaces an older one.
    pub issued_ms: u64,
    pub ttl_secs: u32,
    /// Every service the source offers now.
    pub services: BTreeMap<String, u16>,
}

pub use genesis_trust::names::valid_service_name as valid_name;

impl Record {
    /// Checks the record's own sense (names, ports, size, lifetime).
    fn check(&self) -> Result<(), String> {
        if self.services.len() > MAX_SERVICES {
            return Err(format!("{} services, above {MAX_SERVICES}", self.services.len()));
        }
        if self.ttl_secs == 0 || self.ttl_secs > MAX_TTL_SECS {
            return Err(format!("lifetime {} s is outside 1..={MAX_TTL_SECS}", self.ttl_secs));
        }
        for (name, port) in &self.services {
            valid_name(name)?;
            if *port == 0 {
                return Err(format!("service {name:?} names port 0"));
            }
        }
        Ok(())
    }
}

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its source signed something that is not a valid record: the source's fault.
    Malformed(String),
    /// Expired, or older than the one held: a late or replayed copy, nobody's fault.
    Stale,
    /// The table is full.
    Full,
}

#[derive(Debug, Clone)]
struct Held {
    record: Record,
    serial: Serial,
    expires: Time,
    /// The signed frame, handed to new neighbours so they need not wait for a republish.
    frame: Broadcast,
}

/// One service offered by one member, as `/admin/services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceView {
    pub name: String,
    pub member: String,
    pub port: u16,
    /// Route metric to the member (0: this member; `None`: no route now).
    pub metric: Option<u16>,
    /// Seconds until the record expires unless republished (`None`: our own).
    pub expires_in_secs: Option<u64>,
}

/// The records held, by source member.
#[derive(Debug, Default)]
pub struct Directory {
    held: BTreeMap<String, Held>,
}

impl Directory {
    /// A verified record frame from `src` (whose certificate has `serial`): held if it is the
    /// newest and still valid. Returns whether it was new (and should travel on).
    pub fn apply(
        &mut self,
        now: Time,
        wall_ms: u64,
        src: &str,
        serial: Serial,
        frame: &Broadcast,
    ) -> Result<(), Refusal> {
        let record: Record = serde_json::from_slice(&frame.payload)
            .map_err(|e| Refusal::Malformed(format!("not a service record: {e}")))?;
        record.check().map_err(Refusal::Malformed)?;
        let ends = record.issued_ms.saturating_add(u64::from(record.ttl_secs) * 1000);
        if record.issued_ms > wall_ms + MAX_SKEW_MS {
            return Err(Refusal::Malformed(format!(
                "issued {} ms ahead of this member's clock",
                record.issued_ms - wall_ms
            )));
        }
        if ends <= wall_ms {
            return Err(Refusal::Stale);
        }
        match self.held.get(src) {
            Some(h) if h.record.issued_ms >= record.issued_ms => return Err(Refusal::Stale),
            None if self.held.len() >= MAX_SOURCES => return Err(Refusal::Full),
            _ => {}
        }
        let left =
            Duration::from_millis(ends - wall_ms).min(Duration::from_secs(record.ttl_secs.into()));
        let held = Held { record, serial, expires: now + left, frame: frame.clone() };
        self.held.insert(src.to_owned(), held);
        Ok(())
    }

    /// Forgets expired records.
    pub fn expire(&mut self, now: Time) {
        self.held.retain(|_, h| h.expires > now);
    }

    /// Forgets the records of revoked sources; returns how many went.
    pub fn revoke(&mut self, revoked: impl Fn(&Serial) -> bool) -> usize {
        let before = self.held.len();
        self.held.retain(|_, h| !revoked(&h.serial));
        before - self.held.len()
    }

    /// The members offering `name`, with the port each offers it on.
    pub fn offering<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, u16)> + 'a {
        self.held.iter().filter_map(move |(m, h)| Some((m.as_str(), *h.record.services.get(name)?)))
    }

    /// Every service held, with its expiry and the metric `metric` gives for its member.
    pub fn view(&self, now: Time, metric: impl Fn(&str) -> Option<u16>) -> Vec<ServiceView> {
        let mut views = Vec::new();
        for (member, h) in &self.held {
            for (name, port) in &h.record.services {
                views.push(ServiceView {
                    name: name.clone(),
                    member: member.clone(),
                    port: *port,
                    metric: metric(member),
                    expires_in_secs: Some(h.expires.saturating_sub(now).as_secs()),
                });
            }
        }
        views
    }

    /// The signed frames held, for a new neighbour.
    pub fn frames(&self) -> impl Iterator<Item = &Broadcast> {
        self.held.values().map(|h| &h.frame)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: &str, id: u64, record: &Record) -> Broadcast {
        Broadcast {
            src: src.into(),
            id,
            ttl: 8,
            topic: TOPIC.into(),
            payload: serde_json::to_vec(record).unwrap(),
            cert: vec![],
            sig: vec![],
        }
    }

    fn record(issued_ms: u64, services: &[(&str, u16)]) -> Record {
        Record {
            issued_ms,
            ttl_secs: 90,
            services: services.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        }
    }

    fn serial(b: u8) -> Serial {
        Serial::from_bytes(&[b]).unwrap()
    }

    const WALL: u64 = 1_800_000_000_000;

    #[test]
    fn the_newest_record_of_a_source_wins_and_a_set_without_a_name_withdraws_it() {
        let mut d = Directory::default();
        let now = Duration::from_secs(5);
        let first = record(WALL, &[("web", 8080), ("db", 5432)]);
        d.apply(now, WALL, "a", serial(1), &frame("a", 1, &first)).unwrap();
        d.apply(now, WALL, "b", serial(2), &frame("b", 2, &record(WALL, &[("web", 80)]))).unwrap();
        let mut web: Vec<_> = d.offering("web").collect();
        web.sort();
        assert_eq!(web, [("a", 8080), ("b", 80)]);
        // An older copy (a replay) changes nothing.
        let older = record(WALL - 1000, &[]);
        assert_eq!(d.apply(now, WALL, "a", serial(1), &frame("a", 3, &older)), Err(Refusal::Stale));
        assert_eq!(d.offering("db").count(), 1);
        // A newer set without db withdraws it.
        let newer = record(WALL + 1000, &[("web", 8080)]);
        d.apply(now, WALL + 1000, "a", serial(1), &frame("a", 4, &newer)).unwrap();
        assert_eq!(d.offering("db").count(), 0);
        assert_eq!(d.offering("web").count(), 2);
    }

    #[test]
    fn records_expire_and_revoked_sources_vanish() {
        let mut d = Directory::default();
        let now = Duration::from_secs(5);
        d.apply(now, WALL, "a", serial(1), &frame("a", 1, &record(WALL, &[("web", 1)]))).unwrap();
        d.apply(now, WALL, "b", serial(2), &frame("b", 2, &record(WALL, &[("web", 2)]))).unwrap();
        // A copy whose lifetime already ended is refused, not held.
        let late = record(WALL - 91_000, &[("web", 3)]);
        assert_eq!(d.apply(now, WALL, "c", serial(3), &frame("c", 3, &late)), Err(Refusal::Stale));
        assert_eq!(d.revoke(|s| *s == serial(2)), 1);
        assert_eq!(d.offering("web").map(|o| o.0).collect::<Vec<_>>(), ["a"]);
        d.expire(now + RECORD_TTL);
        assert!(d.is_empty());
    }

    #[test]
    fn malformed_records_are_refused_with_the_reason() {
        let mut d = Directory::default();
        let now = Duration::ZERO;
        let mut bad = frame("a", 1, &record(WALL, &[]));
        bad.payload = b"{\"services\":7}".to_vec();
        assert!(matches!(d.apply(now, WALL, "a", serial(1), &bad), Err(Refusal::Malformed(_))));
        for (services, why) in [
            (vec![("Web", 80)], "not a service name"),
            (vec![("web", 0)], "port 0"),
            (vec![("-x", 1)], "not a service name"),
        ] {
            let f = frame("a", 1, &record(WALL, &services));
            match d.apply(now, WALL, "a", serial(1), &f) {
                Err(Refusal::Malformed(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{services:?}: {other:?}"),
            }
        }
        let future = record(WALL + 120_000, &[("web", 1)]);
        assert!(matches!(
            d.apply(now, WALL, "a", serial(1), &frame("a", 1, &future)),
            Err(Refusal::Malformed(e)) if e.contains("ahead")
        ));
        let mut long = record(WALL, &[("web", 1)]);
        long.ttl_secs = 100_000;
        assert!(matches!(
            d.apply(now, WALL, "a", serial(1), &frame("a", 1, &long)),
            Err(Refusal::Malformed(e)) if e.contains("lifetime")
        ));
        assert!(d.is_empty());
    }
}
