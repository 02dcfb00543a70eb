//! The agent's heartbeat in a cluster: a Lease per node (`vigil-agent-<node>`, in the agent's
//! namespace), renewed about every 10 s with jitter, the way the kubelet renews its node lease.
//! The controller marks the System check of a node's instances impaired when it goes silent.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::cluster::{AGENT_MANAGER, agent_lease};
use crate::health::Health;
use crate::report::apiserver::error_message;

/// How the Lease is kept.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    /// Renewal period (jittered by up to a tenth either way).
    pub renew: Duration,
    /// `leaseDurationSeconds`: how long the Lease holds without renewal.
    pub duration: Duration,
}

/// Renews the Lease until `cancel`. After renewals failed, the first that works again calls
/// `back` (the writer rewrites what the controller may have marked meanwhile).
pub async fn keep(
    client: Client,
    namespace: String,
    node: String,
    config: LeaseConfig,
    health: Arc<Health>,
    back: Arc<Notify>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let name = agent_lease(&node);
    let params = PatchParams::apply(AGENT_MANAGER).force();
    let mut failing = false;
    loop {
        let now = jiff::Timestamp::now();
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "labels": {api::labels::NODE: node}},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": config.duration.as_secs(),
                "renewTime": MicroTime(now),
            },
        });
        match api.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                if failing {
                    info!(lease = %name, "Lease renewed again");
                    back.notify_one();
                    failing = false;
                }
                health.set("lease", Vec::new());
            }
            Err(e) => {
                let problem = format!("cannot renew the Lease {namespace}/{name}: {}", error_message(&e));
                if !failing {
                    warn!("{problem}");
                }
                failing = true;
                health.set("lease", vec![problem]);
            }
        }
        let tenth = config.renew.as_millis() as u64 / 10;
        let jitter = fastrand::u64(0..=2 * tenth);
        let wait = config.renew.saturating_sub(Duration::from_millis(tenth)) + Duration::from_millis(jitter);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact call: a server-side apply of the node's Lease under the agent's field manager,
    /// forced, with the node as holder and label; a refusal is reported as a health problem and
    /// the next renewal that works notifies `back`.
    #[tokio::test]
    async fn a_renewal_is_one_forced_apply_of_the_nodes_lease() {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = kube::Client::new(service, "default");
        let (health, back, cancel) = (Health::new(), Arc::new(Notify::new()), CancellationToken::new());
        let config = LeaseConfig { renew: Duration::from_millis(50), duration: Duration::from_secs(40) };
        let task = tokio::spawn(keep(
            client,
            "vigil".into(),
            "node-1".into(),
            config,
            health.clone(),
            back.clone(),
            cancel.clone(),
        ));
        for (n, code) in [(0, 500), (1, 200)] {
            let Some((request, send)) = handle.next_request().await else { panic!("no request") };
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().to_string(),
                "/apis/coordination.k8s.io/v1/namespaces/vigil/leases/vigil-agent-node-1?&force=true&fieldManager=vigil-agent"
            );
            assert_eq!(
                request.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(&b"application/apply-patch+yaml"[..])
            );
            let body = request.into_body().collect_bytes().await.unwrap_or_default();
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!(sent["metadata"]["labels"]["vigil.dev/node"], "node-1", "{sent}");
            assert_eq!(sent["spec"]["holderIdentity"], "node-1", "{sent}");
            assert_eq!(sent["spec"]["leaseDurationSeconds"], 40, "{sent}");
            assert!(sent["spec"]["renewTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{sent}");
            let reply = if code == 200 {
                serde_json::to_vec(&sent)
            } else {
                serde_json::to_vec(
                    &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                       "message": "etcd is down", "code": 500}),
                )
            };
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(reply.unwrap_or_default()))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            if n == 0 {
                // kube's client retries neither 500 nor apply conflicts: one request, one problem.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let problems = health.snapshot().reasons;
                assert!(
                    problems.iter().any(|p| p.contains("cannot renew the Lease vigil/vigil-agent-node-1")),
                    "{problems:?}"
                );
            }
        }
        tokio::time::timeout(Duration::from_secs(5), back.notified())
            .await
            .unwrap_or_else(|_| panic!("not notified"));
        cancel.cancel();
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
