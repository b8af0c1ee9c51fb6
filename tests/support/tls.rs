//! Certificates made at test time (rcgen), never committed: a throwaway CA, leaves it
//! issues (server or client, with any names, current or expired), rustls server configs
//! that present a good leaf or one with a [`Flaw`], and client configs that trust a CA.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ServerConfig};

/// A test certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued at test time, with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// The issuer's certificate (none for a self-signed leaf).
    issuer: Option<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// The CA certificate, PEM (what a route's `ca_file` or `client_ca` holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `sans`, signed by this CA; `expired` dates it 2000–2001.
    pub fn issue(&self, sans: Vec<SanType>, expired: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = leaf_params(sans, expired).signed_by(&key, &self.cert, &self.key).expect("sign");
        Leaf::new(&cert, &key, Some(self.cert.der().clone()))
    }

    /// A rustls server config for `localhost` and 127.0.0.1 signed by this CA, offering
    /// ALPN `http/1.1` only.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        server_config(self, Flaw::None)
    }
}

impl Leaf {
    fn new(cert: &rcgen::Certificate, key: &KeyPair, issuer: Option<CertificateDer<'static>>) -> Leaf {
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            issuer,
            key_der: key.serialize_der(),
        }
    }

    /// A leaf for `sans` signed by its own key.
    pub fn self_signed(sans: Vec<SanType>) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let cert = leaf_params(sans, false).self_signed(&key).expect("self-signed");
        Leaf::new(&cert, &key, None)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The leaf then its issuer, as a server presents them.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.der.clone()).chain(self.issuer.clone()).collect()
    }
}

fn leaf_params(sans: Vec<SanType>, expired: bool) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "keygate test leaf");
    params.subject_alt_names = sans;
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    params
}

/// A DNS-name subject alternative name.
pub fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("a DNS name"))
}

/// A URI subject alternative name (a SPIFFE identity, say).
pub fn uri(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("a URI"))
}

/// `localhost` and 127.0.0.1: where every test server listens.
pub fn loopback() -> Vec<SanType> {
    vec![dns("localhost"), SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))]
}

/// What is wrong with the certificate a server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Nothing: for `localhost` and 127.0.0.1, current, signed by the trusted CA.
    None,
    /// For `wrong.example`, not for 127.0.0.1.
    WrongName,
    /// Expired in 2001.
    Expired,
    /// Signed by a CA the client does not trust.
    UnknownCa,
    /// Signed by its own key.
    SelfSigned,
}

/// A rustls server config presenting a leaf with `flaw` (signed by `trusted` unless the
/// flaw says otherwise), offering ALPN `http/1.1` only.
pub fn server_config(trusted: &Ca, flaw: Flaw) -> Arc<ServerConfig> {
    let leaf = match flaw {
        Flaw::None => trusted.issue(loopback(), false),
        Flaw::WrongName => trusted.issue(vec![dns("wrong.example")], false),
        Flaw::Expired => trusted.issue(loopback(), true),
        Flaw::UnknownCa => Ca::new("stranger CA").issue(loopback(), false),
        Flaw::SelfSigned => Leaf::self_signed(loopback()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain(), leaf.key())
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A rustls client config trusting the certificates in `roots_pem`, presenting
/// `client` when given, offering `alpn`.
pub fn client_config(roots_pem: &str, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut roots_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder.with_client_auth_cert(vec![leaf.der.clone()], leaf.key()).expect("client auth"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
