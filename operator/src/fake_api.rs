//! An in-memory Kubernetes API for tests: a tower service that stores objects by their REST
//! path, answers GET (object or collection), JSON merge PATCH and server-side apply PATCH (a
//! resourceVersion in a patch is a precondition), and 404s the rest with a Status, as the API
//! server does. A real `kube::Client` on top cannot tell the difference. Compiled for this
//! crate's tests and, with the `fake-api` feature, for other crates' tests.
//!
//! Where the in-memory API once hid what a real API server showed, it now models it:
//! - **RBAC** ([`FakeApi::enforce`]): every request is authorised against a ServiceAccount's
//!   rules, as the chart grants them, and refused with the API server's own 403 message; an
//!   apply that creates needs `create` as well as `patch`.
//! - **Server-side apply field ownership**: each field manager owns the fields it applied
//!   (per object and subresource; `conditions` entries by `type`); a field that a manager
//!   applied before and leaves out of its next apply is removed, unless another manager owns
//!   it too. Merge patches own what they change, as an Update does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde_json::{json, Value};

#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Every PATCH received: (path, body).
    pub patches: Arc<Mutex<Vec<(String, Value)>>>,
    /// TokenReview answers: token → status (unknown tokens are not authenticated).
    pub token_reviews: Arc<Mutex<BTreeMap<String, Value>>>,
    versions: Arc<std::sync::atomic::AtomicU64>,
    /// How many of the next patches that name a resourceVersion lose a race: another writer
    /// changes the object first, so they get 409 Conflict.
    pub races: Arc<std::sync::atomic::AtomicUsize>,
    /// Field ownership: (object path, manager) → the field paths it owns.
    owners: Arc<Mutex<Owners>>,
    /// The rules requests are authorised against, when set.
    rbac: Arc<Mutex<Option<Rbac>>>,
}

/// One ServiceAccount's RBAC: ClusterRole rules apply everywhere, Role rules in their
/// namespace. Rules are `rbac.authorization.k8s.io/v1` PolicyRules as JSON.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    /// The user the API server names in a refusal.
    pub user: String,
    pub cluster: Vec<Value>,
    pub namespaced: Vec<(String, Vec<Value>)>,
}

/// What the API server authorises a request by.
#[derive(Debug, PartialEq, Eq)]
struct Attributes {
    verb: &'static str,
    group: String,
    /// With its subresource: `certificates/status`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn attributes(method: &http::Method, path: &str, query: &str) -> Option<Attributes> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        other => (None, other),
    };
    let (resource, name, sub) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some((*name).to_owned()), None),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), Some(*sub)),
        _ => return None,
    };
    let watching = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if name.is_some() => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => return None,
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    // POST names its object in the body; the collection is the path.
    let name = if verb == "create" { None } else { name };
    Some(Attributes { verb, group, resource, namespace, name })
}

fn rule_allows(rule: &Value, a: &Attributes, verb: &str) -> bool {
    let has = |key: &str, want: &str| {
        rule[key].as_array().into_iter().flatten().any(|v| v == want || v == "*")
    };
    let names: Vec<&str> =
        rule["resourceNames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    has("apiGroups", &a.group)
        && has("resources", &a.resource)
        && has("verbs", verb)
        && (names.is_empty() || a.name.as_deref().is_some_and(|n| names.contains(&n)))
}

impl Rbac {
    fn allows(&self, a: &Attributes, verb: &str) -> bool {
        self.cluster.iter().any(|r| rule_allows(r, a, verb))
            || self.namespaced.iter().any(|(ns, rules)| {
                a.namespace.as_deref() == Some(ns.as_str())
                    && rules.iter().any(|r| rule_allows(r, a, verb))
            })
    }

    /// The API server's refusal, word for word.
    fn forbidden(&self, a: &Attributes, verb: &str) -> (u16, Value) {
        let (resource, sub) = a.resource.split_once('/').unwrap_or((&a.resource, ""));
        let qualified = if a.group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{}", a.group)
        };
        let qualified = if sub.is_empty() { qualified } else { format!("{qualified}/{sub}") };
        let what = match &a.name {
            Some(n) => format!("{qualified} \"{n}\" is forbidden"),
            None => format!("{qualified} is forbidden"),
        };
        let scope = match &a.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let message = format!(
            "{what}: User \"{}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            self.user, a.resource, a.group
        );
        (
            403,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": "Forbidden", "code": 403}),
        )
    }
}

