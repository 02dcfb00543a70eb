//! `make dev-apiserver`: the stand-in on loopback, for a person to play with `kubectl`.

use std::path::PathBuf;

use clap::Parser;
use vigil_test_apiserver::ApiServer;

/// A test-only stand-in for the Kubernetes API server, over plain HTTP on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// Where to write a kubeconfig for it.
    #[arg(long, default_value = "target/dev-apiserver/kubeconfig")]
    kubeconfig: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { listen, kubeconfig } = Args::parse();
    let server = ApiServer::new();
    let address = server.serve(&listen).await?;
    if let Some(dir) = kubeconfig.parent() {
        std::fs::create_dir_all(dir)?;
    }
    ApiServer::write_kubeconfig(address, &kubeconfig)?;
    println!("API server stand-in on http://{address}");
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!(
        "then for instance: kubectl apply --server-side -f crds/ && kubectl apply -f examples/endpoints-grpc.yaml && kubectl get vhc"
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
