//! Signed route sequence numbers: only a destination can announce a fresher route to itself.
//!
//! A member signs `"genesis-mesh route seqno v1\0" || network || "\0" || node || seqno` with its
//! certificate key whenever its sequence number changes; relays pass the signature on unchanged
//! with the member's leaf certificate, and every receiver checks both before believing the seqno.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use webpki::EndEntityCert;

use crate::authority::PrivateKey;
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::verify::{PeerRole, TrustStore};

const CONTEXT: &[u8] = b"genesis-mesh route seqno v1\0";

fn message(network: &str, node: &str, seqno: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + network.len() + node.len() + 5);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(network.as_bytes());
    m.push(0);
    m.extend_from_slice(node.as_bytes());
    m.extend_from_slice(&seqno.to_be_bytes());
    m
}

/// Signs our own `seqno`.
pub fn sign_seqno(key: &PrivateKey, identity: &Identity, seqno: u32) -> Result<Vec<u8>> {
    key.sign(&message(identity.network(), identity.node(), seqno))
}

/// Checks that `cert` is a valid, unrevoked member certificate for `node` and that `proof` is
/// its signature over `seqno`.
pub fn verify_seqno(
    store: &TrustStore,
    cert: &[u8],
    node: &str,
    seqno: u32,
    proof: &[u8],
    now: SystemTime,
) -> Result<Identity> {
    verify_member_signature(store, "route seqno", cert, node, proof, now, |network| {
        message(network, node, seqno)
    })
}

/// Checks that `cert` is a valid, unrevoked member certificate of our authority for `node`,
/// and that `signature` is its key's signature over `message(network)` (the network taken
/// from the certificate). The one check behind every member-signed message (route seqnos,
/// broadcasts).
pub(crate) fn verify_member_signature(
    store: &TrustStore,
    what: &'static str,
    cert: &[u8],
    node: &str,
    signature: &[u8],
    now: SystemTime,
    message: impl FnOnce(&str) -> Vec<u8>,
) -> Result<Identity> {
    let der = CertificateDer::from(cert);
    let peer = store.verify(std::slice::from_ref(&der), now, PeerRole::Server)?;
    if peer.identity.node() != node {
        return Err(Error::Forged {
            what,
            reason: format!("it names {node}, but its certificate is {}'s", peer.identity),
        });
    }
    let ee = EndEntityCert::try_from(&der)
        .map_err(|e| Error::InvalidCertificate { reason: format!("{e:?}") })?;
    let msg = message(peer.identity.network());
    let algs: [&dyn rustls_pki_types::SignatureVerificationAlgorithm; 2] =
        [webpki::ring::ECDSA_P256_SHA256, webpki::ring::ED25519];
    if algs.iter().any(|alg| ee.verify_signature(*alg, &msg, signature).is_ok()) {
        Ok(peer.identity)
    } else {
        Err(Error::Forged {
            what,
            reason: format!("the signature does not verify with the key of {}", peer.identity),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::fixtures::{ca, ca_for, member, store, NET, TD};
    use crate::identity::Role;
    use crate::KeyAlgorithm;

    #[test]
    fn only_the_destination_can_sign_its_seqno() {
        let now = SystemTime::now();
        let ca = ca(now);
        let (dest, dest_key) = member(&ca, NET, Role::Client, "dest", now);
        let (_, mallory_key) = member(&ca, NET, Role::Client, "mallory", now);
        let store = store(&ca, false);
        let proof = sign_seqno(&dest_key, &dest.identity, 7).unwrap();
        let leaf = dest.leaf().to_vec();
        assert_eq!(verify_seqno(&store, &leaf, "dest", 7, &proof, now).unwrap(), dest.identity);
        // A fresher seqno with the old proof, or a proof by someone else: forged.
        assert!(matches!(
            verify_seqno(&store, &leaf, "dest", 8, &proof, now),
            Err(Error::Forged { .. })
        ));
        let forged = sign_seqno(&mallory_key, &dest.identity, 8).unwrap();
        assert!(matches!(
            verify_seqno(&store, &leaf, "dest", 8, &forged, now),
            Err(Error::Forged { .. })
        ));
        // The certificate must be the destination's own, and from our authority.
        assert!(verify_seqno(&store, &leaf, "other", 7, &proof, now).is_err());
        let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
        let (alien, alien_key) = member(&foreign, NET, Role::Client, "dest", now);
        let alien_proof = sign_seqno(&alien_key, &alien.identity, 9).unwrap();
        assert!(matches!(
            verify_seqno(&store, alien.leaf(), "dest", 9, &alien_proof, now),
            Err(Error::UnknownIssuer)
        ));
    }
}
