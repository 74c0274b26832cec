//! The fuzz targets' properties (fuzz/), checked on every test run over deterministic
//! mutations of valid inputs: parsers refuse garbage with a message and never panic.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use genesis_trust::{
    create_csr, AuditLog, AuditRecord, CertificateAuthority, ControlEnvelope, Crl, EnvelopeSigner,
    Identity, KeyAlgorithm, LeafPolicy, PrivateKey, RevocationList, RevocationReason, Role, Scope,
    SignedEnvelope, Verb,
};

/// xorshift64*: a tiny deterministic generator, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Flips, inserts, deletes or truncates a few bytes.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            match self.below(4) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 => {
                    let i = self.below(out.len() + 1);
                    out.insert(i, self.next() as u8);
                }
                2 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out.remove(i);
                }
                _ => {
                    let len = self.below(out.len() + 1);
                    out.truncate(len);
                }
            }
        }
        out
    }
}

const ROUNDS: usize = 3000;

#[test]
fn mutated_identities_round_trip_or_are_refused_with_a_reason() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seed = b"spiffe://cluster.local/mesh/payments/client/web-7f9c.default";
    for _ in 0..ROUNDS {
        let bytes = rng.mutate(seed);
        let Ok(s) = std::str::from_utf8(&bytes) else { continue };
        match Identity::parse(s) {
            Ok(id) => assert_eq!(id.uri(), s),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn mutated_envelopes_never_verify_as_something_else() {
    let now = SystemTime::now();
    let ca = test_ca(now);
    let id = Identity::new("td", "n", Role::Operator, "op").unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = ca
        .issue_from_csr(&create_csr(&id, &key).unwrap(), &id, &LeafPolicy::default(), now)
        .unwrap();
    let signer = EnvelopeSigner::new(key, issued.chain).unwrap();
    let env = ControlEnvelope::new("n", Verb::Drain, Scope::Network, BTreeMap::new(), now).unwrap();
    let wire = signer.sign(&env).unwrap().encode();
    let mut rng = Rng(42);
    for _ in 0..ROUNDS {
        let bytes = rng.mutate(&wire);
        if let Ok(decoded) = SignedEnvelope::decode(&bytes) {
            assert_eq!(decoded.encode(), bytes, "decode/encode must round-trip exactly");
            let _ = decoded.envelope();
        }
    }
}

#[test]
fn mutated_crls_and_audit_lines_are_refused_without_panicking() {
    let now = SystemTime::now();
    let ca = test_ca(now);
    let mut list = RevocationList::default();
    let serial = genesis_trust::Serial::from_hex("1a2b3c").unwrap();
    list.revoke(&serial, RevocationReason::KeyCompromise, now);
    let crl = ca.sign_crl(&list, now, now + Duration::from_secs(3600)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    log.append("crl-applied", "crl", serde_json::json!({"number": 1}), now).unwrap();
    let line = std::fs::read_to_string(&path).unwrap();
    let mut rng = Rng(7);
    for _ in 0..ROUNDS {
        let bytes = rng.mutate(crl.der());
        if let Ok(parsed) = Crl::parse(&bytes) {
            // Anything that still parses must fail the signature check unless unchanged.
            if bytes != crl.der() {
                assert!(parsed.verify_signed_by(ca.cert_der()).is_err());
            }
        }
        let mutated = rng.mutate(line.trim_end().as_bytes());
        if let Ok(s) = std::str::from_utf8(&mutated) {
            if let Ok(rec) = AuditRecord::parse_line(s) {
                if s != line.trim_end() {
                    let _ = rec.compute_hash();
                }
            }
            let _ = genesis_trust::verify_audit(std::io::Cursor::new(s));
        }
    }
}

fn test_ca(now: SystemTime) -> CertificateAuthority {
    CertificateAuthority::generate("td", KeyAlgorithm::EcdsaP256, Duration::from_secs(86400), now)
        .unwrap()
}
