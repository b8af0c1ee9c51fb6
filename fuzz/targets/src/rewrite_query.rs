//! `keygate::rewrite::rewrite_query` never panics, and when it accepts a query the
//! result is the caller's parameters minus every copy of the credential, in order and
//! byte for byte, followed by exactly one injected credential: whatever the caller sent
//! (copies, other letter cases, percent-encoded names, `;` tricks). Checked against a
//! small reference decoder, for a plain key and one that needs encoding.

use keygate::secret::Secret;

/// Keys injected in turn: one plain, one whose every reserved byte must be encoded.
const KEYS: [&str; 2] = ["real-key", "r&al k=y;%2F+/é"];

/// The target: raw bytes as the query string (without `?`).
pub fn rewrite_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else { return };
    for key in KEYS {
        check(query, key);
    }
}

fn check(query: &str, key: &str) {
    let secret = Secret::new(key.to_owned());
    let Ok(out) = keygate::rewrite::rewrite_query(Some(query), &["apikey"], Some(("apikey", &secret))) else {
        return;
    };
    let out = out.unwrap_or_else(|| panic!("no query for {query:?} although a key is injected"));
    check_output(query, &out, key);
}

/// The invariants of one accepted rewrite of `query` into `out`, injecting `key`.
fn check_output(query: &str, out: &str, key: &str) {
    let injected = format!("apikey={}", encode(key));
    let credentials: Vec<&str> = out.split('&').filter(|piece| names_apikey(piece)).collect();
    assert_eq!(credentials, [injected.as_str()], "{query:?} -> {out:?}");
    assert!(out.ends_with(&injected), "the injected key is not last: {query:?} -> {out:?}");
    let kept: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !names_apikey(p)).collect();
    let mut expected = kept.join("&");
    if !expected.is_empty() {
        expected.push('&');
    }
    expected.push_str(&injected);
    assert_eq!(out, expected, "other parameters are not kept verbatim: {query:?}");
    for piece in kept {
        let hidden = piece.split(';').skip(1).any(names_apikey);
        assert!(!hidden, "a credential after ';' was forwarded: {query:?} -> {out:?}");
    }
}

/// The reference model of "this parameter is a credential": its name, with `+` as a
/// space, percent-decoded and trimmed, is `apikey` or `apikey[...]` in any case.
fn names_apikey(piece: &str) -> bool {
    let name = piece.split('=').next().unwrap_or("").replace('+', " ");
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).trim().to_ascii_lowercase();
    decoded == "apikey" || decoded.starts_with("apikey[")
}

/// RFC 3986 unreserved bytes as they are, every other byte as `%XX` (upper case).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_decoder_reads_copies_only() {
        for copy in ["apikey=1", "APIKEY", "%61pikey=", "+apikey+=x", "apikey[]=1", "apikey%5B0%5D=1"] {
            assert!(names_apikey(copy), "{copy}");
        }
        for other in ["apikeyish=1", "api_key=1", "%+1pikey=1", "xapikey", "apikey%", "a=apikey"] {
            assert!(!names_apikey(other), "{other}");
        }
        assert_eq!(encode("r&al k=y;%2F+/é"), "r%26al%20k%3Dy%3B%252F%2B%2F%C3%A9");
    }

    #[test]
    #[should_panic(expected = "-> ")]
    fn a_forwarded_copy_fails_the_check() {
        // `rewrite_query` would never produce this: check the check instead.
        check_output("apikey=evil", "apikey=evil&apikey=real-key", "real-key");
    }
}
