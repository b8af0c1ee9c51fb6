//! Inbound TLS: the serving certificate and key, optional client-certificate checks
//! (mTLS) against `client_ca`, and the caller identities read from a verified client
//! certificate; and the certificate presented inside `CONNECT` tunnels
//! (`[server.intercept]`), which answers only a server name that a route names. Built
//! per snapshot, so a reload publishes a new certificate that every *new* connection
//! (or tunnel) uses while open ones keep theirs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};
use x509_parser::extensions::GeneralName;

/// The compiled `[server.tls]`.
#[derive(Clone)]
pub(crate) struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The serving certificate's notAfter.
    pub not_after: SystemTime,
    /// True when callers must present a certificate signed by `client_ca`.
    pub mutual: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("not_after", &self.not_after).field("mutual", &self.mutual).finish()
    }
}

/// What is wrong with the TLS files (never echoes key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TlsProblem {
    #[error("cert: {0}")]
    Cert(String),
    #[error("key: {0}")]
    Key(String),
    #[error("client_ca: {0}")]
    ClientCa(String),
    #[error("the certificate does not match the key")]
    Mismatch,
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// A certificate chain (at least one certificate), its private key and the leaf's
/// notAfter, from PEM bytes.
fn pair(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, SystemTime), TlsProblem> {
    let chain = certs(cert_pem).map_err(TlsProblem::Cert)?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|_| TlsProblem::Key("bad PEM".into()))?
        .ok_or_else(|| TlsProblem::Key("holds no PEM private key".into()))?;
    let leaf = chain.first().ok_or_else(|| TlsProblem::Cert("holds no PEM certificate".into()))?;
    let not_after = not_after(leaf).map_err(TlsProblem::Cert)?;
    Ok((chain, key, not_after))
}

/// Builds the server config from PEM bytes: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
pub(crate) fn server_tls(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<ServerTls, TlsProblem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key, not_after) = pair(cert_pem, key_pem)?;

    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem::Cert(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(pem).map_err(TlsProblem::ClientCa)? {
                roots.add(cert).map_err(|e| TlsProblem::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsProblem::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // `with_single_cert` refuses a key whose public half is not the certificate's.
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsProblem::Mismatch,
        other => TlsProblem::Key(format!("unusable: {other}")),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls { config: Arc::new(config), not_after, mutual: client_ca_pem.is_some() })
}

/// The compiled `[server.intercept]`: what a tunnel's TLS handshake uses.
#[derive(Clone)]
pub(crate) struct InterceptTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The intercept certificate's notAfter.
    pub not_after: SystemTime,
    /// Routed hosts the certificate does not name (callers would refuse it for them).
    pub uncovered: Vec<String>,
}

impl fmt::Debug for InterceptTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptTls").field("not_after", &self.not_after).finish()
    }
}

/// Builds the tunnel TLS config from PEM bytes: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, and a handshake only for a client that names one of `hosts` (lowercase) in
/// its SNI; any other name, or none, fails the handshake.
pub(crate) fn intercept_tls(
    cert_pem: &[u8],
    key_pem: &[u8],
    hosts: Vec<String>,
) -> Result<InterceptTls, TlsProblem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key, not_after) = pair(cert_pem, key_pem)?;
    let signing =
        provider.key_provider.load_private_key(key).map_err(|e| TlsProblem::Key(format!("unusable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsProblem::Mismatch);
        }
        Err(e) => return Err(TlsProblem::Key(format!("unusable: {e}"))),
    }
    let names = dns_names(&certified.cert[0]);
    let uncovered = hosts.iter().filter(|h| !names.iter().any(|n| name_covers(n, h))).cloned().collect();
    let resolver = RoutedNames { hosts, key: Arc::new(certified) };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(InterceptTls { config: Arc::new(config), not_after, uncovered })
}

/// Presents the intercept certificate only to a client whose SNI names a routed host.
#[derive(Debug)]
struct RoutedNames {
    hosts: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl ResolvesServerCert for RoutedNames {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name)).then(|| self.key.clone())
    }
}

fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| format!("cannot parse: {e}"))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// The DNS names a certificate's SAN lists.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    let dns = san.value.general_names.iter().filter_map(|name| match name {
        GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
        _ => None,
    });
    dns.collect()
}

/// True when a certificate name (`host` or `*.parent`, lowercase) covers `host`.
fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
        None => name == host,
    }
}

/// The SAN URIs and DNS names of a verified client certificate: the identities that
/// `[callers.groups.*] identities` match exactly.
pub(crate) fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}
