use std::time::SystemTime;

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;
use crate::authority::{CertificateAuthority, IssuedCertificate, KeyAlgorithm, PrivateKey};
use crate::crl::{RevocationList, RevocationReason};
use crate::fixtures::{ca, ca_for, hours, member, store, NET, TD};
use crate::identity::Role;

fn crl(ca: &CertificateAuthority, list: &RevocationList, now: SystemTime) -> Crl {
    ca.sign_crl(list, now, now + hours(12)).unwrap()
}

#[test]
fn member_of_the_network_verifies_with_its_identity() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (leaf, _) = member(&ca, NET, Role::Anchor, "anchor-0", now);
    let peer = store(&ca, false).verify(&leaf.chain, now, PeerRole::Server).unwrap();
    assert_eq!(peer.identity, leaf.identity);
    assert_eq!(peer.serial, leaf.serial);
    assert_eq!(peer.fingerprint, leaf.fingerprint);
    // The leaf alone (without the CA in the chain) verifies too.
    store(&ca, false).verify(&leaf.chain[..1], now, PeerRole::Client).unwrap();
}

#[test]
fn each_kind_of_bad_peer_is_refused_with_its_own_error() {
    let now = SystemTime::now();
    let ca = ca(now);
    let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
    let (good, _) = member(&ca, NET, Role::Client, "good", now);
    let (alien, _) = member(&foreign, NET, Role::Client, "alien", now);
    let (other_net, _) = member(&ca, "billing", Role::Client, "x", now);
    let store = store(&ca, false);
    let check = |chain: &[CertificateDer<'_>], at| store.verify(chain, at, PeerRole::Client);

    assert!(matches!(check(&alien.chain, now), Err(Error::UnknownIssuer)));
    assert!(matches!(check(&alien.chain[..1], now), Err(Error::UnknownIssuer)));
    assert!(matches!(check(&good.chain, now + hours(25)), Err(Error::Expired { .. })));
    assert!(matches!(check(&good.chain, now - hours(1)), Err(Error::NotYetValid { .. })));
    assert!(matches!(
        check(&other_net.chain, now),
        Err(Error::WrongNetwork { expected, found }) if expected == NET && found == "billing"
    ));
    assert!(matches!(check(&[], now), Err(Error::ChainRejected { .. })));
    assert!(matches!(
        check(&[CertificateDer::from(b"garbage".to_vec())], now),
        Err(Error::InvalidCertificate { .. })
    ));
    let truncated = CertificateDer::from(good.leaf()[..good.leaf().len() - 10].to_vec());
    assert!(matches!(check(&[truncated], now), Err(Error::InvalidCertificate { .. })));
    // The CA itself is not a member.
    assert!(check(&[ca.cert_der().clone()], now).is_err());
}

#[test]
fn identity_from_another_trust_domain_is_refused_even_if_its_root_is_trusted() {
    let now = SystemTime::now();
    let ours = ca(now);
    let theirs = ca_for("other.local", KeyAlgorithm::EcdsaP256, now);
    let (leaf, _) = member(&theirs, NET, Role::Client, "x", now);
    let bundle =
        TrustBundle::new(vec![ours.cert_der().clone(), theirs.cert_der().clone()]).unwrap();
    let s = store(&ours, false);
    s.set_bundle(bundle).unwrap();
    assert!(matches!(
        s.verify(&leaf.chain, now, PeerRole::Client),
        Err(Error::WrongTrustDomain { found, .. }) if found == "other.local"
    ));
}

#[test]
fn revoked_member_is_refused_and_others_are_not() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (bad, _) = member(&ca, NET, Role::Client, "bad", now);
    let (good, _) = member(&ca, NET, Role::Client, "good", now);
    let store = store(&ca, false);
    let mut list = RevocationList::default();
    list.revoke(&bad.serial, RevocationReason::KeyCompromise, now);
    let update = store.install_crl(&crl(&ca, &list, now), now).unwrap();
    assert_eq!(
        update,
        CrlUpdate { number: 1, previous: None, newly_revoked: vec![bad.serial.clone()] }
    );
    assert!(matches!(
        store.verify(&bad.chain, now, PeerRole::Client),
        Err(Error::Revoked { serial, crl_number: 1 }) if serial == bad.serial.to_string()
    ));
    store.verify(&good.chain, now, PeerRole::Client).unwrap();
}

