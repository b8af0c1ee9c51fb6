//! Turning `keygate sandbox` flags into [`Settings`]: key files, generated keys, the
//! start-up banner (which shows generated keys only).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use zeroize::Zeroizing;

use super::{Args, Sandbox, Settings};
use crate::secret::{Secret, SecretProblem};

/// Which keys [`settings_from_args`] generated (and so may print).
#[derive(Debug, Default)]
pub(super) struct Generated {
    pub import: bool,
    pub export: bool,
}

/// Every key each API accepts, given or generated (never empty).
#[derive(Debug)]
pub(super) struct Accepted {
    pub import: Vec<Secret>,
    pub export: Vec<Secret>,
}

pub(super) fn settings_from_args(args: &Args) -> Result<(Settings, Generated, Accepted), String> {
    let mut generated = Generated::default();
    let import = keys(&args.import_key, &args.import_key_file, "--import-key-file", &mut generated.import)?;
    let export = keys(&args.export_key, &args.export_key_file, "--export-key-file", &mut generated.export)?;
    let first = |keys: &[Secret]| keys.first().cloned().ok_or("sandbox: no key");
    let settings = Settings {
        client_id: args.client_id,
        import_key: first(&import)?,
        export_key: first(&export)?,
        export_allow: args.export_allow.clone(),
        tls: args.tls,
    };
    Ok((settings, generated, Accepted { import, export }))
}

/// The keys given on the command line and in files, or one generated key.
fn keys(
    given: &[Secret],
    files: &[PathBuf],
    flag: &str,
    generated: &mut bool,
) -> Result<Vec<Secret>, String> {
    let mut keys = given.to_vec();
    for path in files {
        keys.push(read_key(path, flag)?);
    }
    if keys.is_empty() {
        *generated = true;
        keys.push(generate_key()?);
    }
    Ok(keys)
}

/// Reads a key file: the whole file, trailing whitespace trimmed.
fn read_key(path: &std::path::Path, flag: &str) -> Result<Secret, String> {
    let read = std::fs::read(path)
        .map_err(|e| SecretProblem::Unreadable(e.kind().to_string()))
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| SecretProblem::Unreadable("not UTF-8".to_owned()))
        })
        .and_then(|text| Secret::parse(&Zeroizing::new(text)));
    read.map_err(|problem| format!("sandbox: {flag} {}: {problem}", path.display()))
}

/// 16 random bytes as 32 lowercase hex characters, the shape of the vendor's sample keys.
pub(crate) fn generate_key() -> Result<Secret, String> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 16]);
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes[..])
        .map_err(|_| "sandbox: no system randomness to generate a key".to_owned())?;
    Ok(Secret::new(hex::encode(bytes.as_ref())))
}

pub(super) fn banner(
    sandbox: &Sandbox,
    client_id: &u64,
    accepted: &Accepted,
    generated: &Generated,
) -> String {
    let base = sandbox.base_url();
    let mut lines = vec![
        format!("keygate sandbox listening on {base}"),
        format!("  import API: {base}/v2/client/{client_id}/..."),
        format!("  export API: {base}/0.1/..."),
        format!("  client id:  {client_id}"),
    ];
    for (name, keys, was_generated) in [
        ("import key", &accepted.import, generated.import),
        ("export key", &accepted.export, generated.export),
    ] {
        for key in keys {
            // Only generated keys are shown: a key the operator supplied stays unprinted.
            if was_generated {
                lines.push(format!("  {name}: {} (generated)", key.expose()));
            } else {
                lines.push(format!("  {name}: fingerprint {}", key.fingerprint()));
            }
        }
    }
    if let Some(pem) = sandbox.ca_pem() {
        lines.push("  CA certificate (trust it to call the sandbox over HTTPS):".to_owned());
        lines.push(pem.trim_end().to_owned());
    }
    lines.join("\n")
}

pub(super) fn parse_secret(raw: &str) -> Result<Secret, String> {
    Secret::parse(raw).map_err(|problem| format!("the key {problem}"))
}

pub(super) fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{raw}` is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::net::TcpListener;

    use crate::sandbox::run;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let mut all = vec!["sandbox"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).map(|cli| cli.args)
    }

    #[test]
    fn defaults_generate_both_keys() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(args.client_id, 12345);
        let (settings, generated, accepted) = settings_from_args(&args).unwrap();
        assert!(generated.import && generated.export);
        assert_eq!((accepted.import.len(), accepted.export.len()), (1, 1));
        for key in [&settings.import_key, &settings.export_key] {
            assert_eq!(key.expose().len(), 32);
            assert!(key.expose().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        assert_ne!(settings.import_key, settings.export_key);
    }

    #[test]
    fn given_keys_are_used_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.key");
        std::fs::write(&file, "export-secret-from-file\n").unwrap();
        let args = parse(&[
            "--import-key",
            "import-secret-on-cli",
            "--export-key-file",
            file.to_str().unwrap(),
            "--export-allow",
            "10.0.0.0/8",
            "--export-allow",
            "192.0.2.7",
            "--client-id",
            "7",
        ])
        .unwrap();
        assert!(!format!("{args:?}").contains("import-secret-on-cli"));
        let (settings, generated, accepted) = settings_from_args(&args).unwrap();
        assert!(!generated.import && !generated.export);
        assert_eq!(settings.import_key.expose(), "import-secret-on-cli");
        assert_eq!(settings.export_key.expose(), "export-secret-from-file");
        assert_eq!(accepted.import.len(), 1);
        assert_eq!(settings.export_allow.len(), 2);
        assert_eq!(settings.export_allow[1], "192.0.2.7/32".parse::<IpNet>().unwrap());
    }

    #[test]
    fn every_key_given_is_accepted_from_flags_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("import.key");
        std::fs::write(&file, "import-from-file\n").unwrap();
        let args =
            parse(&["--import-key", "a", "--import-key", "b", "--import-key-file", file.to_str().unwrap()])
                .unwrap();
        let (settings, generated, accepted) = settings_from_args(&args).unwrap();
        let import: Vec<&str> = accepted.import.iter().map(Secret::expose).collect();
        assert_eq!(import, ["a", "b", "import-from-file"]);
        assert_eq!(settings.import_key.expose(), "a");
        assert!(!generated.import && generated.export, "only the missing export key is generated");
    }

    #[test]
    fn refuses_bad_flags() {
        assert!(parse(&["--export-allow", "not-a-cidr"]).is_err());
        assert!(parse(&["--client-id", "0"]).is_err());
        assert!(parse(&["--export-key", ""]).is_err());
    }

    #[tokio::test]
    async fn run_reports_unreadable_key_file() {
        let args = parse(&["--import-key-file", "/nonexistent/keygate/key"]).unwrap();
        let err = run(args).await.unwrap_err();
        assert!(err.contains("--import-key-file"), "{err}");
    }

    #[tokio::test]
    async fn run_reports_address_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let args = parse(&["--listen", &addr]).unwrap();
        let err = run(args).await.unwrap_err();
        assert!(err.contains("cannot listen"), "{err}");
    }
}
