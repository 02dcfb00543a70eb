//! The TCP prober: healthy when a connection is accepted. The socket is closed at once with a
//! zero linger, so nothing is left in TIME-WAIT.

use super::{Cause, Outcome, PortRef, Target, Trace, effective_port, net};

/// A validated TCP probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSpec {
    /// Port, unless the target gives one.
    pub port: Option<PortRef>,
}

pub(crate) async fn probe(spec: &TcpSpec, target: &Target, trace: &mut Trace) -> Outcome {
    let port = match effective_port(target, spec.port.as_ref(), None) {
        Ok(port) => port,
        Err(e) => return Outcome::unknown(Cause::Misconfigured, e),
    };
    let addrs = match net::resolve(&target.host, port, target.policy, trace).await {
        Ok(addrs) => addrs,
        Err(outcome) => return outcome,
    };
    match net::connect_socket(&addrs, trace).await {
        Ok(stream) => {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| target.host.clone());
            Outcome::healthy(format!("connected to {peer}"))
        }
        Err(outcome) => outcome,
    }
}
