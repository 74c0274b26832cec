//! The operator against a real control plane: etcd and kube-apiserver from
//! `KUBEBUILDER_ASSETS` (the controller-runtime "envtest" convention: `setup-envtest use`
//! prints such a directory), on loopback, with no kubelet. What the in-memory API cannot show:
//! - the CRDs install, and the real API server's validation (OpenAPI and CEL) refuses every
//!   manifest in `examples/invalid/` and accepts the examples;
//! - the chart's RBAC, enforced: the operator runs as the chart's ServiceAccount (a token from
//!   the TokenRequest API) and reconciles an authority, a network and a member pod's
//!   Certificate without one `forbidden`;
//! - server-side-apply field ownership: a member Certificate's status written at issuance
//!   survives the up-to-date reconciles that follow.
//!
//! Without `KUBEBUILDER_ASSETS` the suite says `SKIPPED` and passes, like the kind suite.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use genesis_e2e::{binaries, render_chart, workspace_root};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};

/// The control plane's binaries, or `None` after saying why the suite is skipped.
fn assets() -> Option<PathBuf> {
    let skip = |why: &str| {
        use std::io::Write;
        // NB: straight to stderr, past the harness's capture, so the skip shows.
        let _ = writeln!(std::io::stderr(), "SKIPPED: the envtest suite {why}");
        None
    };
    let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) else {
        return skip(
            "needs a real etcd and kube-apiserver: set KUBEBUILDER_ASSETS \
             (`setup-envtest use -p path` prints one; docs/OPERATOR.md)",
        );
    };
    let dir = PathBuf::from(dir);
    for bin in ["etcd", "kube-apiserver"] {
        if !dir.join(bin).is_file() {
            return skip(&format!("found no {bin} in KUBEBUILDER_ASSETS={}", dir.display()));
        }
    }
    Some(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

/// etcd and kube-apiserver, stopped on drop.
struct ControlPlane {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    url: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ControlPlane {
    fn start(assets: &Path) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        // The service-account signing key (TokenRequest, bound pod tokens) and an admin token.
        let key = d.join("sa.key");
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
            .arg(&key));
        ok(Command::new("openssl")
            .arg("ec")
            .arg("-in")
            .arg(&key)
            .args(["-pubout", "-out"])
            .arg(d.join("sa.pub")));
        std::fs::write(d.join("tokens.csv"), "envtest-admin,admin,admin,\"system:masters\"\n")
            .unwrap();
        let p = |x: &str| d.join(x).display().to_string();
        let etcd_url = format!("http://127.0.0.1:{client}");
        let etcd = spawn(
            &assets.join("etcd"),
            &[
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                "--unsafe-no-fsync".into(),
            ],
            &d.join("etcd.log"),
        );
        let apiserver = spawn(
            &assets.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", p("certs")),
                format!("--secure-port={secure}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", p("tokens.csv")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                // No controller-manager: nothing would create the default ServiceAccounts.
                "--disable-admission-plugins=ServiceAccount".into(),
            ],
            &d.join("kube-apiserver.log"),
        );
        let cp = ControlPlane {
            url: format!("https://127.0.0.1:{secure}"),
            children: vec![etcd, apiserver],
            dir,
        };
        cp.write_kubeconfig("admin.kubeconfig", "envtest-admin");
        cp
    }

    /// A kubeconfig for `token` (the serving certificate is self-signed: not checked here).
    fn write_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let kc = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": {"server": self.url, "insecure-skip-tls-verify": true}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "u"}}],
        });
        std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
        path
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Polls `ok` every 100 ms; panics naming `what` (and `context()`) after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, context: impl Fn() -> String, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "MeshNetwork" => "meshnetworks",
        "NetworkAuthority" => "networkauthorities",
        "Certificate" => "certificates",
        other => panic!("no plural for {other}"),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("genesis-mesh.io", "v1alpha1", kind),
        plural,
    )
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    use k8s_openapi::serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Creates `obj` (a custom resource) in `ns` (or cluster-wide); the API server's answer.
async fn create(c: &Client, obj: &Value, ns: &str) -> Result<DynamicObject, kube::Error> {
    let ar = resource(obj["kind"].as_str().unwrap());
    let api: Api<DynamicObject> = match obj["kind"].as_str() {
        Some("Certificate") => Api::namespaced_with(c.clone(), ns, &ar),
        _ => Api::all_with(c.clone(), &ar),
    };
    api.create(&PostParams::default(), &serde_json::from_value(obj.clone()).unwrap()).await
}

