use std::io::Cursor;
use std::time::SystemTime;

use super::*;

fn write_log(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    for i in 0..n {
        log.append(
            "control-refused",
            &format!("spiffe://td/mesh/n/client/c{i}"),
            serde_json::json!({ "rule": "default-deny", "i": i }),
            SystemTime::now(),
        )
        .unwrap();
    }
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn verify_lines(lines: &[String]) -> std::result::Result<AuditSummary, AuditBreak> {
    verify_audit(Cursor::new(lines.join("\n")))
}

#[test]
fn intact_log_verifies_and_reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 5);
    let summary = verify_audit_file(&path).unwrap();
    assert_eq!(summary.records, 5);
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.head(), summary.head);
    assert_eq!(log.len(), 5);
    let rec = log
        .append("crl-applied", "crl", serde_json::json!({"number": 2}), SystemTime::now())
        .unwrap();
    assert_eq!(rec.seq, 5);
    assert_eq!(rec.prev, summary.head);
    assert_eq!(verify_audit_file(&path).unwrap().head, rec.hash);
    assert_eq!(verify_audit(Cursor::new("")).unwrap().head, GENESIS_HASH);
}

#[test]
fn edited_record_is_detected_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines(&write_log(dir.path(), 5));
    l[2] = l[2].replace("default-deny", "operator-allows");
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(err, AuditBreak { line: 3, seq: Some(2), kind: BreakKind::Edited });
}

#[test]
fn deleted_record_is_detected_where_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines(&write_log(dir.path(), 6));
    l.remove(3);
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(
        err,
        AuditBreak {
            line: 4,
            seq: Some(4),
            kind: BreakKind::Deleted { missing_from: 3, missing_to: 3 }
        }
    );
    assert!(err.to_string().contains("record 3 was deleted"), "{err}");
    // A run of deleted records is reported as a range.
    let mut l = lines(&dir.path().join("audit.jsonl"));
    l.drain(1..3);
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(err.kind, BreakKind::Deleted { missing_from: 1, missing_to: 2 });
    assert!(err.to_string().contains("records 1 to 2 were deleted"), "{err}");
    // Deleting the last records cannot be seen in the file alone: the exported head shows it.
    let mut tail = lines(&dir.path().join("audit.jsonl"));
    let full_head = verify_lines(&tail).unwrap().head;
    tail.pop();
    assert_ne!(verify_lines(&tail).unwrap().head, full_head);
}

#[test]
fn reordered_records_are_detected_at_the_first_moved_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines(&write_log(dir.path(), 5));
    l.swap(1, 3);
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(
        err,
        AuditBreak { line: 2, seq: Some(3), kind: BreakKind::Reordered { expected_seq: 1 } }
    );
}

#[test]
fn rewritten_record_with_a_recomputed_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = lines(&write_log(dir.path(), 4));
    let mut rec: AuditRecord = serde_json::from_str(&l[1]).unwrap();
    rec.subject = "someone-else".into();
    rec.hash = rec.compute_hash();
    l[1] = serde_json::to_string(&rec).unwrap();
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(err, AuditBreak { line: 3, seq: Some(2), kind: BreakKind::ChainMismatch });
}

#[test]
fn garbage_line_is_reported_unreadable_and_a_broken_log_is_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let mut l = lines(&path);
    l.insert(1, "{not json".into());
    let err = verify_lines(&l).unwrap_err();
    assert_eq!(err.line, 2);
    assert!(matches!(err.kind, BreakKind::Unreadable { .. }));
    let mut extra = lines(&path);
    extra[0] = extra[0].replacen('{', "{\"extra\":1,", 1);
    assert!(
        matches!(verify_lines(&extra).unwrap_err().kind, BreakKind::Unreadable { reason } if reason.contains("unknown field"))
    );
    std::fs::write(&path, l.join("\n")).unwrap();
    assert!(matches!(AuditLog::open(&path), Err(Error::AuditBroken(AuditBreak { line: 2, .. }))));
}

#[test]
fn hash_does_not_depend_on_detail_key_order() {
    let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
    let b: serde_json::Value = serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap();
    let rec = |detail| AuditRecord {
        seq: 0,
        time: "t".into(),
        event: "e".into(),
        subject: "s".into(),
        detail,
        prev: GENESIS_HASH.into(),
        hash: String::new(),
    };
    assert_eq!(rec(a).compute_hash(), rec(b).compute_hash());
}

#[test]
fn a_torn_last_record_is_sealed_on_the_record_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), 3);
    let whole = std::fs::read(&path).unwrap();
    // A crash in the middle of writing a fourth record.
    let torn = br#"{"seq":3,"time":"2026-11-30T00:00:00Z","event":"link-re"#;
    std::fs::write(&path, [&whole[..], &torn[..]].concat()).unwrap();
    assert!(verify_audit_file(&path).is_err(), "a torn record breaks verification");

    let mut log = AuditLog::open(&path).expect("a torn last record is repaired, not fatal");
    assert_eq!(log.len(), 4, "three records and the seal");
    log.append("started", "x", serde_json::json!({}), SystemTime::now()).unwrap();
    let summary = verify_audit_file(&path).unwrap();
    assert_eq!(summary.records, 5);
    let seal = AuditRecord::parse_line(&lines(&path)[3]).unwrap();
    assert_eq!(seal.event, "torn-record-sealed");
    assert_eq!(seal.detail["bytes"], torn.len());
    assert!(seal.detail["start"].as_str().unwrap().starts_with("{\"seq\":3"));

    // A whole last record that only lacks its newline is kept as it is.
    let dir2 = tempfile::tempdir().unwrap();
    let path = write_log(dir2.path(), 2);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.trim_end()).unwrap();
    assert_eq!(AuditLog::open(&path).unwrap().len(), 2);
    assert_eq!(verify_audit_file(&path).unwrap().records, 2);

    // A broken record that is not the last stays fatal: that is tampering, not a crash.
    let mut l = lines(&path);
    l[0] = "{broken".into();
    std::fs::write(&path, l.join("\n")).unwrap();
    assert!(AuditLog::open(&path).is_err());
}
