use genesis_trust::{create_csr, PrivateKey};

use super::*;

fn authority(dir: &Path) -> LocalAuthority {
    LocalAuthority::open_or_create(dir, AuthorityConfig::default()).unwrap()
}

fn csr_for(id: &Identity) -> Vec<u8> {
    create_csr(id, &PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap()).unwrap()
}

#[test]
fn a_join_token_is_spent_once_and_entitles_to_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let token = a.create_token("node-1", Role::Anchor).unwrap();
    assert!(
        matches!(a.spend_token("node-1", "wrong"), Err(Error::Unauthenticated(m)) if m.contains("wrong join token"))
    );
    let id = a.spend_token("node-1", &token).unwrap();
    assert_eq!(id.role(), Role::Anchor);
    assert_eq!(id.uri(), "spiffe://demo.local/mesh/demo/anchor/node-1");
    assert!(
        matches!(a.spend_token("node-1", &token), Err(Error::Unauthenticated(m)) if m.contains("already spent"))
    );
    assert!(
        a.spend_token("../ca", &token).is_err(),
        "node names are validated before touching files"
    );
    // Only the token's hash is on disk.
    let files: Vec<_> = fs::read_dir(dir.path().join("tokens")).unwrap().collect();
    assert!(files.is_empty());
    let token2 = a.create_token("node-2", Role::Client).unwrap();
    let on_disk = fs::read_to_string(dir.path().join("tokens/node-2.json")).unwrap();
    assert!(!on_disk.contains(&token2));
}

#[test]
fn reopening_keeps_the_ca_settings_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let first = authority(dir.path());
    let id = Identity::new("demo.local", "demo", Role::Client, "web").unwrap();
    let issued = first.issue(&csr_for(&id), &id).unwrap();
    let crl = first.revoke_node("web", RevocationReason::KeyCompromise).unwrap().unwrap();
    assert_eq!(crl.number(), 1);
    assert!(crl.is_revoked(&issued.serial));
    assert!(
        first.revoke_node("web", RevocationReason::KeyCompromise).unwrap().is_none(),
        "already revoked"
    );
    let other =
        AuthorityConfig { trust_domain: "ignored.local".into(), ..AuthorityConfig::default() };
    let second = LocalAuthority::open_or_create(dir.path(), other).unwrap();
    assert_eq!(second.ca().fingerprint(), first.ca().fingerprint());
    assert_eq!(second.config().trust_domain, "demo.local");
    assert_eq!(second.current_crl().unwrap().number(), 1);
    assert_eq!(second.issued().unwrap().len(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "CA key must be owner-only");
    }
}

#[test]
fn corrupt_state_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    authority(dir.path());
    fs::write(dir.path().join("revocations.json"), "{not json").unwrap();
    let a = authority(dir.path());
    assert!(
        matches!(a.revocations(), Err(Error::Corrupt { path, .. }) if path.ends_with("revocations.json"))
    );
}

#[test]
fn token_and_revoke_tools_never_create_an_authority() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalAuthority::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("holds no authority yet"), "{err}");
    assert!(!dir.path().join("ca.crt").exists());
    let created = authority(dir.path());
    assert_eq!(
        LocalAuthority::open(dir.path()).unwrap().ca().fingerprint(),
        created.ca().fingerprint()
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

/// Members join at once: concurrent issuances must leave one readable record each (the
/// record and its newline used to be two writes, and interleaved).
#[test]
fn concurrent_issuances_leave_one_readable_record_each() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let cfg = a.config().clone();
    std::thread::scope(|s| {
        for t in 0..8 {
            let a = &a;
            let cfg = &cfg;
            s.spawn(move || {
                for i in 0..25 {
                    let node = format!("n{t}-{i}");
                    let id = Identity::new(&cfg.trust_domain, &cfg.network, Role::Client, &node)
                        .unwrap();
                    a.issue(&csr_for(&id), &id).unwrap();
                }
            });
        }
    });
    assert_eq!(a.issued().unwrap().len(), 200);
}

fn client(a: &LocalAuthority, node: &str) -> Identity {
    let cfg = a.config();
    Identity::new(&cfg.trust_domain, &cfg.network, Role::Client, node).unwrap()
}