#[test]
fn older_foreign_expired_or_garbage_crls_change_nothing() {
    let now = SystemTime::now();
    let ca = ca(now);
    let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
    let (bad, _) = member(&ca, NET, Role::Client, "bad", now);
    let store = store(&ca, false);
    let mut list = RevocationList::default();
    let crl1 = crl(&ca, &list, now);
    list.revoke(&bad.serial, RevocationReason::KeyCompromise, now);
    let crl2 = crl(&ca, &list, now);
    store.install_crl(&crl2, now).unwrap();

    assert!(matches!(
        store.install_crl(&crl1, now),
        Err(Error::CrlNotNewer { current: 1, offered: 0 })
    ));
    assert!(matches!(
        store.install_crl(&crl2, now),
        Err(Error::CrlNotNewer { current: 1, offered: 1 })
    ));
    let mut their_list = RevocationList { number: 99, ..Default::default() };
    their_list.number += 1;
    let theirs = crl(&foreign, &their_list, now);
    assert!(matches!(store.install_crl(&theirs, now), Err(Error::CrlSignature { .. })));
    let expired = ca
        .sign_crl(
            &RevocationList { number: 50, ..Default::default() },
            now - hours(2),
            now - hours(1),
        )
        .unwrap();
    assert!(matches!(store.install_crl(&expired, now), Err(Error::CrlExpired { number: 50, .. })));
    // The last good CRL is still in force: the revoked member stays revoked.
    assert_eq!(store.crl_number(), Some(1));
    assert!(matches!(store.verify(&bad.chain, now, PeerRole::Client), Err(Error::Revoked { .. })));
}

#[test]
fn unknown_revocation_status_fails_closed_when_required() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (good, _) = member(&ca, NET, Role::Client, "good", now);
    let store = store(&ca, true);
    assert!(matches!(
        store.verify(&good.chain, now, PeerRole::Client),
        Err(Error::CrlStale { reason }) if reason.contains("no CRL")
    ));
    store
        .install_crl(&ca.sign_crl(&RevocationList::default(), now, now + hours(1)).unwrap(), now)
        .unwrap();
    store.verify(&good.chain, now, PeerRole::Client).unwrap();
    assert!(matches!(
        store.verify(&good.chain, now + hours(2), PeerRole::Client),
        Err(Error::CrlStale { reason }) if reason.contains("expired")
    ));
}

#[test]
fn rotation_bundle_accepts_both_roots_until_the_old_one_is_removed() {
    let now = SystemTime::now();
    let old = ca(now);
    let new = ca(now);
    let (on_old, _) = member(&old, NET, Role::Client, "a", now);
    let (on_new, _) = member(&new, NET, Role::Client, "b", now);
    let store = store(&old, false);
    store
        .set_bundle(TrustBundle::new(vec![old.cert_der().clone(), new.cert_der().clone()]).unwrap())
        .unwrap();
    store.verify(&on_old.chain, now, PeerRole::Client).unwrap();
    store.verify(&on_new.chain, now, PeerRole::Client).unwrap();
    // Each root has its own CRL, tracked separately.
    store
        .install_crl(&crl(&old, &RevocationList { number: 3, ..Default::default() }, now), now)
        .unwrap();
    store
        .install_crl(&crl(&new, &RevocationList { number: 1, ..Default::default() }, now), now)
        .unwrap();
    assert_eq!(store.crls().len(), 2);
    store.set_bundle(TrustBundle::new(vec![new.cert_der().clone()]).unwrap()).unwrap();
    assert!(matches!(
        store.verify(&on_old.chain, now, PeerRole::Client),
        Err(Error::UnknownIssuer)
    ));
    store.verify(&on_new.chain, now, PeerRole::Client).unwrap();
    assert_eq!(store.crl_number(), Some(1), "the retired root's CRL is dropped with it");
}

