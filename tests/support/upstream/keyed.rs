//! A fake BI upstream that accepts a changeable set of keys, as the vendor does when a
//! key is created and another revoked, and that judges every request by the set as it
//! is at that moment — so a test can tell, request by request, whether keygate sent a
//! key the upstream accepted *then*.
//!
//! Keys are found where keygate puts them: the import `apikey` query parameter
//! (percent-decoded), the export `X-RJM-API-Key` header, and `X-Api-Key` (the tests'
//! generic routes). A request carrying exactly one key, an accepted one, is answered
//! like the vendor would: `authenticate` 200, an upsert 201, anything else 200 with
//! `{"key", "path", "method"}`. Any other request gets 401 (403 on export paths).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{FakeUpstream, Handler, Recorded, reply};

/// One request as judged: where it went, every key it carried, and whether it was
/// accepted at the moment it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub keys: Vec<String>,
    pub accepted: bool,
    /// keygate's own proof call (its `User-Agent` is keygate's), not a caller's request.
    pub proof: bool,
}

impl Seen {
    /// True for keygate's own proof calls.
    pub fn is_proof(&self) -> bool {
        self.proof
    }

    /// The one key it carried (empty when it carried none or several).
    pub fn key(&self) -> &str {
        match self.keys.as_slice() {
            [key] => key,
            _ => "",
        }
    }
}

#[derive(Default)]
struct Keys {
    accepted: Mutex<BTreeSet<String>>,
    seen: Mutex<Vec<Seen>>,
}

/// The running keyed upstream.
pub struct KeyedUpstream {
    upstream: FakeUpstream,
    keys: Arc<Keys>,
}

impl KeyedUpstream {
    /// Listens on 127.0.0.1:0, accepting `keys`.
    pub async fn start(keys: &[&str]) -> KeyedUpstream {
        let state = Arc::new(Keys::default());
        let upstream = FakeUpstream::start(handler(state.clone())).await;
        let keyed = KeyedUpstream { upstream, keys: state };
        keyed.accept_only(keys);
        keyed
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.upstream.url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.upstream.addr
    }

    /// From now on only `keys` are accepted.
    pub fn accept_only(&self, keys: &[&str]) {
        *self.keys.accepted.lock().unwrap() = keys.iter().map(|k| (*k).to_owned()).collect();
    }

    /// From now on `key` is accepted too (created at the vendor).
    pub fn create(&self, key: &str) {
        self.keys.accepted.lock().unwrap().insert(key.to_owned());
    }

    /// From now on `key` is refused (revoked at the vendor).
    pub fn revoke(&self, key: &str) {
        self.keys.accepted.lock().unwrap().remove(key);
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.keys.seen.lock().unwrap().clone()
    }

    /// The requests so far that were not keygate's proof calls.
    pub fn forwarded(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| !s.is_proof()).collect()
    }

    /// keygate's proof calls so far.
    pub fn proofs(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(Seen::is_proof).collect()
    }

    /// Ends every connection and refuses new ones (see [`FakeUpstream::go_down`]).
    pub fn go_down(&self) {
        self.upstream.go_down();
    }

    /// Serves again on the same address, with the same keys and record.
    pub async fn come_back(&mut self) {
        self.upstream = FakeUpstream::start_at(self.upstream.addr, handler(self.keys.clone())).await;
    }
}

fn handler(keys: Arc<Keys>) -> Handler {
    Arc::new(move |r: &Recorded| {
        let found = keys_in(r);
        let accepted = {
            let set = keys.accepted.lock().unwrap();
            matches!(found.as_slice(), [key] if set.contains(key))
        };
        let proof = r.header("user-agent").iter().any(|ua| ua.starts_with("keygate/"));
        let seen = Seen { method: r.method.clone(), path: r.path.clone(), keys: found, accepted, proof };
        keys.seen.lock().unwrap().push(seen.clone());
        let json = "application/json";
        if !accepted {
            let status = if r.path.contains("/0.1/") { 403 } else { 401 };
            return reply(
                status,
                &[("content-type", json)],
                r#"{"code":401,"message":"Authorization failed"}"#,
            );
        }
        if r.path.ends_with("/authenticate") {
            return reply(200, &[("content-type", json)], r#"{"code":200,"message":"authenticated"}"#);
        }
        let status = if r.method == "POST" && r.path.ends_with("/data") { 201 } else { 200 };
        let body = serde_json::json!({"key": seen.key(), "path": r.path, "method": r.method});
        reply(status, &[("content-type", json)], &body.to_string())
    })
}

/// Every key a request carries, wherever keygate puts one.
fn keys_in(r: &Recorded) -> Vec<String> {
    let query = r.query.as_deref().unwrap_or("");
    let mut keys: Vec<String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(name, _)| name.eq_ignore_ascii_case("apikey"))
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        .collect();
    keys.extend(r.header("x-rjm-api-key"));
    keys.extend(r.header("x-api-key"));
    keys
}