/// Concurrent revokes, each from its own process-like handle on the directory (as
/// `genesis-operator local revoke` runs twice at once): none is lost, each gets its own CRL
/// number. Without the state lock, 7 of 16 went missing.
#[test]
fn concurrent_revokes_lose_no_node_and_never_share_a_crl_number() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let mut serials = BTreeMap::new();
    for i in 0..16 {
        let id = client(&a, &format!("n{i}"));
        serials.insert(format!("n{i}"), a.issue(&csr_for(&id), &id).unwrap().serial);
    }
    let numbers = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for pair in 0..8 {
            for node in [format!("n{}", 2 * pair), format!("n{}", 2 * pair + 1)] {
                let (path, numbers) = (dir.path(), &numbers);
                s.spawn(move || {
                    let own = LocalAuthority::open(path).unwrap();
                    let crl = own.revoke_node(&node, RevocationReason::KeyCompromise).unwrap();
                    numbers.lock().unwrap().push(crl.unwrap().number());
                });
            }
        }
    });
    let crl = a.current_crl().unwrap();
    let missing: Vec<&String> =
        serials.iter().filter(|(_, s)| !crl.is_revoked(s)).map(|(n, _)| n).collect();
    assert!(missing.is_empty(), "missing from the CRL: {missing:?}");
    assert_eq!(crl.number(), 16);
    let mut numbers = numbers.into_inner().unwrap();
    numbers.sort();
    assert_eq!(numbers, (1..=16).collect::<Vec<u64>>(), "each revoke signs its own CRL");
    assert_eq!(a.revoked_nodes().unwrap().len(), 16);
    for i in 0..16 {
        let id = client(&a, &format!("n{i}"));
        assert!(matches!(a.issue(&csr_for(&id), &id), Err(Error::Revoked(_))));
    }
}

/// A member that keeps renewing while it is revoked: every serial it was ever issued is on
/// the CRL when the revoke returns, and it is issued nothing afterwards (it used to get a
/// fresh serial that no CRL listed, 12 times in 12).
#[test]
fn a_member_renewing_in_a_loop_cannot_outrun_its_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    let id = client(&a, "m16");
    a.issue(&csr_for(&id), &id).unwrap();
    let revoked = std::sync::atomic::AtomicBool::new(false);
    let after = std::thread::scope(|s| {
        let renewer = s.spawn(|| {
            let own = LocalAuthority::open(dir.path()).unwrap();
            let mut issued_after_revoke = Vec::new();
            loop {
                let done = revoked.load(std::sync::atomic::Ordering::SeqCst);
                match own.issue(&csr_for(&id), &id) {
                    Ok(c) if done => issued_after_revoke.push(c.serial),
                    Ok(_) => {}
                    Err(Error::Revoked(m)) => {
                        assert!(m.contains("local unrevoke"), "{m}");
                        return issued_after_revoke;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let own = LocalAuthority::open(dir.path()).unwrap();
        own.revoke_node("m16", RevocationReason::KeyCompromise).unwrap();
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        renewer.join().unwrap()
    });
    assert!(after.is_empty(), "issued after the revoke returned: {after:?}");
    let crl = a.current_crl().unwrap();
    let issued = a.issued().unwrap();
    assert!(issued.len() > 2, "the renewer ran: {} issuances", issued.len());
    for rec in &issued {
        assert!(crl.is_revoked(&Serial::from_hex(&rec.serial).unwrap()), "{} unlisted", rec.serial);
    }
}

#[test]
fn a_revoked_node_keeps_its_token_unspent_until_it_is_unrevoked() {
    let dir = tempfile::tempdir().unwrap();
    let a = authority(dir.path());
    // Revoked before it ever joined: the CRL has nothing to list, the identity is refused.
    assert!(a.revoke_node("late", RevocationReason::KeyCompromise).unwrap().is_none());
    let token = a.create_token("late", Role::Client).unwrap();
    let refused = a.spend_token("late", &token).unwrap_err();
    assert!(matches!(&refused, Error::Revoked(m) if m.contains("late")), "{refused}");
    assert!(a.unrevoke_node("late").unwrap());
    assert!(!a.unrevoke_node("late").unwrap(), "not revoked any more");
    let id = a.spend_token("late", &token).unwrap();
    a.issue(&csr_for(&id), &id).unwrap();
}
