//! A network's genesis document: the sidecar configuration the operator renders for one
//! MeshNetwork (routing, discovery, RBAC policy, allowed ports, anchors), signed with the key of
//! the network's authority. Sidecars verify it against their trust bundle before they use it,
//! so a configuration someone edited in its ConfigMap is refused, not obeyed.
//!
//! The signature covers a domain-separation prefix and the document's exact bytes (the
//! document travels as a string, so no re-serialisation can change what was signed).

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use webpki::EndEntityCert;

use crate::authority::CertificateAuthority;
use crate::cert::fingerprint;
use crate::error::{Error, Result};

/// Keeps a genesis signature from being valid as any other signed message of the mesh.
const SIGNING_CONTEXT: &[u8] = b"genesis-mesh genesis document v1\0";

/// A document and the authority's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedDocument {
    /// The configuration, as signed (JSON).
    pub document: String,
    /// SHA-256 fingerprint of the root whose key signed it.
    pub signer: String,
    /// The signature (hex; ECDSA signatures are ASN.1 DER).
    pub signature: String,
}

impl SignedDocument {
    /// Signs `document` with the CA's key.
    pub fn sign(ca: &CertificateAuthority, document: String) -> Result<Self> {
        let signature = ca.sign(&[SIGNING_CONTEXT, document.as_bytes()].concat())?;
        Ok(SignedDocument { document, signer: ca.fingerprint(), signature: hex::encode(signature) })
    }

    /// The document, if one of `roots` signed it; otherwise an error that says what is wrong.
    pub fn verify(&self, roots: &[CertificateDer<'_>]) -> Result<&str> {
        let Some(root) = roots.iter().find(|r| fingerprint(r) == self.signer) else {
            return Err(Error::GenesisRefused {
                reason: format!(
                    "it names signer {}, which is not a root of the trust bundle",
                    short(&self.signer)
                ),
            });
        };
        let signature = hex::decode(&self.signature)
            .map_err(|_| Error::GenesisRefused { reason: "its signature is not hex".into() })?;
        let cert = EndEntityCert::try_from(root)
            .map_err(|e| Error::InvalidCertificate { reason: format!("{e:?}") })?;
        let msg = [SIGNING_CONTEXT, self.document.as_bytes()].concat();
        let algs: [&dyn rustls_pki_types::SignatureVerificationAlgorithm; 2] =
            [webpki::ring::ECDSA_P256_SHA256, webpki::ring::ED25519];
        if algs.iter().any(|alg| cert.verify_signature(*alg, &msg, &signature).is_ok()) {
            Ok(&self.document)
        } else {
            Err(Error::GenesisRefused {
                reason: format!(
                    "the signature of {} does not match the document (was it edited?)",
                    short(&self.signer)
                ),
            })
        }
    }
}

fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::authority::KeyAlgorithm;

    fn ca(alg: KeyAlgorithm) -> CertificateAuthority {
        let day = Duration::from_secs(86_400);
        CertificateAuthority::generate("prod.example", alg, day, SystemTime::now()).unwrap()
    }

    #[test]
    fn a_signed_document_verifies_and_any_edit_is_refused() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            let ca = ca(alg);
            let doc = SignedDocument::sign(&ca, r#"{"maxHops":16}"#.into()).unwrap();
            let roots = [ca.cert_der().clone()];
            assert_eq!(doc.verify(&roots).unwrap(), r#"{"maxHops":16}"#);

            let mut edited = doc.clone();
            edited.document = r#"{"maxHops":64}"#.into();
            let e = edited.verify(&roots).unwrap_err().to_string();
            assert!(e.contains("does not match the document"), "{e}");
        }
    }

    #[test]
    fn a_document_signed_by_another_authority_is_refused() {
        let ours = ca(KeyAlgorithm::EcdsaP256);
        let theirs = ca(KeyAlgorithm::EcdsaP256);
        let doc = SignedDocument::sign(&theirs, "{}".into()).unwrap();
        let e = doc.verify(&[ours.cert_der().clone()]).unwrap_err().to_string();
        assert!(e.contains("not a root of the trust bundle"), "{e}");
        // Claiming our fingerprint does not help: the signature is checked with our key.
        let forged = SignedDocument { signer: ours.fingerprint(), ..doc };
        let e = forged.verify(&[ours.cert_der().clone()]).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
