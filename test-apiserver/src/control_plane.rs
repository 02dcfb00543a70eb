//! A handle on the real control plane of the tests: kube-apiserver, etcd, kube-controller-manager
//! and kwok, built from their Go modules and started on loopback by `tests/fixtures/k8s.sh`.
//!
//! `make test` starts it once before the tests and stops it after them; a test binary run on its
//! own (`cargo test --test kubernetes`) starts it through the same script if it is not up (and
//! leaves it up for the next run: `tests/fixtures/k8s.sh down` stops it). Tests share it and
//! isolate themselves by namespace ([`ControlPlane::namespace`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};

/// Why the control plane could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `k8s.sh` failed: the message has its last lines.
    #[error("tests/fixtures/k8s.sh {command} failed: {output}")]
    Script { command: String, output: String },
    #[error("reading the control plane's state in {dir}")]
    ReadState {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building a client from {kubeconfig}")]
    Config {
        kubeconfig: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("calling the API server")]
    Api(#[from] kube::Error),
}

/// The running control plane (see the module docs).
#[derive(Debug, Clone)]
pub struct ControlPlane {
    dir: PathBuf,
    script: PathBuf,
    env: BTreeMap<String, String>,
}

impl ControlPlane {
    /// The control plane of this run: the one `make test` started, or started now. Blocking;
    /// call it from a test's synchronous part or `spawn_blocking`. Panics with the script's
    /// output if it cannot be brought up: the tests cannot run without it.
    #[expect(clippy::panic, reason = "a test that needs the control plane cannot go on without it")]
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        SHARED.get_or_init(|| match Self::up() {
            Ok(plane) => plane,
            Err(e) => panic!("the test control plane is not available: {e}"),
        })
    }

    /// Runs `k8s.sh up` (idempotent: a running control plane is kept) and reads its state.
    pub fn up() -> Result<ControlPlane, Error> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let repo = manifest.parent().unwrap_or(manifest).to_owned();
        let script = repo.join("tests/fixtures/k8s.sh");
        let dir = std::env::var_os("VIGIL_K8S_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/fixtures/k8s"));
        let plane = ControlPlane { dir, script, env: BTreeMap::new() };
        plane.script(&["up"])?;
        let text = std::fs::read_to_string(plane.dir.join("env"))
            .map_err(|source| Error::ReadState { dir: plane.dir.clone(), source })?;
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(ControlPlane { env, ..plane })
    }

    fn script(&self, args: &[&str]) -> Result<String, Error> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("VIGIL_K8S_DIR", &self.dir)
            .output()
            .map_err(|e| Error::Script { command: args.join(" "), output: e.to_string() })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(Error::Script { command: args.join(" "), output });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        self.env.get("VIGIL_K8S_SERVER").map(String::as_str).unwrap_or_default()
    }

    /// The Kubernetes version the control plane runs (`v1.36.3`).
    pub fn version(&self) -> &str {
        self.env.get("KUBERNETES_VERSION").map(String::as_str).unwrap_or_default()
    }

    /// A tool of the pinned versions: `kubectl`, `helm`, `kwok`, `kube-apiserver`, `etcd`.
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.dir.join("bin").join(tool)
    }

    /// A log of one of the components (`kube-apiserver`, `etcd`, ...).
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    async fn config(&self) -> Result<kube::Config, Error> {
        config_from(&self.kubeconfig()).await
    }

    /// A client with the admin's rights.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    /// A client that acts as ServiceAccount `name` in `namespace` (created if missing), with a
    /// real token from the TokenRequest API: RBAC and admission judge it as they would a pod.
    pub async fn client_as(&self, namespace: &str, name: &str) -> Result<kube::Client, Error> {
        let token = self.token_for(namespace, name, TokenRequestSpec::default()).await?;
        self.client_with_token(&token).await
    }

    /// A token of ServiceAccount `name` (created if missing), as the TokenRequest API issues it
    /// for `spec` (audiences, expiry, a bound Pod object).
    pub async fn token_for(
        &self,
        namespace: &str,
        name: &str,
        mut spec: TokenRequestSpec,
    ) -> Result<String, Error> {
        let admin = self.client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        if spec.expiration_seconds.is_none() {
            spec.expiration_seconds = Some(3600);
        }
        let request = TokenRequest { spec: Some(spec), ..TokenRequest::default() };
        let issued = accounts.create_token_request(name, &PostParams::default(), &request).await?;
        Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
    }

    /// A client that presents `token` and nothing else.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, Error> {
        let mut config = self.config().await?;
        config.auth_info = AuthInfo { token: Some(token.to_owned().into()), ..AuthInfo::default() };
        Ok(kube::Client::try_from(config)?)
    }

    /// A new namespace named `prefix-<random>`, for one test's objects.
    pub async fn namespace(&self, prefix: &str) -> Result<String, Error> {
        let name = format!("{prefix}-{:08x}", fastrand::u32(..));
        let namespaces: Api<Namespace> = Api::all(self.client().await?);
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Deletes a namespace made by [`ControlPlane::namespace`] (what it holds goes with it,
    /// through the namespace controller; this does not wait for that). Its pods are deleted at
    /// once first: without a kubelet a graceful deletion never completes, and the namespace
    /// would stay Terminating with them.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), Error> {
        let client = self.client().await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), name);
        let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        match pods.delete_collection(&now, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let namespaces: Api<Namespace> = Api::all(client);
        match namespaces.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The API server's own request counts (`apiserver_request_total` of its `/metrics`).
    pub async fn request_counts(&self) -> Result<RequestCounts, Error> {
        let client = self.client().await?;
        let request = http::Request::get("/metrics").body(Vec::new()).map_err(kube::Error::HttpError)?;
        let text = client.request_text(request).await?;
        Ok(RequestCounts::parse(&text))
    }

    /// A second kube-apiserver `name` on the same etcd, with a kubeconfig of its own: a test
    /// that needs an outage stops and starts this one, and the tests beside it keep theirs.
    /// Started ready; removed when the handle is dropped.
    pub fn second_apiserver(&self, name: &str) -> Result<SecondApiServer, Error> {
        let server = SecondApiServer { plane: self.clone(), name: name.to_owned() };
        server.start()?;
        Ok(server)
    }
}

