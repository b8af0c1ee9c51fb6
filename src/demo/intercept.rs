//! The demo's second way in: the vendor's own hostnames intercepted through
//! `HTTPS_PROXY`. A throw-away CA is generated for the run and issues the intercept
//! certificate; the CA's key is dropped once it has signed, never written. The CA
//! certificate, the intercept certificate and its key go in the demo's directory (and
//! with it on exit), beside the config part that routes those hosts to the sandbox.

use std::path::{Path, PathBuf};

use super::files::DemoDir;
use super::{CLIENT_ID, Ports};
use crate::sandbox;

/// The vendor's hostnames the demo intercepts: import, then export.
pub const VENDOR_HOSTS: [&str; 2] = ["connect.rjmetrics.com", "api.rjmetrics.com"];
/// The CA certificate callers trust, in the demo's directory.
pub const CA_FILE: &str = "ca.crt";
/// The intercept certificate and its key, in the demo's directory.
pub(crate) const CERT_FILE: &str = "intercept.crt";
pub(crate) const KEY_FILE: &str = "intercept.key";

/// Generates the run's CA and the intercept certificate it issues for
/// [`VENDOR_HOSTS`], and writes the CA certificate, the certificate and its key into
/// `dir`; returns the CA certificate's path.
pub(crate) fn write_files(dir: &DemoDir) -> Result<PathBuf, String> {
    let issued =
        sandbox::issue_for_hosts(&VENDOR_HOSTS).map_err(|e| format!("intercept certificate: {e}"))?;
    dir.write(CERT_FILE, &issued.cert_pem)?;
    dir.write(KEY_FILE, &issued.key_pem)?;
    dir.write(CA_FILE, &issued.ca_pem)
}

/// The config part that intercepts [`VENDOR_HOSTS`]: `[server.intercept]` with the files
/// [`write_files`] wrote into `dir`, and a host route for each, to the sandbox.
pub(crate) fn config_text(ports: &Ports, dir: &Path) -> String {
    let [import, export] = VENDOR_HOSTS;
    format!(
        r#"
# The vendor's own URLs through HTTPS_PROXY: keygate accepts CONNECT for these hosts only
# and presents a certificate from the CA made for this run ({CA_FILE}).
[server.intercept]
cert = "{cert}"
key = "{key}"

[[routes]]
name = "bi-import-vendor-host"
host = "{import}"                  # prefix "/": the vendor's own paths
preset = "rjmetrics-import"
client_id = {CLIENT_ID}
secret = "bi_import"
allow = ["local"]
upstream = "http://{sandbox}"

[[routes]]
name = "bi-export-vendor-host"
host = "{export}"
preset = "rjmetrics-export"
client_id = {CLIENT_ID}
secret = "bi_export"
allow = ["local"]
upstream = "http://{sandbox}"
"#,
        cert = dir.join(CERT_FILE).display(),
        key = dir.join(KEY_FILE).display(),
        sandbox = ports.sandbox,
    )
}

#[cfg(test)]
mod tests {
    use super::super::files;
    use super::*;
    use crate::config;

    #[test]
    fn the_demo_config_intercepts_the_vendor_hosts_and_the_ca_key_is_never_written() {
        let ports = Ports {
            gateway: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            sandbox: "127.0.0.1:3".parse().unwrap(),
        };
        let dir = DemoDir::create().unwrap();
        dir.write(files::IMPORT_KEY_FILE, "i").unwrap();
        dir.write(files::EXPORT_KEY_FILE, "e").unwrap();
        let ca = write_files(&dir).unwrap();
        assert_eq!(ca, dir.path().join(CA_FILE));
        let text = files::config_text(&ports, None, dir.path()) + &config_text(&ports, dir.path());
        let inputs = config::Inputs::parse(Path::new("demo.toml"), text.as_bytes()).unwrap();
        let snapshot = config::compile(&inputs, 1, None).unwrap();
        assert!(snapshot.intercept.is_some(), "CONNECT is intercepted");
        assert!(
            snapshot.warnings.is_empty(),
            "the certificate names every routed host: {:?}",
            snapshot.warnings
        );
        let mut hosts: Vec<&str> = snapshot.routes.hosts().collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["api.rjmetrics.com", "connect.rjmetrics.com"]);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let pem = std::fs::read_to_string(&path).unwrap();
            let is_key = path.ends_with(KEY_FILE);
            assert_eq!(pem.contains("PRIVATE KEY"), is_key, "only the intercept key is a key: {path:?}");
        }
    }
}
