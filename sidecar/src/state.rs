//! The member's state directory (`--state-dir`): its key and certificate chain, so a restarted
//! member renews with them over mutual TLS instead of spending a new join token. In a cluster
//! the projected ServiceAccount token already allows a restart; this is for local mode, and
//! for pods that want to keep their identity across container restarts (an emptyDir).
//!
//! The key is written with mode 0600 in a directory of mode 0700, through a temporary file and
//! a rename, so a crash never leaves half a key. A key file others can read is refused, as ssh
//! refuses one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use genesis_trust::{certs_from_pem, certs_to_pem, CertInfo, Identity, PrivateKey};
use rustls::pki_types::CertificateDer;

const KEY_FILE: &str = "key.pem";
const CHAIN_FILE: &str = "chain.pem";

/// A key and chain kept from a previous run.
pub struct Saved {
    pub key: PrivateKey,
    pub chain: Vec<CertificateDer<'static>>,
}

/// Writes `key` and `chain` into `dir` (created with mode 0700 if missing).
pub fn save(dir: &Path, key: &PrivateKey, chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("state-dir {}: {what}: {e}", dir.display());
    fs::create_dir_all(dir).map_err(|e| fail("cannot create it", e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| fail("cannot restrict it to its owner", e))?;
    write_private(&dir.join(CHAIN_FILE), certs_to_pem(chain).as_bytes())
        .map_err(|e| fail("cannot write the chain", e))?;
    write_private(&dir.join(KEY_FILE), key.to_pem().as_bytes())
        .map_err(|e| fail("cannot write the key", e))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// The key and chain in `dir` for `identity`, if there are any and the certificate is still
/// valid at `now`. `Ok(None)`: nothing usable (no files, or the certificate expired), so join
/// with a token. `Err`: files that must not be used (readable by others, another member's,
/// unreadable), with what to do.
pub fn load(dir: &Path, identity: &Identity, now: SystemTime) -> Result<Option<Saved>, String> {
    let key_path = dir.join(KEY_FILE);
    let meta = match fs::metadata(&key_path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", key_path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {mode:o}): a member's key must be private; \
             chmod 600 it, or delete the state directory to join again with a new token",
            key_path.display()
        ));
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let key = PrivateKey::from_pem(&read(KEY_FILE)?)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let chain = certs_from_pem(&read(CHAIN_FILE)?)
        .map_err(|e| format!("{}: {e}", dir.join(CHAIN_FILE).display()))?;
    let info = CertInfo::parse(&chain[0]).map_err(|e| format!("the saved certificate: {e}"))?;
    if info.identity.as_ref() != Some(identity) {
        let held = info.identity.map(|i| i.uri()).unwrap_or_else(|| "no identity".into());
        return Err(format!(
            "state-dir {} holds the certificate of {held}, not {}: give each member its own \
             state directory",
            dir.display(),
            identity.uri()
        ));
    }
    if info.not_after <= now {
        tracing::warn!(dir = %dir.display(), "the saved certificate expired; joining with the token");
        return Ok(None);
    }
    Ok(Some(Saved { key, chain }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use genesis_trust::{CertificateAuthority, KeyAlgorithm, LeafPolicy, Role};
    use std::time::Duration;

    fn issued(node: &str, now: SystemTime) -> (Identity, PrivateKey, Vec<CertificateDer<'static>>) {
        let ca = CertificateAuthority::generate(
            "test.local",
            KeyAlgorithm::EcdsaP256,
            Duration::from_secs(86400),
            now,
        )
        .unwrap();
        let id = Identity::new("test.local", "net", Role::Client, node).unwrap();
        let (cert, key) = ca
            .issue_with_generated_key(&id, KeyAlgorithm::EcdsaP256, &LeafPolicy::default(), now)
            .unwrap();
        (id, key, cert.chain)
    }

    #[test]
    fn a_saved_identity_comes_back_private_and_only_for_its_member() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("m1");
        let (id, key, chain) = issued("m1", now);
        assert!(load(&state, &id, now).unwrap().is_none(), "nothing saved yet");
        save(&state, &key, &chain).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        let back = load(&state, &id, now).unwrap().unwrap();
        assert_eq!(back.chain, chain);
        assert_eq!(back.key.to_pem(), key.to_pem());

        // Another member's directory is refused, naming both.
        let other = Identity::new("test.local", "net", Role::Client, "m2").unwrap();
        let e = load(&state, &other, now).err().unwrap();
        assert!(e.contains("/m1") && e.contains("/m2"), "{e}");
        // Expired: join with the token instead.
        let later = now + Duration::from_secs(400 * 86400);
        assert!(load(&state, &id, later).unwrap().is_none());
        // A key others can read is refused.
        fs::set_permissions(state.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&state, &id, now).err().unwrap();
        assert!(e.contains("readable by others") && e.contains("chmod 600"), "{e}");
    }
}
