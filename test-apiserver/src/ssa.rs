//! Server-side apply and `metadata.managedFields` bookkeeping, modelled on what kube-apiserver does
//! with sigs.k8s.io/structured-merge-diff (SMD). Pure functions over `serde_json::Value`; no I/O.
//!
//! What is faithful (observable behaviour):
//! - FieldsV1 encoding: `f:<field>`, `k:<sorted compact key JSON>`, `v:<compact JSON>`, `"."` for a node
//!   that is itself owned and has children, `{}` for leaves. List items are always owned themselves.
//! - Apply = merge (maps per key, associative lists per key with SMD's ordering: the applied order wins
//!   for items in both, live-only items stay where they were; sets likewise; atomic lists and scalars
//!   replaced), then pruning of fields the applier applied last time and no longer applies (SMD's
//!   `prune`/`addBackOwnedItems`/`addBackDanglingItems`), then conflict detection against every other
//!   entry (any operation, any subresource) on the fields the apply changed or added.
//! - Update (create/PUT/PATCH): the fields the write added or changed move to the writer's `Update`
//!   entry; removed fields leave every set; a write that changes nothing leaves the entries untouched.
//! - Entry times only change when the object changed (apply) or the writer took fields (update), so a
//!   no-op write returns an object equal to the stored one. Entries are sorted as the apiserver sorts
//!   them (operation, time, manager, apiVersion, subresource); an unchanged list is kept verbatim.
//!
//! What is simplified compared with the real server:
//! - No OpenAPI schema: the shape of a value is taken from its JSON type, plus [`Shape`] for list and
//!   map types. Struct fields and `map[string]X` entries are therefore not distinguished: object nodes
//!   are never owned themselves in an apply set (empty objects, empty lists and `null` below the top
//!   level are leaves; an empty top-level `spec: {}` owns nothing).
//!   In update sets a node (map or granular list) that the write created is owned itself (`"."`) as in
//!   SMD, except top-level fields such as `spec` (which typed built-in objects always have).
//! - Associative-list key fields that are missing from an item are left out of its key (no defaulting
//!   of e.g. `protocol: TCP`); a granular list whose items cannot all be keyed, or that holds duplicate
//!   keys, is handled as atomic.
//! - Ownership is not tracked for `apiVersion`, `kind`, nor for `metadata` other than `labels`,
//!   `annotations`, `finalizers` (a set) and `ownerReferences` (a list-map keyed by `uid`).
//! - `Update` entries are keyed by manager + operation + subresource (the real key includes the
//!   apiVersion); there is no version conversion, no cap on the number of update managers, no
//!   `last-applied-configuration` interplay, and managedFields sent by the client are ignored.
//! - A `null` in an applied configuration unsets the field (still owned by the applier), except for
//!   untracked metadata (e.g. `creationTimestamp: null`), which is left alone.
//! - On an existing object, server-owned metadata in the configuration (`uid`, `resourceVersion`,
//!   `creationTimestamp`, `generation`, `deletion*`, `selfLink`) is ignored: the live values stay
//!   (preconditions such as `resourceVersion` are the caller's business).
//! - [`Scope::Status`] writes only `status`; [`Scope::Main`] with `status_isolated` never writes
//!   `status` (the real server resets these through the kind's strategy).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::shape::{ListType, Shape};

/// Which part of the object a request may write: the main resource (with `status_isolated` when the
/// kind has a status subresource, so `status` is reset and neither owned nor conflicting) or the
/// status subresource (only `status` is written; everything else of the live object is kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main { status_isolated: bool },
    Status,
}

impl Scope {
    fn subresource(self) -> &'static str {
        match self {
            Scope::Main { .. } => "",
            Scope::Status => "status",
        }
    }
}

/// A field the applier would take from another manager.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    /// SMD's path notation: `.spec.replicas`, `.spec.containers[name="web"].image`,
    /// `.metadata.labels.app`, `.metadata.finalizers[="x"]`.
    pub field: String,
}

/// The message kube-apiserver puts in its 409 for these conflicts (without the ` using <apiVersion>`
/// suffix the real server adds after each manager name), e.g.
/// `Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas`.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let head = format!("Apply failed with {n} conflict{}: ", if n == 1 { "" } else { "s" });
    if let [only] = conflicts {
        return format!("{head}conflict with \"{}\": {}", only.manager, only.field);
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(c.manager.as_str()).or_default().push(c.field.as_str());
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with \"{manager}\":"));
        lines.extend(fields.into_iter().map(|f| format!("- {f}")));
    }
    format!("{head}{}", lines.join("\n"))
}

/// Server-side apply of `config` (the applied configuration: apiVersion, kind, metadata.name etc.)
/// by `manager`. `live` is the current object (None = the apply creates it). Returns the new
/// object with `metadata.managedFields` updated, or the conflicts (when !force). With force the
/// conflicting fields' ownership moves to `manager`.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    shape: &dyn Shape,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let subresource = scope.subresource();
    let live_full = live.cloned().unwrap_or_else(|| json!({}));
    let original_list = managed_fields_of(&live_full);
    let mut entries = decode_entries(original_list.as_ref());
    let live_obj = without_managed_fields(&live_full);

    let cfg = scoped_config(config, scope);
    let mut config_set = FieldSet::default();
    to_field_set(&cfg, &mut Vec::new(), &mut Vec::new(), shape, &mut config_set);
    config_set.restrict(scope);

    let mut merged = merge_values(Some(&live_obj), &cfg, &mut Vec::new(), shape).unwrap_or_else(|| json!({}));
    if live.is_some() {
        keep_server_metadata(&live_obj, &mut merged);
    }

    let applier = entries.iter().position(|e| e.is(manager, "Apply", subresource));
    let last_set = applier.map(|i| {
        let mut s = entries[i].set.clone();
        s.restrict(scope);
        s
    });
    // Everything anybody owns once the applier's set is the new configuration's.
    let mut owned = config_set.clone();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != applier {
            owned.union_with(&e.set);
        }
    }
    if let Some(last) = last_set.as_ref().filter(|s| !s.is_empty()) {
        prune(&mut merged, last, Some(&owned), false, &mut Vec::new(), shape);
    }

    let mut diff = compare(&live_obj, &merged, shape);
    diff.restrict(scope);
    let mut changed = diff.modified.clone();
    changed.union_with(&diff.added);

    let mut conflicts = Vec::new();
    let mut taken = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == applier {
            continue;
        }
        let common = e.set.intersection(&changed);
        if common.is_empty() {
            continue;
        }
        for path in common.paths() {
            conflicts.push(Conflict { manager: e.manager.clone(), field: format_path(&path) });
        }
        taken.push((i, common));
    }
    if !force && !conflicts.is_empty() {
        return Err(conflicts);
    }
    for (i, common) in taken {
        entries[i].set.subtract(&common);
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != applier {
            e.set.subtract(&diff.removed);
        }
    }

    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .or_else(|| live_obj.get("apiVersion").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string();
    let object_changed = merged != live_obj;
    match applier {
        Some(i) => {
            let e = &mut entries[i];
            e.set = config_set;
            e.api_version = api_version;
            if object_changed || e.time.is_none() {
                e.time = Some(now.to_string());
            }
        }
        None => entries.push(Entry::new(manager, "Apply", &api_version, now, subresource, config_set)),
    }

    let list = encode_entries(entries, original_list);
    set_managed_fields(&mut merged, list);
    Ok(merged)
}

/// Bookkeeping for a non-apply write (create, PUT, merge/JSON/strategic PATCH) by `manager`: the
/// fields whose values the write set or changed (compared with `old`, all fields when old is None)
/// become owned by `manager` under an `operation: Update` entry (one entry per manager+operation+subresource),
/// and leave every other manager's set. Managers whose set becomes empty are dropped. Rewrites
/// `new["metadata"]["managedFields"]`; a managedFields list the client sent in `new` is ignored/replaced.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    shape: &dyn Shape,
    now: &str,
) {
    let subresource = scope.subresource();
    let old_full = old.cloned().unwrap_or_else(|| json!({}));
    let original_list = managed_fields_of(&old_full);
    let mut entries = decode_entries(original_list.as_ref());
    let old_obj = without_managed_fields(&old_full);
    let new_obj = without_managed_fields(new);

    let mut diff = compare(&old_obj, &new_obj, shape);
    diff.restrict(scope);
    let mut taken = diff.modified.clone();
    taken.union_with(&diff.added);

    let own = entries.iter().position(|e| e.is(manager, "Update", subresource));
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != own {
            e.set.subtract(&taken);
        }
        e.set.subtract(&diff.removed);
    }
    if !taken.is_empty() {
        let api_version = new_obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        match own {
            Some(i) => {
                let e = &mut entries[i];
                e.set.union_with(&taken);
                e.api_version = api_version;
                e.time = Some(now.to_string());
            }
            None => entries.push(Entry::new(manager, "Update", &api_version, now, subresource, taken)),
        }
    }
    for e in &mut entries {
        retain_existing(&mut e.set, &new_obj);
    }

    let list = encode_entries(entries, original_list);
    set_managed_fields(new, list);
}

