use super::*;

#[test]
fn formatted_identity_parses_back_to_itself() {
    let id = Identity::new("cluster.local", "payments", Role::Client, "web-7f9c.default").unwrap();
    assert_eq!(id.uri(), "spiffe://cluster.local/mesh/payments/client/web-7f9c.default");
    assert_eq!(Identity::parse(&id.uri()).unwrap(), id);
    for role in Role::ALL {
        let id = Identity::new("td", "n", role, "x").unwrap();
        assert_eq!(Identity::parse(&id.uri()).unwrap().role(), role);
    }
}

#[test]
fn every_malformed_identity_is_refused_with_its_reason() {
    let cases = [
        ("https://cluster.local/mesh/n/client/a", "scheme"),
        ("spiffe://Cluster.local/mesh/n/client/a", "trust domain may hold only"),
        ("spiffe://cluster.local:443/mesh/n/client/a", "trust domain may hold only"),
        ("spiffe://user@cluster.local/mesh/n/client/a", "trust domain may hold only"),
        ("spiffe:///mesh/n/client/a", "trust domain is empty"),
        ("spiffe://td/mesh/n/client", "four segments"),
        ("spiffe://td/mesh/n/client/a/b", "four segments"),
        ("spiffe://td/mesh/n/client/a/", "four segments"),
        ("spiffe://td/grid/n/client/a", "\"mesh\""),
        ("spiffe://td/mesh/n/root/a", "unknown role"),
        ("spiffe://td/mesh/N/client/a", "must be a DNS label"),
        ("spiffe://td/mesh/-n/client/a", "must be a DNS label"),
        ("spiffe://td/mesh//client/a", "network is empty"),
        ("spiffe://td/mesh/n/client/", "node is empty"),
        ("spiffe://td/mesh/n/client/a..b", "node label is empty"),
        ("spiffe://td/mesh/n/client/a?x=1", "query and fragment"),
        ("spiffe://td/mesh/n/client/a#f", "query and fragment"),
        ("spiffe://td/mesh/n/client/%61", "percent-encoding"),
        ("", "scheme"),
    ];
    for (uri, reason) in cases {
        match Identity::parse(uri) {
            Err(Error::InvalidIdentity { reason: got, .. }) => {
                assert!(got.contains(reason), "{uri:?}: expected {reason:?}, got {got:?}")
            }
            other => panic!("{uri:?} should be refused, got {other:?}"),
        }
    }
}

#[test]
fn oversized_identity_is_refused_and_the_error_stays_short() {
    let uri = format!("spiffe://td/mesh/n/client/{}", "a".repeat(5000));
    let err = Identity::parse(&uri).unwrap_err().to_string();
    assert!(err.contains("longer than 2048"), "{err}");
    assert!(err.len() < 300, "error message echoes the whole input: {} bytes", err.len());
}

#[test]
fn identity_serializes_as_its_uri() {
    let id = Identity::new("td", "n", Role::Admin, "alice").unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"spiffe://td/mesh/n/admin/alice\"");
    assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), id);
    assert!(serde_json::from_str::<Identity>("\"spiffe://td/mesh/n/admin\"").is_err());
}
