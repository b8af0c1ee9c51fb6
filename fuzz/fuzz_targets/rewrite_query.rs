//! `rewrite_query` must never panic, and when it accepts a query the result carries
//! exactly one credential parameter: the injected one, whatever the caller sent
//! (copies, other letter cases, percent-encoded names, `;` tricks).
#![no_main]

use keygate::secret::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else { return };
    let secret = Secret::new("real-key".to_owned());
    let Ok(out) = keygate::rewrite::rewrite_query(Some(query), &["apikey"], Some(("apikey", &secret))) else {
        return;
    };
    let out = out.expect("an injected parameter is always present");
    let credentials: Vec<&str> = out.split('&').filter(|piece| names_apikey(piece)).collect();
    assert_eq!(credentials, ["apikey=real-key"], "{query:?} -> {out:?}");
});

/// The reference model of "this parameter is a credential": its name, with `+` as a
/// space, percent-decoded and trimmed, is `apikey` or `apikey[...]` in any case.
fn names_apikey(piece: &str) -> bool {
    let name = piece.split('=').next().unwrap_or("").replace('+', " ");
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
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
