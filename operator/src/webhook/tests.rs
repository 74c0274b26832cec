//! The injection decision (a golden JSON Patch for a plain pod, and the pods it must refuse),
//! the AdmissionReview answer, and the HTTPS server with its own certificate and caBundle.

use std::sync::Arc;

use serde_json::{json, Value};

use super::server::{ensure_ca_bundle, ensure_serving_cert, respond, ServingCert, Webhook};
use super::*;
use crate::fake_api::FakeApi;

/// Regenerate with `GENESIS_UPDATE_GOLDEN=1 cargo test -p genesis-operator webhook`.
const GOLDEN: &str = "src/webhook/golden-plain-pod.json";

fn config() -> InjectConfig {
    InjectConfig {
        identity_service: "genesis-operator-identity.genesis-system.svc:7443".into(),
        token_seconds: 3600,
        native_sidecar: true,
        log_format: genesis_log::LogFormat::Json,
    }
}

fn network() -> MeshNetwork {
    serde_json::from_value(json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "MeshNetwork",
        "metadata": {"name": "payments"},
        "spec": {"authorityRef": {"name": "prod-ca"}}
    }))
    .unwrap()
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn plain_pod() -> Pod {
    pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "shop-", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "shop:1",
                                 "ports": [{"containerPort": 8080}]}]}
    }))
}

fn labelled_namespace() -> BTreeMap<String, String> {
    BTreeMap::from([(NETWORK_LABEL.to_owned(), "payments".to_owned())])
}

#[test]
fn a_plain_pod_in_a_labelled_namespace_gets_the_golden_patch() {
    let Injection::Patch(patch) =
        injection(&plain_pod(), &labelled_namespace(), &[network()], &config())
    else {
        panic!("expected a patch");
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let rendered = serde_json::to_string_pretty(&patch).unwrap() + "\n";
    if std::env::var_os("GENESIS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    assert_eq!(rendered, golden, "the patch differs from {GOLDEN}");

    // Applied, it yields a pod with the sidecar, its volumes, and the member label.
    let mut applied = serde_json::to_value(plain_pod()).unwrap();
    json_patch::patch(&mut applied, &serde_json::from_value::<json_patch::Patch>(patch).unwrap())
        .unwrap();
    let applied: Pod = serde_json::from_value(applied).unwrap();
    let spec = applied.spec.unwrap();
    // A native sidecar: the first init container, restarted always, its startup probe on
    // /readyz holding the app's containers until the sidecar is ready.
    assert_eq!(spec.containers.len(), 1);
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, SIDECAR_CONTAINER);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let probe = sidecar.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(spec.volumes.unwrap().len(), 3);
    assert_eq!(applied.metadata.labels.unwrap()[NETWORK_LABEL], "payments");
}

fn apply(pod: &Pod, config: &InjectConfig) -> Pod {
    let Injection::Patch(patch) = injection(pod, &labelled_namespace(), &[network()], config)
    else {
        panic!("expected a patch");
    };
    let mut applied = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut applied, &serde_json::from_value::<json_patch::Patch>(patch).unwrap())
        .unwrap();
    serde_json::from_value(applied).unwrap()
}

#[test]
fn the_sidecar_goes_first_among_init_containers_or_as_a_plain_container_on_request() {
    let mut pod = plain_pod();
    pod.spec.as_mut().unwrap().init_containers =
        Some(vec![serde_json::from_value(json!({"name": "migrate", "image": "shop:1"})).unwrap()]);
    let applied = apply(&pod, &config());
    let inits: Vec<_> =
        applied.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| &c.name).collect();
    assert_eq!(inits, [SIDECAR_CONTAINER, "migrate"], "the sidecar starts before the others");
    // Injected once: a second review of the injected pod changes nothing.
    let again = injection(&applied, &labelled_namespace(), &[network()], &config());
    assert_eq!(again, Injection::Skip("already injected".into()));
    // Older clusters: a plain container.
    let plain = InjectConfig { native_sidecar: false, ..config() };
    let spec = apply(&plain_pod(), &plain).spec.unwrap();
    assert_eq!(spec.containers[1].name, SIDECAR_CONTAINER);
    assert!(spec.containers[1].restart_policy.is_none() && spec.init_containers.is_none());
}

