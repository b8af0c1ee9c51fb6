//! Certificates made at test time (rcgen) for the TLS faults: a trusted CA and leaves
//! that are valid, for the wrong name, expired, signed by an unknown CA, or self-signed.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that can sign leaves.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// The CA certificate as PEM (what a route's `ca_file` holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// What is wrong with a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// For 127.0.0.1, current, signed by the trusted CA.
    Good,
    /// For `wrong.example`, not for 127.0.0.1.
    WrongName,
    /// Expired in 2001.
    Expired,
    /// Signed by a CA keygate does not trust.
    UnknownCa,
    /// Signed by its own key.
    SelfSigned,
}

/// A rustls server config presenting `leaf` (signed by `trusted` unless the case says
/// otherwise).
pub fn server_config(trusted: &Ca, leaf: Leaf) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let names = match leaf {
        Leaf::WrongName => vec!["wrong.example".to_owned()],
        _ => vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
    };
    let mut params = CertificateParams::new(names).unwrap();
    if leaf == Leaf::Expired {
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
    }
    let (cert, issuer_der) = match leaf {
        Leaf::SelfSigned => (params.self_signed(&key).unwrap(), None),
        Leaf::UnknownCa => {
            let stranger = Ca::new("stranger CA");
            let cert = params.signed_by(&key, &stranger.cert, &stranger.key).unwrap();
            (cert, Some(stranger.cert.der().clone()))
        }
        _ => (params.signed_by(&key, &trusted.cert, &trusted.key).unwrap(), Some(trusted.cert.der().clone())),
    };
    let mut chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    chain.extend(issuer_der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}