// ---------------------------------------------------------------------------------------------
// Field sets
// ---------------------------------------------------------------------------------------------

/// A set of field paths as a tree keyed by encoded path elements (`f:name`, `k:{..}`, `v:..`).
/// `member` says the path ending at this node is in the set. Kept normalised: no empty non-member
/// nodes below the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn get(&self, pe: &str) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (pe, child) in &other.children {
            self.children.entry(pe.clone()).or_default().union_with(child);
        }
    }

    fn subtract(&mut self, other: &FieldSet) {
        if other.member {
            self.member = false;
        }
        for (pe, child) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                mine.subtract(child);
                if mine.is_empty() {
                    self.children.remove(pe);
                }
            }
        }
    }

    fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet { member: self.member && other.member, children: BTreeMap::new() };
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(pe.clone(), both);
                }
            }
        }
        out
    }

    /// Member paths, parents before children, children in key order.
    fn paths(&self) -> Vec<Vec<String>> {
        fn walk(set: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if set.member && !prefix.is_empty() {
                out.push(prefix.clone());
            }
            for (pe, child) in &set.children {
                prefix.push(pe.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// Applies the scope's filter: without `status` for an isolated main resource, only `status`
    /// for the status subresource.
    fn restrict(&mut self, scope: Scope) {
        match scope {
            Scope::Main { status_isolated: false } => {}
            Scope::Main { status_isolated: true } => {
                self.children.remove("f:status");
            }
            Scope::Status => {
                self.member = false;
                self.children.retain(|pe, _| pe == "f:status");
            }
        }
    }

    fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".to_string(), json!({}));
        }
        for (pe, child) in &self.children {
            map.insert(pe.clone(), child.to_fields_v1());
        }
        Value::Object(map)
    }

    fn from_fields_v1(value: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        let Some(map) = value.as_object() else {
            return set;
        };
        for (key, child) in map {
            if key == "." {
                set.member = true;
                continue;
            }
            let mut sub = FieldSet::from_fields_v1(child);
            if child.as_object().is_none_or(Map::is_empty) {
                sub.member = true;
            }
            if !sub.is_empty() {
                set.children.entry(canonical_pe(key)).or_default().union_with(&sub);
            }
        }
        set
    }
}

/// Re-encodes a path element read from a stored fieldsV1 so it compares equal with ours.
fn canonical_pe(pe: &str) -> String {
    let reencode = |prefix: &str, rest: &str| match serde_json::from_str::<Value>(rest) {
        Ok(v) => format!("{prefix}{}", canonical_json(&v)),
        Err(_) => format!("{prefix}{rest}"),
    };
    if let Some(rest) = pe.strip_prefix("k:") {
        reencode("k:", rest)
    } else if let Some(rest) = pe.strip_prefix("v:") {
        reencode("v:", rest)
    } else {
        pe.to_string()
    }
}

/// Removes a key without disturbing the order of the others (serde_json's `remove` swaps when
/// `preserve_order` is enabled).
fn remove_key(map: &mut Map<String, Value>, key: &str) {
    map.retain(|k, _| k != key);
}

/// Compact JSON with object keys sorted, independent of serde_json's map ordering feature.
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&m[k.as_str()])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(","))
        }
        other => other.to_string(),
    }
}