/// The operator's RBAC as the chart grants it (`charts/genesis-mesh/templates/rbac.yaml`,
/// its Helm expressions filled in), for a release in `namespace`.
#[cfg(test)]
pub fn chart_rbac(namespace: &str) -> Rbac {
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/genesis-mesh/templates/rbac.yaml");
    let template = std::fs::read_to_string(path).unwrap();
    // The chart's defaults: the first branch of each `if`, never its `else`.
    let mut in_else = false;
    let text: String = template
        .lines()
        .filter(|l| {
            let t = l.trim();
            if t.starts_with("{{") && t.ends_with("}}") {
                if t.contains(" else ") || t.ends_with("else }}") {
                    in_else = true;
                } else if t.contains(" end ") || t.ends_with("end }}") {
                    in_else = false;
                }
                return false;
            }
            !in_else
        })
        .map(|l| {
            l.replace("{{ .Release.Namespace }}", namespace)
                .replace("{{ include \"genesis-mesh.serviceAccount\" . }}", "genesis-operator")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.contains("{{"), "rbac.yaml has a Helm expression the test cannot fill: {text}");
    let mut rbac = Rbac {
        user: format!("system:serviceaccount:{namespace}:genesis-operator"),
        ..Rbac::default()
    };
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
        let rules = value["rules"].as_array().cloned().unwrap_or_default();
        match value["kind"].as_str() {
            Some("ClusterRole") => rbac.cluster.extend(rules),
            Some("Role") => rbac.namespaced.push((namespace.to_owned(), rules)),
            _ => {}
        }
    }
    rbac
}

fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if lower.ends_with('s') => lower,
        None => format!("{lower}s"),
    }
}

/// The REST path of an object, and of its collection.
fn paths(obj: &Value) -> (String, String) {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let base =
        if api_version == "v1" { "/api/v1".to_owned() } else { format!("/apis/{api_version}") };
    let ns = obj["metadata"]["namespace"].as_str().map(|n| format!("/namespaces/{n}"));
    let plural = plural(obj["kind"].as_str().unwrap());
    let collection = format!("{base}{}/{plural}", ns.unwrap_or_default());
    let name = obj["metadata"]["name"].as_str().unwrap();
    (format!("{collection}/{name}"), format!("{base}/{plural}"))
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn conflict_status(path: &str) -> (u16, Value) {
    (
        409,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": "Conflict", "code": 409,
               "message": format!("{path}: the object has been modified")}),
    )
}

/// One step of a field path: a map key, or an entry of a `conditions` list (a list-type map
/// keyed by `type`, as the CRDs declare it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Condition(String),
}

type FieldPath = Vec<Step>;

/// (object path, manager) → the fields it owns.
type Owners = BTreeMap<(String, String), std::collections::BTreeSet<FieldPath>>;

/// Identity and bookkeeping fields nobody owns.
fn unowned(path: &[Step]) -> bool {
    let key = |i: usize| match path.get(i) {
        Some(Step::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    matches!(key(0), Some("apiVersion" | "kind"))
        || (key(0) == Some("metadata")
            && matches!(
                key(1),
                Some(
                    "name"
                        | "namespace"
                        | "resourceVersion"
                        | "uid"
                        | "generation"
                        | "managedFields"
                        | "creationTimestamp"
                        | "deletionTimestamp"
                )
            ))
}

/// The leaf fields `value` sets (a null sets nothing: in a merge patch it deletes).
fn fields_of(
    value: &Value,
    prefix: &mut FieldPath,
    out: &mut std::collections::BTreeSet<FieldPath>,
) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(Step::Key(k.clone()));
                match v {
                    Value::Array(items) if k == "conditions" => {
                        for item in items {
                            let t = item["type"].as_str().unwrap_or_default().to_owned();
                            prefix.push(Step::Condition(t));
                            out.insert(prefix.clone());
                            prefix.pop();
                        }
                    }
                    Value::Null => {}
                    _ => fields_of(v, prefix, out),
                }
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() && !unowned(prefix) => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

fn fields(value: &Value) -> std::collections::BTreeSet<FieldPath> {
    let mut out = std::collections::BTreeSet::new();
    fields_of(value, &mut Vec::new(), &mut out);
    out
}

fn value_at<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Condition(t) => v.as_array()?.iter().find(|c| c["type"] == t.as_str()),
    })
}

