//! TLS configuration: server certificates and demo certificates (the client's CA root store is
//! built by [`crate::client::client_config`]).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The rustls crypto provider used everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::TlsConfig(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Server TLS config from a PEM certificate chain and PEM private key (ALPN http/1.1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::TlsConfig(format!("{}: {e}", key.display())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::TlsConfig(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client TLS config trusting only the CA certificate(s) in `ca` (PEM); see
/// [`crate::client::client_config`].
pub use crate::client::client_config;

/// Paths of demo TLS material written by [`write_demo`].
pub struct DemoTls {
    /// The CA certificate (give it to clients).
    pub ca: std::path::PathBuf,
    /// The server certificate (for localhost and 127.0.0.1).
    pub cert: std::path::PathBuf,
    /// The server private key.
    pub key: std::path::PathBuf,
}

/// Writes a demo CA (`ca.pem`) and a server certificate for localhost/127.0.0.1/::1
/// (`server.pem`, `server.key`, mode 0600) into `dir`. For tests and demos only: the CA key is
/// not kept.
pub fn write_demo(dir: &Path) -> Result<DemoTls> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| Error::Crypto(format!("certificate generation: {e}"));
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "digimedfs key service demo CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(e)?;
    let srv_key = KeyPair::generate().map_err(e)?;
    let mut p = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    p.distinguished_name
        .push(DnType::CommonName, "digimedfs key service");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let srv = p.signed_by(&srv_key, &ca).map_err(e)?;
    let out = DemoTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::create_dir_all(dir).map_err(|err| Error::io(dir, err))?;
    std::fs::write(&out.ca, ca.pem()).map_err(|err| Error::io(&out.ca, err))?;
    std::fs::write(&out.cert, srv.pem()).map_err(|err| Error::io(&out.cert, err))?;
    let key_pem = zeroize::Zeroizing::new(srv_key.serialize_pem());
    crate::state::write_atomic(&out.key, key_pem.as_bytes())?;
    Ok(out)
}
