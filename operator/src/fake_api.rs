//! An in-memory Kubernetes API for tests: a tower service that stores objects by their REST
//! path, answers GET (object or collection), JSON merge PATCH and server-side apply PATCH (as a
//! merge; a resourceVersion in a patch is a precondition), and 404s the rest with a Status,
//! as the API server does. A real `kube::Client` on top cannot tell the difference. Compiled
//! for this crate's tests and, with the `fake-api` feature, for other crates' tests.

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
    /// Which field manager last applied each condition: (object path, type) → manager.
    condition_owners: Arc<Mutex<BTreeMap<(String, String), String>>>,
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

impl FakeApi {
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

    /// Server-side apply of `conditions` (`x-kubernetes-list-type: map`, key `type`): the
    /// applied list replaces what this manager applied before, and keeps what other managers
    /// applied. Returns the list to store.
    fn apply_conditions(
        &self,
        path: &str,
        manager: &str,
        stored: &Value,
        applied: &Value,
    ) -> Value {
        let mut owners = self.condition_owners.lock().unwrap();
        let applied: Vec<Value> = applied.as_array().cloned().unwrap_or_default();
        let types: Vec<String> =
            applied.iter().filter_map(|c| c["type"].as_str().map(str::to_owned)).collect();
        let mut kept: Vec<Value> = stored
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let t = c["type"].as_str().unwrap_or_default().to_owned();
                let owner = owners.get(&(path.to_owned(), t.clone()));
                !types.contains(&t) && owner.is_some_and(|o| o != manager)
            })
            .cloned()
            .collect();
        owners.retain(|(p, _), o| p != path || o != manager);
        for t in types {
            owners.insert((path.to_owned(), t), manager.to_owned());
        }
        kept.extend(applied);
        Value::Array(kept)
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
        if method == http::Method::POST || method == http::Method::PUT {
            return self.write(&mut objects, method, path, body);
        }
        if method == http::Method::PATCH {
            let mut patch: Value = serde_json::from_slice(body).unwrap();
            self.patches.lock().unwrap().push((path.to_owned(), patch.clone()));
            // The status subresource is part of the stored object here.
            let object_path = path.strip_suffix("/status").unwrap_or(path);
            let applying = content_type.starts_with("application/apply-patch");
            if applying && patch["status"]["conditions"].is_array() {
                let stored = objects
                    .get(object_path)
                    .map(|o| o["status"]["conditions"].clone())
                    .unwrap_or(Value::Null);
                let applied = &patch["status"]["conditions"];
                patch["status"]["conditions"] =
                    self.apply_conditions(object_path, &manager, &stored, applied);
            }
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
                    merge(obj, &patch);
                    let version =
                        self.versions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    obj["metadata"]["resourceVersion"] = json!(version.to_string());
                    (200, obj.clone())
                }
                // Server-side apply creates what is missing.
                None if applying => {
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
