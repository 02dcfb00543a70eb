//! TLS client configurations for probes (rustls with the ring provider).
//!
//! Built once, lazily: the system trust store is read the first time a TLS probe runs.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The four client configurations probes need: verified or not, for HTTP/1.1 or HTTP/2.
#[derive(Debug, Default)]
pub(crate) struct TlsConfigs {
    configs: OnceLock<Result<Configs, String>>,
}

#[derive(Debug)]
struct Configs {
    http1: Arc<ClientConfig>,
    http1_insecure: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    h2_insecure: Arc<ClientConfig>,
}

/// Which protocol is negotiated over TLS.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Alpn {
    Http1,
    H2,
}

impl TlsConfigs {
    pub(crate) fn load() -> TlsConfigs {
        TlsConfigs::default()
    }

    /// The configuration for a probe; an error when no usable crypto provider exists.
    pub(crate) fn get(&self, alpn: Alpn, insecure: bool) -> Result<Arc<ClientConfig>, String> {
        let configs = self.configs.get_or_init(build).as_ref().map_err(Clone::clone)?;
        Ok(match (alpn, insecure) {
            (Alpn::Http1, false) => configs.http1.clone(),
            (Alpn::Http1, true) => configs.http1_insecure.clone(),
            (Alpn::H2, false) => configs.h2.clone(),
            (Alpn::H2, true) => configs.h2_insecure.clone(),
        })
    }
}

fn build() -> Result<Configs, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(errors = ?found.errors, "no trusted CA certificates found; verified TLS probes will fail");
    }
    let roots = Arc::new(roots);
    let make = |alpn: &[u8], insecure: bool| -> Result<Arc<ClientConfig>, String> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(roots.clone()).with_no_client_auth()
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Configs {
        http1: make(b"http/1.1", false)?,
        http1_insecure: make(b"http/1.1", true)?,
        h2: make(b"h2", false)?,
        h2_insecure: make(b"h2", true)?,
    })
}

/// The server name to send and verify: a DNS name or an IP address.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(super::net::bare_host(host).to_owned())
        .map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}

/// For `insecureSkipVerify`: any certificate is accepted, but the handshake signatures are still
/// checked, so the connection is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
