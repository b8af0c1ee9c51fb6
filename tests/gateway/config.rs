//! Config errors through the real binary: `keygate check -c` exits 1 and names the
//! file, route, field and bad value of every problem at once; `keygate run` with a bad
//! config exits non-zero before binding anything; `check` shows fingerprints, never
//! secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use crate::support::files::write_private;
use crate::support::keys::{EXPORT_KEY, IMPORT_KEY, fingerprint};
use crate::support::process::{Outcome, run};

/// A config directory with the two sentinel secret files.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = Dir { dir };
        d.write("import.key", &format!("{IMPORT_KEY}\n"));
        d.write("export.key", EXPORT_KEY);
        d.write("empty.key", "\n  \n");
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        write_private(&path, text);
        path
    }

    /// A valid config; `edit` may rewrite any part of it.
    fn config(&self, listen: &str, routes: &str) -> PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            "[server]\nlisten = \"{listen}\"\n\n[secrets.bi_import]\nfile = \"{d}/import.key\"\n\n\
             [secrets.bi_export]\nfile = \"{d}/export.key\"\n{routes}"
        );
        self.write("keygate.toml", &text)
    }
}

const IMPORT: &str = "\n[[routes]]\nname = \"bi-import\"\nprefix = \"/import\"\npreset = \"rjmetrics-import\"\n\
                      client_id = 12345\nsecret = \"bi_import\"\nallow = [\"10.0.0.0/8\"]\n";
const EXPORT: &str = "\n[[routes]]\nname = \"bi-export\"\nprefix = \"/export\"\npreset = \"rjmetrics-export\"\n\
                      client_id = 12345\nsecret = \"bi_export\"\nallow = [\"10.2.0.0/16\"]\n";

fn check(path: &Path) -> Outcome {
    run(&["check", "-c", path.to_str().expect("utf-8 path")])
}

/// Asserts `check` refuses the config and that stderr names every fragment given.
#[track_caller]
fn assert_refused(path: &Path, fragments: &[&str]) -> Outcome {
    let out = check(path);
    assert_eq!(out.code, Some(1), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&path.display().to_string()), "file not named: {}", out.stderr);
    for fragment in fragments {
        assert!(out.stderr.contains(fragment), "{fragment:?} missing from: {}", out.stderr);
    }
    assert!(!out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"), "{}", out.stderr);
    assert_no_secret(&out);
    out
}

#[track_caller]
fn assert_no_secret(out: &Outcome) {
    for key in [IMPORT_KEY, EXPORT_KEY] {
        assert!(!out.stdout.contains(key) && !out.stderr.contains(key), "secret printed");
    }
}

#[test]
fn check_accepts_a_valid_config_and_shows_fingerprints_not_secrets() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &format!("{IMPORT}{EXPORT}"));
    let out = check(&path);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_no_secret(&out);
    for (name, key) in [("bi_import", IMPORT_KEY), ("bi_export", EXPORT_KEY)] {
        let fingerprint = fingerprint(key);
        assert!(out.stdout.contains(&format!("{name} (sha256:{fingerprint})")), "{}", out.stdout);
    }
    for fragment in
        ["bi-import", "/import", "https://connect.rjmetrics.com", "authenticate,upsert", "10.0.0.0/8"]
    {
        assert!(out.stdout.contains(fragment), "{fragment}: {}", out.stdout);
    }
}

#[test]
fn inline_secret_is_a_warning_and_never_printed() {
    let dir = Dir::new();
    let routes = IMPORT.replace("bi_import", "inline");
    let path = dir.config("127.0.0.1:0", &format!("\n[secrets.inline]\nvalue = \"{IMPORT_KEY}\"\n{routes}"));
    let out = check(&path);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("warning") && out.stderr.contains("inline"), "{}", out.stderr);
    assert_no_secret(&out);
}

#[test]
fn unknown_key_is_refused() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &IMPORT.replace("allow =", "alow = [\"x\"]\nallow ="));
    assert_refused(
        &path,
        &["routes[0] \"bi-import\": alow: unknown key at line 16, column 1; the keys here are name, prefix"],
    );
    let path = dir.config("127.0.0.1:0", &format!("{IMPORT}\n[server.limits]\nmax = 1\n"));
    assert_refused(&path, &["server: limits: unknown key"]);
}

