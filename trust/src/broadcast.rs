//! Source-signed broadcasts and topic messages: a relay can pass a broadcast on, but not forge
//! or alter one.
//!
//! The source signs `"genesis-mesh broadcast v1\0" || network || "\0" || source || "\0" || id
//! || topic length || topic || payload` with its certificate key; the broadcast carries the
//! signature and the source's leaf certificate, and every receiver checks both (the
//! certificate against the authority and the CRL, its name against the claimed source)
//! before it delivers or relays the message.

use std::time::SystemTime;

use crate::authority::PrivateKey;
use crate::error::Result;
use crate::identity::Identity;
use crate::seqno::verify_member_signature;
use crate::verify::TrustStore;

const CONTEXT: &[u8] = b"genesis-mesh broadcast v1\0";

fn message(network: &str, source: &str, id: u64, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        CONTEXT.len() + network.len() + source.len() + topic.len() + payload.len() + 16,
    );
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(network.as_bytes());
    m.push(0);
    m.extend_from_slice(source.as_bytes());
    m.push(0);
    m.extend_from_slice(&id.to_be_bytes());
    // The topic's length keeps topic and payload apart: ("ab", "c") and ("a", "bc") differ.
    m.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    m.extend_from_slice(topic.as_bytes());
    m.extend_from_slice(payload);
    m
}

/// Signs our own broadcast `id` on `topic` (empty: a plain broadcast).
pub fn sign_broadcast(
    key: &PrivateKey,
    identity: &Identity,
    id: u64,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<u8>> {
    key.sign(&message(identity.network(), identity.node(), id, topic, payload))
}

/// A broadcast's claims, as they arrived.
#[derive(Debug, Clone, Copy)]
pub struct SignedBroadcast<'a> {
    pub source: &'a str,
    pub id: u64,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// The source's leaf certificate (DER).
    pub cert: &'a [u8],
    pub signature: &'a [u8],
}

/// Checks that the broadcast's certificate is a valid, unrevoked member certificate of our
/// authority for its source, and that the source signed exactly this id, topic and payload.
/// Returns the source's verified identity.
pub fn verify_broadcast(
    store: &TrustStore,
    b: SignedBroadcast<'_>,
    now: SystemTime,
) -> Result<Identity> {
    verify_member_signature(store, "broadcast", b.cert, b.source, b.signature, now, |network| {
        message(network, b.source, b.id, b.topic, b.payload)
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::error::Error;
    use crate::fixtures::{ca, ca_for, member, store, NET, TD};
    use crate::identity::Role;
    use crate::{KeyAlgorithm, RevocationReason};

    #[test]
    fn only_the_source_can_sign_its_broadcast_and_nothing_in_it_can_change() {
        let now = SystemTime::now();
        let ca = ca(now);
        let (src, src_key) = member(&ca, NET, Role::Client, "src", now);
        let (_, mallory_key) = member(&ca, NET, Role::Client, "mallory", now);
        let store = store(&ca, false);
        let sig = sign_broadcast(&src_key, &src.identity, 7, "news", b"hello").unwrap();
        let leaf = src.leaf().to_vec();
        let b = SignedBroadcast {
            source: "src",
            id: 7,
            topic: "news",
            payload: b"hello",
            cert: &leaf,
            signature: &sig,
        };
        assert_eq!(verify_broadcast(&store, b, now).unwrap(), src.identity);
        // Every field is covered: another id, topic, payload, or the topic's end moved.
        let forged = |b: SignedBroadcast<'_>| {
            matches!(verify_broadcast(&store, b, now), Err(Error::Forged { .. }))
        };
        assert!(forged(SignedBroadcast { id: 8, ..b }));
        assert!(forged(SignedBroadcast { topic: "", ..b }));
        assert!(forged(SignedBroadcast { payload: b"hellO", ..b }));
        assert!(forged(SignedBroadcast { topic: "new", payload: b"shello", ..b }));
        // Someone else's key, with the source's certificate.
        let mallory_sig = sign_broadcast(&mallory_key, &src.identity, 7, "news", b"hello").unwrap();
        assert!(forged(SignedBroadcast { signature: &mallory_sig, ..b }));
        // The certificate must name the source.
        assert!(forged(SignedBroadcast { source: "other", ..b }));
        // A foreign authority's member, and a revoked one.
        let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
        let (alien, alien_key) = member(&foreign, NET, Role::Client, "src", now);
        let alien_sig = sign_broadcast(&alien_key, &alien.identity, 7, "news", b"hello").unwrap();
        let alien_b = SignedBroadcast { cert: alien.leaf(), signature: &alien_sig, ..b };
        assert!(matches!(verify_broadcast(&store, alien_b, now), Err(Error::UnknownIssuer)));
        let mut revoked = crate::RevocationList::default();
        revoked.revoke(&src.serial, RevocationReason::KeyCompromise, now);
        let crl = ca.sign_crl(&revoked, now, now + std::time::Duration::from_secs(3600)).unwrap();
        store.install_crl(&crl, now).unwrap();
        assert!(matches!(verify_broadcast(&store, b, now), Err(Error::Revoked { .. })));
    }
}