#[test]
fn existing_labels_volumes_and_annotations_are_added_to_not_replaced() {
    let p = pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api", "labels": {NETWORK_LABEL: "payments", "app": "api",
                     "genesis-mesh.io/role": "anchor"}, "annotations": {"team": "pay"}},
        "spec": {"containers": [{"name": "app", "image": "api:1"}],
                 "volumes": [{"name": "data", "emptyDir": {}}]}
    }));
    let Injection::Patch(patch) = injection(&p, &BTreeMap::new(), &[network()], &config()) else {
        panic!("expected a patch");
    };
    let mut applied = serde_json::to_value(&p).unwrap();
    json_patch::patch(&mut applied, &serde_json::from_value::<json_patch::Patch>(patch).unwrap())
        .unwrap();
    assert_eq!(applied["metadata"]["labels"]["app"], "api");
    assert_eq!(applied["metadata"]["annotations"]["team"], "pay");
    assert_eq!(applied["metadata"]["annotations"][INJECTED_ANNOTATION], "payments");
    // Scrape annotations for the sidecar's metrics, logs as JSON lines.
    assert_eq!(applied["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(applied["metadata"]["annotations"]["prometheus.io/port"], "7002");
    assert_eq!(applied["spec"]["volumes"].as_array().unwrap().len(), 4);
    let env = &applied["spec"]["initContainers"][0]["env"];
    let role = env.as_array().unwrap().iter().find(|e| e["name"] == "GENESIS_ROLE").unwrap();
    assert_eq!(role["value"], "anchor");
    let format = env.as_array().unwrap().iter().find(|e| e["name"] == "GENESIS_LOG_FORMAT");
    assert_eq!(format.unwrap()["value"], "json");

    // An app that has its own scrape annotations keeps them.
    let mut own = p.clone();
    own.metadata.annotations.as_mut().unwrap().insert("prometheus.io/port".into(), "9090".into());
    let Injection::Patch(patch) = injection(&own, &BTreeMap::new(), &[network()], &config()) else {
        panic!("expected a patch");
    };
    let mut applied = serde_json::to_value(&own).unwrap();
    json_patch::patch(&mut applied, &serde_json::from_value::<json_patch::Patch>(patch).unwrap())
        .unwrap();
    assert_eq!(applied["metadata"]["annotations"]["prometheus.io/port"], "9090");
    assert!(applied["metadata"]["annotations"].get("prometheus.io/scrape").is_none());
}

#[test]
fn pods_it_cannot_inject_are_refused_with_a_reason_and_others_pass_unchanged() {
    let refused =
        |p: Pod, ns: BTreeMap<String, String>| match injection(&p, &ns, &[network()], &config()) {
            Injection::Refuse(reason) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
    let labelled = |spec: Value| {
        pod(json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "labels": {NETWORK_LABEL: "payments"}}, "spec": spec}))
    };
    let r = refused(
        pod(json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "p", "labels": {NETWORK_LABEL: "orders"}},
                   "spec": {"containers": [{"name": "app"}]}})),
        BTreeMap::new(),
    );
    assert!(r.contains("\"orders\"") && r.contains("no MeshNetwork"), "{r}");
    let r = refused(
        labelled(json!({"hostNetwork": true, "containers": [{"name": "app"}]})),
        BTreeMap::new(),
    );
    assert!(r.contains("hostNetwork"), "{r}");
    let r = refused(
        labelled(json!({"containers": [{"name": "app", "ports": [{"containerPort": 7002}]}]})),
        BTreeMap::new(),
    );
    assert!(r.contains("container app uses port 7002"), "{r}");
    let r = refused(
        labelled(
            json!({"containers": [{"name": "app"}], "volumes": [{"name": "genesis-token", "emptyDir": {}}]}),
        ),
        BTreeMap::new(),
    );
    assert!(r.contains("volume named genesis-token"), "{r}");

    // Not a member, opted out, already injected: admitted unchanged.
    let skip = |p: Pod, ns: BTreeMap<String, String>| {
        assert!(matches!(injection(&p, &ns, &[network()], &config()), Injection::Skip(_)));
    };
    skip(plain_pod(), BTreeMap::new());
    let mut opted_out = plain_pod();
    opted_out.metadata.annotations =
        Some(BTreeMap::from([(INJECT_ANNOTATION.into(), "false".into())]));
    skip(opted_out, labelled_namespace());
    skip(labelled(json!({"containers": [{"name": SIDECAR_CONTAINER}]})), BTreeMap::new());
}

fn review(p: &Pod) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "r-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": p, "name": "", "dryRun": false,
        }
    })
}

