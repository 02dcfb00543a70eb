//! Strategic merge patch (`application/strategic-merge-patch+json`) for built-in kinds, following
//! k8s.io/apimachinery's `strategicpatch.StrategicMergePatch` (the server side: parallel deletion
//! lists merged, unmatched `null`s ignored). Pure functions over `serde_json::Value`; no I/O.
//!
//! Supported: `null` deletes a key; maps merge recursively; `$patch: replace|delete` in a map;
//! `{"<mergeKey>": .., "$patch": "delete"}` and `{"$patch": "replace"}` items in a merged list;
//! `$deleteFromPrimitiveList/<field>`; `$setElementOrder/<field>` (validated and used for ordering);
//! `$retainKeys`. Merged lists are ordered as apimachinery orders them: without `$setElementOrder`,
//! the patch's items come in patch order and the items only the server had keep their relative
//! order, interleaved by the server order where both are known (so a brand-new item lands before
//! the server-only items, as `kubectl patch` shows). Error texts are apimachinery's.
//!
//! Simplified compared with the real server:
//! - Patch metadata comes from [`Shape`] instead of Go struct tags: `ListType::Map(keys)` is
//!   `patchStrategy: merge` with `patchMergeKey` = the first key, `ListType::Set` is `merge` on a
//!   primitive list, `ListType::Atomic` is replace. `metadata.finalizers` (merge) and
//!   `metadata.ownerReferences` (merge key `uid`) are built in. Maps always merge (no map-level
//!   `patchStrategy: replace`, no `retainKeys` strategy tag; the `$retainKeys` directive works).
//! - `$patch: delete` in a map removes the key (apimachinery leaves an empty map, which typed
//!   built-in objects then mostly drop); at the top level it is an error rather than an empty object.
//! - Values the patch adds (new keys, new list items, replaced values) are cleaned of `null`s and of
//!   directives at every depth; apimachinery only drops `$patch` maps/items there.
//! - `$setElementOrder` reorders only merged (set / list-map) lists; numbers compare as JSON values
//!   (no int64/float64 distinction).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::shape::{ListType, Shape};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

const ERR_BAD_JSON_DOC: &str = "invalid JSON document";
const ERR_NO_LIST_OF_LISTS: &str = "lists of lists are not supported";
const ERR_BAD_PRIMITIVE_LIST: &str = "invalid patch format of primitive list";
const ERR_BAD_RETAIN_KEYS: &str = "invalid patch format of retainKeys";
const ERR_BAD_SET_ELEMENT_ORDER: &str = "invalid patch format of setElementOrder list";

