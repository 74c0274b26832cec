//! The tamper-evident audit log: JSON lines, each record carrying the hash of the one before.
//!
//! Record `n` holds `prev` = hash of record `n-1` (64 zeros for the first) and `hash` =
//! SHA-256 of its own canonical JSON without `hash`. [`verify_audit`] recomputes the chain and
//! names the first broken record and how it broke: edited, deleted, reordered or unreadable.
//! A log rewritten wholesale is self-consistent; that is why the chain head is also exported
//! (admin API, metric) so an outside observer can notice history changing under it.

use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{rfc3339, Error, Result};

/// The `prev` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A record longer than this is refused when parsing (and never written).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 0-based position in the chain.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// What happened, e.g. `link-refused`, `crl-applied`, `control-refused`.
    pub event: String,
    /// Who it concerns (an identity URI, a serial...).
    pub subject: String,
    /// Event details (reason, rule, CRL number...).
    pub detail: serde_json::Value,
    /// Hash of the previous record.
    pub prev: String,
    /// SHA-256 of this record's canonical form without `hash`.
    pub hash: String,
}

/// The hashed part of a record, in a fixed field order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    event: &'a str,
    subject: &'a str,
    detail: &'a serde_json::Value,
    prev: &'a str,
}

impl AuditRecord {
    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let hashed = Hashed {
            seq: self.seq,
            time: &self.time,
            event: &self.event,
            subject: &self.subject,
            detail: &self.detail,
            prev: &self.prev,
        };
        // NB: serde_json sorts `Value` object keys (no preserve_order feature), so the
        // canonical form does not depend on how `detail` was built.
        let bytes = serde_json::to_vec(&hashed).expect("audit record serializes");
        hex::encode(Sha256::digest(bytes))
    }

    /// Parses one line strictly.
    pub fn parse_line(line: &str) -> std::result::Result<Self, String> {
        if line.len() > MAX_RECORD_BYTES {
            return Err(format!("record of {} bytes exceeds {MAX_RECORD_BYTES}", line.len()));
        }
        serde_json::from_str(line).map_err(|e| e.to_string())
    }
}

/// How the chain broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The line is not a valid audit record.
    Unreadable { reason: String },
    /// The record's content no longer matches its hash: it was edited.
    Edited,
    /// Records are missing before this one.
    Deleted { missing_from: u64, missing_to: u64 },
    /// The record is out of place: records were reordered (or duplicated).
    Reordered { expected_seq: u64 },
    /// The record's `prev` does not match the record before it: an earlier record was
    /// rewritten together with its hash.
    ChainMismatch,
}

/// The first broken record of an audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    /// 1-based line number in the file.
    pub line: usize,
    /// The record's `seq`, when it parsed.
    pub seq: Option<u64>,
    pub kind: BreakKind,
}

impl fmt::Display for AuditBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match self.seq {
            Some(s) => format!("line {} (record {s})", self.line),
            None => format!("line {}", self.line),
        };
        match &self.kind {
            BreakKind::Unreadable { reason } => write!(f, "{at}: unreadable record: {reason}"),
            BreakKind::Edited => write!(f, "{at}: record was edited (its hash does not match its content)"),
            BreakKind::Deleted { missing_from, missing_to } if missing_from == missing_to => {
                write!(f, "{at}: record {missing_from} was deleted before this one")
            }
            BreakKind::Deleted { missing_from, missing_to } => {
                write!(f, "{at}: records {missing_from} to {missing_to} were deleted before this one")
            }
            BreakKind::Reordered { expected_seq } => {
                write!(f, "{at}: records were reordered (record {expected_seq} belongs here)")
            }
            BreakKind::ChainMismatch => write!(
                f,
                "{at}: prev hash does not match the record before it (an earlier record was rewritten)"
            ),
        }
    }
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    pub records: u64,
    /// Hash of the last record (the chain head), or [`GENESIS_HASH`] for an empty log.
    pub head: String,
}