#[test]
fn a_typo_a_bad_cidr_and_a_missing_secret_file_are_reported_together() {
    let dir = Dir::new();
    let routes =
        IMPORT.replace("allow = [\"10.0.0.0/8\"]", "alow = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.0/33\"]");
    let path = dir.config("127.0.0.1:0", &routes);
    let gone = dir.path("gone.key");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&dir.path("import.key").display().to_string(), &gone.display().to_string());
    let path = dir.write("keygate.toml", &text);
    let out = assert_refused(
        &path,
        &[
            "routes[0] \"bi-import\": alow: unknown key at line",
            "routes[0] \"bi-import\": allow: \"10.0.0.0/33\" is not a CIDR or IP address",
            &format!("secrets.bi_import: file ({}): cannot be read: no such file", gone.display()),
            "3 problem(s)",
        ],
    );
    // `check` started nothing, so it does not say so: only `run` does.
    assert!(!out.stderr.contains("nothing was started"), "{}", out.stderr);
    assert!(!out.stderr.contains("entity not found"), "{}", out.stderr);
}

#[test]
fn bad_cidr_is_refused_naming_route_field_and_value() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &IMPORT.replace("10.0.0.0/8", "10.0.0.0/33"));
    assert_refused(&path, &["routes[0] \"bi-import\"", "allow", "\"10.0.0.0/33\""]);
    let path = dir.config("127.0.0.1:0", &IMPORT.replace("10.0.0.0/8", "10.1.2.3/8"));
    assert_refused(&path, &["allow", "\"10.1.2.3/8\"", "host bits"]);
}

#[test]
fn duplicate_route_name_or_prefix_is_refused() {
    let dir = Dir::new();
    let same_name = EXPORT.replace("name = \"bi-export\"", "name = \"bi-import\"");
    let path = dir.config("127.0.0.1:0", &format!("{IMPORT}{same_name}"));
    assert_refused(&path, &["routes[1] \"bi-import\"", "name", "used by another route"]);
    let same_prefix = EXPORT.replace("prefix = \"/export\"", "prefix = \"/import\"");
    let path = dir.config("127.0.0.1:0", &format!("{IMPORT}{same_prefix}"));
    assert_refused(&path, &["routes[1] \"bi-export\"", "prefix", "\"/import\""]);
}

#[test]
fn missing_allow_is_refused() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &IMPORT.replace("allow = [\"10.0.0.0/8\"]\n", ""));
    assert_refused(&path, &["routes[0] \"bi-import\"", "allow", "is required"]);
}

#[test]
fn unknown_secret_is_refused() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &IMPORT.replace("secret = \"bi_import\"", "secret = \"nope\""));
    assert_refused(&path, &["routes[0] \"bi-import\"", "secret", "\"nope\""]);
}

#[test]
fn empty_secret_file_is_refused() {
    let dir = Dir::new();
    let empty = dir.path("empty.key");
    let text = std::fs::read_to_string(dir.config("127.0.0.1:0", IMPORT)).unwrap();
    let text = text.replace(&dir.path("import.key").display().to_string(), &empty.display().to_string());
    let path = dir.write("keygate.toml", &text);
    assert_refused(&path, &["secrets.bi_import", &empty.display().to_string(), "is empty"]);
}