/// Applies a strategic merge patch to `original`, with list merge behaviour from `shape`
/// (Map(keys) = merge items by the first key, as patchMergeKey; Set = union of primitives, as
/// patchStrategy merge on a primitive list; Atomic = replace).
pub fn apply_patch(original: &Value, patch: &Value, shape: &dyn Shape) -> Result<Value, String> {
    let Some(original) = original.as_object() else { return Err(ERR_BAD_JSON_DOC.to_string()) };
    let Some(patch) = patch.as_object() else { return Err(ERR_BAD_JSON_DOC.to_string()) };
    match merge_map(original.clone(), patch.clone(), &mut Vec::new(), shape)? {
        Some(merged) => Ok(Value::Object(merged)),
        None => {
            Err("unable to apply patch: \"$patch: delete\" at the top level would delete the whole object"
                .into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Maps
// ---------------------------------------------------------------------------------------------

/// Merges `patch` into `original`; None means the map is deleted (`$patch: delete`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> Result<Option<Map<String, Value>>, String> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        return match directive.as_str() {
            Some("replace") => {
                patch.remove(DIRECTIVE);
                Ok(Some(clean_map(patch)))
            }
            Some("delete") => Ok(None),
            _ => Err(err_bad_patch_type(directive, &patch)),
        };
    }

    apply_retain_keys(&mut original, &mut patch)?;
    merge_ordered_lists(&mut original, &mut patch, fields, shape)?;

    for (patch_key, patch_value) in patch {
        let (key, is_delete_list) = match patch_key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            Some(rest) => (extract_key(rest, ERR_BAD_PRIMITIVE_LIST)?, true),
            None => (patch_key, false),
        };
        if patch_value.is_null() {
            remove_key(&mut original, &key);
            continue;
        }
        let same_kind = original.get(&key).map(|current| json_kind(current) == json_kind(&patch_value));
        if same_kind != Some(true) {
            // Absent from the original, or of another type: the patch value replaces it.
            if !is_delete_list {
                insert_clean(&mut original, key, patch_value);
            }
            continue;
        }
        match patch_value {
            Value::Object(patch_map) => {
                let current = match original.get_mut(&key) {
                    Some(Value::Object(m)) => std::mem::take(m),
                    _ => Map::new(),
                };
                fields.push(key.clone());
                let merged = merge_map(current, patch_map, fields, shape);
                fields.pop();
                match merged? {
                    Some(m) => {
                        original.insert(key, Value::Object(m));
                    }
                    None => remove_key(&mut original, &key),
                }
            }
            Value::Array(patch_list) => {
                let current = match original.get_mut(&key) {
                    Some(Value::Array(items)) => std::mem::take(items),
                    _ => Vec::new(),
                };
                fields.push(key.clone());
                let lt = list_type(shape, fields);
                let merged = merge_list(current, patch_list, &lt, is_delete_list, fields, shape);
                fields.pop();
                original.insert(key, Value::Array(merged?));
            }
            patch_value => {
                if !is_delete_list {
                    insert_clean(&mut original, key, patch_value);
                }
            }
        }
    }
    Ok(Some(original))
}

/// `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`: the part after the prefix must
/// be `/<field>`.
fn extract_key(rest: &str, error: &str) -> Result<String, String> {
    match rest.strip_prefix('/') {
        Some(field) if !field.is_empty() => Ok(field.to_string()),
        _ => Err(error.to_string()),
    }
}

fn insert_clean(map: &mut Map<String, Value>, key: String, value: Value) {
    match clean(value) {
        Some(v) => {
            map.insert(key, v);
        }
        None => remove_key(map, &key),
    }
}

/// Removes a key without disturbing the order of the others (serde_json's `remove` swaps when
/// `preserve_order` is enabled).
fn remove_key(map: &mut Map<String, Value>, key: &str) {
    map.retain(|k, _| k != key);
}

/// `$retainKeys`: keys of the original missing from the list are cleared; every key the patch sets
/// must be in the list.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), String> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else { return Ok(()) };
    let Some(retain) = retain.as_array() else { return Err(ERR_BAD_RETAIN_KEYS.to_string()) };
    let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null() || k.starts_with(DELETE_FROM_PRIMITIVE_LIST) || k.starts_with(SET_ELEMENT_ORDER) {
            continue;
        }
        if !listed(k) {
            return Err(ERR_BAD_RETAIN_KEYS.to_string());
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// $setElementOrder
// ---------------------------------------------------------------------------------------------

/// Handles every `$setElementOrder/<field>` of the patch together with the `<field>` list: merges
/// them and orders the result by the directive (patch items), keeping server-only items in their
/// live order. Both keys leave the patch.
fn merge_ordered_lists(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> Result<(), String> {
    let directives: Vec<String> =
        patch.keys().filter(|k| k.starts_with(SET_ELEMENT_ORDER)).cloned().collect();
    for directive in directives {
        let Some(order) = patch.remove(&directive) else { continue };
        let Value::Array(order) = order else { return Err(err_bad_arg_type("[]interface {}", &order)) };
        let key = extract_key(&directive[SET_ELEMENT_ORDER.len()..], ERR_BAD_SET_ELEMENT_ORDER)?;
        let current = match original.get(&key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.clone()),
            Some(other) => return Err(err_bad_arg_type("[]interface {}", other)),
        };
        let patched = match patch.get(&key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.clone()),
            Some(other) => return Err(err_bad_arg_type("[]interface {}", other)),
        };
        fields.push(key.clone());
        let result = order_list(current, patched, &order, fields, shape);
        fields.pop();
        if let Some(list) = result? {
            original.insert(key.clone(), Value::Array(list));
        }
        patch.remove(&key);
    }
    Ok(())
}

