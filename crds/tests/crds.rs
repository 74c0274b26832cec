//! The committed CRDs are what the types generate, are structural apiextensions/v1 objects,
//! every example validates against them (schema and CEL), and every invalid example is refused
//! for its own reason and no other.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{compile_schema, estimate_rule_cost, CompiledSchema, Validator};
use serde::Deserialize;
use serde_json::Value;

const EXPECTED_ERROR: &str = "test.genesis-mesh.io/expected-error";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples_dir() -> PathBuf {
    crate_dir().join("../examples")
}

/// Every YAML document of every `.yaml` file directly in `dir`, with its file name.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                docs.push((file.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    docs
}

fn schema_for(kind: &str) -> Value {
    let crd = genesis_crds::all()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let version = &crd.spec.versions[0];
    serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
        .unwrap()
}

/// Refusals the API server would give, as `path: message` lines: schema first, and CEL rules
/// only for objects that pass the schema (the API server's order of admission).
fn refusals(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("every example has a kind");
    assert_eq!(object["apiVersion"], "genesis-mesh.io/v1alpha1");
    let schema = schema_for(kind);
    let validator =
        jsonschema::draft4::new(&schema).expect("the CRD schema is a valid JSON schema");
    let schema_errors: Vec<String> =
        validator.iter_errors(object).map(|e| format!("{}: {}", e.instance_path(), e)).collect();
    if !schema_errors.is_empty() {
        return schema_errors;
    }
    match Validator::new().validate(&schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| format!("{}: {}", e.field_path, e.message)).collect(),
    }
}

#[test]
fn committed_crds_match_the_generated_ones() {
    // Both copies: `kubectl apply -f crds/` and the Helm chart's crds/.
    for dir in [crate_dir(), crate_dir().join("../charts/genesis-mesh/crds")] {
        for (file, crd) in genesis_crds::all() {
            let path = dir.join(file);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == genesis_crds::to_yaml(&crd),
                "{} is out of date: run `cargo run -p genesis-crds --bin crdgen` and commit the \
                 result",
                path.display()
            );
        }
    }
}

#[test]
fn committed_crds_are_structural_apiextensions_v1_objects() {
    for (file, _) in genesis_crds::all() {
        let text = std::fs::read_to_string(crate_dir().join(file)).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        assert_eq!(crd.spec.group, "genesis-mesh.io");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["genesis".to_owned()][..]));
        assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| s.len() == 1));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{file}: status subresource"
        );
        let columns = version.additional_printer_columns.as_ref().unwrap();
        assert!(
            columns.iter().any(|c| c.name == "Ready") && columns.iter().any(|c| c.name == "Age")
        );
        // kubectl prints a `date` column as the time since it, and a future time (an expiry)
        // as `<invalid>`: only creationTimestamp is a date column.
        for c in columns.iter().filter(|c| c.type_ == "date") {
            assert_eq!(c.json_path, ".metadata.creationTimestamp", "{file}: column {}", c.name);
        }
        let schema = serde_json::to_value(
            version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
        )
        .unwrap();
        let mut problems = Vec::new();
        structural_problems(&schema, "", &mut problems);
        assert!(problems.is_empty(), "{file} is not structural:\n{}", problems.join("\n"));
        let status = &schema["properties"]["status"]["properties"];
        for field in ["observedGeneration", "conditions"] {
            assert!(status.get(field).is_some(), "{file}: status.{field}");
        }
    }
}

