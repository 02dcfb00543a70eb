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