/// Verifies a whole log, returning its length and head, or the first broken record.
///
/// Streams: memory holds one record at a time, plus the `seq` numbers of the rest of the file
/// when a gap must be told apart (deleted records, or records moved further down).
pub fn verify_audit(reader: impl BufRead) -> std::result::Result<AuditSummary, AuditBreak> {
    let unreadable = |line: usize, reason: String| AuditBreak {
        line,
        seq: None,
        kind: BreakKind::Unreadable { reason },
    };
    let mut lines = reader.lines().enumerate();
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected = 0u64;
    while let Some((i, text)) = lines.next() {
        let line = i + 1;
        let text = text.map_err(|e| unreadable(line, e.to_string()))?;
        let rec = AuditRecord::parse_line(&text).map_err(|reason| unreadable(line, reason))?;
        let broken = |kind| AuditBreak { line, seq: Some(rec.seq), kind };
        if rec.compute_hash() != rec.hash {
            return Err(broken(BreakKind::Edited));
        }
        if rec.seq != expected {
            if rec.seq < expected {
                return Err(broken(BreakKind::Reordered { expected_seq: expected }));
            }
            // A gap: deleted if the missing records appear nowhere further down, else moved.
            let later: HashSet<u64> = lines
                .by_ref()
                .filter_map(|(_, l)| l.ok())
                .filter_map(|l| AuditRecord::parse_line(&l).ok().map(|r| r.seq))
                .collect();
            if later.contains(&expected) {
                return Err(broken(BreakKind::Reordered { expected_seq: expected }));
            }
            let mut missing_to = expected;
            while missing_to + 1 < rec.seq && !later.contains(&(missing_to + 1)) {
                missing_to += 1;
            }
            return Err(broken(BreakKind::Deleted { missing_from: expected, missing_to }));
        }
        if rec.prev != prev {
            return Err(broken(BreakKind::ChainMismatch));
        }
        prev = rec.hash;
        expected += 1;
    }
    Ok(AuditSummary { records: expected, head: prev })
}

/// Verifies the log at `path`.
pub fn verify_audit_file(path: &Path) -> Result<AuditSummary> {
    let file = File::open(path).map_err(|source| Error::AuditIo {
        action: "open",
        path: path.display().to_string(),
        source,
    })?;
    verify_audit(BufReader::new(file)).map_err(Error::AuditBroken)
}

/// A torn last line: the length of the file up to it, and its bytes. `None` when the file is
/// empty or ends with a newline.
fn torn_tail(path: &Path) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let bytes = std::fs::read(path)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(None);
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(Some((keep as u64, bytes[keep..].to_vec())))
}

/// An append-only audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    next_seq: u64,
    head: String,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. An existing log is verified first; appending to a
    /// broken chain is refused, so tampering is reported instead of buried under new records.
    ///
    /// One break is repaired: a torn last record (a crash in the middle of a write leaves a
    /// last line with no newline). Everything before it must verify; the torn bytes are cut
    /// off and a `torn-record-sealed` record, carrying their length, SHA-256 and beginning, is
    /// chained in their place, so the repair itself is on the record.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |action: &'static str| {
            move |source| Error::AuditIo { action, path: path.display().to_string(), source }
        };
        let mut torn = if path.exists() { torn_tail(path).map_err(io("read"))? } else { None };
        let summary = match &torn {
            Some((keep, _)) => {
                let bytes = std::fs::read(path).map_err(io("read"))?;
                match verify_audit(&bytes[..]) {
                    // Only the newline is missing: the record is whole.
                    Ok(summary) => {
                        let mut f =
                            OpenOptions::new().append(true).open(path).map_err(io("open"))?;
                        f.write_all(b"\n").map_err(io("append to"))?;
                        torn = None;
                        summary
                    }
                    Err(_) => {
                        let summary =
                            verify_audit(&bytes[..*keep as usize]).map_err(Error::AuditBroken)?;
                        let f = OpenOptions::new().write(true).open(path).map_err(io("open"))?;
                        f.set_len(*keep).map_err(io("truncate"))?;
                        summary
                    }
                }
            }
            None if path.exists() => verify_audit_file(path)?,
            None => AuditSummary { records: 0, head: GENESIS_HASH.to_owned() },
        };
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io("open"))?;
        let mut log =
            AuditLog { path: path.to_owned(), file, next_seq: summary.records, head: summary.head };
        if let Some((_, bytes)) = torn {
            let start: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            let detail = serde_json::json!({
                "bytes": bytes.len(),
                "sha256": hex::encode(Sha256::digest(&bytes)),
                "start": start,
            });
            log.append(
                "torn-record-sealed",
                &path.display().to_string(),
                detail,
                SystemTime::now(),
            )?;
        }
        Ok(log)
    }

    /// Appends one record and flushes it to the OS; returns the record.
    pub fn append(
        &mut self,
        event: &str,
        subject: &str,
        detail: serde_json::Value,
        now: SystemTime,
    ) -> Result<AuditRecord> {
        let mut rec = AuditRecord {
            seq: self.next_seq,
            time: rfc3339(now),
            event: event.to_owned(),
            subject: subject.to_owned(),
            detail,
            prev: self.head.clone(),
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        let mut line = serde_json::to_string(&rec).expect("audit record serializes");
        if line.len() > MAX_RECORD_BYTES {
            rec.detail = serde_json::json!({ "truncated": true, "bytes": line.len() });
            rec.hash = rec.compute_hash();
            line = serde_json::to_string(&rec).expect("audit record serializes");
        }
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|source| Error::AuditIo {
            action: "append to",
            path: self.path.display().to_string(),
            source,
        })?;
        self.next_seq += 1;
        self.head = rec.hash.clone();
        Ok(rec)
    }

    /// Hash of the last record written: publish it so rewritten history is noticed.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }
}

#[cfg(test)]
mod tests;
