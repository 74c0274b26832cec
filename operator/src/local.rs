//! The file-backed Network Authority of local mode (`genesis-operator local --dir D`).
//!
//! Layout of `D` (written with owner-only permissions where it holds secrets):
//!
//! | file | what |
//! |---|---|
//! | `authority.json` | trust domain, network, certificate lifetime |
//! | `ca.crt`, `ca.key` | the CA (the key is 0600) |
//! | `revocations.json` | the revocation list (what the next CRL says) and the revoked nodes |
//! | `crl.der` | the newest signed CRL |
//! | `issued.jsonl` | one line per issued certificate: serial, identity, notAfter |
//! | `tokens/<node>.json` | a one-time join token (0600), deleted when spent |
//! | `identity-service.addr` | where the running service listens |
//! | `authority.lock` | held (flock) by whoever reads and writes the files above |
//!
//! Every change of state (issue, revoke, un-revoke, re-sign, spend a token) happens under one
//! exclusive lock on `authority.lock`, whichever process makes it: the identity service,
//! `genesis-operator local revoke`, `genesisctl revoke`. Unlocked, two concurrent revokes
//! each read the list, added their node and wrote it back, and one of the two was lost.
//!
//! Revocation binds the identity, not a snapshot of serials: a revoked node is recorded as
//! such and is never issued a certificate again until it is un-revoked, and since issuing
//! takes the same lock, a renewal racing the revocation either finishes first (its serial is
//! in `issued.jsonl` and goes on the CRL) or is refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use genesis_trust::{
    CertificateAuthority, Crl, Identity, IssuedCertificate, KeyAlgorithm, LeafPolicy,
    RevocationList, RevocationReason, Role, Serial,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// How long a local CA lives.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);

/// The authority's settings, persisted in `authority.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorityConfig {
    pub trust_domain: String,
    pub network: String,
    /// Leaf lifetime in seconds.
    pub cert_duration_secs: u64,
    /// CRL validity in seconds.
    pub crl_validity_secs: u64,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            trust_domain: "demo.local".into(),
            network: "demo".into(),
            cert_duration_secs: 24 * 3600,
            crl_validity_secs: 12 * 3600,
        }
    }
}

/// A join token as stored on disk: only its hash, so a read of the directory does not leak it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenFile {
    sha256: String,
    role: Role,
}

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedRecord {
    pub serial: String,
    pub identity: String,
    pub not_after: u64,
    pub issued_at: u64,
}

/// A node revoked as an identity: refused every certificate until un-revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedNode {
    /// Unix seconds.
    pub revoked_at: u64,
    pub reason: RevocationReason,
}

/// What `revocations.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Revocations {
    #[serde(flatten)]
    list: RevocationList,
    #[serde(default)]
    revoked_nodes: BTreeMap<String, RevokedNode>,
}

