//! Test fixtures shared by the unit tests: an authority, members issued by CSR, stores.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::authority::{
    create_csr, CertificateAuthority, IssuedCertificate, KeyAlgorithm, LeafPolicy, PrivateKey,
};
use crate::identity::{Identity, Role};
use crate::verify::{TrustBundle, TrustPolicy, TrustStore};

pub(crate) const TD: &str = "cluster.local";
pub(crate) const NET: &str = "payments";

pub(crate) fn ca_for(td: &str, alg: KeyAlgorithm, now: SystemTime) -> CertificateAuthority {
    CertificateAuthority::generate(td, alg, Duration::from_secs(365 * 86400), now).unwrap()
}

pub(crate) fn ca(now: SystemTime) -> CertificateAuthority {
    ca_for(TD, KeyAlgorithm::EcdsaP256, now)
}

/// A member issued the way sidecars are: key generated here, CSR, issuance.
pub(crate) fn member(
    ca: &CertificateAuthority,
    network: &str,
    role: Role,
    node: &str,
    now: SystemTime,
) -> (IssuedCertificate, PrivateKey) {
    let id = Identity::new(ca.trust_domain(), network, role, node).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = create_csr(&id, &key).unwrap();
    (ca.issue_from_csr(&csr, &id, &LeafPolicy::default(), now).unwrap(), key)
}

pub(crate) fn store(ca: &CertificateAuthority, require_fresh_crl: bool) -> Arc<TrustStore> {
    let bundle = TrustBundle::new(vec![ca.cert_der().clone()]).unwrap();
    Arc::new(TrustStore::new(
        TrustPolicy {
            trust_domain: ca.trust_domain().to_owned(),
            network: Some(NET.to_owned()),
            require_fresh_crl,
        },
        bundle,
    ))
}

pub(crate) fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}