#[test]
fn bundle_refuses_empty_non_ca_and_oversized_inputs() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (leaf, _) = member(&ca, NET, Role::Client, "a", now);
    assert!(matches!(TrustBundle::new(vec![]), Err(Error::InvalidBundle { .. })));
    assert!(matches!(
        TrustBundle::new(vec![leaf.leaf().clone()]),
        Err(Error::InvalidBundle { .. })
    ));
    assert!(matches!(
        TrustBundle::new(vec![ca.cert_der().clone(); MAX_ROOTS + 1]),
        Err(Error::InvalidBundle { .. })
    ));
    assert!(matches!(TrustBundle::from_pem("no pem here"), Err(Error::InvalidPem { .. })));
    let pem = ca.cert_pem();
    assert_eq!(TrustBundle::from_pem(&pem).unwrap().to_pem(), pem);
}

#[test]
fn live_link_recheck_notices_revocation_and_expiry() {
    let now = SystemTime::now();
    let ca = ca(now);
    let (peer_cert, _) = member(&ca, NET, Role::Client, "p", now);
    let store = store(&ca, false);
    let peer = store.verify(&peer_cert.chain, now, PeerRole::Client).unwrap();
    store.check_still_valid(&peer, now).unwrap();
    assert!(matches!(store.check_still_valid(&peer, now + hours(30)), Err(Error::Expired { .. })));
    let mut list = RevocationList::default();
    list.revoke(&peer.serial, RevocationReason::Unspecified, now);
    store.install_crl(&crl(&ca, &list, now), now).unwrap();
    assert!(matches!(store.check_still_valid(&peer, now), Err(Error::Revoked { .. })));
}

fn tls_configs(
    store: &Arc<TrustStore>,
    server: &(IssuedCertificate, PrivateKey),
    client: &(IssuedCertificate, PrivateKey),
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let sc =
        crate::tls::peer_server_config(store.clone(), server.0.chain.clone(), &server.1).unwrap();
    let cc =
        crate::tls::peer_client_config(store.clone(), client.0.chain.clone(), &client.1).unwrap();
    (Arc::new(sc), Arc::new(cc))
}

/// Runs a full TLS handshake in memory; returns the server's error if it refused.
fn handshake(
    sc: &Arc<ServerConfig>,
    cc: &Arc<ClientConfig>,
) -> std::result::Result<ServerConnection, rustls::Error> {
    let mut server = ServerConnection::new(sc.clone()).unwrap();
    let mut client =
        ClientConnection::new(cc.clone(), ServerName::try_from("peer.invalid").unwrap()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !server.is_handshaking() && !client.is_handshaking() {
            return Ok(server);
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn rustls_mutual_tls_uses_the_store_and_a_new_crl_applies_without_a_new_config() {
    let now = SystemTime::now();
    let ca = ca(now);
    let server = member(&ca, NET, Role::Anchor, "anchor-0", now);
    let client = member(&ca, NET, Role::Client, "web-1", now);
    let store = store(&ca, false);
    let (sc, cc) = tls_configs(&store, &server, &client);
    let conn = handshake(&sc, &cc).expect("members complete a mutual TLS handshake");
    // A second connection is a full handshake again (no resumption that would skip checks).
    handshake(&sc, &cc).expect("second handshake");
    assert_eq!(conn.alpn_protocol(), Some(&b"genesis/1"[..]));
    let presented = conn.peer_certificates().unwrap();
    assert_eq!(CertInfo::require_identity(&presented[0]).unwrap(), client.0.identity);

    // Revoke the client: the same Arc<ServerConfig> now refuses it.
    let mut list = RevocationList::default();
    list.revoke(&client.0.serial, RevocationReason::KeyCompromise, now);
    store.install_crl(&crl(&ca, &list, now), now).unwrap();
    let err = handshake(&sc, &cc).unwrap_err();
    assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::Revoked));

    // A client from a foreign CA is refused too.
    let foreign = ca_for(TD, KeyAlgorithm::EcdsaP256, now);
    let alien = member(&foreign, NET, Role::Client, "alien", now);
    let (_, alien_cc) = tls_configs(&store, &server, &alien);
    let err = handshake(&sc, &alien_cc).unwrap_err();
    assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
}
