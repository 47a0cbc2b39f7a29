//! TLS for both sides, through rustls with the ring provider only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[cfg(test)]
pub mod testing;

/// The inbound TLS certificate chain and private key (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Install ring as the process-wide rustls provider. Idempotent; call it
/// before building any TLS configuration.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A TLS file that cannot be used, named by the setting that points at it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct TlsError {
    pub setting: &'static str,
    pub message: String,
}

fn invalid(setting: &'static str, message: String) -> TlsError {
    TlsError { setting, message }
}

fn load_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            setting,
            format!("{}: no PEM `CERTIFICATE` block found", path.display()),
        ));
    }
    Ok(certs)
}

/// Inbound TLS: the certificate chain and key, ALPN h2 then http/1.1.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("tls.cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        invalid(
            "tls.key",
            format!(
                "{}: {e} (expected a PKCS#8, PKCS#1 or SEC1 PEM private key)",
                files.key.display()
            ),
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls.key", format!("does not match tls.cert: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Upstream TLS: trust the given CA bundle, or the system roots. ALPN is
/// left to the connector, which offers what the upstream protocol allows.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs("upstream.ca", path)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid("upstream.ca", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "skipping an unreadable system root certificate");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(invalid(
                    "upstream.ca",
                    "no system root certificates found; give a CA bundle with --upstream-ca".into(),
                ));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("upstream", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The connector of a client that calls a remote service (the license
/// refresh, the metering sinks): TLS trusting `ca` or the system roots, or,
/// when the service is plain `http://` (`https` false; the caller allows
/// that only to loopback), no TLS and no roots loaded (a test machine may
/// have none). With `allow_http`, both schemes; else HTTPS only.
pub fn service_connector(
    ca: Option<&Path>,
    https: bool,
    allow_http: bool,
    connect_timeout: std::time::Duration,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    TlsError,
> {
    install_crypto_provider();
    let tls = if https {
        client_config(ca)?
    } else {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("upstream", e.to_string()))?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth()
    };
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if allow_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    Ok(builder.enable_all_versions().wrap_connector(http))
}
