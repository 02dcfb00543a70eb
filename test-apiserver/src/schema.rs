//! Validation of objects against a CRD's structural schema, as the API server does it: types,
//! `required`, `enum`, bounds, lengths, patterns, `nullable`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`; unknown fields are pruned (and reported, so a test
//! can be strict as `kubectl apply` is); defaults are applied; `x-kubernetes-validations` (CEL)
//! are evaluated with kube-cel.
//!
//! Simplified against the real server: `format` is not checked, `x-kubernetes-list-type` and
//! map keys are not enforced, and CEL cost limits are not computed.

use serde_json::{Map, Value};

/// What validation found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdict {
    /// Field errors, as the API server words them: `path: Invalid value: …: message`.
    pub errors: Vec<String>,
    /// Paths of unknown fields that were pruned.
    pub pruned: Vec<String>,
}

impl Verdict {
    /// No error and nothing pruned.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.pruned.is_empty()
    }
}

/// The `openAPIV3Schema` of the served version of a CRD (as JSON).
pub fn crd_schema(crd: &Value) -> Option<&Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))?
        .pointer("/schema/openAPIV3Schema")
}

/// Validates `object` in place: prunes unknown fields, applies defaults, checks everything.
pub fn validate(schema: &Value, object: &mut Value) -> Verdict {
    let mut verdict = Verdict::default();
    // The root's metadata, apiVersion and kind are the server's business.
    walk(schema, object, "", &mut verdict, true);
    if verdict.errors.is_empty() {
        let validator = kube_cel::Validator::new();
        if let Err(errors) = validator.validate(schema, object, None) {
            for e in errors.iter() {
                let path = if e.field_path.is_empty() { "<root>".to_owned() } else { e.field_path.clone() };
                verdict.errors.push(format!("{path}: Invalid value: \"object\": {}", e.message));
            }
        }
    }
    verdict
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn walk(schema: &Value, value: &mut Value, path: &str, v: &mut Verdict, root: bool) {
    let nullable = schema.get("nullable").and_then(Value::as_bool).unwrap_or(false);
    if value.is_null() {
        if !nullable && schema.get("type").is_some() {
            v.errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}",
                schema["type"].as_str().unwrap_or("?")
            ));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool).unwrap_or(false);
    if int_or_string {
        if !matches!(type_name(value), "integer" | "string") {
            v.errors.push(format!(
                "{path}: Invalid value: {}: {path} in body must be of type integer or string",
                shown(value)
            ));
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected || (expected == "number" && actual == "integer");
        if !ok {
            v.errors.push(format!("{path}: Invalid type. Expected: {expected}, given: {actual}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(shown).collect();
        v.errors.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            shown(value),
            list.join(", ")
        ));
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool).unwrap_or(false);
                if x < min || (exclusive && x == min) {
                    v.errors.push(format!(
                        "{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool).unwrap_or(false);
                if x > max || (exclusive && x == max) {
                    v.errors.push(format!(
                        "{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                v.errors.push(format!(
                    "{path}: Invalid value: {s:?}: {path} in body should be at least {min} chars long"
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                v.errors.push(format!("{path}: Too long: may not be more than {max} bytes"));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => v.errors.push(format!(
                        "{path}: Invalid value: {s:?}: {path} in body should match '{pattern}'"
                    )),
                    Ok(_) => {}
                    Err(e) => v.errors.push(format!("{path}: schema pattern does not compile: {e}")),
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                v.errors.push(format!(
                    "{path}: Invalid value: {len}: {path} in body should have at least {min} items"
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                v.errors.push(format!("{path}: Too many: {len}: must have at most {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), v, false);
                }
            }
        }
        Value::Object(map) => object(schema, map, path, v, root),
        _ => {}
    }
}

fn object(schema: &Value, map: &mut Map<String, Value>, path: &str, v: &mut Verdict, root: bool) {
    let preserve =
        schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool).unwrap_or(false);
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    // Defaults first, as the server does (defaulting runs before validation).
    if let Some(props) = properties {
        for (key, prop) in props {
            if !map.contains_key(key)
                && let Some(default) = prop.get("default")
            {
                map.insert(key.clone(), default.clone());
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child = join(path, &key);
        if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
        match child_schema {
            Some(s) => {
                if let Some(value) = map.get_mut(&key) {
                    walk(s, value, &child, v, false);
                }
            }
            None if preserve => {}
            None => {
                map.remove(&key);
                v.pruned.push(child);
            }
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                v.errors.push(format!("{}: Required value", join(path, r)));
            }
        }
    }
}
