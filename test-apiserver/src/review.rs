//! TokenReview and SubjectAccessReview against a configurable set of tokens and an allow-list.

use serde_json::{Value, json};

use crate::status::ApiError;

/// A user a token stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `username`.
    pub name: String,
    /// `groups`.
    pub groups: Vec<String>,
}

/// One allowed action: `*` matches anything; an empty namespace matches every namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// A user name or a group name.
    pub subject: String,
    /// Verb (`get`, `list`…, `*`).
    pub verb: String,
    /// Group of the resource (`""` for core, `*`).
    pub group: String,
    /// Resource (`pods`, `nodes/proxy`, `*`); for non-resource requests, the path (`/metrics`).
    pub resource: String,
    /// Namespace (`""` or `*` for all).
    pub namespace: String,
}

impl Rule {
    /// Allows `subject` to `verb` `resource` (`plural` or `plural/sub`) in `group`, everywhere.
    pub fn new(subject: &str, verb: &str, group: &str, resource: &str) -> Self {
        Rule {
            subject: subject.to_owned(),
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: String::new(),
        }
    }

    /// Only in this namespace.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }
}

/// Tokens and rules.
#[derive(Debug, Clone, Default)]
pub struct Authz {
    /// Bearer token → user.
    pub tokens: Vec<(String, User)>,
    /// What is allowed; everything else is denied.
    pub rules: Vec<Rule>,
}

fn any(want: &str, got: &str) -> bool {
    want == "*" || want == got
}

impl Authz {
    /// Answers a TokenReview or a SubjectAccessReview (returned with its status filled in).
    pub fn review(&self, plural: &str, mut input: Value) -> Result<Value, ApiError> {
        match plural {
            "tokenreviews" => {
                let token = input.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
                if token.is_empty() {
                    return Err(ApiError::invalid(
                        "TokenReview",
                        "authentication.k8s.io",
                        "",
                        &["spec.token: Required value".to_owned()],
                    ));
                }
                let audiences = input.pointer("/spec/audiences").cloned().unwrap_or(json!([]));
                input["status"] = match self.tokens.iter().find(|(t, _)| t == token) {
                    Some((_, user)) => json!({
                        "authenticated": true,
                        "user": {"username": user.name, "uid": format!("uid-{}", user.name), "groups": user.groups},
                        "audiences": audiences,
                    }),
                    // (the real server omits `authenticated` when it is false)
                    None => json!({"user": {}, "error": "invalid bearer token"}),
                };
            }
            _ => {
                let user = input.pointer("/spec/user").and_then(Value::as_str).unwrap_or_default().to_owned();
                let groups: Vec<String> = input
                    .pointer("/spec/groups")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                let subject_ok = |s: &str| s == user || groups.iter().any(|g| g == s);
                let allowed = if let Some(attrs) = input.pointer("/spec/resourceAttributes") {
                    let field = |f: &str| attrs.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
                    let resource = match field("subresource").as_str() {
                        "" => field("resource"),
                        sub => format!("{}/{sub}", field("resource")),
                    };
                    let (verb, group, namespace) = (field("verb"), field("group"), field("namespace"));
                    self.rules.iter().any(|r| {
                        subject_ok(&r.subject)
                            && any(&r.verb, &verb)
                            && any(&r.group, &group)
                            && any(&r.resource, &resource)
                            && (r.namespace.is_empty() || any(&r.namespace, &namespace))
                    })
                } else if let Some(attrs) = input.pointer("/spec/nonResourceAttributes") {
                    let path = attrs.get("path").and_then(Value::as_str).unwrap_or_default();
                    let verb = attrs.get("verb").and_then(Value::as_str).unwrap_or_default();
                    self.rules.iter().any(|r| {
                        subject_ok(&r.subject)
                            && any(&r.verb, verb)
                            && r.group.is_empty()
                            && any(&r.resource, path)
                    })
                } else {
                    return Err(ApiError::invalid(
                        "SubjectAccessReview",
                        "authorization.k8s.io",
                        "",
                        &["spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".to_owned()],
                    ));
                };
                input["status"] = if allowed {
                    json!({"allowed": true, "reason": "allowed by the stand-in's allow-list"})
                } else {
                    json!({"allowed": false, "reason": "no rule of the stand-in's allow-list matches"})
                };
            }
        }
        Ok(input)
    }
}
