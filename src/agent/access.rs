//! Who may read an agent's sensitive routes in a cluster: the caller's bearer token is judged by
//! the API server, as the kubelet judges callers of its own API. A TokenReview says who the
//! token belongs to; a SubjectAccessReview whether that user may `get` the virtual resource
//! `nodes/logs` or `nodes/config` in group `vigil.dev`, named after this node (grant it with the
//! `vigil-node-reader` ClusterRole of `manifests/rbac.yaml`). Answers are cached briefly, by a
//! hash of the token: allowed for a minute, refused for ten seconds; a review that could not be
//! made is not cached.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::http::{Refusal, ReviewFuture, Sensitive, TokenReviewer};
use crate::report::apiserver::error_message;

/// How long an allowed caller is remembered.
const ALLOWED_FOR: Duration = Duration::from_secs(60);
/// How long a refused caller is remembered.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// At most this many answers are remembered (then all are forgotten).
const CACHE_LIMIT: usize = 4096;

/// A remembered answer and until when it holds.
type Answer = (Instant, Result<(), Refusal>);

/// The API server's judgement of callers of this node's agent.
pub struct ApiReviewer {
    client: Client,
    node: String,
    /// Keyed by a hash of the token under this process's own random key.
    cache: Mutex<HashMap<(u64, Sensitive), Answer>>,
    keys: RandomState,
}

impl std::fmt::Debug for ApiReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiReviewer").field("node", &self.node).finish_non_exhaustive()
    }
}

impl ApiReviewer {
    /// A reviewer for the agent of `node`.
    pub fn new(client: Client, node: &str) -> ApiReviewer {
        ApiReviewer { client, node: node.to_owned(), cache: Mutex::default(), keys: RandomState::new() }
    }

    async fn ask(&self, token: &str, what: Sensitive) -> Result<(), Refusal> {
        let unavailable =
            |e: kube::Error| Refusal::Unavailable(format!("cannot review the token: {}", error_message(&e)));
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: None },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(unavailable)?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            let why = status.error.unwrap_or_else(|| "not authenticated".to_owned());
            return Err(Refusal::Unauthenticated(format!(
                "the API server does not accept this token: {why}"
            )));
        };
        let name = user.username.clone().unwrap_or_default();
        let attributes = ResourceAttributes {
            group: Some(crate::api::GROUP.to_owned()),
            resource: Some("nodes".to_owned()),
            subresource: Some(what.as_str().to_owned()),
            name: Some(self.node.clone()),
            verb: Some("get".to_owned()),
            ..ResourceAttributes::default()
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let judged = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(unavailable)?;
        let verdict = judged.status.unwrap_or_default();
        if verdict.allowed {
            Ok(())
        } else {
            let reason =
                verdict.reason.filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
            Err(Refusal::Forbidden(format!(
                "{name} may not get nodes/{} of {} in group {}{reason}",
                what.as_str(),
                self.node,
                crate::api::GROUP
            )))
        }
    }
}

impl TokenReviewer for ApiReviewer {
    fn review<'a>(&'a self, token: &'a str, what: Sensitive) -> ReviewFuture<'a> {
        Box::pin(async move {
            let key = (self.keys.hash_one(token), what);
            let now = Instant::now();
            if let Some((until, answer)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
                && *until > now
            {
                return answer.clone();
            }
            let answer = self.ask(token, what).await;
            let keep = match &answer {
                Ok(()) => Some(ALLOWED_FOR),
                Err(Refusal::Unavailable(_)) => None,
                Err(_) => Some(REFUSED_FOR),
            };
            if let Some(keep) = keep {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(key, (now + keep, answer.clone()));
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    type Mock =
        tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

    fn reply(body: Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap_or_default()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next request: its path and JSON body.
    async fn next(
        handle: &mut Mock,
    ) -> (String, Value, tower_test::mock::SendResponse<http::Response<kube::client::Body>>) {
        let Some((request, send)) = handle.next_request().await else { panic!("no request") };
        assert_eq!(request.method(), http::Method::POST);
        let path = request.uri().to_string();
        let body = request.into_body().collect_bytes().await.unwrap_or_default();
        (path, serde_json::from_slice(&body).unwrap_or_default(), send)
    }

    /// The exact calls: a TokenReview of the token, then a SubjectAccessReview of that user for
    /// `get` `vigil.dev` `nodes/config` named after the node; the answer is then cached (no
    /// request at all the second time), per route.
    #[tokio::test]
    async fn a_caller_is_reviewed_once_then_remembered() {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let reviewer = ApiReviewer::new(kube::Client::new(service, "default"), "node-1");
        let server = tokio::spawn(async move {
            let (path, sent, send) = next(&mut handle).await;
            assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews?");
            assert_eq!(sent["spec"]["token"], "secret", "{sent}");
            send.send_response(reply(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "secret"},
                "status": {"authenticated": true, "user": {"username": "alice", "uid": "u-1", "groups": ["ops"],
                           "extra": {"scopes": ["a"]}}}})));
            let (path, sent, send) = next(&mut handle).await;
            assert_eq!(path, "/apis/authorization.k8s.io/v1/subjectaccessreviews?");
            assert_eq!(
                sent["spec"],
                json!({"user": "alice", "uid": "u-1", "groups": ["ops"], "extra": {"scopes": ["a"]},
                       "resourceAttributes": {"group": "vigil.dev", "resource": "nodes", "subresource": "config",
                                              "name": "node-1", "verb": "get"}}),
            );
            send.send_response(reply(json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": sent["spec"],
                "status": {"allowed": true}})));
            // The logs route is its own question: refused, with the authorizer's reason.
            let (_, _, send) = next(&mut handle).await;
            send.send_response(reply(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "secret"},
                "status": {"authenticated": true, "user": {"username": "alice"}}})));
            let (_, sent, send) = next(&mut handle).await;
            assert_eq!(sent["spec"]["resourceAttributes"]["subresource"], "logs");
            send.send_response(reply(json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": sent["spec"],
                "status": {"allowed": false, "reason": "no RBAC policy matched"}})));
            // Nothing more: the answers are remembered.
            assert!(tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err());
        });
        assert_eq!(reviewer.review("secret", Sensitive::Config).await, Ok(()));
        let refused = reviewer.review("secret", Sensitive::Logs).await;
        assert_eq!(
            refused,
            Err(Refusal::Forbidden(
                "alice may not get nodes/logs of node-1 in group vigil.dev: no RBAC policy matched"
                    .to_owned()
            ))
        );
        assert_eq!(reviewer.review("secret", Sensitive::Config).await, Ok(()));
        assert_eq!(reviewer.review("secret", Sensitive::Logs).await, refused);
        server.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
