//! TLS to PostgreSQL with rustls: `disable`, `require` (encrypted, the server's
//! certificate not checked, as libpq's `require`) or `verify-full` (encrypted, the
//! certificate checked against a root certificate file and the host name).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// How connections to PostgreSQL are protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP (loopback or trusted networks). The default.
    #[default]
    Disable,
    /// TLS required; the server's certificate is not verified.
    Require,
    /// TLS required; the certificate must chain to `tls_root_cert` and name the host.
    VerifyFull,
}

/// The crypto provider the features select, passed explicitly to every TLS
/// configuration, so whatever provider the application installs process-wide (or
/// none) does not matter.
#[cfg(feature = "tls-aws-lc-rs")]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// ring's provider, for targets where aws-lc does not build. rustls deprecates it (no
/// post-quantum key exchange); what replaces it is the aws-lc-rs provider, the default
/// feature.
#[cfg(all(feature = "tls-ring", not(feature = "tls-aws-lc-rs")))]
#[allow(deprecated)]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")))]
compile_error!(
    "dcb-store needs a TLS crypto provider: enable feature `tls-ring` or `tls-aws-lc-rs`"
);

/// The rustls connector for `mode`; `root_cert_pem` is needed for `VerifyFull`.
pub(crate) fn connector(mode: TlsMode, root_cert_pem: Option<&[u8]>) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(crypto_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("tls: {e}")))?;
    let config = match mode {
        TlsMode::VerifyFull => {
            let pem = root_cert_pem.ok_or_else(|| {
                Error::Config("tls_mode verify-full needs tls_root_cert (a PEM file)".into())
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("tls_root_cert: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("tls_root_cert: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Config("tls_root_cert holds no certificate".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Require | TlsMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `require`: encryption without authentication of the server, as libpq does it. The
/// handshake signatures are still checked, so the session key belongs to whoever holds
/// the presented certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