#[test]
fn bad_duration_is_refused() {
    let dir = Dir::new();
    let path = dir.config("127.0.0.1:0", &format!("{IMPORT}response_timeout = \"10 sec\"\n"));
    assert_refused(&path, &["routes[0] \"bi-import\"", "response_timeout", "\"10 sec\""]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = Dir::new();
    let routes = format!(
        "{}{}",
        IMPORT
            .replace("10.0.0.0/8", "300.0.0.0/8")
            .replace("allow =", "response_timeout = \"soon\"\nallow ="),
        EXPORT
            .replace("allow = [\"10.2.0.0/16\"]\n", "")
            .replace("secret = \"bi_export\"", "secret = \"gone\"")
    );
    let path = dir.config("127.0.0.1:0", &routes);
    let text =
        std::fs::read_to_string(&path).unwrap().replace("[server]\n", "[server]\nidle_timeout = \"1y\"\n");
    let path = dir.write("keygate.toml", &text);
    let out = assert_refused(
        &path,
        &[
            "server: idle_timeout: \"1y\"",
            "routes[0] \"bi-import\": response_timeout: \"soon\"",
            "routes[0] \"bi-import\": allow: \"300.0.0.0/8\"",
            "routes[1] \"bi-export\": secret: \"gone\"",
            "routes[1] \"bi-export\": allow: is required",
        ],
    );
    assert!(out.stderr.contains("5 problem(s)"), "{}", out.stderr);
}

#[test]
fn run_with_a_bad_config_fails_on_the_config_before_binding() {
    let dir = Dir::new();
    // Hold the listen port: if keygate tried to bind first, it would fail on that.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let path = dir.config(&listen, &IMPORT.replace("10.0.0.0/8", "10.0.0.0/99"));
    let out = run(&["run", "-c", path.to_str().unwrap()]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("\"10.0.0.0/99\"") && out.stderr.contains("nothing was started"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("cannot listen"), "bound before validating: {}", out.stderr);
    assert_no_secret(&out);

    // The same config made valid fails on the held port instead: the test can tell.
    let path = dir.config(&listen, IMPORT);
    let out = run(&["run", "-c", path.to_str().unwrap()]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("cannot listen"), "{}", out.stderr);
    drop(held);
}

/// A generic route named `g` on `/g` using secret `secret` with `inject` (TOML source).
fn generic(name: &str, secret: &str, inject: &str, upstream: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\nprefix = \"/{name}\"\nupstream = \"{upstream}\"\n\
         inject = {inject}\nsecret = \"{secret}\"\nallow = [\"10.0.0.0/8\"]\n"
    )
}

/// `[secrets.NAME]` entries for files in `dir`.
fn secret_files(dir: &Dir, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\n[secrets.{n}]\nfile = \"{}\"\n", dir.path(&format!("{n}.key")).display()))
        .collect()
}

#[track_caller]
fn assert_never_shown(out: &Outcome, values: &[&str]) {
    for value in values {
        assert!(
            !out.stdout.contains(value) && !out.stderr.contains(value),
            "{value:?} shown: {}",
            out.stderr
        );
    }
}

const ACCENTED: &str = "SENTINELaccentKEY\u{e9}9";
const SPACED: &str = " SENTINELspacedKEY";

#[test]
fn a_secret_its_route_cannot_carry_is_refused_by_check_and_run_without_showing_it() {
    let dir = Dir::new();
    dir.write("accented.key", &format!("{ACCENTED}\n"));
    dir.write("spaced.key", &format!("{SPACED}\n"));
    let header = "{ header = \"Authorization\", format = \"Bearer {secret}\" }";
    let bare_header = "{ header = \"X-Api-Key\" }";
    let routes = [
        secret_files(&dir, &["accented", "spaced"]),
        IMPORT.replace("\"bi_import\"", "\"accented\""),
        EXPORT.replace("\"bi_export\"", "\"accented\""),
        generic("gh", "accented", header, "https://api.example"),
        generic("gq", "accented", "{ query = \"api_key\" }", "https://api.example"),
        generic("gs", "spaced", bare_header, "https://api.example"),
        EXPORT
            .replace("\"bi_export\"", "\"spaced\"")
            .replace("bi-export", "spaced-export")
            .replace("/export", "/sp"),
    ]
    .concat();
    let path = dir.config("127.0.0.1:0", &routes);
    let out = assert_refused(
        &path,
        &[
            "routes[0] \"bi-import\": secret: \"accented\" cannot be sent in the apikey query parameter: it holds non-ASCII",
            "routes[1] \"bi-export\": secret: \"accented\" cannot be sent in the X-RJM-API-Key header: it holds non-ASCII",
            "routes[2] \"gh\": secret: \"accented\" cannot be sent in the authorization header",
            "routes[3] \"gq\": secret: \"accented\" cannot be sent in the api_key query parameter",
            "routes[4] \"gs\": secret: \"spaced\" cannot be sent in the x-api-key header: HTTP strips the space",
            "routes[5] \"spaced-export\": secret: \"spaced\"",
            "6 problem(s)",
        ],
    );
    assert_never_shown(&out, &["SENTINELaccent", "SENTINELspaced"]);
    let run = run(&["run", "-c", path.to_str().unwrap()]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("cannot be sent in") && run.stderr.contains("nothing was started"),
        "{}",
        run.stderr
    );
    assert_never_shown(&run, &["SENTINELaccent", "SENTINELspaced"]);
}

