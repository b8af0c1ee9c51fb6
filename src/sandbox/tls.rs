//! The sandbox's HTTPS identity: a throwaway CA and a server certificate it signs, both
//! generated at start, and the rustls configuration serving them (ALPN h2, http/1.1).
//! Also `keygate demo`'s intercept identity: a throwaway CA and the certificate it
//! issues for the vendor's hostnames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A generated server identity.
pub(super) struct Generated {
    /// Ready to hand to a TLS acceptor.
    pub config: Arc<ServerConfig>,
    /// The CA certificate callers should trust.
    pub ca_pem: String,
}

/// An intercept certificate and the CA that issued it, as PEM. The CA's private key is
/// not kept: it is dropped once the certificate is signed, so it is never written
/// anywhere and nothing can issue another certificate under that CA.
pub(crate) struct Issued {
    /// The CA certificate callers trust.
    pub ca_pem: String,
    /// The certificate for the hosts, signed by the CA.
    pub cert_pem: String,
    /// The certificate's private key (wiped on drop).
    pub key_pem: zeroize::Zeroizing<String>,
}

/// Generates a CA and a certificate it issues for `hosts`.
pub(crate) fn issue_for_hosts(hosts: &[&str]) -> std::io::Result<Issued> {
    let bad = |e: rcgen::Error| std::io::Error::other(format!("certificate generation: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.distinguished_name.push(DnType::CommonName, "keygate demo CA (throw-away)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(bad)?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut params = CertificateParams::new(names).map_err(bad)?;
    params.distinguished_name.push(DnType::CommonName, "keygate demo intercept");
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(bad)?;
    Ok(Issued {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// Generates a CA and a server certificate valid for `localhost`, the loopback
/// addresses and `listen_ip`.
pub(super) fn generate(listen_ip: IpAddr) -> std::io::Result<Generated> {
    let bad = |e: rcgen::Error| std::io::Error::other(format!("certificate generation: {e}"));

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.distinguished_name.push(DnType::CommonName, "keygate sandbox CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(bad)?;

    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(bad)?;
    params.distinguished_name.push(DnType::CommonName, "keygate sandbox");
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    if !listen_ip.is_unspecified() && !ips.contains(&listen_ip) {
        ips.push(listen_ip);
    }
    params.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(bad)?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Generated { config: Arc::new(config), ca_pem: ca_cert.pem() })
}