/// The structural-schema rules of apiextensions/v1 that a generator can break: every node has
/// a type (or int-or-string / preserve-unknown-fields), no $ref, and inside allOf/anyOf/oneOf/not
/// no type, default, description or additionalProperties.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    if obj.contains_key("$ref") {
        out.push(format!("{path}: $ref"));
    }
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        out.push(format!("{path}: no type"));
    }
    if obj.contains_key("properties")
        && obj.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false))
    {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, branch) in obj.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
        {
            for banned in ["type", "default", "description", "additionalProperties", "nullable"] {
                if branch.get(banned).is_some() {
                    out.push(format!("{path}.{key}[{i}]: {banned} inside a logical junctor"));
                }
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            if path.is_empty() && name == "metadata" {
                continue;
            }
            structural_problems(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_problems(additional, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_api_server_cost_budget() {
    fn walk(
        node: &CompiledSchema,
        raw: &Value,
        path: &str,
        rules: &mut usize,
        out: &mut Vec<String>,
    ) {
        for err in node.compilation_errors() {
            out.push(format!("{path}: {err}"));
        }
        for rule in
            raw.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten()
        {
            *rules += 1;
            let rule = rule["rule"].as_str().unwrap();
            // NB: kube-cel's scope analysis flags comprehension variables (`all(r, ...)`)
            // as unknown; evaluating the examples below exercises scope for real.
            for warning in estimate_rule_cost(rule, node) {
                out.push(format!("{path}: {rule}: {}", warning.message));
            }
        }
        for (name, child) in &node.properties {
            walk(child, &raw["properties"][name], &format!("{path}.{name}"), rules, out);
        }
        if let Some(items) = &node.items {
            walk(items, &raw["items"], &format!("{path}[]"), rules, out);
        }
    }
    let mut rules = 0;
    for (_, crd) in genesis_crds::all() {
        let schema = schema_for(&crd.spec.names.kind);
        let mut problems = Vec::new();
        walk(&compile_schema(&schema), &schema, &crd.spec.names.kind, &mut rules, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    assert!(rules >= 15, "expected the CEL rules of all three CRDs, found {rules}");
}

#[test]
fn every_example_is_accepted_and_deserializes_into_its_type() {
    let docs = documents(&examples_dir());
    let kinds: Vec<&str> = docs.iter().map(|(_, d)| d["kind"].as_str().unwrap()).collect();
    for kind in ["NetworkAuthority", "MeshNetwork", "Certificate"] {
        assert!(kinds.contains(&kind), "examples/ has no {kind}");
    }
    for (file, doc) in &docs {
        let refused = refusals(doc);
        assert!(refused.is_empty(), "{file} is refused:\n{}", refused.join("\n"));
        // The same object, typed, passes the derive's client-side CEL check too.
        match doc["kind"].as_str().unwrap() {
            "NetworkAuthority" => {
                let na: genesis_crds::NetworkAuthority =
                    serde_json::from_value(doc.clone()).unwrap();
                na.validate_cel().unwrap();
            }
            "MeshNetwork" => {
                let mn: genesis_crds::MeshNetwork = serde_json::from_value(doc.clone()).unwrap();
                mn.validate_cel().unwrap();
            }
            "Certificate" => {
                let c: genesis_crds::Certificate = serde_json::from_value(doc.clone()).unwrap();
                c.validate_cel().unwrap();
            }
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
}

#[test]
fn every_invalid_example_is_refused_for_its_own_reason_only() {
    let docs = documents(&examples_dir().join("invalid"));
    assert!(docs.len() >= 20, "expected the invalid examples, found {}", docs.len());
    for (file, doc) in &docs {
        let expected = doc["metadata"]["annotations"][EXPECTED_ERROR]
            .as_str()
            .unwrap_or_else(|| panic!("{file} lacks the {EXPECTED_ERROR} annotation"));
        let refused = refusals(doc);
        assert!(!refused.is_empty(), "{file} was accepted but should fail with {expected:?}");
        for reason in &refused {
            assert!(
                reason.contains(expected),
                "{file}: expected only {expected:?}, but got:\n{}",
                refused.join("\n")
            );
        }
    }
}

#[test]
fn immutable_fields_refuse_changes() {
    let docs = documents(&examples_dir());
    let cert = docs.iter().find(|(_, d)| d["kind"] == "Certificate").unwrap().1.clone();
    let old: genesis_crds::Certificate = serde_json::from_value(cert).unwrap();
    let mut renamed = old.clone();
    renamed.spec.node_name = "mallory".into();
    let err = renamed.validate_cel_update(&old).unwrap_err();
    assert!(err.iter().any(|e| e.message.contains("nodeName is immutable")), "{err:?}");
    let mut revoked = old.clone();
    revoked.spec.revoked = true;
    revoked.validate_cel_update(&old).expect("revoking is a legal update");

    let na = docs.iter().find(|(_, d)| d["kind"] == "NetworkAuthority").unwrap().1.clone();
    let old: genesis_crds::NetworkAuthority = serde_json::from_value(na).unwrap();
    let mut moved = old.clone();
    moved.spec.trust_domain = "other.local".into();
    let err = moved.validate_cel_update(&old).unwrap_err();
    assert!(err.iter().any(|e| e.message.contains("trustDomain is immutable")), "{err:?}");
}

#[test]
fn minimal_objects_get_the_documented_defaults() {
    let cert: genesis_crds::Certificate = serde_json::from_value(serde_json::json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "m"}, "spec": {"networkRef": {"name": "n"}, "nodeName": "m"}
    }))
    .unwrap();
    assert_eq!(cert.spec.delivery, genesis_crds::Delivery::Csr);
    assert_eq!(cert.spec.role, genesis_crds::MemberRole::Client);
    assert!(!cert.spec.revoked);
    let na: genesis_crds::NetworkAuthority = serde_json::from_value(serde_json::json!({
        "apiVersion": "genesis-mesh.io/v1alpha1", "kind": "NetworkAuthority",
        "metadata": {"name": "d"}, "spec": {"trustDomain": "cluster.local"}
    }))
    .unwrap();
    assert_eq!(na.spec.certificate_defaults.duration, "24h");
    assert_eq!(na.spec.crl_validity, "12h");
    assert_eq!(na.spec.key_algorithm, genesis_crds::KeyAlgorithm::EcdsaP256);
    // The schema carries the same defaults, so the API server fills them in too.
    let schema = schema_for("NetworkAuthority");
    assert_eq!(schema["properties"]["spec"]["properties"]["crlValidity"]["default"], "12h");
}