#[test]
fn the_admission_response_carries_the_patch_or_the_refusal() {
    let request: kube::core::admission::AdmissionReview<Pod> =
        serde_json::from_value(review(&plain_pod())).unwrap();
    let request: kube::core::admission::AdmissionRequest<Pod> = request.try_into().unwrap();
    let ok = respond(&request, &labelled_namespace(), &[network()], &config());
    assert!(ok.allowed);
    assert_eq!(ok.uid, "r-1");
    let patch: Value = serde_json::from_slice(ok.patch.as_ref().unwrap()).unwrap();
    assert_eq!(patch[0]["path"], "/spec/initContainers");
    assert_eq!(patch[0]["value"][0]["name"], SIDECAR_CONTAINER);

    let refused = respond(&request, &labelled_namespace(), &[], &config());
    assert!(!refused.allowed);
    assert!(refused.result.message.contains("no MeshNetwork"), "{}", refused.result.message);
}

/// The real server over real TLS: the client trusts only the webhook's own CA, as the API
/// server does through the caBundle the operator wrote.
#[test]
fn the_server_answers_over_tls_with_its_own_certificate_and_writes_the_ca_bundle() {
    let api = FakeApi::default();
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "shop", "labels": {NETWORK_LABEL: "payments"}}}));
    api.put(serde_json::to_value(network()).unwrap());
    api.put(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": server::CONFIGURATION},
        "webhooks": [{"name": "inject.genesis-mesh.io", "admissionReviewVersions": ["v1"],
                      "sideEffects": "None",
                      "clientConfig": {"service": {"name": server::SERVICE,
                                       "namespace": "genesis-system", "path": "/inject"}}}]
    }));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = api.client();
        let now = std::time::SystemTime::now();
        let serving = ensure_serving_cert(&client, "genesis-system", now).await.unwrap();
        // Kept in the Secret: a second replica (or a restart) serves the same certificate.
        assert_eq!(ensure_serving_cert(&client, "genesis-system", now).await.unwrap(), serving);
        assert!(ensure_ca_bundle(&client, &serving.ca_pem).await.unwrap());
        assert!(!ensure_ca_bundle(&client, &serving.ca_pem).await.unwrap(), "already current");
        let stored = api
            .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/genesis-mesh-injector")
            .unwrap();
        use base64::Engine;
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(stored["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(bundle).unwrap(), serving.ca_pem);
        assert_eq!(stored["webhooks"][0]["clientConfig"]["service"]["path"], "/inject");

        let metrics = Arc::new(crate::metrics::Metrics::new());
        let webhook = Arc::new(Webhook {
            client,
            config: config(),
            acceptor: std::sync::RwLock::new(serving.acceptor().unwrap()),
            metrics: metrics.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(listener, webhook, async {
            stopped.await.ok();
        }));

        let post = |body: Vec<u8>| post(addr, serving.clone(), body);
        let answer = post(serde_json::to_vec(&review(&plain_pod())).unwrap()).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let answer = post(b"{not json".to_vec()).await;
        assert_eq!(answer["response"]["allowed"], false);
        assert!(answer["response"]["status"]["message"].as_str().unwrap().contains("not an AdmissionReview"));
        let text = metrics.text();
        assert!(text.contains("genesis_operator_webhook_injections_total{outcome=\"injected\"} 1"), "{text}");

        // A client that does not trust the webhook's CA cannot talk to it.
        let other = ServingCert::generate("x", "y", now).unwrap();
        assert!(tls_connect(addr, &other).await.is_err());
        stop.send(()).unwrap();
        server.await.unwrap();
    });
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    trust: &ServingCert,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in genesis_trust::certs_from_pem(&trust.ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from("genesis-operator-webhook.genesis-system.svc")
            .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

async fn post(addr: std::net::SocketAddr, trust: ServingCert, body: Vec<u8>) -> Value {
    use http_body_util::BodyExt;
    let tls = tls_connect(addr, &trust).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/inject")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Replicas starting together with no Secret: each makes a certificate, one create wins, and
/// every replica serves the winner's (each used to force-apply its own, then rewrite the
/// caBundle to its own CA every minute, failing pod creation on the others).
#[test]
fn replicas_starting_together_serve_one_certificate_and_a_replacement_keeps_the_old_ca() {
    let api = FakeApi::default();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    rt.block_on(async {
        let now = std::time::SystemTime::now();
        let replicas: Vec<_> = (0..8)
            .map(|_| {
                let client = api.client();
                tokio::spawn(async move {
                    ensure_serving_cert(&client, "genesis-system", now).await.unwrap()
                })
            })
            .collect();
        let mut served = Vec::new();
        for r in replicas {
            served.push(r.await.unwrap());
        }
        let stored = ensure_serving_cert(&api.client(), "genesis-system", now).await.unwrap();
        for s in &served {
            assert_eq!(s.ca_pem, stored.ca_pem, "a replica serves a CA that is not the Secret's");
        }
        assert_eq!(stored.previous_ca_pem, None);
        // Near expiry: replaced once, and the bundle trusts old and new while replicas move.
        let later = now + std::time::Duration::from_secs(340 * 86_400);
        let renewed = ensure_serving_cert(&api.client(), "genesis-system", later).await.unwrap();
        assert_ne!(renewed.ca_pem, stored.ca_pem);
        assert_eq!(renewed.previous_ca_pem.as_deref(), Some(stored.ca_pem.as_str()));
        assert_eq!(renewed.bundle(), format!("{}{}", renewed.ca_pem, stored.ca_pem));
        let again = ensure_serving_cert(&api.client(), "genesis-system", later).await.unwrap();
        assert_eq!(again, renewed, "replaced once, then read back");
    });
}

/// A pod annotated `annotation: good` (in a network allowing port `allowed`) gets `good` as its
/// sidecar's `env_name`; each of `bad` is refused, naming the annotation and saying why; without
/// the annotation the sidecar has no `env_name` (the golden patch does not set it).
fn annotation_becomes_env_or_refusal(
    annotation: &str,
    allowed: i32,
    good: &str,
    env_name: &str,
    bad: &[(&str, &str)],
) {
    let mut net = network();
    net.spec.allowed_ports = vec![genesis_crds::mesh_network::Port(allowed)];
    let annotated = |value: &str| {
        let mut p = plain_pod();
        p.metadata.annotations = Some(BTreeMap::from([(annotation.to_owned(), value.to_owned())]));
        p
    };
    let with = |value: &str| {
        injection(&annotated(value), &labelled_namespace(), std::slice::from_ref(&net), &config())
    };
    let Injection::Patch(patch) = with(good) else { panic!("expected a patch") };
    let mut applied = serde_json::to_value(annotated(good)).unwrap();
    json_patch::patch(&mut applied, &serde_json::from_value::<json_patch::Patch>(patch).unwrap())
        .unwrap();
    let env = applied["spec"]["initContainers"][0]["env"].as_array().unwrap().clone();
    let set = env.iter().find(|e| e["name"] == env_name).unwrap();
    assert_eq!(set["value"], good);
    for (value, why) in bad {
        match with(value) {
            Injection::Refuse(r) => {
                assert!(r.contains(annotation) && r.contains(why), "{value}: {r}")
            }
            other => panic!("{value}: expected a refusal, got {other:?}"),
        }
    }
    let golden =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN))
            .unwrap();
    assert!(!golden.contains(env_name), "{env_name} set without the annotation");
}

#[test]
fn a_services_annotation_becomes_the_sidecars_services_or_a_refusal_with_the_reason() {
    annotation_becomes_env_or_refusal(
        SERVICES_ANNOTATION,
        8080,
        "web=8080",
        "GENESIS_SERVICES",
        &[
            ("web", "is not name=port"),
            ("Web=8080", "is not a service name"),
            ("web=http", "is not a port"),
            ("web=9090", "not in the network's allowedPorts [8080]"),
            ("web=8080,web=8080", "named twice"),
        ],
    );
}

#[test]
fn an_upstreams_annotation_becomes_the_sidecars_upstreams_or_a_refusal_with_the_reason() {
    annotation_becomes_env_or_refusal(
        UPSTREAMS_ANNOTATION,
        5432,
        "15432=db.svc.payments:5432,127.0.0.2:5432=db-0.shop.payments:5432",
        "GENESIS_UPSTREAMS",
        &[
            ("db.svc.payments:5432", "is not LISTEN=TARGET:PORT"),
            ("15432=db.svc.prod:5432", "not a member or service of network payments"),
            ("15432=db.svc.payments:80", "port 80 is not in the network's allowed ports [5432]"),
            ("10.1.2.3:15432=db.svc.payments:5432", "not a loopback address"),
            ("8080=db.svc.payments:5432", "port 8080 is taken in the pod"),
            ("7001=db.svc.payments:5432", "port 7001 is taken in the pod"),
            ("1=db.svc.payments:5432,1=web.svc.payments:5432", "is already the upstream"),
        ],
    );
}