/// Server-side applies a built-in object (RBAC, namespaces, service accounts) as the admin.
async fn apply(c: &Client, obj: &Value) {
    let (api_version, kind) = (obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap());
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ServiceAccount" => "serviceaccounts",
        "Namespace" => "namespaces",
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations",
        other => panic!("no plural for {other}"),
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let name = obj["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    };
    api.patch(name, &PatchParams::apply("envtest").force(), &Patch::Apply(obj)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_against_a_real_api_server_with_the_charts_rbac() {
    let Some(assets) = assets() else { return };
    let cp = ControlPlane::start(&assets);
    let admin = client(&cp.dir.path().join("admin.kubeconfig")).await;
    let apiserver_log =
        || cp.log("kube-apiserver.log").lines().rev().take(20).collect::<Vec<_>>().join("\n");
    eventually(Duration::from_secs(60), "the API server to answer", apiserver_log, || async {
        admin.apiserver_version().await.is_ok()
    })
    .await;

    // 1. The CRDs install and become established.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for file in ["meshnetworks", "networkauthorities", "certificates"] {
        let crd = &yaml_docs(&workspace_root().join(format!("crds/{file}.yaml")))[0];
        let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
        crds.patch(&name, &PatchParams::apply("envtest").force(), &Patch::Apply(crd))
            .await
            .unwrap();
        eventually(
            Duration::from_secs(30),
            &format!("{name} to be established"),
            String::new,
            || {
                let (crds, name) = (crds.clone(), name.clone());
                async move {
                    crds.get(&name)
                        .await
                        .ok()
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Established" && c.status == "True")
                        })
                }
            },
        )
        .await;
    }

    // 2. The real validation refuses every invalid example, with a reason, and accepts the
    //    valid ones.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["shop", "genesis-system"] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
    }
    let mut invalid: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("examples/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    invalid.sort();
    assert!(invalid.len() >= 10);
    for path in &invalid {
        for doc in yaml_docs(path) {
            match create(&admin, &doc, "shop").await {
                Err(kube::Error::Api(e)) if e.code == 422 => {}
                other => panic!("{} was not refused as invalid: {other:?}", path.display()),
            }
        }
    }

    // 3. The operator, as the chart's ServiceAccount under the chart's RBAC.
    let chart = render_chart(&json!({"webhook": {"enabled": false}, "operator": {"replicas": 1}}));
    for (template, text) in chart["manifests"].as_object().unwrap() {
        if !template.ends_with("rbac.yaml") && !template.ends_with("serviceaccount.yaml") {
            continue;
        }
        use k8s_openapi::serde::Deserialize;
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let v = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            if !v.is_null() {
                apply(&admin, &v).await;
            }
        }
    }
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "genesis-system");
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token: TokenRequest = sas
        .create_subresource("token", "genesis-operator", &PostParams::default(), &request)
        .await
        .unwrap();
    let operator_kc = cp.write_kubeconfig("operator.kubeconfig", &token.status.unwrap().token);
    let (probes, identity) = (free_port(), free_port());
    let operator_log = cp.dir.path().join("operator.log");
    let operator_args: Vec<String> = vec![
        "run".into(),
        format!("--kubeconfig={}", operator_kc.display()),
        "--namespace=genesis-system".into(),
        format!("--probe-listen=127.0.0.1:{probes}"),
        format!("--identity-listen=127.0.0.1:{identity}"),
        "--no-webhook".into(),
        "--pod-name=envtest-operator".into(),
    ];
    let mut operator = spawn(&binaries().operator, &operator_args, &operator_log);
    let op_log = || std::fs::read_to_string(&operator_log).unwrap_or_default();

    let authority = &yaml_docs(&workspace_root().join("examples/network-authority.yaml"))[0];
    let network = &yaml_docs(&workspace_root().join("examples/mesh-network.yaml"))[0];
    create(&admin, authority, "").await.unwrap();
    create(&admin, network, "").await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), "genesis-system");
    eventually(
        Duration::from_secs(60),
        "the authority's bundle and CRL ConfigMaps",
        op_log,
        || {
            let configmaps = configmaps.clone();
            async move {
                configmaps.get_opt("default-bundle").await.ok().flatten().is_some()
                    && configmaps.get_opt("default-crl").await.ok().flatten().is_some()
            }
        },
    )
    .await;

    // A member pod (no kubelet: it stays Pending) gets its Certificate: a server-side apply
    // that creates, which the chart's ClusterRole must allow.
    // It is bound to a node in zone-x (no scheduler: the pod names its node), whose zone the
    // operator reads, under the chart's RBAC, and hands the sidecar with its certificate.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let node = json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-x"}}});
    nodes.create(&PostParams::default(), &serde_json::from_value(node).unwrap()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let pod = json!({
        "metadata": {"name": "web-0", "labels": {"app.kubernetes.io/part-of": "payments", "genesis-mesh.io/network": "payments"}},
        "spec": {"serviceAccountName": "default", "nodeName": "node-a", "containers": [{"name": "app", "image": "app:1"}]},
    });
    let pod: Pod =
        pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
    let certs: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "shop", &resource("Certificate"));
    eventually(Duration::from_secs(60), "the member pod's Certificate", op_log, || {
        let certs = certs.clone();
        async move { certs.list(&Default::default()).await.is_ok_and(|l| !l.items.is_empty()) }
    })
    .await;

    // 4. A real sidecar joins through TokenReview with its pod's bound token (what the kubelet
    //    would project), and the issuance lands in the Certificate's status.
    apply(&admin, &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "shop"}})).await;
    let bound: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": ["genesis-mesh.io"], "expirationSeconds": 3600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": pod.metadata.uid},
    }}))
    .unwrap();
    let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), "shop");
    let bound: TokenRequest =
        sa.create_subresource("token", "default", &PostParams::default(), &bound).await.unwrap();
    let bundle = configmaps.get("default-bundle").await.unwrap().data.unwrap()["ca.crt"].clone();
    let bundle_path = cp.dir.path().join("ca.crt");
    std::fs::write(&bundle_path, bundle).unwrap();
    let (peer, api, admin_port) = (free_port(), free_port(), free_port());
    let sidecar_log = cp.dir.path().join("sidecar.log");
    let mut sidecar = spawn(
        &binaries().sidecar,
        &[
            "--node=web-0.shop".into(),
            "--network=payments".into(),
            "--trust-domain=cluster.local".into(),
            format!("--identity-service=127.0.0.1:{identity}"),
            format!("--trust-bundle={}", bundle_path.display()),
            format!("--join-token={}", bound.status.unwrap().token),
            format!("--listen=127.0.0.1:{peer}"),
            format!("--api-listen=127.0.0.1:{api}"),
            format!("--admin-listen=127.0.0.1:{admin_port}"),
        ],
        &sidecar_log,
    );
    let both_logs = || {
        format!(
            "--- sidecar\n{}\n--- operator\n{}",
            std::fs::read_to_string(&sidecar_log).unwrap_or_default(),
            op_log()
        )
    };
    let serial_of = |c: &DynamicObject| c.data["status"]["serial"].as_str().map(str::to_owned);
    eventually(
        Duration::from_secs(60),
        "the issuance in the Certificate's status",
        both_logs,
        || {
            let certs = certs.clone();
            async move { certs.get("web-0").await.is_ok_and(|c| serial_of(&c).is_some()) }
        },
    )
    .await;
    let issued = certs.get("web-0").await.unwrap();
    let serial = serial_of(&issued).unwrap();
    let sidecar_admin = format!("127.0.0.1:{admin_port}");
    let zone = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = genesis_e2e::http(&sidecar_admin, "GET", "/admin/identity", b"");
            if let Ok((200, body)) = answer {
                let v: Value = serde_json::from_slice(&body).unwrap();
                return v["zone"].clone();
            }
            assert!(std::time::Instant::now() < deadline, "the sidecar's admin API: {answer:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(zone, "zone-x", "the sidecar's zone, from its node's label\n{}", both_logs());

    // 5. Server-side-apply field ownership: the reconciles that follow (the certificate is up
    //    to date) must not wipe what the issuance wrote. A restarted operator reconciles
    //    every Certificate at once: restart it, and let it settle.
    let operator_args = operator_args.clone();
    let _ = operator.kill();
    let _ = operator.wait();
    operator = spawn(&binaries().operator, &operator_args, &cp.dir.path().join("operator-2.log"));
    // It leads once the Lease of its killed predecessor expires; then it reconciles the
    // Certificate (counted in its metrics).
    let probe = format!("127.0.0.1:{probes}");
    let restarted_log =
        || std::fs::read_to_string(cp.dir.path().join("operator-2.log")).unwrap_or_default();
    eventually(Duration::from_secs(90), "the restarted operator to reconcile the Certificate", restarted_log, || {
        let probe = probe.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                genesis_e2e::http(&probe, "GET", "/metrics", b"").is_ok_and(|(_, body)| {
                    String::from_utf8_lossy(&body).lines().any(|l| {
                        l.starts_with("genesis_operator_reconciles_total{controller=\"certificate\",result=\"ok\"}")
                            && !l.ends_with(" 0")
                    })
                })
            })
            .await
            .unwrap()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = certs.get("web-0").await.unwrap();
    assert_eq!(
        serial_of(&after).as_deref(),
        Some(serial.as_str()),
        "status after reconciles: {}",
        after.data["status"]
    );
    let issued_serials =
        after.data["status"]["issuedSerials"].as_array().cloned().unwrap_or_default();
    assert!(
        issued_serials.iter().any(|s| s == &json!(serial)),
        "issuedSerials lost the serial: {}",
        after.data["status"]
    );
    assert!(after.data["status"]["notAfter"].is_string(), "{}", after.data["status"]);

    // 6. Revocation through spec.revoked: the authority's CRL lists the serial (every serial
    //    the member was issued), and a second replica started meanwhile does not lead.
    //    The second replica serves the webhook, which the API server itself calls (by URL:
    //    no Service routing here) when a member pod is created.
    let webhook_port = free_port();
    let chart = render_chart(&json!({"operator": {"replicas": 1}}));
    let hooks = chart["manifests"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(t, _)| t.ends_with("webhook.yaml"))
        .map(|(_, text)| text.as_str().unwrap().to_owned())
        .unwrap();
    {
        use k8s_openapi::serde::Deserialize;
        for doc in serde_yaml::Deserializer::from_str(&hooks) {
            let mut v = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            if v["kind"] != "MutatingWebhookConfiguration" {
                continue;
            }
            for h in v["webhooks"].as_array_mut().unwrap() {
                h["clientConfig"] =
                    json!({"url": format!("https://127.0.0.1:{webhook_port}/inject")});
            }
            apply(&admin, &v).await;
        }
    }
    let second_log = cp.dir.path().join("operator-second.log");
    let mut second = spawn(
        &binaries().operator,
        &[
            "run".into(),
            format!("--kubeconfig={}", operator_kc.display()),
            "--namespace=genesis-system".into(),
            format!("--probe-listen=127.0.0.1:{}", free_port()),
            format!("--identity-listen=127.0.0.1:{}", free_port()),
            format!("--webhook-listen=127.0.0.1:{webhook_port}"),
            format!("--identity-service=127.0.0.1:{identity}"),
            "--pod-name=envtest-operator-2".into(),
        ],
        &second_log,
    );
    let second_text = || std::fs::read_to_string(&second_log).unwrap_or_default();
    let hooks_api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(admin.clone());
    eventually(Duration::from_secs(60), "the webhook's caBundle", second_text, || {
        let hooks_api = hooks_api.clone();
        async move {
            hooks_api.list(&Default::default()).await.is_ok_and(|l| {
                !l.items.is_empty()
                    && l.items.iter().all(|c| {
                        c.webhooks.iter().flatten().all(|w| w.client_config.ca_bundle.is_some())
                    })
            })
        }
    })
    .await;
    let injected = json!({
        "metadata": {"name": "web-1", "labels": {"app.kubernetes.io/part-of": "payments", "genesis-mesh.io/network": "payments"}},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "app", "image": "app:1"}]},
    });
    let created = pods
        .create(&PostParams::default(), &serde_json::from_value(injected).unwrap())
        .await
        .unwrap_or_else(|e| {
            panic!("the API server refused the member pod: {e}\n{}", second_text())
        });
    let spec = created.spec.unwrap();
    let all: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.clone())
        .collect();
    assert!(all.iter().any(|n| n == "genesis-sidecar"), "not injected: {all:?}");
    assert_eq!(
        created
            .metadata
            .annotations
            .unwrap_or_default()
            .get("genesis-mesh.io/injected")
            .map(String::as_str),
        Some("payments")
    );

    let revoke = json!({"spec": {"revoked": true}});
    certs.patch("web-0", &PatchParams::default(), &Patch::Merge(&revoke)).await.unwrap();
    let listed = |serial: String| {
        let configmaps = configmaps.clone();
        async move {
            let Some(pem) = configmaps
                .get("default-crl")
                .await
                .ok()
                .and_then(|m| m.data)
                .and_then(|d| d.get("crl.pem").cloned())
            else {
                return false;
            };
            let crl = genesis_trust::Crl::from_pem(&pem).unwrap();
            crl.revoked().iter().any(|s| s.to_string() == serial)
        }
    };
    eventually(Duration::from_secs(60), "the revoked serial on the CRL", restarted_log, || {
        listed(serial.clone())
    })
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), "genesis-system");
    let holder = leases.get("genesis-operator").await.unwrap().spec.unwrap().holder_identity;
    assert_eq!(holder.as_deref(), Some("envtest-operator"), "one leader, the first replica");
    let _ = second.kill();
    let _ = second.wait();

    let log = op_log() + &restarted_log();
    assert!(!log.contains("forbidden"), "the chart's RBAC refused the operator something:\n{log}");
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let _ = operator.kill();
    let _ = operator.wait();
}
