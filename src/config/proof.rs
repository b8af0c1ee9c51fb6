//! Compiles how a route proves a changed key before using it: the BI presets' fixed
//! calls, or a generic route's `verify = { method, path, expect }`, checked here so that
//! a proof can only be a read-only call that may accept the key.

use http::Method;
use http::uri::PathAndQuery;

use super::ctx::Ctx;
use super::schema::{RouteSpec, Verify};
use crate::routes::{Kind, Proof, check_path, join_path};
use crate::upstream::Upstream;

/// The route's proof, if it has one (every preset route; a generic route with `verify`).
pub(super) fn proof(
    ctx: &mut Ctx<'_>,
    location: &str,
    spec: &RouteSpec,
    kind: &Kind,
    upstream: &Upstream,
) -> Option<Proof> {
    let base = upstream.base_path();
    match (kind, &spec.verify) {
        (Kind::Preset { .. }, Some(_)) => {
            ctx.problem(location, "verify", "preset routes prove their key with the preset's own call");
            None
        }
        (Kind::Preset { preset, client_id, .. }, None) => Some(Proof {
            method: Method::GET,
            path: join_path(base, &preset.proof_path(client_id)),
            query: None,
            expect: Vec::new(),
        }),
        (Kind::Generic { .. }, None) => None,
        (Kind::Generic { .. }, Some(verify)) => generic(ctx, location, kind, base, verify),
    }
}

fn generic(ctx: &mut Ctx<'_>, location: &str, kind: &Kind, base: &str, verify: &Verify) -> Option<Proof> {
    let before = ctx.problems.len();
    let method = match verify.method.as_deref() {
        None | Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some(other) => {
            ctx.problem(
                location,
                "verify.method",
                format!("{other:?} is not GET or HEAD (a proof reads only)"),
            );
            Method::GET
        }
    };
    let (path, query) = match verify.path.as_deref() {
        None => {
            ctx.problem(location, "verify.path", "is required");
            return None;
        }
        Some(text) => match path_and_query(text) {
            Ok(parts) => parts,
            Err(why) => {
                ctx.problem(location, "verify.path", format!("{text:?} {why}"));
                return None;
            }
        },
    };
    if let Some(query) = &query {
        // A look-alike of the credential's parameter in the proof's query would be
        // refused at every call: say so now. Any value shows whether the query passes.
        let probe = kind.credential(&crate::secret::Secret::new("k".to_owned()));
        if probe.is_ok_and(|c| c.query_for(Some(query), true).is_err()) {
            ctx.problem(
                location,
                "verify.path",
                "its query holds a look-alike of the credential's parameter",
            );
        }
    }
    let expect = verify.expect.clone().unwrap_or_default();
    if verify.expect.as_ref().is_some_and(Vec::is_empty) {
        ctx.problem(location, "verify.expect", "must list at least one status (or be left out: any 2xx)");
    }
    for code in &expect {
        if !(200..=499).contains(code) || matches!(code, 401 | 403) {
            let message = format!("{code} cannot prove a key (use 200–499, not 401 or 403)");
            ctx.problem(location, "verify.expect", message);
        }
    }
    (ctx.problems.len() == before).then(|| Proof { method, path: join_path(base, &path), query, expect })
}