fn remove_at(value: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut v = value;
    for step in parents {
        let next = match step {
            Step::Key(k) => v.get_mut(k),
            Step::Condition(t) => {
                v.as_array_mut().and_then(|a| a.iter_mut().find(|c| c["type"] == t.as_str()))
            }
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    match last {
        Step::Key(k) => {
            if let Some(map) = v.as_object_mut() {
                map.remove(k);
            }
        }
        Step::Condition(t) => {
            if let Some(items) = v.as_array_mut() {
                items.retain(|c| c["type"] != t.as_str());
            }
        }
    }
}

/// An applied `conditions` list merged into the stored one by `type` (stored order kept,
/// new types appended), as a list-type map merges.
fn merge_conditions(stored: &Value, applied: &Value) -> Value {
    let mut merged: Vec<Value> = stored.as_array().cloned().unwrap_or_default();
    for c in applied.as_array().into_iter().flatten() {
        match merged.iter_mut().find(|m| m["type"] == c["type"]) {
            Some(m) => *m = c.clone(),
            None => merged.push(c.clone()),
        }
    }
    Value::Array(merged)
}

impl FakeApi {
    /// Records that `manager` wrote `patch` into the object at `path` (an apply when
    /// `applying`, else an Update) and returns the patch to merge: for an apply, the fields
    /// this manager applied before and leaves out now are removed from `stored` unless
    /// another manager owns them, and `conditions` are merged by type.
    fn own(
        &self,
        path: &str,
        manager: &str,
        applying: bool,
        stored: Option<&mut Value>,
        mut patch: Value,
    ) -> Value {
        let mut owners = self.owners.lock().unwrap();
        let manager = if applying { manager.to_owned() } else { format!("update:{manager}") };
        let key = (path.to_owned(), manager.clone());
        let applied = fields(&patch);
        if let Some(stored) = stored {
            let before = stored.clone();
            if applying {
                let dropped: Vec<FieldPath> = owners
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter(|f| !applied.contains(*f))
                    .cloned()
                    .collect();
                for f in dropped {
                    let shared = owners
                        .iter()
                        .any(|((p, m), owned)| p == path && *m != manager && owned.contains(&f));
                    if !shared {
                        remove_at(stored, &f);
                    }
                }
                if patch["status"]["conditions"].is_array() {
                    patch["status"]["conditions"] = merge_conditions(
                        &stored["status"]["conditions"],
                        &patch["status"]["conditions"],
                    );
                }
            }
            // A field whose value changes moves to this manager; an unchanged one is shared.
            for ((p, m), owned) in owners.iter_mut() {
                if p == path && *m != manager {
                    owned.retain(|f| {
                        !applied.contains(f) || value_at(&before, f) == value_at(&patch, f)
                    });
                }
            }
        }
        if applying {
            owners.insert(key, applied);
        } else {
            owners.entry(key).or_default().extend(applied);
        }
        patch
    }

    /// Authorises every later request against `rbac` (seeding with [`FakeApi::put`] is not a
    /// request and stays unchecked).
    pub fn enforce(&self, rbac: Rbac) {
        *self.rbac.lock().unwrap() = Some(rbac);
    }

    /// Stores (or replaces) an object.
    pub fn put(&self, obj: Value) {
        let (path, _) = paths(&obj);
        self.objects.lock().unwrap().insert(path, obj);
    }

    /// The object at `path`, if stored.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    /// Deletes the object at `path` (as the API server does once no finalizer is left).
    pub fn remove(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().remove(path)
    }

    /// Paths of the stored objects under `prefix`.
    pub fn paths_under(&self, prefix: &str) -> Vec<String> {
        self.objects.lock().unwrap().keys().filter(|p| p.starts_with(prefix)).cloned().collect()
    }

    /// Merges `patch` into the object at `path`.
    pub fn update(&self, path: &str, patch: Value) {
        let mut objects = self.objects.lock().unwrap();
        merge(objects.get_mut(path).unwrap(), &patch);
    }

    /// The refusal of a request the enforced RBAC does not allow (`creating`: an apply that
    /// would create the object, which needs `create` too).
    fn authorise(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        creating: bool,
    ) -> Option<(u16, Value)> {
        let rbac = self.rbac.lock().unwrap();
        let rbac = rbac.as_ref()?;
        let a = attributes(method, uri.path(), uri.query().unwrap_or_default())?;
        let verbs: &[&str] = if creating { &[a.verb, "create"] } else { &[a.verb] };
        verbs.iter().find(|v| !rbac.allows(&a, v)).map(|v| rbac.forbidden(&a, v))
    }

    /// The answer to one request.
    pub fn answer(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let path = uri.path();
        let manager = uri
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("fieldManager="))
            .unwrap_or_default()
            .to_owned();
        let mut objects = self.objects.lock().unwrap();
        // The status subresource is part of the stored object here.
        let object_path = path.strip_suffix("/status").unwrap_or(path);
        let applying = content_type.starts_with("application/apply-patch");
        if let Some(refusal) =
            self.authorise(method, uri, applying && !objects.contains_key(object_path))
        {
            return refusal;
        }
        if method == http::Method::POST || method == http::Method::PUT {
            return self.write(&mut objects, method, path, body, &manager);
        }
        if method == http::Method::PATCH {
            let patch: Value = serde_json::from_slice(body).unwrap();
            self.patches.lock().unwrap().push((path.to_owned(), patch.clone()));
            let owner =
                if path.ends_with("/status") { format!("{manager}/status") } else { manager };
            let guarded = patch["metadata"]["resourceVersion"].is_string();
            let race = |n: usize| n.checked_sub(1);
            use std::sync::atomic::Ordering::SeqCst;
            if guarded && self.races.fetch_update(SeqCst, SeqCst, race).is_ok() {
                if let Some(obj) = objects.get_mut(object_path) {
                    let version = self.versions.fetch_add(1, SeqCst) + 1;
                    obj["metadata"]["resourceVersion"] = json!(version.to_string());
                }
                return conflict_status(path);
            }
            return match objects.get_mut(object_path) {
                // A patch that names a resourceVersion is a precondition (optimistic
                // concurrency), as in the API server.
                Some(obj)
                    if patch["metadata"]["resourceVersion"].is_string()
                        && patch["metadata"]["resourceVersion"]
                            != obj["metadata"]["resourceVersion"] =>
                {
                    conflict_status(path)
                }
                Some(obj) => {
                    let patch = self.own(object_path, &owner, applying, Some(obj), patch);
                    merge(obj, &patch);
                    let version = self.versions.fetch_add(1, SeqCst) + 1;
                    obj["metadata"]["resourceVersion"] = json!(version.to_string());
                    (200, obj.clone())
                }
                // Server-side apply creates what is missing.
                None if applying => {
                    let patch = self.own(object_path, &owner, true, None, patch);
                    objects.insert(object_path.to_owned(), patch.clone());
                    (201, patch)
                }
                None => not_found(path),
            };
        }
        if let Some(obj) = objects.get(path) {
            return (200, obj.clone());
        }
        let is_collection = [
            "networkauthorities",
            "meshnetworks",
            "certificates",
            "secrets",
            "configmaps",
            "pods",
            "namespaces",
            "leases",
        ]
        .iter()
        .any(|p| path.ends_with(&format!("/{p}")));
        if !is_collection {
            return not_found(path);
        }
        // A collection: all namespaces (`/apis/g/v/plural`) or one (`.../namespaces/ns/plural`).
        let items: Vec<Value> = objects
            .values()
            .filter(|o| {
                let (obj_path, all) = paths(o);
                all == path || obj_path.rsplit_once('/').is_some_and(|(c, _)| c == path)
            })
            .cloned()
            .collect();
        (
            200,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
        )
    }

    /// POST (create: 409 when it exists) and PUT (replace: 409 unless the body's
    /// resourceVersion is the stored one), which is what optimistic concurrency (leader
    /// election) relies on. Every write gets a new resourceVersion.
    fn write(
        &self,
        objects: &mut BTreeMap<String, Value>,
        method: &http::Method,
        path: &str,
        body: &[u8],
        manager: &str,
    ) -> (u16, Value) {
        let mut obj: Value = serde_json::from_slice(body).unwrap();
        if path.ends_with("/tokenreviews") {
            let token = obj["spec"]["token"].as_str().unwrap_or_default().to_owned();
            let status = self.token_reviews.lock().unwrap().get(&token).cloned().unwrap_or_else(
                || json!({"authenticated": false, "error": "invalid bearer token"}),
            );
            obj["status"] = status;
            return (201, obj);
        }
        let target = if method == http::Method::POST {
            format!("{path}/{}", obj["metadata"]["name"].as_str().unwrap_or_default())
        } else {
            path.to_owned()
        };
        let stored_version = objects.get(&target).map(|o| o["metadata"]["resourceVersion"].clone());
        let conflict = match (method == http::Method::POST, &stored_version) {
            (true, Some(_)) => true,
            (false, None) => return not_found(path),
            (false, Some(v)) => *v != obj["metadata"]["resourceVersion"],
            (true, None) => false,
        };
        if conflict {
            return conflict_status(&target);
        }
        let version = self.versions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        obj["metadata"]["resourceVersion"] = json!(version.to_string());
        // A create or replace owns the whole object.
        let mut owners = self.owners.lock().unwrap();
        owners.retain(|(p, _), _| *p != target);
        owners.insert((target.clone(), format!("update:{manager}")), fields(&obj));
        drop(owners);
        objects.insert(target, obj.clone());
        (if method == http::Method::POST { 201 } else { 200 }, obj)
    }

    /// A controller context on this API: the system clock, no Event recorder. Call inside a
    /// tokio runtime.
    pub fn context(&self, operator_namespace: &str) -> Arc<crate::controller::Context> {
        Arc::new(crate::controller::Context {
            client: self.client(),
            operator_namespace: operator_namespace.to_owned(),
            now: Arc::new(std::time::SystemTime::now),
            recorder: None,
        })
    }

    /// A client whose every request this API answers; call inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let content_type = parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let (status, value) = api.answer(&parts.method, &parts.uri, &content_type, &body);
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }
}

#[cfg(test)]
mod tests;
