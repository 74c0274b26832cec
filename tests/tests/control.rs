//! Signed control messages in a real mesh: a valid drain is obeyed by its target only and
//! acknowledged; a replay, a client's operator verb, a forged signature and a revoked signer
//! are refused wherever they enter, each with the rule that refused it, in the audit log.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use genesis_e2e::{http, wait_for, Authority, Sidecar, SidecarOptions, Subnet, Value};
use genesis_operator::local::LocalAuthority;
use genesis_trust::{
    create_csr, ControlEnvelope, EnvelopeSigner, Identity, KeyAlgorithm, PrivateKey, Role, Scope,
    Verb,
};

const NET: &str = "ctl";

fn signer(authority: &LocalAuthority, role: Role, node: &str) -> EnvelopeSigner {
    let id = Identity::new("test.local", NET, role, node).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let issued = authority.issue(&create_csr(&id, &key).unwrap(), &id).unwrap();
    EnvelopeSigner::new(key, issued.chain).unwrap()
}

fn envelope(signer: &EnvelopeSigner, verb: Verb, scope: Scope) -> Vec<u8> {
    let env = ControlEnvelope::new(NET, verb, scope, BTreeMap::new(), SystemTime::now()).unwrap();
    signer.sign(&env).unwrap().encode()
}

fn inject(via: &Sidecar, wire: &[u8], query: &str) -> (u16, Value) {
    let (status, body) =
        http(&via.admin, "POST", &format!("/admin/control?{query}"), wire).unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn control_messages_are_obeyed_by_their_target_only_and_bad_ones_refused_everywhere() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let nodes: Vec<Sidecar> = (0..5u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            Sidecar::start(
                &auth,
                &format!("c{i}"),
                &net.ip(i + 1),
                &SidecarOptions { anchors, min_peers: 1, max_peers: 2, ..Default::default() },
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "the line to converge", || nodes[0].routes().len() == 4);
    let authority = LocalAuthority::open(auth.dir.path()).unwrap();
    let operator = signer(&authority, Role::Operator, "genesis-operator");
    let client = signer(&authority, Role::Client, "rogue-client");

    // A valid drain for c4, injected at c0: accepted by rule, flooded, applied by c4 alone.
    let drain = envelope(&operator, Verb::Drain, Scope::Node("c4".into()));
    let (status, answer) = inject(&nodes[0], &drain, "expect=1&wait=5000");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["rule"], "operator-manages-the-network");
    let acks = answer["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 1, "{answer}");
    assert_eq!((acks[0]["node"].as_str(), acks[0]["applied"].as_bool()), (Some("c4"), Some(true)));
    wait_for(Duration::from_secs(5), "c4 to drain", || {
        nodes[4].metric("genesis_sidecar_links", "") == 0.0
    });
    for s in &nodes[..4] {
        assert!(
            s.metric("genesis_sidecar_links", "") >= 1.0,
            "{} drained but was not addressed",
            s.node
        );
        let audit =
            std::fs::read_to_string(auth.dir.path().join(format!("{}.audit.jsonl", s.node)))
                .unwrap();
        assert!(audit.contains("control-accepted"), "{} did not see the drain", s.node);
    }
    assert_eq!(nodes[0].send("c3", b"the rest keeps working").0, 200);

    // The same envelope again: a replay, refused by the replay cache wherever it enters.
    for via in [&nodes[0], &nodes[2]] {
        let (status, answer) = inject(via, &drain, "wait=0");
        assert_eq!(
            (status, answer["rule"].as_str()),
            (403, Some("replay-cache")),
            "{}: {answer}",
            via.node
        );
    }
    // A client may not shut the network down: refused by the default deny, everywhere.
    let shutdown = envelope(&client, Verb::Shutdown, Scope::Network);
    for via in [&nodes[1], &nodes[3]] {
        let (status, answer) = inject(via, &shutdown, "wait=0");
        assert_eq!(status, 403, "{answer}");
        assert!(answer["rule"].as_str().unwrap().starts_with("default-deny"), "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("may not send shutdown"), "{answer}");
    }
    // A forged signature.
    let mut forged = genesis_trust::SignedEnvelope::decode(&envelope(
        &operator,
        Verb::RouteReset,
        Scope::Network,
    ))
    .unwrap();
    let last = forged.signature.len() - 1;
    forged.signature[last] ^= 1;
    let (status, answer) = inject(&nodes[1], &forged.encode(), "wait=0");
    assert_eq!((status, answer["rule"].as_str()), (403, Some("signature")), "{answer}");
    // A revoked signer: revoke it, push the CRL, and its next message is refused.
    let revoked = signer(&authority, Role::Operator, "old-operator");
    auth.revoke("old-operator");
    let crl = std::fs::read(auth.dir.path().join("crl.der")).unwrap();
    assert_eq!(http(&nodes[1].admin, "POST", "/admin/crl", &crl).unwrap().0, 200);
    wait_for(Duration::from_secs(5), "the CRL to reach c2", || {
        nodes[2].admin_json("/admin/identity")["crlNumber"] == 1
    });
    let (status, answer) =
        inject(&nodes[2], &envelope(&revoked, Verb::RouteReset, Scope::Network), "wait=0");
    assert_eq!((status, answer["rule"].as_str()), (403, Some("signer-certificate")), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("revoked"), "{answer}");

    // Every refusal is in the audit log of the member it entered, with its rule; nothing
    // refused was flooded to the others.
    let audit = |n: &str| {
        std::fs::read_to_string(auth.dir.path().join(format!("{n}.audit.jsonl"))).unwrap()
    };
    let c1 = audit("c1");
    assert!(c1.contains("default-deny") && c1.contains("\"rule\":\"signature\""), "{c1}");
    assert!(audit("c2").contains("signer-certificate"));
    assert!(audit("c0").contains("replay-cache"));
    assert!(!audit("c4").contains("control-refused"), "a refused message travelled");
    // And a valid network-wide log-level change is applied by every reachable member.
    let mut args = BTreeMap::new();
    args.insert("level".to_owned(), "debug".to_owned());
    let env =
        ControlEnvelope::new(NET, Verb::LogLevel, Scope::Network, args, SystemTime::now()).unwrap();
    let (status, answer) =
        inject(&nodes[0], &operator.sign(&env).unwrap().encode(), "expect=4&wait=5000");
    assert_eq!(status, 202, "{answer}");
    let applied: Vec<&str> = answer["acks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["applied"] == true)
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(applied.len(), 4, "c0..c3 applied it (c4 is drained): {answer}");
}

fn with_args(
    signer: &EnvelopeSigner,
    verb: Verb,
    scope: Scope,
    args: &[(&str, String)],
) -> Vec<u8> {
    let args = args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    signer
        .sign(&ControlEnvelope::new(NET, verb, scope, args, SystemTime::now()).unwrap())
        .unwrap()
        .encode()
}

#[test]
fn policy_update_route_reset_and_shutdown_are_applied() {
    let net = Subnet::new();
    let auth = Authority::start(&net, NET, "24h");
    let mut nodes: Vec<Sidecar> = (0..3u8)
        .map(|i| {
            let anchors = if i == 0 { vec![] } else { vec![format!("{}:7000", net.ip(i))] };
            Sidecar::start(
                &auth,
                &format!("p{i}"),
                &net.ip(i + 1),
                &SidecarOptions { anchors, min_peers: 1, max_peers: 2, ..Default::default() },
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "the line to converge", || nodes[0].routes().len() == 2);
    let authority = LocalAuthority::open(auth.dir.path()).unwrap();
    let operator = signer(&authority, Role::Operator, "genesis-operator");
    let client = signer(&authority, Role::Client, "p-client");

    // Clients may not reset routes by default...
    let (status, _) =
        inject(&nodes[0], &envelope(&client, Verb::RouteReset, Scope::Network), "wait=0");
    assert_eq!(status, 403);
    // ...until the operator updates the policy network-wide.
    let mut policy = genesis_trust::RbacPolicy::default();
    policy.rules.push(genesis_trust::RbacRule {
        name: "clients-reset-routes".into(),
        roles: vec![Role::Client],
        verbs: vec![Verb::RouteReset],
        scopes: vec![genesis_trust::ScopeKind::Network],
    });
    let update = with_args(
        &operator,
        Verb::PolicyUpdate,
        Scope::Network,
        &[("policy", serde_json::to_string(&policy).unwrap())],
    );
    let (status, answer) = inject(&nodes[0], &update, "expect=3&wait=5000");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["acks"].as_array().unwrap().iter().filter(|a| a["applied"] == true).count(),
        3,
        "{answer}"
    );
    // Now the client's route reset is accepted by the new rule and applied everywhere; routes
    // come back.
    let seqno_before = nodes[2].admin_json("/admin/identity")["routeSeqno"].as_u64().unwrap();
    let (status, answer) = inject(
        &nodes[1],
        &envelope(&client, Verb::RouteReset, Scope::Network),
        "expect=3&wait=5000",
    );
    assert_eq!((status, answer["rule"].as_str()), (202, Some("clients-reset-routes")), "{answer}");
    // Every member answers, though the reset forgets the way back to the origin.
    assert_eq!(
        answer["acks"].as_array().unwrap().iter().filter(|a| a["applied"] == true).count(),
        3,
        "{answer}"
    );
    let seqno_after = nodes[2].admin_json("/admin/identity")["routeSeqno"].as_u64().unwrap();
    assert_ne!(seqno_before, seqno_after, "p2 reset its routing state");
    wait_for(Duration::from_secs(10), "routes to be relearned", || nodes[0].routes().len() == 2);
    assert_eq!(nodes[0].send("p2", b"after the reset").0, 200);

    // A shutdown addressed to p2: it acknowledges, drains and exits cleanly.
    let (status, answer) = inject(
        &nodes[0],
        &envelope(&operator, Verb::Shutdown, Scope::Node("p2".into())),
        "expect=1&wait=5000",
    );
    assert_eq!(status, 202, "{answer}");
    wait_for(Duration::from_secs(10), "p2 to exit", || nodes[2].exited().is_some());
    assert!(nodes[2].exited().unwrap().success());
    assert!(
        nodes[0].exited().is_none() && nodes[1].exited().is_none(),
        "only the addressed member shut down"
    );
}