/// A proof's `path`: an origin-form path keygate would forward (the checks of every
/// request path), with an optional query.
fn path_and_query(text: &str) -> Result<(String, Option<String>), &'static str> {
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (text, None),
    };
    if !path.starts_with('/') || check_path(path).is_err() || text.contains('#') {
        return Err("must be a path starting with / (no dot or empty segments, no encoded separators, no #)");
    }
    PathAndQuery::try_from(text).map_err(|_| "is not a valid request target")?;
    Ok((path.to_owned(), query))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Inputs, compile};

    fn problems(verify: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "[secrets.k]\nvalue = \"k\"\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nsecret = \"k\"\n\
             upstream = \"http://127.0.0.1:9/base\"\ninject = {{ query = \"token\" }}\nallow = [\"127.0.0.1\"]\n\
             verify = {verify}\n{extra}"
        );
        let inputs = match Inputs::parse(Path::new("keygate.toml"), text.as_bytes()) {
            Ok(inputs) => inputs,
            Err(p) => return vec![p.to_string()],
        };
        match compile(&inputs, 1, None) {
            Ok(snapshot) => {
                let proof = snapshot.routes.routes()[0].proof.clone().unwrap();
                vec![format!("{} {} {:?} {:?}", proof.method, proof.path, proof.query, proof.expect)]
            }
            Err(p) => p.list.iter().map(|p| format!("{}: {}", p.field, p.message)).collect(),
        }
    }

    #[test]
    fn a_generic_verify_compiles_to_a_read_only_call_under_the_base() {
        assert_eq!(problems("{ path = \"/me\" }", ""), ["GET /base/me None []"]);
        assert_eq!(
            problems("{ method = \"HEAD\", path = \"/me?fields=id\", expect = [200, 404] }", ""),
            ["HEAD /base/me Some(\"fields=id\") [200, 404]"]
        );
    }

    #[test]
    fn a_verify_that_cannot_prove_a_key_is_refused() {
        assert_eq!(
            problems("{ method = \"POST\", path = \"/me\" }", ""),
            ["verify.method: \"POST\" is not GET or HEAD (a proof reads only)"]
        );
        assert_eq!(problems("{ method = \"GET\" }", ""), ["verify.path: is required"]);
        for bad in ["me", "/a/../b", "//x", "/a%2fb", "/a#f"] {
            let got = problems(&format!("{{ path = \"{bad}\" }}"), "");
            assert!(got[0].starts_with("verify.path: "), "{bad}: {got:?}");
        }
        assert_eq!(
            problems("{ path = \"/me?token%00=x\" }", ""),
            ["verify.path: its query holds a look-alike of the credential's parameter"]
        );
        assert_eq!(
            problems("{ path = \"/me\", expect = [200, 401, 503] }", ""),
            [
                "verify.expect: 401 cannot prove a key (use 200–499, not 401 or 403)",
                "verify.expect: 503 cannot prove a key (use 200–499, not 401 or 403)"
            ]
        );
        assert_eq!(
            problems("{ path = \"/me\", expect = [] }", ""),
            ["verify.expect: must list at least one status (or be left out: any 2xx)"]
        );
        assert_eq!(
            problems("{ path = \"/me\", extra = 1 }", ""),
            ["verify.extra: unknown key at line 10, column 26; the keys here are method, path, expect"]
        );
    }

    #[test]
    fn preset_routes_have_their_own_proof() {
        let preset = |name: &str, verify: &str| {
            let text = format!(
                "[secrets.k]\nvalue = \"k\"\n[[routes]]\nname = \"r\"\nprefix = \"/r\"\nsecret = \"k\"\n\
                 preset = \"{name}\"\nclient_id = 7\nupstream = \"http://127.0.0.1:9/up\"\nallow = [\"127.0.0.1\"]\n{verify}"
            );
            let inputs = Inputs::parse(Path::new("keygate.toml"), text.as_bytes()).unwrap();
            compile(&inputs, 1, None)
                .map(|s| s.routes.routes()[0].proof.clone().unwrap().path)
                .map_err(|p| p.list[0].message.clone())
        };
        assert_eq!(preset("rjmetrics-import", ""), Ok("/up/v2/client/7/authenticate".to_owned()));
        assert_eq!(preset("rjmetrics-export", ""), Ok("/up/0.1/export".to_owned()));
        assert_eq!(
            preset("rjmetrics-export", "verify = { path = \"/x\" }"),
            Err("preset routes prove their key with the preset's own call".to_owned())
        );
    }
}
