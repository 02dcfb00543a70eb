//! PLACEHOLDER until the real module lands (being written in parallel).
use crate::shape::Shape;
use serde_json::Value;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main { status_isolated: bool },
    Status,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    _manager: &str,
    _force: bool,
    _scope: Scope,
    _shape: &dyn Shape,
    _now: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut out = live.cloned().unwrap_or_else(|| config.clone());
    json_patch::merge(&mut out, config);
    Ok(out)
}
pub fn record_update(
    _old: Option<&Value>,
    _new: &mut Value,
    _manager: &str,
    _scope: Scope,
    _shape: &dyn Shape,
    _now: &str,
) {
}