fn order_list(
    current: Option<Vec<Value>>,
    patched: Option<Vec<Value>>,
    order: &[Value],
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> Result<Option<Vec<Value>>, String> {
    let lt = list_type(shape, fields);
    let merge_key = merge_key_of(&lt);
    validate_patch_with_set_order_list(patched.as_deref().unwrap_or_default(), order, merge_key)?;
    let server = current.clone().unwrap_or_default();
    let merged = match (current, patched.clone()) {
        (Some(c), None) => c,
        (None, Some(p)) => clean_list(p),
        (Some(c), Some(p)) => merge_list(c, p, &lt, false, fields, shape)?,
        (None, None) => return Ok(None),
    };
    if matches!(lt, ListType::Atomic) {
        return Ok(Some(merged));
    }
    let kind = match element_kind(&server, patched.as_deref().unwrap_or_default()) {
        Ok(kind) => kind,
        Err(_) if server.is_empty() && patched.as_ref().is_none_or(Vec::is_empty) => return Ok(Some(merged)),
        Err(e) => return Err(e),
    };
    let key = if kind == Kind::Object { merge_key } else { None };
    let (patch_items, server_only) = partition(merged, order, key)?;
    Ok(Some(normalize_element_order(patch_items, server_only, order, &server, key, kind)?))
}

fn validate_patch_with_set_order_list(
    patch: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), String> {
    if order.is_empty() || patch.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = match merge_key {
        Some(_) => {
            let mut kept = Vec::new();
            for item in patch {
                let Some(m) = item.as_object() else {
                    return Err(err_bad_arg_type("map[string]interface {}", item));
                };
                if m.get(DIRECTIVE).and_then(Value::as_str) != Some("delete") {
                    kept.push(item);
                }
            }
            kept
        }
        None => patch.iter().collect(),
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < non_delete.len() && oi < order.len() {
        if non_delete[pi].as_object().is_some_and(|m| m.contains_key(DIRECTIVE)) {
            pi += 1;
            continue;
        }
        if merge_key_value_equal(non_delete[pi], &order[oi], merge_key)? {
            pi += 1;
        }
        oi += 1;
    }
    if pi < non_delete.len() && oi >= order.len() {
        return Err(format!(
            "the order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}",
            go_fmt(&Value::Array(patch.to_vec())),
            go_fmt(&Value::Array(order.to_vec()))
        ));
    }
    Ok(())
}

fn merge_key_value_equal(left: &Value, right: &Value, merge_key: Option<&str>) -> Result<bool, String> {
    let Some(key) = merge_key else { return Ok(left == right) };
    let value_of = |v: &Value| -> Result<Value, String> {
        let m = v.as_object().ok_or_else(|| err_bad_arg_type("map[string]interface {}", v))?;
        m.get(key).cloned().ok_or_else(|| err_no_merge_key(m, key))
    };
    Ok(value_of(left)? == value_of(right)?)
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

fn merge_key_of(lt: &ListType) -> Option<&str> {
    match lt {
        ListType::Map(keys) => keys.first().map(String::as_str),
        _ => None,
    }
}

fn list_type(shape: &dyn Shape, fields: &[String]) -> ListType {
    let path: Vec<&str> = fields.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["metadata", "finalizers"] => ListType::Set,
        ["metadata", "ownerReferences"] => ListType::Map(vec!["uid".to_string()]),
        path => shape.list_type(path),
    }
}

/// `mergeSliceHandler`: merged lists and deletion lists merge, others are replaced.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    lt: &ListType,
    is_delete_list: bool,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> Result<Vec<Value>, String> {
    if matches!(lt, ListType::Atomic) && !is_delete_list {
        return Ok(clean_list(patch));
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = element_kind(&original, &patch)?;
    if kind != Kind::Object {
        if is_delete_list {
            return Ok(original.into_iter().filter(|v| !patch.contains(v)).collect());
        }
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(&patch) {
            if !merged.contains(v) {
                merged.push(v.clone());
            }
        }
        let (patch_items, server_only) = partition(merged, &patch, None)?;
        return normalize_element_order(patch_items, server_only, &patch, &original, None, kind);
    }
    let Some(key) = merge_key_of(lt) else {
        return Err(format!("cannot merge lists without merge key for {}", fields.join(".")));
    };
    let (original, patch) = merge_special_items(original, patch, key)?;
    let mut merged = original.clone();
    for item in &patch {
        let Some(item_map) = item.as_object() else {
            return Err(err_bad_arg_type("map[string]interface {}", item));
        };
        let Some(wanted) = item_map.get(key) else { return Err(err_no_merge_key(item_map, key)) };
        match find_by_key(&merged, key, wanted)? {
            Some(i) => {
                let current = match std::mem::take(&mut merged[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                match merge_map(current, item_map.clone(), fields, shape)? {
                    Some(m) => merged[i] = Value::Object(m),
                    None => {
                        merged.remove(i);
                    }
                }
            }
            None => merged.extend(clean(item.clone())),
        }
    }
    let (patch_items, server_only) = partition(merged, &patch, Some(key))?;
    normalize_element_order(patch_items, server_only, &patch, &original, Some(key), kind)
}

/// Applies the `$patch` items of a list-map patch: `delete` removes matching items, `replace`
/// makes the other patch items the whole list. Returns the new original and the plain patch items.
fn merge_special_items(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>), String> {
    let mut plain = Vec::new();
    let mut replace = false;
    for item in patch {
        let Some(map) = item.as_object() else {
            return Err(err_bad_arg_type("map[string]interface {}", &item));
        };
        match map.get(DIRECTIVE) {
            None => plain.push(item),
            Some(directive) => match directive.as_str() {
                Some("delete") => {
                    let Some(wanted) = map.get(key) else { return Err(err_no_merge_key(map, key)) };
                    while let Some(i) = find_by_key(&original, key, wanted)? {
                        original.remove(i);
                    }
                }
                Some("replace") => replace = true,
                Some("merge") => return Err("merging lists cannot yet be specified in the patch".into()),
                _ => return Err(err_bad_patch_type(directive, map)),
            },
        }
    }
    if replace { Ok((clean_list(plain), Vec::new())) } else { Ok((original, plain)) }
}

fn find_by_key(items: &[Value], key: &str, wanted: &Value) -> Result<Option<usize>, String> {
    for (i, item) in items.iter().enumerate() {
        let Some(map) = item.as_object() else { return Err(format!("value for key {i} is not a map")) };
        if map.get(key) == Some(wanted) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Splits `merged` into the items present in `by` (by merge key, or by value) and the others.
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    key: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), String> {
    let mut present = Vec::new();
    let mut others = Vec::new();
    for item in merged {
        let found = match key {
            None => by.contains(&item),
            Some(key) => {
                let Some(map) = item.as_object() else {
                    return Err(err_bad_arg_type("map[string]interface {}", &item));
                };
                let Some(wanted) = map.get(key) else { return Err(err_no_merge_key(map, key)) };
                find_by_key(by, key, wanted)?.is_some()
            }
        };
        if found { present.push(item) } else { others.push(item) }
    }
    Ok((present, others))
}

/// Orders the patch items by `patch_order` and the server-only items by `server_order`, then
/// interleaves them (apimachinery's `normalizeElementOrder`).
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Result<Vec<Value>, String> {
    let patch_items = normalize_slice_order(patch_items, patch_order, key, kind)?;
    let server_only = normalize_slice_order(server_only, server_order, key, kind)?;
    Ok(merge_sorted(server_only, patch_items, server_order, key, kind))
}

fn normalize_slice_order(
    mut items: Vec<Value>,
    order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Result<Vec<Value>, String> {
    let mut to_delete = Vec::new();
    if kind == Kind::Object {
        let key = key.unwrap_or_default();
        for item in items.iter().chain(order) {
            let Some(map) = item.as_object() else {
                return Err(err_bad_arg_type("map[string]interface {}", item));
            };
            if !map.contains_key(key) {
                return Err(err_no_merge_key(map, key));
            }
        }
        let (deletes, kept): (Vec<Value>, Vec<Value>) =
            items.into_iter().partition(|v| v.get(DIRECTIVE).and_then(Value::as_str) == Some("delete"));
        items = kept;
        to_delete = deletes;
    }
    items.sort_by_key(|v| index_of(order, v, key, kind).unwrap_or(usize::MAX));
    items.extend(to_delete);
    Ok(items)
}

fn index_of(list: &[Value], wanted: &Value, key: Option<&str>, kind: Kind) -> Option<usize> {
    let value = |v: &'_ Value| -> Option<Value> {
        match (kind, key) {
            (Kind::Object, Some(key)) => Some(v.as_object()?.get(key).cloned().unwrap_or(Value::Null)),
            _ => Some(v.clone()),
        }
    };
    let target = value(wanted);
    list.iter().position(|v| value(v) == target)
}

/// Inserts the server-only items (`left`) into the patch items (`right`), both already sorted, by
/// their places in the live list where both are known; otherwise the patch item comes first.
fn merge_sorted(
    left: Vec<Value>,
    right: Vec<Value>,
    server_order: &[Value],
    key: Option<&str>,
    kind: Kind,
) -> Vec<Value> {
    let less = |l: &Value, r: &Value| -> bool {
        match (index_of(server_order, l, key, kind), index_of(server_order, r, key, kind)) {
            (Some(li), Some(ri)) => li.cmp(&ri) == Ordering::Less,
            _ => false,
        }
    };
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    while let (Some(l), Some(r)) = (left.peek(), right.peek()) {
        if less(l, r) {
            out.extend(left.next());
        } else {
            out.extend(right.next());
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

fn json_kind(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(_) => Kind::Number,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Object,
    }
}

/// The common kind of the items of both lists (`sliceElementType`).
fn element_kind(a: &[Value], b: &[Value]) -> Result<Kind, String> {
    let mut kind = None;
    for v in a.iter().chain(b) {
        let k = json_kind(v);
        match kind {
            None if k == Kind::Array => return Err(ERR_NO_LIST_OF_LISTS.to_string()),
            None => kind = Some(k),
            Some(prev) if prev != k => {
                let both = Value::Array(vec![Value::Array(a.to_vec()), Value::Array(b.to_vec())]);
                return Err(format!("list element types are not identical: {}", go_fmt(&both)));
            }
            Some(_) => {}
        }
    }
    kind.ok_or_else(|| "no elements in any of the given slices".to_string())
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(&format!("{SET_ELEMENT_ORDER}/"))
        || k.starts_with(&format!("{DELETE_FROM_PRIMITIVE_LIST}/"))
}

/// A value the patch adds as is: `$patch` maps and items disappear, other directives and `null`
/// map values are dropped.
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) if m.contains_key(DIRECTIVE) => None,
        Value::Object(m) => Some(Value::Object(clean_map(m))),
        Value::Array(items) => Some(Value::Array(clean_list(items))),
        other => Some(other),
    }
}

fn clean_map(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
        .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
        .collect()
}

fn clean_list(items: Vec<Value>) -> Vec<Value> {
    items.into_iter().filter_map(clean).collect()
}

// ---------------------------------------------------------------------------------------------
// Errors, worded as apimachinery words them
// ---------------------------------------------------------------------------------------------

/// Go's `%v` rendering of a decoded JSON value (`map[a:1 b:[x y]]`).
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => go_fmt_map(m),
    }
}

fn go_fmt_map(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys.into_iter().map(|k| format!("{k}:{}", go_fmt(&m[k.as_str()]))).collect();
    format!("map[{}]", parts.join(" "))
}

fn err_no_merge_key(m: &Map<String, Value>, key: &str) -> String {
    format!("map: {} does not contain declared merge key: {key}", go_fmt_map(m))
}

fn err_bad_patch_type(directive: &Value, m: &Map<String, Value>) -> String {
    format!("unknown patch type: {} in map: {}", go_fmt(directive), go_fmt_map(m))
}

fn err_bad_arg_type(expected: &str, actual: &Value) -> String {
    let actual = match actual {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    };
    format!("expected a {expected}, but received a {actual}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::shape::{ListType, Shape};

    #[derive(Default)]
    struct TestShape(HashMap<String, ListType>);

    impl Shape for TestShape {
        fn list_type(&self, path: &[&str]) -> ListType {
            self.0.get(&path.join(".")).cloned().unwrap_or(ListType::Atomic)
        }
    }

    fn shape() -> TestShape {
        let mut s = TestShape::default();
        let keys = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
        s.0.insert("spec.template.spec.containers".into(), keys(&["name"]));
        s.0.insert("spec.template.spec.containers.env".into(), keys(&["name"]));
        s.0.insert("spec.template.spec.containers.ports".into(), keys(&["containerPort", "protocol"]));
        s.0.insert("spec.template.spec.volumes".into(), keys(&["name"]));
        s.0.insert("spec.tags".into(), ListType::Set);
        s
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"app": "web", "tier": "front"}, "finalizers": ["a", "b"]},
            "spec": {
                "replicas": 1,
                "tags": ["x", "y"],
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"spec": {
                    "containers": [
                        {"name": "web", "image": "nginx:1", "args": ["a", "b"], "env": [{"name": "A", "value": "1"}],
                         "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                        {"name": "side", "image": "envoy:1"}
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }}
            }
        })
    }

    fn patch(p: Value) -> Result<Value, String> {
        apply_patch(&deployment(), &p, &shape())
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn null_deletes_a_key_and_an_unmatched_null_is_ignored() {
        let out =
            patch(json!({"metadata": {"labels": {"tier": null, "nope": null}}, "spec": {"replicas": null}}))
                .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert!(out["spec"].get("replicas").is_none());
        assert!(out["metadata"]["labels"].get("nope").is_none());
    }

    #[test]
    fn maps_merge_recursively_and_scalars_are_replaced() {
        let out = patch(json!({
            "metadata": {"labels": {"version": "2"}, "annotations": {"a": "b", "gone": null}},
            "spec": {"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": 2}}}
        }))
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "tier": "front", "version": "2"}));
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"a": "b"}),
            "new maps are added without their nulls"
        );
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(
            out["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}})
        );
        assert_eq!(out["kind"], "Deployment");
    }

    #[test]
    fn a_value_of_another_type_replaces_the_original() {
        let out = patch(json!({"spec": {"strategy": "Recreate", "replicas": {"x": 1}}})).unwrap();
        assert_eq!(out["spec"]["strategy"], "Recreate");
        assert_eq!(out["spec"]["replicas"], json!({"x": 1}));
    }

    #[test]
    fn patch_replace_in_a_map_replaces_it() {
        let out = patch(json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}})).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));
        let out = patch(json!({"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}})).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn patch_delete_in_a_map_deletes_it() {
        let out = patch(json!({"spec": {"strategy": {"$patch": "delete"}}})).unwrap();
        assert!(out["spec"].get("strategy").is_none());
        let out = patch(json!({"spec": {"strategy": {"rollingUpdate": {"$patch": "delete"}}}})).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "RollingUpdate"}));
        // A delete of something absent adds nothing.
        let out = patch(json!({"spec": {"selector": {"$patch": "delete"}}})).unwrap();
        assert!(out["spec"].get("selector").is_none());
        assert!(patch(json!({"$patch": "delete"})).is_err());
    }

    #[test]
    fn unknown_patch_type_is_an_error() {
        let err = patch(json!({"spec": {"strategy": {"$patch": "frobnicate"}}})).unwrap_err();
        assert_eq!(err, "unknown patch type: frobnicate in map: map[$patch:frobnicate]");
        let err = patch(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "$patch": "frob"}]}}}}),
        )
        .unwrap_err();
        assert_eq!(err, "unknown patch type: frob in map: map[$patch:frob name:web]");
    }

    #[test]
    fn list_maps_merge_items_by_the_first_key() {
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}], "args": ["z"]}
        ]}}}}))
        .unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(names(containers), ["web", "side"]);
        let web = &containers[0];
        assert_eq!(web["image"], "nginx:2");
        assert_eq!(web["args"], json!(["z"]), "atomic lists are replaced");
        assert_eq!(web["env"], json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]));
        assert_eq!(web["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
        assert_eq!(containers[1], json!({"name": "side", "image": "envoy:1"}));
    }

    #[test]
    fn new_items_come_first_without_set_element_order_as_apimachinery_does() {
        let out = patch(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "busybox"}]}}}}),
        )
        .unwrap();
        assert_eq!(names(&out["spec"]["template"]["spec"]["containers"]), ["new", "web", "side"]);
        // Items already there keep the live order relative to each other.
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "envoy:2"}, {"name": "web"}]}}}}))
            .unwrap();
        assert_eq!(names(&out["spec"]["template"]["spec"]["containers"]), ["side", "web"]);
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let out = patch(json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}, {"name": "new"}],
            "containers": [{"name": "new", "image": "busybox"}]
        }}}}))
        .unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(names(containers), ["web", "side", "new"]);
        assert_eq!(containers[2], json!({"name": "new", "image": "busybox"}));
        // Reordering only.
        let out = patch(json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}}}))
            .unwrap();
        assert_eq!(names(&out["spec"]["template"]["spec"]["containers"]), ["side", "web"]);
        // Primitive lists too, and the directive never reaches the object.
        let out =
            patch(json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}}))
                .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "b", "a"]));
        assert!(out["metadata"].as_object().unwrap().keys().all(|k| !k.starts_with('$')));
    }

    #[test]
    fn set_element_order_inconsistent_with_the_patch_is_an_error() {
        let err = patch(json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"name": "other"}]
        }}}}))
        .unwrap_err();
        assert!(err.starts_with("the order in patch list:\n[map[name:other]]\n doesn't match $setElementOrder list:\n[map[name:web]]"), "{err}");
        let err = patch(json!({"spec": {"$setElementOrder/tags": "x"}})).unwrap_err();
        assert_eq!(err, "expected a []interface {}, but received a string");
    }

    #[test]
    fn a_delete_item_removes_the_list_item() {
        let out = patch(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}}),
        )
        .unwrap();
        assert_eq!(names(&out["spec"]["template"]["spec"]["containers"]), ["web"]);
        // Nested: an env var of a container.
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "$patch": "delete"}]}]}}}}))
            .unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["env"], json!([]));
        let err = patch(json!({"spec": {"template": {"spec": {"containers": [{"$patch": "delete"}]}}}}))
            .unwrap_err();
        assert_eq!(err, "map: map[$patch:delete] does not contain declared merge key: name");
    }

    #[test]
    fn a_replace_item_replaces_the_whole_list() {
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "x"}]}}}}))
            .unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "x"}]));
        let err = patch(json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge"}]}}}}))
            .unwrap_err();
        assert_eq!(err, "merging lists cannot yet be specified in the patch");
    }

    #[test]
    fn list_map_items_without_the_merge_key_are_an_error() {
        let err =
            patch(json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})).unwrap_err();
        assert_eq!(err, "map: map[image:x] does not contain declared merge key: name");
    }

    #[test]
    fn primitive_merge_lists_are_unions_and_delete_from_primitive_list_removes() {
        let out = patch(json!({"metadata": {"finalizers": ["c", "a"]}, "spec": {"tags": ["z"]}})).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        assert_eq!(out["spec"]["tags"], json!(["z", "x", "y"]));
        let out = patch(json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "nope"]}})).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        // Works on lists that are otherwise replaced, and on missing lists it does nothing.
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "$deleteFromPrimitiveList/args": ["a"]}]}}},
                               "metadata": {"$deleteFromPrimitiveList/missing": ["x"]}}))
            .unwrap();
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["args"], json!(["b"]));
        assert!(out["metadata"].get("missing").is_none());
        let err = patch(json!({"metadata": {"$deleteFromPrimitiveList": ["a"]}})).unwrap_err();
        assert_eq!(err, "invalid patch format of primitive list");
    }

    #[test]
    fn atomic_lists_are_replaced() {
        let mut s = shape();
        s.0.remove("spec.tags");
        let out = apply_patch(&deployment(), &json!({"spec": {"tags": ["q"]}}), &s).unwrap();
        assert_eq!(out["spec"]["tags"], json!(["q"]));
    }

    #[test]
    fn owner_references_merge_by_uid_and_finalizers_merge_whatever_the_shape_says() {
        let original = json!({"metadata": {"name": "x", "finalizers": ["a"],
            "ownerReferences": [{"uid": "1", "name": "one", "kind": "A"}]}});
        let atomic = TestShape::default();
        let out = apply_patch(
            &original,
            &json!({"metadata": {"finalizers": ["b"], "ownerReferences": [{"uid": "2", "name": "two"}, {"uid": "1", "name": "uno"}]}}),
            &atomic,
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "two"}, {"uid": "1", "name": "uno", "kind": "A"}])
        );
    }

    #[test]
    fn retain_keys_keeps_only_the_listed_keys() {
        let out =
            patch(json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = patch(json!({"spec": {"template": {"spec": {"volumes": [
            {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}
        ]}}}}))
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/d"}}])
        );
        let err =
            patch(json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}})).unwrap_err();
        assert_eq!(err, "invalid patch format of retainKeys");
        let err = patch(json!({"spec": {"strategy": {"$retainKeys": "type"}}})).unwrap_err();
        assert_eq!(err, "invalid patch format of retainKeys");
    }

    #[test]
    fn list_element_type_errors_are_reported() {
        let err = patch(json!({"spec": {"tags": [1]}})).unwrap_err();
        assert_eq!(err, "list element types are not identical: [[x y] [1]]");
        let err = patch(json!({"spec": {"tags": [["x"]]}})).unwrap_err();
        assert_eq!(err, "list element types are not identical: [[x y] [[x]]]");
        let err = apply_patch(&json!({"spec": {"tags": []}}), &json!({"spec": {"tags": [["x"]]}}), &shape())
            .unwrap_err();
        assert_eq!(err, "lists of lists are not supported");
        let err = patch(json!({"spec": {"tags": [{"a": 1}]}})).unwrap_err();
        assert!(err.starts_with("list element types are not identical"), "{err}");
        let err = apply_patch(
            &json!({"spec": {"tags": [{"a": 1}]}}),
            &json!({"spec": {"tags": [{"a": 2}]}}),
            &shape(),
        )
        .unwrap_err();
        assert_eq!(err, "cannot merge lists without merge key for spec.tags");
    }

    #[test]
    fn added_values_are_cleaned_of_directives() {
        let out = patch(json!({"spec": {"template": {"spec": {"containers": [
            {"name": "new", "env": [{"name": "X", "value": null}, {"name": "Y", "$patch": "delete"}],
             "$setElementOrder/env": [{"name": "X"}]}
        ]}}}}))
        .unwrap();
        let new = &out["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(*new, json!({"name": "new", "env": [{"name": "X"}]}));
    }

    #[test]
    fn bad_documents_and_purity() {
        assert_eq!(apply_patch(&json!({}), &json!([1]), &shape()).unwrap_err(), "invalid JSON document");
        assert_eq!(apply_patch(&json!([]), &json!({}), &shape()).unwrap_err(), "invalid JSON document");
        let original = deployment();
        let _ = apply_patch(&original, &json!({"spec": {"replicas": 9}}), &shape()).unwrap();
        assert_eq!(original, deployment());
        assert_eq!(apply_patch(&original, &json!({}), &shape()).unwrap(), original);
        assert_eq!(
            apply_patch(&original, &json!({"$patch": "replace", "kind": "X"}), &shape()).unwrap(),
            json!({"kind": "X"})
        );
    }
}