/// The exclusive lock on the authority's state; released when dropped.
struct StateLock(#[allow(dead_code)] fs::File);

/// The file-backed authority.
#[derive(Debug)]
pub struct LocalAuthority {
    dir: PathBuf,
    config: AuthorityConfig,
    ca: CertificateAuthority,
}

impl LocalAuthority {
    /// Opens the authority in `dir`, creating CA, revocation list and first CRL if absent.
    /// `config` is used only when creating; an existing directory keeps its own settings.
    /// `authority.json` is written last, so its presence means the authority is complete.
    pub fn open_or_create(dir: &Path, config: AuthorityConfig) -> Result<Self> {
        if dir.join("authority.json").exists() {
            return Self::open(dir);
        }
        fs::create_dir_all(dir.join("tokens")).map_err(|e| Error::io("create", dir, e))?;
        let ca = CertificateAuthority::generate(
            &config.trust_domain,
            KeyAlgorithm::EcdsaP256,
            CA_VALIDITY,
            SystemTime::now(),
        )?;
        write_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), true)?;
        write_file(&dir.join("ca.crt"), ca.cert_pem().as_bytes(), false)?;
        let authority = LocalAuthority { dir: dir.to_owned(), config, ca };
        authority.sign_and_write(&Revocations::default())?;
        write_json(&dir.join("authority.json"), &authority.config, false)?;
        Ok(authority)
    }

    /// Opens an existing authority; never creates one (for `token`, `revoke` and tests that
    /// run beside a serving authority).
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("authority.json");
        if !config_path.exists() {
            return Err(Error::Config(format!(
                "{} holds no authority yet; start one with `genesis-operator local --dir {}`",
                dir.display(),
                dir.display()
            )));
        }
        let config: AuthorityConfig = read_json(&config_path)?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let cert_pem = fs::read_to_string(&crt).map_err(|e| Error::io("read", &crt, e))?;
        let key_pem = fs::read_to_string(&key).map_err(|e| Error::io("read", &key, e))?;
        let ca = CertificateAuthority::from_pem(&config.trust_domain, &cert_pem, &key_pem)?;
        Ok(LocalAuthority { dir: dir.to_owned(), config, ca })
    }

    /// The settings.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// The CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a one-time join token for `node` and returns it (printed once, stored hashed).
    pub fn create_token(&self, node: &str, role: Role) -> Result<String> {
        Identity::new(&self.config.trust_domain, &self.config.network, role, node)?;
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| Error::Config("system random number generator failed".into()))?;
        let token = hex::encode(raw);
        let file = TokenFile { sha256: hash_token(&token), role };
        write_json(&self.token_path(node)?, &file, true)?;
        Ok(token)
    }

    /// Checks and spends `node`'s token; returns the identity it entitles to. A revoked node's
    /// token is refused and left unspent.
    pub fn spend_token(&self, node: &str, token: &str) -> Result<Identity> {
        let path = self.token_path(node)?;
        let _lock = self.lock()?;
        self.refuse_revoked(&self.read_revocations()?, node)?;
        let file: TokenFile = match read_json(&path) {
            Ok(f) => f,
            Err(_) => {
                return Err(Error::Unauthenticated(format!(
                    "no join token for node {node:?}: it was never created or is already spent \
                     (create one with `genesis-operator local token --dir {} --node {node} \
                     [--role anchor|client|operator|admin]`)",
                    self.dir.display()
                )))
            }
        };
        // NB: comparing hashes keeps the comparison's timing independent of the secret.
        if hash_token(token) != file.sha256 {
            return Err(Error::Unauthenticated(format!("wrong join token for node {node:?}")));
        }
        fs::remove_file(&path).map_err(|e| Error::io("spend", &path, e))?;
        Ok(Identity::new(&self.config.trust_domain, &self.config.network, file.role, node)?)
    }

    /// The leaf policy from the settings.
    pub fn leaf_policy(&self) -> LeafPolicy {
        LeafPolicy {
            duration: Duration::from_secs(self.config.cert_duration_secs),
            renew_before: None,
        }
    }

    /// Issues from a CSR and records the serial, unless the node is revoked. Under the state
    /// lock, so a revocation sees every serial issued before it and no issuance after it.
    pub fn issue(&self, csr: &[u8], identity: &Identity) -> Result<IssuedCertificate> {
        let _lock = self.lock()?;
        self.refuse_revoked(&self.read_revocations()?, identity.node())?;
        let issued =
            self.ca.issue_from_csr(csr, identity, &self.leaf_policy(), SystemTime::now())?;
        let record = IssuedRecord {
            serial: issued.serial.to_string(),
            identity: identity.uri(),
            not_after: unix(issued.not_after),
            issued_at: unix(SystemTime::now()),
        };
        let path = self.dir.join("issued.jsonl");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let line = serde_json::to_string(&record).expect("record serializes") + "\n";
        // NB: one write of the whole line, so a reader without the lock never sees half a
        // record followed by another.
        f.write_all(line.as_bytes()).map_err(|e| Error::io("append to", &path, e))?;
        f.sync_data().map_err(|e| Error::io("sync", &path, e))?;
        Ok(issued)
    }

    fn refuse_revoked(&self, state: &Revocations, node: &str) -> Result<()> {
        match state.revoked_nodes.get(node) {
            Some(r) => Err(Error::Revoked(format!(
                "node {node:?} was revoked ({:?}, at unix time {}) and is issued no certificate \
                 until it is un-revoked: `genesis-operator local unrevoke --dir {} --node {node}`",
                r.reason,
                r.revoked_at,
                self.dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// Every certificate issued so far.
    pub fn issued(&self) -> Result<Vec<IssuedRecord>> {
        let path = self.dir.join("issued.jsonl");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| Error::Corrupt { path: path.clone(), reason: e.to_string() })
            })
            .collect()
    }

    /// The revocation list on disk (what the current CRL says).
    pub fn revocations(&self) -> Result<RevocationList> {
        Ok(self.read_revocations()?.list)
    }

    /// The nodes revoked as identities, with when and why.
    pub fn revoked_nodes(&self) -> Result<BTreeMap<String, RevokedNode>> {
        Ok(self.read_revocations()?.revoked_nodes)
    }

    fn read_revocations(&self) -> Result<Revocations> {
        let path = self.dir.join("revocations.json");
        if !path.exists() {
            return Ok(Revocations::default());
        }
        read_json(&path)
    }

    /// Revokes `node` as an identity: every certificate issued to it goes on the CRL, and it
    /// is issued none again until [`LocalAuthority::unrevoke_node`]. Returns the new CRL, or
    /// `None` if the CRL did not change (already revoked, or never issued a certificate: the
    /// node is refused one all the same).
    pub fn revoke_node(&self, node: &str, reason: RevocationReason) -> Result<Option<Crl>> {
        let _lock = self.lock()?;
        let mut state = self.read_revocations()?;
        let now = SystemTime::now();
        let mut changed = false;
        if !state.revoked_nodes.contains_key(node) {
            state
                .revoked_nodes
                .insert(node.to_owned(), RevokedNode { revoked_at: unix(now), reason });
        }
        for rec in self.issued()? {
            let id = Identity::parse(&rec.identity)?;
            if id.node() == node {
                changed |= state.list.revoke(&Serial::from_hex(&rec.serial)?, reason, now);
            }
        }
        if !changed {
            write_json(&self.dir.join("revocations.json"), &state, false)?;
            return Ok(None);
        }
        self.sign_and_write(&state).map(Some)
    }

    /// Lets a revoked node be issued certificates again (a revocation made in error). The
    /// serials it held stay on the CRL: their keys may be compromised, and a new join token
    /// gives it a new certificate. Returns whether the node was revoked.
    pub fn unrevoke_node(&self, node: &str) -> Result<bool> {
        let _lock = self.lock()?;
        let mut state = self.read_revocations()?;
        let was = state.revoked_nodes.remove(node).is_some();
        if was {
            write_json(&self.dir.join("revocations.json"), &state, false)?;
        }
        Ok(was)
    }

    /// Re-signs the current list with a new number and a fresh nextUpdate, as the authority
    /// does before a CRL lapses.
    pub fn refresh_crl(&self) -> Result<Crl> {
        let _lock = self.lock()?;
        let mut state = self.read_revocations()?;
        state.list.refresh();
        self.sign_and_write(&state)
    }

    /// Signs `list` into `crl.der` and persists it (keeping the revoked nodes): for tests and
    /// tools that set a list as a whole.
    pub fn publish_crl(&self, list: &RevocationList) -> Result<Crl> {
        let _lock = self.lock()?;
        let mut state = self.read_revocations()?;
        state.list = list.clone();
        self.sign_and_write(&state)
    }

    /// Signs the state's list into `crl.der` and writes both; the caller holds the lock.
    fn sign_and_write(&self, state: &Revocations) -> Result<Crl> {
        let now = SystemTime::now();
        let crl = self.ca.sign_crl(
            &state.list,
            now - Duration::from_secs(60),
            now + Duration::from_secs(self.config.crl_validity_secs),
        )?;
        write_json(&self.dir.join("revocations.json"), state, false)?;
        write_file(&self.dir.join("crl.der"), crl.der(), false)?;
        Ok(crl)
    }

    /// Takes the exclusive lock on the authority's state (blocking until it is free).
    fn lock(&self) -> Result<StateLock> {
        let path = self.dir.join("authority.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(StateLock(file))
    }

    /// The newest signed CRL.
    pub fn current_crl(&self) -> Result<Crl> {
        let path = self.dir.join("crl.der");
        let der = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        Ok(Crl::parse(&der)?)
    }

    fn token_path(&self, node: &str) -> Result<PathBuf> {
        // The node name was validated as a DNS subdomain, so it is a safe file name.
        Identity::new(&self.config.trust_domain, &self.config.network, Role::Client, node)?;
        Ok(self.dir.join("tokens").join(format!("{node}.json")))
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Corrupt { path: path.to_owned(), reason: e.to_string() })
}

fn write_json<T: Serialize>(path: &Path, value: &T, secret: bool) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serializes");
    write_file(path, text.as_bytes(), secret)
}

/// Writes atomically (temp file + rename), owner-only when `secret`. The temporary name is
/// unique per file and process, so concurrent writers never share one.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(|e| Error::io("write", &tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

#[cfg(test)]
mod tests;
