//! The Kubernetes side of the tests: the real control plane (kube-apiserver, etcd,
//! kube-controller-manager and kwok, from `tests/fixtures/k8s.sh`) and `kubectl` against it or
//! against the stand-in.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[allow(unused_imports)] // each test binary uses its part
pub use vigil_test_apiserver::control_plane::{ControlPlane, RequestCounts, eventually};

/// `kubectl` (the control plane's own version) with its own kubeconfig and discovery cache.
#[derive(Debug)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    /// `kubectl` of the control plane's version, for `kubeconfig`.
    pub fn new(kubeconfig: &Path, cache: &Path) -> Self {
        Kubectl {
            bin: ControlPlane::shared().bin("kubectl"),
            kubeconfig: kubeconfig.to_owned(),
            cache: cache.to_owned(),
        }
    }

    /// Runs it; returns whether it succeeded and what it printed (stdout, then stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut child = Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (tests/fixtures/k8s.sh build makes it)", self.bin.display()));
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs and requires success; returns the output.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args, None);
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, text) = self.run(args, Some(stdin));
        assert!(ok, "kubectl {} failed:\n{text}", args.join(" "));
        text
    }
}

/// The shared control plane, from async code (bringing it up blocks).
pub async fn control_plane() -> &'static ControlPlane {
    tokio::task::spawn_blocking(ControlPlane::shared).await.unwrap()
}

/// `helm` of the pinned version, with folders of its own for its cache and configuration.
#[allow(dead_code)] // each test binary uses its part
#[derive(Debug)]
pub struct Helm {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
}

#[allow(dead_code)]
impl Helm {
    /// `helm` for the control plane's admin kubeconfig; `home` holds its cache and configuration.
    pub fn new(plane: &ControlPlane, home: &Path) -> Helm {
        Helm { bin: plane.bin("helm"), kubeconfig: plane.kubeconfig(), home: home.to_owned() }
    }

    /// Runs it in the repository; returns whether it succeeded, its stdout and its stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (tests/fixtures/k8s.sh build makes it)", self.bin.display()));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "helm {} failed:\n{stdout}{stderr}", args.join(" "));
        stdout
    }

    /// `helm template vigil charts/vigil --namespace <namespace> <args>`: the text.
    pub fn template(&self, namespace: &str, args: &[&str]) -> String {
        let mut all = vec!["template", "vigil", "charts/vigil", "--namespace", namespace];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// The chart rendered as objects.
    pub fn render(&self, namespace: &str, args: &[&str]) -> Vec<serde_json::Value> {
        objects(&self.template(namespace, args))
    }
}

/// The objects of a multi-document YAML text (empty documents left out).
#[allow(dead_code)]
pub fn objects(text: &str) -> Vec<serde_json::Value> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"));
    docs.into_iter().filter(|d| d.is_object()).collect()
}

/// vigil's own access rules, rendered from the chart (its ServiceAccounts, RBAC and admission
/// policy) for an install in `namespace`. The cluster-scoped objects take the namespace's name
/// as a prefix, so that tests in other namespaces, and the chart's own install test, keep theirs.
#[allow(dead_code)] // each test binary uses its part
pub fn install_vigil_access(plane: &ControlPlane, namespace: &str, cache: &Path) {
    let kubectl = Kubectl::new(&plane.kubeconfig(), cache);
    let helm = Helm::new(plane, cache);
    let mut objects = helm.render(
        namespace,
        &[
            "--show-only",
            "templates/serviceaccounts.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/admission-policy.yaml",
        ],
    );
    for o in &mut objects {
        let prefixed =
            |v: &serde_json::Value| serde_json::json!(format!("{namespace}-{}", v.as_str().unwrap()));
        if o["metadata"]["namespace"].is_null() {
            o["metadata"]["name"] = prefixed(&o["metadata"]["name"]);
        }
        match o["kind"].as_str() {
            Some("ClusterRoleBinding") => o["roleRef"]["name"] = prefixed(&o["roleRef"]["name"]),
            Some("ValidatingAdmissionPolicyBinding") => {
                o["spec"]["policyName"] = prefixed(&o["spec"]["policyName"]);
            }
            _ => {}
        }
    }
    assert!(objects.len() >= 12, "the chart's access rules: {objects:?}");
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl.ok_stdin(&["apply", "--server-side", "--force-conflicts", "-f", "-"], &list.to_string());
}

/// Writes a kubeconfig for the server and CA of `base` that presents `token` and nothing else.
#[allow(dead_code)]
pub fn token_kubeconfig(base: &Path, token: &str, path: &Path) -> PathBuf {
    let text = std::fs::read_to_string(base).unwrap();
    let clusters = text.split("\nusers:").next().unwrap();
    let context = "contexts:\n- name: vigil-test\n  context:\n    cluster: vigil-test\n    user: token\ncurrent-context: vigil-test\n";
    std::fs::write(
        path,
        format!("{clusters}\nusers:\n- name: token\n  user:\n    token: {token}\n{context}"),
    )
    .unwrap();
    path.to_owned()
}

/// The agent's credentials for `node`, as the DaemonSet's pod would have them: a Pod of
/// ServiceAccount `vigil-agent` in `namespace` scheduled on `node` (there is no kubelet; it stays
/// Pending) and a token bound to it, which carries the node's name. Written as a kubeconfig for
/// the server of `base` under `dir`.
#[allow(dead_code)]
pub async fn agent_kubeconfig(
    plane: &ControlPlane,
    namespace: &str,
    node: &str,
    base: &Path,
    dir: &Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequestSpec};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let admin = plane.client().await.unwrap();
    plane.token_for(namespace, "vigil-agent", TokenRequestSpec::default()).await.unwrap();
    let name = format!("vigil-agent-{node}");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "vigil-agent"}},
        "spec": {"nodeName": node, "serviceAccountName": "vigil-agent",
                 "containers": [{"name": "agent", "image": "vigil"}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin, namespace);
    let pod = match pods.create(&PostParams::default(), &pod).await {
        Ok(pod) => pod,
        Err(kube::Error::Api(s)) if s.code == 409 => pods.get(&name).await.unwrap(),
        Err(e) => panic!("{e}"),
    };
    let spec = TokenRequestSpec {
        bound_object_ref: Some(BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            uid: pod.metadata.uid,
        }),
        ..TokenRequestSpec::default()
    };
    let token = plane.token_for(namespace, "vigil-agent", spec).await.unwrap();
    std::fs::create_dir_all(dir).unwrap();
    token_kubeconfig(base, &token, &dir.join(format!("agent-{node}.kubeconfig")))
}

/// The controller's credentials: a token of ServiceAccount `vigil-controller` in `namespace`.
#[allow(dead_code)]
pub async fn controller_kubeconfig(plane: &ControlPlane, namespace: &str, dir: &Path) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequestSpec;
    let token = plane.token_for(namespace, "vigil-controller", TokenRequestSpec::default()).await.unwrap();
    std::fs::create_dir_all(dir).unwrap();
    token_kubeconfig(&plane.kubeconfig(), &token, &dir.join("controller.kubeconfig"))
}