/// A second kube-apiserver on the control plane's etcd (see [`ControlPlane::second_apiserver`]).
#[derive(Debug)]
pub struct SecondApiServer {
    plane: ControlPlane,
    name: String,
}

impl SecondApiServer {
    /// Its admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.plane.dir.join(format!("{}.kubeconfig", self.name))
    }

    /// An admin client of this API server.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(config_from(&self.kubeconfig()).await?)?)
    }

    /// Stops it (etcd keeps the data): its clients see connections refused. Blocking.
    pub fn stop(&self) -> Result<(), Error> {
        self.plane.script(&["apiserver-stop", &self.name]).map(drop)
    }

    /// Starts it again on the same port; returns once it is ready. Blocking.
    pub fn start(&self) -> Result<(), Error> {
        self.plane.script(&["apiserver-start", &self.name]).map(drop)
    }
}

impl Drop for SecondApiServer {
    fn drop(&mut self) {
        // Nothing to do about a failure here; `k8s.sh down` stops whatever is left.
        let _ = self.plane.script(&["apiserver-remove", &self.name]);
    }
}

/// Polls `check` every 100 ms until it gives `Some`, for up to `limit`; panics naming `what`.
/// The real server is eventually consistent (garbage collection, namespace deletion, RBAC
/// caches): tests wait for the outcome instead of sleeping.
#[expect(clippy::panic, reason = "a test helper: a condition never reached fails the test")]
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A client configuration from a kubeconfig file.
async fn config_from(kubeconfig: &Path) -> Result<kube::Config, Error> {
    let config_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Config {
        kubeconfig: kubeconfig.to_owned(),
        source,
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| config_error(Box::new(e)))?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| config_error(Box::new(e)))?;
    // kube retries 429, 503 and 504 by default (up to 15 times, honouring Retry-After): a test
    // must see what the server answered. An eviction refused by a PodDisruptionBudget (429)
    // otherwise comes back minutes later as a success or a timeout.
    config.default_retry = false;
    Ok(config)
}

/// Requests the API server counted, by (verb, resource) in the stand-in's terms: verbs `get`,
/// `list`, `watch`, `create`, `update`, `patch` (server-side apply included), `delete`,
/// `deletecollection`; resources `leases`, `instancestatuses/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Reads `apiserver_request_total` lines of Prometheus text.
    pub fn parse(text: &str) -> Self {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
            let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
            let label = |name: &str| {
                let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                let end = labels[start..].find('"')? + start;
                Some(&labels[start..end])
            };
            let (Some(verb), Some(resource), Some(sub)) =
                (label("verb"), label("resource"), label("subresource"))
            else {
                continue;
            };
            let verb = match verb {
                "POST" => "create".to_owned(),
                "PUT" => "update".to_owned(),
                "PATCH" | "APPLY" => "patch".to_owned(),
                other => other.to_ascii_lowercase(),
            };
            let resource = if sub.is_empty() { resource.to_owned() } else { format!("{resource}/{sub}") };
            let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            *counts.entry((verb, resource)).or_insert(0) += n;
        }
        RequestCounts(counts)
    }

    /// Requests of `verb` on `resource`.
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.0.get(&(verb.to_owned(), resource.to_owned())).copied().unwrap_or(0)
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.0.get(k).copied().unwrap_or(0))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    /// Every count, by (verb, resource).
    pub fn all(&self) -> &BTreeMap<(String, String), u64> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::RequestCounts;

    #[test]
    fn request_counts_are_read_from_the_metrics_text() {
        let text = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="vigil.dev",resource="instancestatuses",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="vigil.dev",resource="instancestatuses",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 1e+00
apiserver_request_duration_seconds_bucket{verb="PUT",le="0.1"} 9
"#;
        let counts = RequestCounts::parse(text);
        assert_eq!(counts.get("update", "leases"), 8);
        assert_eq!(counts.get("patch", "instancestatuses/status"), 5);
        assert_eq!(counts.get("create", "pods"), 1);
        assert_eq!(counts.all().len(), 3);
        let later = RequestCounts::parse(&text.replace("} 7", "} 9"));
        let delta = later.since(&counts);
        assert_eq!(delta.get("update", "leases"), 2);
        assert_eq!(delta.all().len(), 1);
    }
}
