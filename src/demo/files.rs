//! The demo's files: a private temporary directory (removed on drop) holding the
//! gateway's config and the keys generated for this run, and the text of that config.

use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{CLIENT_ID, Ports};

/// A caller the demo's routes refuse: on loopback, outside group `local`.
pub const REFUSED_CALLER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
/// A caller the export route admits but its `shadow_allow` would not.
pub const SHADOW_CALLER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// The name of the import key's file in the demo's directory.
pub(crate) const IMPORT_KEY_FILE: &str = "bi-import-key";
/// The name of the export key's file in the demo's directory.
pub(crate) const EXPORT_KEY_FILE: &str = "bi-export-key";
/// The name of the gateway's config file in the demo's directory.
pub(crate) const CONFIG_FILE: &str = "keygate.toml";

/// The embedded gateway config for the demo: the gateway on `ports.gateway` and, when
/// given, on `gateway_v6` too; both routes pointed at the sandbox.
pub(crate) fn config_text(ports: &Ports, gateway_v6: Option<SocketAddr>, dir: &Path) -> String {
    let listen = match gateway_v6 {
        Some(v6) => format!("[\"{}\", \"{v6}\"]", ports.gateway),
        None => format!("\"{}\"", ports.gateway),
    };
    format!(
        r#"# keygate demo: edit this file or replace a key file and the gateway reloads it live.
[server]
listen = {listen}
shutdown_grace = "2s"

[admin]
listen = "{admin}"

[log]
format = "text"
level = "info"                     # reloads, SIGHUP and shadow_allow lines show
access = true

[callers.groups.local]             # the callers both routes admit
cidrs = ["127.0.0.1", "::1"]       # not 127.0.0.2: the walkthrough shows it refused

[secrets.bi_import]
file = "{import_key}"

[secrets.bi_export]
file = "{export_key}"

[[routes]]
name = "bi-import"
prefix = "/import"
preset = "rjmetrics-import"
client_id = {CLIENT_ID}
secret = "bi_import"
allow = ["local"]
upstream = "http://{sandbox}"

[[routes]]
name = "bi-export"
prefix = "/export"
preset = "rjmetrics-export"
client_id = {CLIENT_ID}
secret = "bi_export"
allow = ["local", "{SHADOW_CALLER}"]
shadow_allow = ["local"]           # a dry run of dropping {SHADOW_CALLER}: counted, never enforced
upstream = "http://{sandbox}"
"#,
        admin = ports.admin,
        sandbox = ports.sandbox,
        import_key = dir.join(IMPORT_KEY_FILE).display(),
        export_key = dir.join(EXPORT_KEY_FILE).display(),
    )
}

/// A private directory removed on drop.
pub(crate) struct DemoDir(PathBuf);

impl DemoDir {
    /// Creates `keygate-demo-PID-N` (mode 0700) in the system's temporary directory.
    pub(crate) fn create() -> Result<DemoDir, String> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let dir = base.join(format!("keygate-demo-{}-{attempt}", std::process::id()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            if builder.create(&dir).is_ok() {
                return Ok(DemoDir(dir));
            }
        }
        Err("cannot create a temporary directory for the demo's files".into())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a new file readable by this user only.
    pub(crate) fn write(&self, name: &str, value: &str) -> Result<PathBuf, String> {
        let path = self.0.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, value.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
