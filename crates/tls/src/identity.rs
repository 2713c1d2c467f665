//! Who a certificate names: the URI SANs of concord's identity scheme.
//!
//! `spiffe://concord/<cluster>/node/<id>` names replica `<id>` of `<cluster>`;
//! `spiffe://concord/<cluster>/envoy/<node-id>` names the Envoy whose bootstrap `node.id` is
//! `<node-id>`. The cluster name is part of the identity, so a certificate for another cluster
//! signed by a shared CA does not pass.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI SAN of replica `id` of `cluster`.
pub fn node_uri(cluster: &str, id: u64) -> String {
    format!("spiffe://concord/{cluster}/node/{id}")
}

/// The URI SAN of the Envoy whose node id is `node_id`, for `cluster`.
pub fn envoy_uri(cluster: &str, node_id: &str) -> String {
    format!("spiffe://concord/{cluster}/envoy/{node_id}")
}

/// The URI SANs of a DER certificate (empty if it has none or does not parse).
pub fn uris(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// When a DER certificate stops being valid (Unix seconds), if it parses.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Logs when a certificate that was just loaded expires: a warning within 30 days or after.
pub fn log_expiry(what: &str, path: &std::path::Path, der: &[u8]) {
    let Some(end) = not_after(der) else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (end - now) / 86_400;
    let file = path.display().to_string();
    if end <= now {
        tracing::warn!(what, file, "certificate has expired; peers will refuse it");
    } else if days < 30 {
        tracing::warn!(what, file, days, "certificate expires soon; rotate it");
    } else {
        tracing::info!(what, file, days, "certificate loaded");
    }
}

/// The node id a DER certificate names in `cluster`, if it names exactly one.
pub fn node_id(der: &[u8], cluster: &str) -> Option<u64> {
    let prefix = format!("spiffe://concord/{cluster}/node/");
    let mut ids = uris(der)
        .into_iter()
        .filter_map(|u| u.strip_prefix(&prefix)?.parse::<u64>().ok());
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

/// The Envoy node id a DER certificate names in `cluster`, if it names exactly one.
pub fn envoy_id(der: &[u8], cluster: &str) -> Option<String> {
    let prefix = format!("spiffe://concord/{cluster}/envoy/");
    let mut ids = uris(der)
        .into_iter()
        .filter_map(|u| u.strip_prefix(&prefix).map(str::to_string))
        .filter(|id| !id.is_empty());
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str]) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_node_and_envoy_ids() {
        let c = cert(&[&node_uri("prod", 3)]);
        assert_eq!(node_id(&c, "prod"), Some(3));
        assert_eq!(node_id(&c, "other"), None, "another cluster's certificate");
        assert_eq!(envoy_id(&c, "prod"), None);
        let e = cert(&[&envoy_uri("prod", "envoy-1")]);
        assert_eq!(envoy_id(&e, "prod"), Some("envoy-1".into()));
        assert_eq!(node_id(&e, "prod"), None);
        // Two identities in one certificate name nobody.
        assert_eq!(
            node_id(&cert(&[&node_uri("prod", 1), &node_uri("prod", 2)]), "prod"),
            None
        );
        assert_eq!(
            node_id(&cert(&["spiffe://concord/prod/node/x"]), "prod"),
            None
        );
        assert_eq!(node_id(&cert(&[]), "prod"), None);
        assert_eq!(node_id(b"garbage", "prod"), None);
        assert!(not_after(&c).is_some());
    }
}
