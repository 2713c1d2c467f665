//! Certificates that Envoys serve for the services half (TLS termination, sent by SDS): checked
//! before they are committed: the PEM parses, the chain is not empty, the key is one rustls can
//! use, and it is the key of the first certificate.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a certificate says of itself (shown instead of the key, which is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its DNS names (SANs).
    pub names: Vec<String>,
    /// When it stops being valid (Unix seconds).
    pub not_after: i64,
    /// Certificates in the chain.
    pub chain: usize,
}

/// Why a certificate and key are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCertificate {
    /// The certificate PEM holds no certificate, or one that does not parse.
    #[error("the certificate is not a PEM certificate chain: {0}")]
    Certificate(String),
    /// The key PEM holds no usable private key.
    #[error("the key is not a usable PEM private key: {0}")]
    Key(String),
    /// The key is not the first certificate's.
    #[error("the private key does not match the certificate")]
    Mismatch,
}

/// Checks `cert_pem` (a chain, leaf first) against `key_pem`.
pub fn check(cert_pem: &str, key_pem: &str) -> Result<CertificateInfo, BadCertificate> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadCertificate::Certificate(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| BadCertificate::Certificate("no CERTIFICATE block".into()))?;
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| BadCertificate::Certificate(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| BadCertificate::Key(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| BadCertificate::Key(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(BadCertificate::Mismatch);
        }
        Err(e) => return Err(BadCertificate::Key(e.to_string())),
    }
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertificateInfo {
        names,
        not_after: parsed.validity().not_after.timestamp(),
        chain: chain.len(),
    })
}