#[test]
fn secrets_with_inner_spaces_or_reserved_characters_travel_where_they_can() {
    let dir = Dir::new();
    dir.write("inner.key", "SENTINEL inner/KEY+&=\n");
    // A leading space is kept inside a format: "Bearer  KEY" loses nothing.
    dir.write("spaced.key", &format!("{SPACED}\n"));
    let routes = [
        secret_files(&dir, &["inner", "spaced"]),
        IMPORT.replace("\"bi_import\"", "\"inner\""),
        EXPORT.replace("\"bi_export\"", "\"inner\""),
        generic("gq", "inner", "{ query = \"api_key\" }", "https://api.example"),
        generic(
            "gh",
            "spaced",
            "{ header = \"Authorization\", format = \"Bearer {secret}\" }",
            "https://api.example",
        ),
    ]
    .concat();
    let out = check(&dir.config("127.0.0.1:0", &routes));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_never_shown(&out, &["SENTINEL inner", "SENTINELspaced"]);
}

#[test]
fn upstream_urls_with_user_info_query_or_fragment_are_refused_masked() {
    let dir = Dir::new();
    let routes = [
        IMPORT.replace("allow =", "upstream = \"https://bi:SENTINELpass@connect.example/v2\"\nallow ="),
        EXPORT.replace("allow =", "upstream = \"https://api.example/base?token=SENTINELquery\"\nallow ="),
        generic("gf", "bi_import", "{ header = \"X-Api-Key\" }", "https://api.example/v1#SENTINELfragment"),
        generic(
            "gu",
            "bi_import",
            "{ header = \"X-Api-Key\" }",
            "https://us er:SENTINELbroken@api.example/?q=SENTINELq2",
        ),
    ]
    .concat();
    let out = assert_refused(
        &dir.config("127.0.0.1:0", &routes),
        &[
            "routes[0] \"bi-import\": upstream: \"https://***@connect.example/v2\" must be",
            "routes[1] \"bi-export\": upstream: \"https://api.example/base?***\" must be",
            "routes[2] \"gf\": upstream: \"https://api.example/v1#***\" must be",
            "without user info, query or fragment",
            "routes[3] \"gu\": upstream: \"https://***@api.example/?***\"",
        ],
    );
    assert_never_shown(&out, &["SENTINEL", "bi:", "us er"]);
}

#[test]
fn inject_format_problems_never_repeat_the_format() {
    let dir = Dir::new();
    let routes = [
        generic(
            "pasted",
            "bi_import",
            "{ header = \"Authorization\", format = \"Bearer SENTINELpasted\" }",
            "https://a.example",
        ),
        generic(
            "twice",
            "bi_import",
            "{ header = \"Authorization\", format = \"{secret}SENTINELtwice{secret}\" }",
            "https://a.example",
        ),
        generic(
            "accent",
            "bi_import",
            "{ header = \"Authorization\", format = \"Bearer\u{e9} {secret}\" }",
            "https://a.example",
        ),
        generic(
            "edge",
            "bi_import",
            "{ header = \"Authorization\", format = \"{secret} \" }",
            "https://a.example",
        ),
    ]
    .concat();
    let out = assert_refused(
        &dir.config("127.0.0.1:0", &routes),
        &[
            "routes[0] \"pasted\": inject.format: must contain {secret} exactly once",
            "routes[1] \"twice\": inject.format: must contain {secret} exactly once",
            "routes[2] \"accent\": inject.format: holds characters a header value cannot",
            "routes[3] \"edge\": inject.format: begins or ends with a space",
        ],
    );
    assert_never_shown(&out, &["SENTINEL", "Bearer\u{e9}"]);
}

#[test]
fn inject_header_naming_a_header_that_frames_or_routes_the_request_is_refused() {
    let dir = Dir::new();
    let names = [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "TE",
        "Upgrade",
        "Trailer",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "Expect",
    ];
    let routes: String = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            generic(&format!("g{i}"), "bi_import", &format!("{{ header = \"{name}\" }}"), "https://a.example")
        })
        .collect();
    let expected: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!("routes[{i}] \"g{i}\": inject.header: \"{name}\" frames or routes the request")
        })
        .collect();
    let fragments: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_refused(&dir.config("127.0.0.1:0", &routes), &fragments);
    // An ordinary credential header is fine.
    let fine = generic("ok", "bi_import", "{ header = \"X-Api-Key\" }", "https://a.example");
    let out = check(&dir.config("127.0.0.1:0", &fine));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}