/// SMD's `Path.String()`: `.spec.containers[name="web"].image`.
fn format_path(path: &[String]) -> String {
    let mut out = String::new();
    for pe in path {
        if let Some(name) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(rest) = pe.strip_prefix("k:") {
            match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(key)) => {
                    let mut names: Vec<&String> = key.keys().collect();
                    names.sort();
                    let parts: Vec<String> = names
                        .into_iter()
                        .map(|n| format!("{n}={}", canonical_json(&key[n.as_str()])))
                        .collect();
                    out.push_str(&format!("[{}]", parts.join(",")));
                }
                _ => out.push_str(&format!("[{rest}]")),
            }
        } else if let Some(rest) = pe.strip_prefix("v:") {
            out.push_str(&format!("[={rest}]"));
        } else {
            out.push_str(&format!("[{pe}]"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Shapes of values
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Leaf,
    Map,
    /// A granular list (set or list-map) whose items all have distinct path elements.
    List(ListType),
}

fn as_strs(fields: &[String]) -> Vec<&str> {
    fields.iter().map(String::as_str).collect()
}

/// Whether the field `key` of the map at `fields` takes part in field ownership.
fn tracked(fields: &[String], key: &str) -> bool {
    match fields {
        [] => key != "apiVersion" && key != "kind",
        [m] if m == "metadata" => matches!(key, "labels" | "annotations" | "finalizers" | "ownerReferences"),
        _ => true,
    }
}

fn list_type(shape: &dyn Shape, fields: &[String]) -> ListType {
    match as_strs(fields).as_slice() {
        ["metadata", "finalizers"] => ListType::Set,
        ["metadata", "ownerReferences"] => ListType::Map(vec!["uid".to_string()]),
        path => shape.list_type(path),
    }
}

fn map_is_atomic(shape: &dyn Shape, fields: &[String]) -> bool {
    match as_strs(fields).as_slice() {
        [] | ["metadata"] | ["metadata", "labels"] | ["metadata", "annotations"] => false,
        path => shape.map_is_atomic(path),
    }
}

/// The path element of a list item: `v:<json>` for sets, `k:<key json>` for list-maps.
fn item_pe(item: &Value, lt: &ListType) -> Option<String> {
    match lt {
        ListType::Atomic => None,
        ListType::Set => Some(format!("v:{}", canonical_json(item))),
        ListType::Map(keys) => {
            let obj = item.as_object()?;
            let mut key = Map::new();
            for k in keys {
                if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
                    key.insert(k.clone(), v.clone());
                }
            }
            if key.is_empty() { None } else { Some(format!("k:{}", canonical_json(&Value::Object(key)))) }
        }
    }
}

/// Path elements of all items, or None when the list cannot be handled granularly.
fn list_pes(items: &[Value], lt: &ListType) -> Option<Vec<String>> {
    let pes: Vec<String> = items.iter().map(|i| item_pe(i, lt)).collect::<Option<_>>()?;
    let distinct: BTreeSet<&String> = pes.iter().collect();
    if distinct.len() == pes.len() { Some(pes) } else { None }
}

fn kind_of(v: &Value, fields: &[String], shape: &dyn Shape) -> Kind {
    match v {
        Value::Object(_) if map_is_atomic(shape, fields) => Kind::Leaf,
        Value::Object(_) => Kind::Map,
        Value::Array(items) => match list_type(shape, fields) {
            ListType::Atomic => Kind::Leaf,
            lt => match list_pes(items, &lt) {
                Some(_) => Kind::List(lt),
                None => Kind::Leaf,
            },
        },
        _ => Kind::Leaf,
    }
}

fn is_empty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Field set of an applied configuration
// ---------------------------------------------------------------------------------------------

fn to_field_set(
    v: &Value,
    path: &mut Vec<String>,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
    out: &mut FieldSet,
) {
    match kind_of(v, fields, shape) {
        Kind::Leaf => {
            if !path.is_empty() {
                out.insert(path);
            }
        }
        Kind::Map => {
            let Some(map) = v.as_object() else { return };
            if map.is_empty() {
                // Empty objects are leaves, except top-level ones (`spec: {}`), which typed objects
                // always have.
                if path.len() > 1 {
                    out.insert(path);
                }
                return;
            }
            for (key, child) in map {
                if !tracked(fields, key) {
                    continue;
                }
                path.push(format!("f:{key}"));
                fields.push(key.clone());
                to_field_set(child, path, fields, shape, out);
                fields.pop();
                path.pop();
            }
        }
        Kind::List(lt) => {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            if items.is_empty() {
                if path.len() > 1 {
                    out.insert(path);
                }
                return;
            }
            for item in items {
                let Some(pe) = item_pe(item, &lt) else { continue };
                path.push(pe);
                to_field_set(item, path, fields, shape, out);
                out.insert(path);
                path.pop();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

impl Comparison {
    fn restrict(&mut self, scope: Scope) {
        self.added.restrict(scope);
        self.modified.restrict(scope);
        self.removed.restrict(scope);
    }
}

fn compare(lhs: &Value, rhs: &Value, shape: &dyn Shape) -> Comparison {
    let mut out = Comparison::default();
    compare_node(Some(lhs), Some(rhs), &mut Vec::new(), &mut Vec::new(), shape, &mut out);
    out
}

fn compare_node(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    path: &mut Vec<String>,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
    out: &mut Comparison,
) {
    let kl = lhs.map(|v| kind_of(v, fields, shape));
    let kr = rhs.map(|v| kind_of(v, fields, shape));
    let kind = match (&kl, &kr) {
        (Some(a), Some(b)) if a == b => a.clone(),
        (Some(a), Some(b)) => {
            // A null on one side of a map/list is treated as absent; other type changes are leaves.
            if lhs.is_some_and(Value::is_null) && *b != Kind::Leaf {
                return compare_node(None, rhs, path, fields, shape, out);
            }
            if rhs.is_some_and(Value::is_null) && *a != Kind::Leaf {
                return compare_node(lhs, None, path, fields, shape, out);
            }
            Kind::Leaf
        }
        (Some(a), None) => a.clone(),
        (None, Some(b)) => b.clone(),
        (None, None) => return,
    };
    let both_empty = lhs.is_none_or(is_empty_container) && rhs.is_none_or(is_empty_container);
    let kind = if kind != Kind::Leaf && both_empty { Kind::Leaf } else { kind };

    match kind {
        Kind::Leaf => {
            if path.is_empty() || (path.len() == 1 && both_empty) {
                return;
            }
            match (lhs, rhs) {
                (None, Some(_)) => out.added.insert(path),
                (Some(_), None) => out.removed.insert(path),
                (Some(a), Some(b)) if a != b => out.modified.insert(path),
                _ => {}
            }
            return;
        }
        Kind::Map => {
            let empty = Map::new();
            let lm = lhs.and_then(Value::as_object).unwrap_or(&empty);
            let rm = rhs.and_then(Value::as_object).unwrap_or(&empty);
            let keys: BTreeSet<&String> = lm.keys().chain(rm.keys()).collect();
            for key in keys {
                if !tracked(fields, key) {
                    continue;
                }
                path.push(format!("f:{key}"));
                fields.push(key.clone());
                compare_node(lm.get(key.as_str()), rm.get(key.as_str()), path, fields, shape, out);
                fields.pop();
                path.pop();
            }
        }
        Kind::List(lt) => {
            let no_items: Vec<Value> = Vec::new();
            let litems = lhs.and_then(Value::as_array).unwrap_or(&no_items);
            let ritems = rhs.and_then(Value::as_array).unwrap_or(&no_items);
            let lpes = list_pes(litems, &lt).unwrap_or_default();
            let rpes = list_pes(ritems, &lt).unwrap_or_default();
            let lby: BTreeMap<&String, &Value> = lpes.iter().zip(litems).collect();
            let rby: BTreeMap<&String, &Value> = rpes.iter().zip(ritems).collect();
            for (pe, item) in rpes.iter().zip(ritems) {
                path.push(pe.clone());
                compare_node(lby.get(pe).copied(), Some(item), path, fields, shape, out);
                path.pop();
            }
            for (pe, item) in lpes.iter().zip(litems) {
                if !rby.contains_key(pe) {
                    path.push(pe.clone());
                    compare_node(Some(item), None, path, fields, shape, out);
                    path.pop();
                }
            }
        }
    }
    // A non-leaf node that appeared or disappeared is itself added/removed (SMD), except the root and
    // top-level fields, which typed built-in objects always have.
    if path.len() > 1 {
        match (lhs, rhs) {
            (None, Some(_)) => out.added.insert(path),
            (Some(_), None) => out.removed.insert(path),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Merging an applied configuration into the live object
// ---------------------------------------------------------------------------------------------

/// Merges `rhs` (applied) into `lhs` (live). None means "leave the field out".
fn merge_values(
    lhs: Option<&Value>,
    rhs: &Value,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> Option<Value> {
    if rhs.is_null() {
        return None;
    }
    match kind_of(rhs, fields, shape) {
        Kind::Leaf => Some(rhs.clone()),
        Kind::Map => {
            let rmap = rhs.as_object()?;
            let mut out = match lhs {
                Some(Value::Object(l)) => l.clone(),
                _ => Map::new(),
            };
            for (key, rv) in rmap {
                if rv.is_null() && !tracked(fields, key) {
                    continue;
                }
                fields.push(key.clone());
                let merged = merge_values(out.get(key), rv, fields, shape);
                fields.pop();
                match merged {
                    Some(v) => {
                        out.insert(key.clone(), v);
                    }
                    None => remove_key(&mut out, key),
                }
            }
            Some(Value::Object(out))
        }
        Kind::List(lt) => {
            let ritems = rhs.as_array()?;
            let rpes = list_pes(ritems, &lt)?;
            let (litems, lpes) = match lhs {
                Some(Value::Array(l)) => match list_pes(l, &lt) {
                    Some(pes) => (l.as_slice(), pes),
                    None => (&[][..], Vec::new()),
                },
                _ => (&[][..], Vec::new()),
            };
            let merged = merge_list(litems, &lpes, ritems, &rpes, |l, r| match lt {
                ListType::Map(_) => merge_values(l, r, fields, shape),
                _ => Some(r.clone()),
            });
            Some(Value::Array(merged))
        }
    }
}

/// SMD's ordering for merged associative lists: items present on both sides follow the applied
/// order, live-only items keep their place, applied-only items are placed where the applied list
/// puts them.
fn merge_list(
    litems: &[Value],
    lpes: &[String],
    ritems: &[Value],
    rpes: &[String],
    mut merge_item: impl FnMut(Option<&Value>, &Value) -> Option<Value>,
) -> Vec<Value> {
    let lby: BTreeMap<&String, &Value> = lpes.iter().zip(litems).collect();
    let rby: BTreeSet<&String> = rpes.iter().collect();
    let mut shared = rpes.iter().filter(|pe| lby.contains_key(pe));
    let mut next_shared = shared.next();
    let mut out = Vec::with_capacity(litems.len().max(ritems.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lpes.len() || ri < rpes.len() {
        if li < lpes.len() && ri < rpes.len() {
            let pe = &lpes[li];
            if *pe == rpes[ri] {
                out.extend(merge_item(Some(&litems[li]), &ritems[ri]));
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if rby.contains(pe) && next_shared.is_some_and(|n| n != pe) {
                // Shared, but the applied order puts another shared item first.
                li += 1;
                continue;
            }
        }
        if li < lpes.len() && !rby.contains(&lpes[li]) {
            out.push(litems[li].clone());
            li += 1;
            continue;
        }
        if ri < rpes.len() {
            let pe = &rpes[ri];
            out.extend(merge_item(lby.get(pe).copied(), &ritems[ri]));
            ri += 1;
            if next_shared == Some(pe) {
                next_shared = shared.next();
            }
        } else {
            // Only shared live items remain; they were all merged already.
            li += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pruning what the applier stopped applying
// ---------------------------------------------------------------------------------------------

/// Removes from `v` the fields of `last` (the applier's previous set, at this node) that nobody owns
/// any more (`owned`, at this node), following SMD: an object field is kept when anybody owns a path
/// through it; a list item only when somebody owns the item itself. `doomed` is set below a list
/// item that is no longer owned: every field of `last` under it goes. Returns whether something was
/// removed.
fn prune(
    v: &mut Value,
    last: &FieldSet,
    owned: Option<&FieldSet>,
    doomed: bool,
    fields: &mut Vec<String>,
    shape: &dyn Shape,
) -> bool {
    let mut removed_any = false;
    match kind_of(v, fields, shape) {
        Kind::Leaf => {}
        Kind::Map => {
            let Some(map) = v.as_object_mut() else { return false };
            for (pe, last_child) in &last.children {
                let Some(key) = pe.strip_prefix("f:") else { continue };
                if !map.contains_key(key) {
                    continue;
                }
                let owned_child = owned.and_then(|o| o.get(pe));
                let protected = fields.is_empty() && key == "metadata";
                if doomed || !(protected || owned_child.is_some()) {
                    remove_key(map, key);
                    removed_any = true;
                    continue;
                }
                if last_child.children.is_empty() {
                    continue;
                }
                fields.push(key.to_string());
                let mut drop_child = false;
                if let Some(child) = map.get_mut(key) {
                    let changed = prune(child, last_child, owned_child, false, fields, shape);
                    drop_child = changed && is_empty_container(child);
                    removed_any |= changed;
                }
                fields.pop();
                if drop_child {
                    remove_key(map, key);
                }
            }
        }
        Kind::List(lt) => {
            let Some(items) = v.as_array_mut() else { return false };
            let old = std::mem::take(items);
            for mut item in old {
                let Some(last_child) = item_pe(&item, &lt).and_then(|pe| last.get(&pe).map(|l| (pe, l)))
                else {
                    items.push(item);
                    continue;
                };
                let (pe, last_child) = last_child;
                let owned_child = owned.and_then(|o| o.get(&pe));
                let doomed_here = doomed || !owned_child.is_some_and(|o| o.member);
                if last_child.member && doomed_here {
                    removed_any = true;
                    continue;
                }
                if !last_child.children.is_empty() {
                    removed_any |= prune(&mut item, last_child, owned_child, doomed_here, fields, shape);
                }
                items.push(item);
            }
        }
    }
    removed_any
}

// ---------------------------------------------------------------------------------------------
// Keeping sets consistent with an object
// ---------------------------------------------------------------------------------------------

/// Finds the child of `v` a path element designates.
fn lookup<'a>(v: &'a Value, pe: &str) -> Option<&'a Value> {
    if let Some(name) = pe.strip_prefix("f:") {
        return v.as_object()?.get(name);
    }
    let items = v.as_array()?;
    if let Some(rest) = pe.strip_prefix("k:") {
        let key: Value = serde_json::from_str(rest).ok()?;
        let key = key.as_object()?;
        return items.iter().find(|item| {
            item.as_object().is_some_and(|obj| key.iter().all(|(k, kv)| obj.get(k) == Some(kv)))
        });
    }
    if let Some(rest) = pe.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(rest).ok()?;
        return items.iter().find(|item| **item == wanted);
    }
    None
}

/// Drops from `set` every path that does not exist in `v`.
fn retain_existing(set: &mut FieldSet, v: &Value) {
    let mut gone = Vec::new();
    for (pe, child) in set.children.iter_mut() {
        match lookup(v, pe) {
            Some(cv) => {
                retain_existing(child, cv);
                if child.is_empty() {
                    gone.push(pe.clone());
                }
            }
            None => gone.push(pe.clone()),
        }
    }
    for pe in gone {
        set.children.remove(&pe);
    }
}

// ---------------------------------------------------------------------------------------------
// managedFields entries
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    set: FieldSet,
    /// The stored entry and what it decoded to, to re-emit it verbatim when unchanged.
    original: Option<(Value, FieldSet, Option<String>, String)>,
}

impl Entry {
    fn new(
        manager: &str,
        operation: &str,
        api_version: &str,
        now: &str,
        subresource: &str,
        set: FieldSet,
    ) -> Self {
        Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: api_version.to_string(),
            time: Some(now.to_string()),
            subresource: subresource.to_string(),
            set,
            original: None,
        }
    }

    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn unchanged(&self) -> bool {
        self.original.as_ref().is_some_and(|(_, set, time, api)| {
            *set == self.set && *time == self.time && *api == self.api_version
        })
    }

    fn encode(&self) -> Value {
        if let Some((value, ..)) = self.original.as_ref().filter(|_| self.unchanged()) {
            return value.clone();
        }
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.set.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource.clone()));
        }
        Value::Object(m)
    }
}

fn managed_fields_of(obj: &Value) -> Option<Value> {
    obj.get("metadata").and_then(|m| m.get("managedFields")).cloned()
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        remove_key(meta, "managedFields");
    }
    out
}

fn decode_entries(list: Option<&Value>) -> Vec<Entry> {
    let Some(items) = list.and_then(Value::as_array) else { return Vec::new() };
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    items
        .iter()
        .filter(|e| e.is_object())
        .map(|e| {
            let set = e.get("fieldsV1").map(FieldSet::from_fields_v1).unwrap_or_default();
            let time = e.get("time").and_then(Value::as_str).map(str::to_string);
            let api_version = text(e, "apiVersion");
            let operation = match text(e, "operation") {
                op if op.is_empty() => "Update".to_string(),
                op => op,
            };
            Entry {
                manager: text(e, "manager"),
                operation,
                api_version: api_version.clone(),
                time: time.clone(),
                subresource: text(e, "subresource"),
                original: Some((e.clone(), set.clone(), time, api_version)),
                set,
            }
        })
        .collect()
}

/// Encodes the entries the way kube-apiserver stores them (sorted, empty sets dropped); when nothing
/// changed, the stored list comes back as it was.
fn encode_entries(mut entries: Vec<Entry>, original: Option<Value>) -> Option<Value> {
    let original_len = original.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
    entries.retain(|e| !e.set.is_empty());
    if entries.len() == original_len && entries.iter().all(Entry::unchanged) {
        return original;
    }
    if entries.is_empty() {
        return None;
    }
    entries.sort_by(compare_entries);
    Some(Value::Array(entries.iter().map(Entry::encode).collect()))
}

fn compare_entries(a: &Entry, b: &Entry) -> Ordering {
    let secs = |e: &Entry| e.time.as_deref().map_or(0, rfc3339_seconds);
    a.operation
        .cmp(&b.operation)
        .then_with(|| secs(a).cmp(&secs(b)))
        .then_with(|| a.manager.cmp(&b.manager))
        .then_with(|| a.api_version.cmp(&b.api_version))
        .then_with(|| a.subresource.cmp(&b.subresource))
}

fn set_managed_fields(obj: &mut Value, list: Option<Value>) {
    let Some(root) = obj.as_object_mut() else { return };
    match list {
        Some(list) => {
            let meta = root.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("managedFields".into(), list);
            }
        }
        None => {
            if let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) {
                remove_key(meta, "managedFields");
            }
        }
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T10:00:00Z`, fractions and offsets
/// accepted); 0 when it cannot be read, as the apiserver treats a missing time.
fn rfc3339_seconds(s: &str) -> i64 {
    fn num(s: &str, range: std::ops::Range<usize>) -> Option<i64> {
        s.get(range)?.parse().ok()
    }
    let parse = || -> Option<i64> {
        let (year, month, day) = (num(s, 0..4)?, num(s, 5..7)?, num(s, 8..10)?);
        let (hour, min, sec) = (num(s, 11..13)?, num(s, 14..16)?, num(s, 17..19)?);
        let rest = s.get(19..)?;
        let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
        let offset = match rest.as_bytes().first() {
            Some(b'+') | Some(b'-') => {
                let sign = if rest.starts_with('-') { -1 } else { 1 };
                sign * (num(rest, 1..3)? * 3600 + num(rest, 4..6)? * 60)
            }
            _ => 0,
        };
        // Days from civil (Howard Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + hour * 3600 + min * 60 + sec - offset)
    };
    parse().unwrap_or(0)
}

/// Metadata the server owns: an applied configuration does not change it on an existing object.
const SERVER_METADATA: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn keep_server_metadata(live: &Value, merged: &mut Value) {
    let live_meta = live.get("metadata").and_then(Value::as_object);
    let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    for key in SERVER_METADATA {
        match live_meta.and_then(|m| m.get(key)) {
            Some(v) => {
                meta.insert(key.to_string(), v.clone());
            }
            None => remove_key(meta, key),
        }
    }
}

/// The applied configuration as the scope sees it, without managedFields.
fn scoped_config(config: &Value, scope: Scope) -> Value {
    let mut cfg = without_managed_fields(config);
    match scope {
        Scope::Main { status_isolated: false } => {}
        Scope::Main { status_isolated: true } => {
            if let Some(root) = cfg.as_object_mut() {
                remove_key(root, "status");
            }
        }
        Scope::Status => {
            let mut only = Map::new();
            if let Some(status) = cfg.get("status") {
                only.insert("status".into(), status.clone());
            }
            cfg = Value::Object(only);
        }
    }
    cfg
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::{Value, json};

    use super::*;
    use crate::shape::{ListType, Shape};

    const T0: &str = "2024-05-01T10:00:00Z";
    const T1: &str = "2024-05-01T11:00:00Z";
    const T2: &str = "2024-05-01T12:00:00Z";
    const MAIN: Scope = Scope::Main { status_isolated: false };
    const ISOLATED: Scope = Scope::Main { status_isolated: true };

    #[derive(Default)]
    struct TestShape {
        lists: HashMap<String, ListType>,
        atomic_maps: HashSet<String>,
    }

    impl Shape for TestShape {
        fn list_type(&self, path: &[&str]) -> ListType {
            self.lists.get(&path.join(".")).cloned().unwrap_or(ListType::Atomic)
        }
        fn map_is_atomic(&self, path: &[&str]) -> bool {
            self.atomic_maps.contains(&path.join("."))
        }
    }

    fn keys(k: &[&str]) -> ListType {
        ListType::Map(k.iter().map(|s| s.to_string()).collect())
    }

    fn shape() -> TestShape {
        let mut s = TestShape::default();
        s.lists.insert("spec.containers".into(), keys(&["name"]));
        s.lists.insert("spec.containers.ports".into(), keys(&["containerPort", "protocol"]));
        s.lists.insert("spec.containers.env".into(), keys(&["name"]));
        s.lists.insert("spec.tags".into(), ListType::Set);
        s.lists.insert("status.conditions".into(), keys(&["type"]));
        s.atomic_maps.insert("spec.selector".into());
        s
    }

    fn entries(obj: &Value) -> Vec<Value> {
        obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
    }

    fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> &'a Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["manager"] == manager && e["operation"] == operation))
            .unwrap_or_else(|| panic!("no {operation} entry for {manager} in {obj:#}"))
    }

    fn has_entry(obj: &Value, manager: &str, operation: &str) -> bool {
        entries(obj).iter().any(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn fields(obj: &Value, manager: &str, operation: &str) -> Value {
        entry(obj, manager, operation)["fieldsV1"].clone()
    }

    fn base(spec: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}, "spec": spec})
    }

    fn created_by_update(obj: Value, manager: &str) -> Value {
        let mut obj = obj;
        record_update(None, &mut obj, manager, MAIN, &shape(), T0);
        obj
    }

    // --- FieldsV1 encoding -------------------------------------------------------------------

    #[test]
    fn applied_field_set_uses_the_real_fields_v1_encoding() {
        let config = json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {
                "name": "w", "namespace": "default", "labels": {"app": "web"},
                "annotations": {"a/b": "c"},
                "finalizers": ["example.com/cleanup"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u-1"}]
            },
            "spec": {
                "replicas": 2,
                "selector": {"app": "web"},
                "tags": ["a", "b"],
                "containers": [{
                    "name": "web", "image": "nginx", "args": ["-v"],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "resources": {}
                }]
            }
        });
        let out = apply(None, &config, "vigil", false, MAIN, &shape(), T0).unwrap();
        let expected = json!({
            "f:metadata": {
                "f:annotations": {"f:a/b": {}},
                "f:finalizers": {"v:\"example.com/cleanup\"": {}},
                "f:labels": {"f:app": {}},
                "f:ownerReferences": {"k:{\"uid\":\"u-1\"}": {
                    ".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}
                }}
            },
            "f:spec": {
                "f:containers": {"k:{\"name\":\"web\"}": {
                    ".": {}, "f:args": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                        ".": {}, "f:containerPort": {}, "f:protocol": {}
                    }},
                    "f:resources": {}
                }},
                "f:replicas": {},
                "f:selector": {},
                "f:tags": {"v:\"a\"": {}, "v:\"b\"": {}}
            }
        });
        assert_eq!(fields(&out, "vigil", "Apply"), expected);
        // The fieldsV1 keys are exactly the real strings.
        let text = serde_json::to_string(&fields(&out, "vigil", "Apply")).unwrap();
        assert!(text.contains(r#""k:{\"containerPort\":80,\"protocol\":\"TCP\"}""#), "{text}");
        assert!(text.contains(r#""k:{\"name\":\"web\"}""#), "{text}");
    }

    #[test]
    fn multi_key_list_map_keys_are_sorted_whatever_the_key_order_in_the_shape() {
        let mut s = shape();
        s.lists.insert("spec.ports".into(), keys(&["protocol", "port"]));
        let config = base(json!({"ports": [{"protocol": "UDP", "port": 53, "name": "dns"}]}));
        let out = apply(None, &config, "m", false, MAIN, &s, T0).unwrap();
        let f = fields(&out, "m", "Apply");
        assert!(f["f:spec"]["f:ports"].get("k:{\"port\":53,\"protocol\":\"UDP\"}").is_some(), "{f:#}");
    }

    #[test]
    fn apply_entry_has_manager_operation_api_version_time_and_no_subresource() {
        let out = apply(None, &base(json!({"replicas": 1})), "vigil", false, MAIN, &shape(), T0).unwrap();
        let e = entry(&out, "vigil", "Apply");
        assert_eq!(e["apiVersion"], "example.com/v1");
        assert_eq!(e["time"], T0);
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e.get("subresource").is_none());
        assert_eq!(e["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        // Untracked fields are not in the set but are in the object.
        assert_eq!(out["metadata"]["name"], "w");
        assert_eq!(out["kind"], "Widget");
        assert_eq!(out["spec"]["replicas"], 1);
    }

    // --- 1. merging ----------------------------------------------------------------------------

    #[test]
    fn apply_merges_maps_list_maps_sets_and_replaces_atomics() {
        let live = created_by_update(
            base(json!({
                "replicas": 1,
                "paused": false,
                "selector": {"a": "1", "b": "2"},
                "tags": ["x", "y"],
                "containers": [
                    {"name": "a", "image": "a:1", "args": ["1", "2"]},
                    {"name": "b", "image": "b:1"}
                ]
            })),
            "creator",
        );
        let config = base(json!({
            "replicas": 3,
            "selector": {"c": "3"},
            "tags": ["y", "z"],
            "containers": [{"name": "a", "args": ["9"], "env": [{"name": "E", "value": "1"}]}]
        }));
        let out = apply(Some(&live), &config, "applier", true, MAIN, &shape(), T1).unwrap();
        let spec = &out["spec"];
        assert_eq!(spec["replicas"], 3);
        assert_eq!(spec["paused"], false, "fields not in the configuration are kept");
        assert_eq!(spec["selector"], json!({"c": "3"}), "atomic map replaced");
        assert_eq!(spec["tags"], json!(["x", "y", "z"]), "set union");
        assert_eq!(
            spec["containers"],
            json!([
                {"name": "a", "image": "a:1", "args": ["9"], "env": [{"name": "E", "value": "1"}]},
                {"name": "b", "image": "b:1"}
            ]),
            "list-map merged per item, atomic args replaced, other items kept"
        );
    }

    #[test]
    fn list_map_order_follows_structured_merge_diff() {
        let live = base(json!({"containers": [{"name": "a"}, {"name": "b"}]}));
        // New items go where the applied list puts them; shared items follow the applied order.
        let out = apply(
            Some(&live),
            &base(json!({"containers": [{"name": "c"}, {"name": "a"}]})),
            "m",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        let out = apply(
            Some(&live),
            &base(json!({"containers": [{"name": "b"}, {"name": "a"}]})),
            "m",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "a"]);
        // Appending to the applied list appends to the object.
        let out = apply(
            Some(&live),
            &base(json!({"containers": [{"name": "a"}, {"name": "z"}]})),
            "m",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "z"]);
    }

    #[test]
    fn null_in_configuration_unsets_a_field_but_keeps_untracked_metadata() {
        let live = created_by_update(base(json!({"replicas": 2, "paused": true})), "creator");
        let mut live = live;
        live["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        let mut config = base(json!({"paused": null}));
        config["metadata"]["creationTimestamp"] = Value::Null;
        let out = apply(Some(&live), &config, "m", true, MAIN, &shape(), T1).unwrap();
        assert!(out["spec"].get("paused").is_none());
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(out["metadata"]["creationTimestamp"], "2024-01-01T00:00:00Z");
    }

    #[test]
    fn server_owned_metadata_in_the_configuration_is_ignored_on_existing_objects() {
        let mut live = base(json!({"replicas": 1}));
        live["metadata"]["uid"] = json!("u-1");
        live["metadata"]["resourceVersion"] = json!("7");
        let mut config = base(json!({"replicas": 1}));
        config["metadata"]["uid"] = json!("other");
        config["metadata"]["resourceVersion"] = json!("3");
        let out = apply(Some(&live), &config, "m", false, MAIN, &shape(), T0).unwrap();
        assert_eq!(out["metadata"]["uid"], "u-1");
        assert_eq!(out["metadata"]["resourceVersion"], "7");
    }

    // --- 2. removal ----------------------------------------------------------------------------

    #[test]
    fn fields_dropped_from_the_configuration_are_removed() {
        let first = base(json!({
            "replicas": 2,
            "tags": ["keep", "drop"],
            "containers": [{"name": "web", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]
        }));
        let mut first = first;
        first["metadata"]["labels"] = json!({"app": "web", "tier": "front"});
        let live = apply(None, &first, "m", false, MAIN, &shape(), T0).unwrap();
        let mut second = base(json!({"tags": ["keep"], "containers": [{"name": "web", "image": "nginx"}]}));
        second["metadata"]["labels"] = json!({"app": "web"});
        let out = apply(Some(&live), &second, "m", false, MAIN, &shape(), T1).unwrap();
        assert!(out["spec"].get("replicas").is_none(), "{out:#}");
        assert_eq!(out["spec"]["tags"], json!(["keep"]));
        assert_eq!(out["spec"]["containers"], json!([{"name": "web", "image": "nginx"}]));
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            fields(&out, "m", "Apply"),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:tags": {"v:\"keep\"": {}}, "f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {}}}}
            })
        );
    }

    #[test]
    fn fields_still_owned_by_someone_else_stay() {
        let live =
            apply(None, &base(json!({"replicas": 2, "paused": true})), "applier", false, MAIN, &shape(), T0)
                .unwrap();
        // Another applier applies the same replicas value: shared ownership.
        let live =
            apply(Some(&live), &base(json!({"replicas": 2})), "other", false, MAIN, &shape(), T1).unwrap();
        let out = apply(Some(&live), &base(json!({})), "applier", false, MAIN, &shape(), T2).unwrap();
        assert_eq!(out["spec"]["replicas"], 2, "still owned by other");
        assert!(out["spec"].get("paused").is_none(), "owned by nobody any more");
        assert!(!has_entry(&out, "applier", "Apply"), "empty set: entry dropped");
        assert_eq!(fields(&out, "other", "Apply"), json!({"f:spec": {"f:replicas": {}}}));
    }

    #[test]
    fn a_dropped_list_item_goes_unless_someone_owns_the_item_itself() {
        let live = apply(
            None,
            &base(json!({"containers": [{"name": "web", "image": "nginx"}, {"name": "side", "image": "envoy"}]})),
            "applier",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        // Another manager updates a field inside "side" (owns that field, not the item).
        let mut updated = live.clone();
        updated["spec"]["containers"][1]["imagePullPolicy"] = json!("Always");
        record_update(Some(&live), &mut updated, "kubectl-edit", MAIN, &shape(), T1);
        let out = apply(
            Some(&updated),
            &base(json!({"containers": [{"name": "web", "image": "nginx"}]})),
            "applier",
            false,
            MAIN,
            &shape(),
            T2,
        )
        .unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "web", "image": "nginx"}]));
        assert!(!has_entry(&out, "kubectl-edit", "Update"), "its only field went away with the item");

        // But an item that another manager owns itself stays (with that manager's fields).
        let live = apply(
            None,
            &base(json!({"containers": [{"name": "web", "image": "nginx"}]})),
            "applier",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        let live = apply(
            Some(&live),
            &base(json!({"containers": [{"name": "web"}]})),
            "other",
            false,
            MAIN,
            &shape(),
            T1,
        )
        .unwrap();
        let out = apply(Some(&live), &base(json!({"containers": []})), "applier", false, MAIN, &shape(), T2)
            .unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "web"}]), "image dropped, item kept: {out:#}");
    }

    #[test]
    fn a_dropped_set_value_is_removed() {
        let mut c1 = base(json!({}));
        c1["metadata"]["finalizers"] = json!(["a", "b"]);
        let live = apply(None, &c1, "m", false, MAIN, &shape(), T0).unwrap();
        let mut c2 = base(json!({}));
        c2["metadata"]["finalizers"] = json!(["b"]);
        let out = apply(Some(&live), &c2, "m", false, MAIN, &shape(), T1).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(fields(&out, "m", "Apply"), json!({"f:metadata": {"f:finalizers": {"v:\"b\"": {}}}}));
    }

    #[test]
    fn removing_the_last_label_drops_the_labels_map() {
        let mut c1 = base(json!({"replicas": 1}));
        c1["metadata"]["labels"] = json!({"app": "x"});
        let live = apply(None, &c1, "m", false, MAIN, &shape(), T0).unwrap();
        let out = apply(Some(&live), &base(json!({"replicas": 1})), "m", false, MAIN, &shape(), T1).unwrap();
        assert!(out["metadata"].get("labels").is_none(), "{out:#}");
        assert_eq!(out["metadata"]["name"], "w");
    }

    #[test]
    fn fields_the_applier_never_applied_are_not_removed() {
        let live = created_by_update(base(json!({"replicas": 1, "paused": true})), "creator");
        let out = apply(Some(&live), &base(json!({"replicas": 1})), "m", false, MAIN, &shape(), T1).unwrap();
        let out = apply(Some(&out), &base(json!({})), "m", false, MAIN, &shape(), T2).unwrap();
        assert_eq!(out["spec"], json!({"replicas": 1, "paused": true}));
    }

    // --- 3. conflicts --------------------------------------------------------------------------

    #[test]
    fn changing_a_field_another_manager_owns_conflicts() {
        let mut obj = base(json!({"replicas": 1, "containers": [{"name": "web", "image": "nginx:1"}]}));
        obj["metadata"]["labels"] = json!({"app": "a"});
        let live = created_by_update(obj, "kubectl-create");
        let mut config = base(json!({"replicas": 5, "containers": [{"name": "web", "image": "nginx:2"}]}));
        config["metadata"]["labels"] = json!({"app": "b"});
        let err = apply(Some(&live), &config, "vigil", false, MAIN, &shape(), T1).unwrap_err();
        let mut got: Vec<(String, String)> = err.into_iter().map(|c| (c.manager, c.field)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("kubectl-create".to_string(), ".metadata.labels.app".to_string()),
                ("kubectl-create".to_string(), ".spec.containers[name=\"web\"].image".to_string()),
                ("kubectl-create".to_string(), ".spec.replicas".to_string()),
            ]
        );
    }

    #[test]
    fn applying_the_same_value_shares_ownership_without_conflict() {
        let live = created_by_update(base(json!({"replicas": 1})), "kubectl-create");
        let out =
            apply(Some(&live), &base(json!({"replicas": 1})), "vigil", false, MAIN, &shape(), T1).unwrap();
        assert_eq!(fields(&out, "vigil", "Apply"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(fields(&out, "kubectl-create", "Update"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn force_moves_ownership_of_conflicting_fields() {
        let live = created_by_update(base(json!({"replicas": 1, "paused": true})), "kubectl-create");
        let out =
            apply(Some(&live), &base(json!({"replicas": 4})), "vigil", true, MAIN, &shape(), T1).unwrap();
        assert_eq!(out["spec"]["replicas"], 4);
        assert_eq!(fields(&out, "vigil", "Apply"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(fields(&out, "kubectl-create", "Update"), json!({"f:spec": {"f:paused": {}}}));
        // Losing every field drops the entry.
        let out = apply(
            Some(&out),
            &base(json!({"replicas": 4, "paused": false})),
            "vigil",
            true,
            MAIN,
            &shape(),
            T2,
        )
        .unwrap();
        assert!(!has_entry(&out, "kubectl-create", "Update"), "{out:#}");
    }

    #[test]
    fn conflicts_come_from_other_appliers_too_and_set_values_print_as_values() {
        let live = apply(None, &base(json!({"replicas": 1})), "a", false, MAIN, &shape(), T0).unwrap();
        let err =
            apply(Some(&live), &base(json!({"replicas": 2})), "b", false, MAIN, &shape(), T1).unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "a".into(), field: ".spec.replicas".into() }]);
        assert_eq!(
            conflicts_message(&err),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        assert_eq!(
            format_path(&["f:metadata".into(), "f:finalizers".into(), "v:\"x\"".into()]),
            ".metadata.finalizers[=\"x\"]"
        );
        assert_eq!(
            format_path(&[
                "f:spec".into(),
                "f:ports".into(),
                "k:{\"port\":80,\"protocol\":\"TCP\"}".into(),
                "f:name".into()
            ]),
            ".spec.ports[port=80,protocol=\"TCP\"].name"
        );
    }

    #[test]
    fn conflicts_message_groups_several_conflicts_by_manager() {
        let msg = conflicts_message(&[
            Conflict { manager: "b".into(), field: ".spec.x".into() },
            Conflict { manager: "a".into(), field: ".spec.y".into() },
            Conflict { manager: "b".into(), field: ".spec.z".into() },
        ]);
        assert_eq!(
            msg,
            "Apply failed with 3 conflicts: conflicts with \"a\":\n- .spec.y\nconflicts with \"b\":\n- .spec.x\n- .spec.z"
        );
    }

    #[test]
    fn an_apply_conflicts_with_the_same_managers_update_entry() {
        let live = created_by_update(base(json!({"replicas": 1})), "vigil");
        let err = apply(Some(&live), &base(json!({"replicas": 2})), "vigil", false, MAIN, &shape(), T1)
            .unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "vigil".into(), field: ".spec.replicas".into() }]);
    }

    #[test]
    fn a_conflicting_apply_changes_nothing() {
        let live = created_by_update(base(json!({"replicas": 1})), "kubectl-create");
        let before = live.clone();
        assert!(
            apply(
                Some(&live),
                &base(json!({"replicas": 2, "paused": true})),
                "vigil",
                false,
                MAIN,
                &shape(),
                T1
            )
            .is_err()
        );
        assert_eq!(live, before);
    }

    // --- 4. the applier's entry --------------------------------------------------------------

    #[test]
    fn the_apply_entry_is_exactly_the_configuration_set_and_entries_are_sorted() {
        let live = created_by_update(base(json!({"paused": false})), "creator");
        let out =
            apply(Some(&live), &base(json!({"replicas": 2})), "vigil", false, MAIN, &shape(), T1).unwrap();
        let list = entries(&out);
        assert_eq!(list.len(), 2);
        // The apiserver sorts Apply entries before Update ones, then by time.
        assert_eq!(list[0]["manager"], "vigil");
        assert_eq!(list[0]["operation"], "Apply");
        assert_eq!(list[0]["time"], T1);
        assert_eq!(list[1]["manager"], "creator");
        assert_eq!(list[1]["time"], T0);
        let mut config2 = base(json!({"replicas": 3}));
        config2["apiVersion"] = json!("example.com/v2");
        let out = apply(Some(&out), &config2, "vigil", false, MAIN, &shape(), T2).unwrap();
        let e = entry(&out, "vigil", "Apply");
        assert_eq!(e["apiVersion"], "example.com/v2");
        assert_eq!(e["time"], T2);
        assert_eq!(e["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(out["spec"], json!({"paused": false, "replicas": 3}));
    }

    #[test]
    fn entries_with_the_same_operation_sort_by_time_then_manager() {
        let live = apply(None, &base(json!({"a": 1})), "zeta", false, MAIN, &shape(), T1).unwrap();
        let live = apply(Some(&live), &base(json!({"b": 1})), "alpha", false, MAIN, &shape(), T2).unwrap();
        let live = apply(Some(&live), &base(json!({"c": 1})), "beta", false, MAIN, &shape(), T1).unwrap();
        let names: Vec<String> =
            entries(&live).iter().map(|e| e["manager"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, ["beta", "zeta", "alpha"]);
        assert!(rfc3339_seconds("2024-05-01T12:00:00+02:00") == rfc3339_seconds("2024-05-01T10:00:00Z"));
        assert_eq!(rfc3339_seconds("1970-01-02T00:00:01.5Z"), 86_401);
        assert_eq!(rfc3339_seconds("garbage"), 0);
    }

    // --- 5. scopes -----------------------------------------------------------------------------

    fn with_status(mut obj: Value, status: Value) -> Value {
        obj["status"] = status;
        obj
    }

    #[test]
    fn isolated_main_apply_ignores_status() {
        let live = with_status(base(json!({"replicas": 1})), json!({"ready": 1}));
        let mut live = live;
        record_update(None, &mut live, "controller", Scope::Status, &shape(), T0);
        assert_eq!(entry(&live, "controller", "Update")["subresource"], "status");
        let config = with_status(base(json!({"replicas": 2})), json!({"ready": 9, "phase": "x"}));
        let out = apply(Some(&live), &config, "vigil", false, ISOLATED, &shape(), T1).unwrap();
        assert_eq!(out["status"], json!({"ready": 1}));
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(fields(&out, "vigil", "Apply"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(fields(&out, "controller", "Update"), json!({"f:status": {"f:ready": {}}}));
    }

    #[test]
    fn status_apply_writes_only_status_and_records_the_subresource() {
        let mut obj = base(json!({"replicas": 1}));
        obj["metadata"]["labels"] = json!({"app": "a"});
        let live = created_by_update(obj, "creator");
        let mut config = with_status(
            base(json!({"replicas": 7})),
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        );
        config["metadata"]["labels"] = json!({"app": "changed"});
        let out = apply(Some(&live), &config, "vigil", false, Scope::Status, &shape(), T1).unwrap();
        assert_eq!(out["spec"]["replicas"], 1, "spec untouched and no conflict with its owner");
        assert_eq!(out["metadata"]["labels"], json!({"app": "a"}));
        assert_eq!(out["status"], json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        let e = entry(&out, "vigil", "Apply");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}}}})
        );
        // A main-resource apply by the same manager is a separate entry.
        let out =
            apply(Some(&out), &base(json!({"paused": true})), "vigil", true, ISOLATED, &shape(), T2).unwrap();
        let applies: Vec<&Value> = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["operation"] == "Apply")
            .collect();
        assert_eq!(applies.len(), 2);
        assert_eq!(out["status"]["conditions"][0]["type"], "Ready");
    }

    #[test]
    fn status_apply_conflicts_only_with_status_owners_and_prunes_its_own_status_fields() {
        let live = with_status(base(json!({"replicas": 1})), json!({"phase": "Running", "ready": 1}));
        let mut live = live;
        record_update(None, &mut live, "kubelet", Scope::Status, &shape(), T0);
        let err = apply(
            Some(&live),
            &with_status(base(json!({})), json!({"phase": "Failed"})),
            "vigil",
            false,
            Scope::Status,
            &shape(),
            T1,
        )
        .unwrap_err();
        assert_eq!(err, vec![Conflict { manager: "kubelet".into(), field: ".status.phase".into() }]);
        let out = apply(
            Some(&live),
            &with_status(base(json!({})), json!({"phase": "Failed", "extra": 1})),
            "vigil",
            true,
            Scope::Status,
            &shape(),
            T1,
        )
        .unwrap();
        assert_eq!(out["status"], json!({"phase": "Failed", "ready": 1, "extra": 1}));
        let out = apply(
            Some(&out),
            &with_status(base(json!({})), json!({"phase": "Failed"})),
            "vigil",
            false,
            Scope::Status,
            &shape(),
            T2,
        )
        .unwrap();
        assert_eq!(out["status"], json!({"phase": "Failed", "ready": 1}));
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn status_is_a_normal_field_without_a_status_subresource() {
        let live = created_by_update(with_status(base(json!({})), json!({"phase": "A"})), "creator");
        let err = apply(
            Some(&live),
            &with_status(base(json!({})), json!({"phase": "B"})),
            "vigil",
            false,
            MAIN,
            &shape(),
            T1,
        )
        .unwrap_err();
        assert_eq!(err[0].field, ".status.phase");
        let out = apply(
            Some(&live),
            &with_status(base(json!({})), json!({"phase": "B"})),
            "vigil",
            true,
            MAIN,
            &shape(),
            T1,
        )
        .unwrap();
        assert_eq!(out["status"]["phase"], "B");
        assert_eq!(fields(&out, "vigil", "Apply"), json!({"f:status": {"f:phase": {}}}));
    }

    // --- 7. no-ops -----------------------------------------------------------------------------

    #[test]
    fn a_repeated_apply_returns_the_live_object_unchanged() {
        let mut config = base(json!({"replicas": 2, "containers": [{"name": "web", "image": "nginx"}]}));
        config["metadata"]["labels"] = json!({"app": "web"});
        let live = apply(None, &config, "vigil", false, MAIN, &shape(), T0).unwrap();
        let again = apply(Some(&live), &config, "vigil", false, MAIN, &shape(), T1).unwrap();
        assert_eq!(again, live);
        assert_eq!(entry(&again, "vigil", "Apply")["time"], T0);
    }

    #[test]
    fn taking_shared_ownership_without_changing_the_object_keeps_the_time() {
        let live = created_by_update(base(json!({"replicas": 2, "paused": true})), "creator");
        let live =
            apply(Some(&live), &base(json!({"replicas": 2})), "vigil", false, MAIN, &shape(), T1).unwrap();
        let out = apply(
            Some(&live),
            &base(json!({"replicas": 2, "paused": true})),
            "vigil",
            false,
            MAIN,
            &shape(),
            T2,
        )
        .unwrap();
        assert_eq!(out["spec"], live["spec"]);
        let e = entry(&out, "vigil", "Apply");
        assert_eq!(e["time"], T1);
        assert_eq!(e["fieldsV1"], json!({"f:spec": {"f:replicas": {}, "f:paused": {}}}));
    }

    #[test]
    fn stored_entries_are_kept_verbatim_when_unchanged() {
        let mut live = base(json!({"replicas": 1}));
        // Not in sorted order and with a non-canonical key spelling: kept as is.
        live["metadata"]["managedFields"] = json!([
            {"manager": "z", "operation": "Update", "apiVersion": "example.com/v1", "time": T0, "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "a", "operation": "Apply", "apiVersion": "example.com/v1", "time": T0, "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        ]);
        let out = apply(Some(&live), &base(json!({"replicas": 1})), "a", false, MAIN, &shape(), T1).unwrap();
        assert_eq!(out, live);
    }

    // --- 6. record_update ----------------------------------------------------------------------

    #[test]
    fn create_records_every_field_and_ignores_client_managed_fields() {
        let mut obj = base(json!({
            "replicas": 1,
            "strategy": {"rollingUpdate": {"maxSurge": 1}},
            "containers": [{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "1"}]}]
        }));
        obj["metadata"]["labels"] = json!({"app": "web"});
        obj["metadata"]["managedFields"] = json!([{"manager": "liar", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
        record_update(None, &mut obj, "kubectl-create", MAIN, &shape(), T0);
        let list = entries(&obj);
        assert_eq!(list.len(), 1);
        let e = &list[0];
        assert_eq!(e["manager"], "kubectl-create");
        assert_eq!(e["operation"], "Update");
        assert_eq!(e["apiVersion"], "example.com/v1");
        assert_eq!(e["time"], T0);
        assert!(e.get("subresource").is_none());
        assert_eq!(
            e["fieldsV1"],
            json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:strategy": {".": {}, "f:rollingUpdate": {".": {}, "f:maxSurge": {}}},
                    "f:containers": {".": {}, "k:{\"name\":\"web\"}": {
                        ".": {}, "f:name": {}, "f:image": {},
                        "f:env": {".": {}, "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}
                    }}
                }
            })
        );
    }

    #[test]
    fn an_update_takes_changed_fields_from_other_managers() {
        let live =
            apply(None, &base(json!({"replicas": 1, "paused": false})), "vigil", false, MAIN, &shape(), T0)
                .unwrap();
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(3);
        new["spec"]["minReadySeconds"] = json!(5);
        record_update(Some(&live), &mut new, "hpa", MAIN, &shape(), T1);
        assert_eq!(fields(&new, "vigil", "Apply"), json!({"f:spec": {"f:paused": {}}}));
        assert_eq!(
            fields(&new, "hpa", "Update"),
            json!({"f:spec": {"f:replicas": {}, "f:minReadySeconds": {}}})
        );
        assert_eq!(entry(&new, "hpa", "Update")["time"], T1);
        // A second update by the same manager merges into its entry.
        let prev = new.clone();
        let mut next = new.clone();
        next["spec"]["paused"] = json!(true);
        record_update(Some(&prev), &mut next, "hpa", MAIN, &shape(), T2);
        assert_eq!(
            fields(&next, "hpa", "Update"),
            json!({"f:spec": {"f:replicas": {}, "f:minReadySeconds": {}, "f:paused": {}}})
        );
        assert_eq!(entry(&next, "hpa", "Update")["time"], T2);
        assert!(!has_entry(&next, "vigil", "Apply"), "vigil lost its last field");
    }

    #[test]
    fn removed_fields_leave_every_set() {
        let live =
            apply(None, &base(json!({"replicas": 1, "paused": false})), "vigil", false, MAIN, &shape(), T0)
                .unwrap();
        let mut new = live.clone();
        new["spec"].as_object_mut().unwrap().remove("paused");
        record_update(Some(&live), &mut new, "editor", MAIN, &shape(), T1);
        assert_eq!(fields(&new, "vigil", "Apply"), json!({"f:spec": {"f:replicas": {}}}));
        assert!(!has_entry(&new, "editor", "Update"), "a pure removal takes nothing");
    }

    #[test]
    fn an_update_that_changes_nothing_keeps_the_object_identical() {
        let live = created_by_update(base(json!({"replicas": 1})), "creator");
        let mut same = live.clone();
        same["metadata"]["managedFields"] = json!([]);
        record_update(Some(&live), &mut same, "other", MAIN, &shape(), T1);
        assert_eq!(same, live);
        // A change by the owner itself moves its time.
        let mut changed = live.clone();
        changed["spec"]["replicas"] = json!(2);
        record_update(Some(&live), &mut changed, "creator", MAIN, &shape(), T1);
        assert_eq!(entry(&changed, "creator", "Update")["time"], T1);
        assert_eq!(entries(&changed).len(), 1);
    }

    #[test]
    fn status_updates_are_recorded_under_the_status_subresource() {
        let live = with_status(created_by_update(base(json!({"replicas": 1})), "creator"), json!({}));
        let mut new = live.clone();
        new["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        record_update(Some(&live), &mut new, "controller", Scope::Status, &shape(), T1);
        let e = entry(&new, "controller", "Update");
        assert_eq!(e["subresource"], "status");
        assert_eq!(
            e["fieldsV1"],
            json!({"f:status": {"f:conditions": {".": {}, "k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}}}})
        );
        assert_eq!(fields(&new, "creator", "Update"), json!({"f:spec": {"f:replicas": {}}}));
        // A main-resource write with an isolated status does not take status fields.
        let mut main = new.clone();
        main["spec"]["replicas"] = json!(2);
        record_update(Some(&new), &mut main, "editor", ISOLATED, &shape(), T2);
        assert_eq!(fields(&main, "editor", "Update"), json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(entry(&main, "controller", "Update")["fieldsV1"], e["fieldsV1"]);
    }

    #[test]
    fn fields_that_no_longer_exist_are_dropped_from_all_entries() {
        let live = apply(
            None,
            &base(json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]})),
            "vigil",
            false,
            MAIN,
            &shape(),
            T0,
        )
        .unwrap();
        let mut new = live.clone();
        new["spec"]["containers"] = json!([{"name": "a", "image": "x"}]);
        record_update(Some(&live), &mut new, "editor", MAIN, &shape(), T1);
        assert_eq!(
            fields(&new, "vigil", "Apply"),
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:image": {}}}}})
        );
        // Stale paths in a stored entry go away on the next write too.
        let mut stale = new.clone();
        stale["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:gone"] = json!({});
        let mut next = stale.clone();
        next["spec"]["replicas"] = json!(1);
        record_update(Some(&stale), &mut next, "editor", MAIN, &shape(), T2);
        assert!(fields(&next, "vigil", "Apply")["f:spec"].get("f:gone").is_none());
    }

    #[test]
    fn update_then_apply_round_trip_with_atomic_and_set_lists() {
        let live = created_by_update(
            base(json!({"tags": ["a"], "containers": [{"name": "w", "args": ["1"]}]})),
            "creator",
        );
        assert_eq!(fields(&live, "creator", "Update")["f:spec"]["f:tags"], json!({".": {}, "v:\"a\"": {}}));
        // Adding a set value owned by nobody else: no conflict.
        let out =
            apply(Some(&live), &base(json!({"tags": ["b"]})), "vigil", false, MAIN, &shape(), T1).unwrap();
        assert_eq!(out["spec"]["tags"], json!(["a", "b"]));
        // Replacing an atomic list owned by someone else conflicts on the list itself.
        let err = apply(
            Some(&live),
            &base(json!({"containers": [{"name": "w", "args": ["2"]}]})),
            "vigil",
            false,
            MAIN,
            &shape(),
            T1,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict { manager: "creator".into(), field: ".spec.containers[name=\"w\"].args".into() }]
        );
    }

    #[test]
    fn field_set_round_trips_through_fields_v1() {
        let mut set = FieldSet::default();
        set.insert(&["f:spec".into(), "f:containers".into(), "k:{\"name\":\"a\"}".into()]);
        set.insert(&["f:spec".into(), "f:containers".into(), "k:{\"name\":\"a\"}".into(), "f:image".into()]);
        set.insert(&["f:spec".into(), "f:replicas".into()]);
        let encoded = set.to_fields_v1();
        assert_eq!(
            encoded,
            json!({"f:spec": {"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}}}, "f:replicas": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&encoded), set);
        // Keys written by others with different spacing decode to the same path element.
        let other = json!({"f:spec": {"f:containers": {"k:{\"name\": \"a\"}": {".": {}, "f:image": {}}}, "f:replicas": {}}});
        assert_eq!(FieldSet::from_fields_v1(&other), set);
    }
}
