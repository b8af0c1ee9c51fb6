//! The sentinel keys and markers the tests configure, and the scan that finds a key in
//! any form a leak could take: raw, `+` for a space, `\/` for `/`, percent-encoded with
//! either encode set, in any letter case.

/// The BI client id of every preset route.
pub const CID: u64 = 12345;
/// Recognisable sentinel keys: a test that finds one where it must not be fails loudly.
pub const IMPORT_KEY: &str = "SENTINELimportKEY7f3a9c";
pub const EXPORT_KEY: &str = "SENTINELexportKEYb52e0d";
/// A generic route's key, with characters that must be percent-encoded in a query.
pub const GENERIC_KEY: &str = "SENTINELgenericKEY/+&=9c";
/// The fault suites' route secret.
pub const SECRET: &str = "kgsentinelsecret5f3a9c";
/// Put in callers' queries to prove no error body or log line carries a query.
pub const QUERY_SENTINEL: &str = "qsentinel7d1e";

/// Every form in which `key` could show up, lower-cased (the scans ignore case).
pub fn forms(key: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &percent_encoding::AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let mut out = vec![key.to_owned(), key.replace(' ', "+"), key.replace('/', "\\/")];
    for set in [NON_ALPHANUMERIC, UNRESERVED] {
        let encoded: String = utf8_percent_encode(key, set).collect();
        out.push(encoded.replace("%20", "+"));
        out.push(encoded);
    }
    out.iter().map(|f| f.to_ascii_lowercase()).collect()
}

/// Fails naming the form and the text when any of `keys` is in `seen`, in any form and
/// any letter case.
#[track_caller]
pub fn assert_no_key_in(seen: &str, keys: &[&str]) {
    let lower = seen.to_ascii_lowercase();
    for key in keys {
        for form in forms(key) {
            assert!(!lower.contains(&form), "{form:?} leaked into:\n{seen}");
        }
    }
}

/// Asserts no gateway sentinel key appears anywhere in `text`, in any form (and not
/// even the start of the generic key with its `/` encoded).
#[track_caller]
pub fn assert_no_key(text: &str) {
    assert_no_key_in(text, &[IMPORT_KEY, EXPORT_KEY, GENERIC_KEY]);
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("sentinelgenerickey%2f"), "a key leaked: {text}");
}

/// `sha256(value)[..4]` in hex: keygate's fingerprint of a secret, computed here
/// independently.
pub fn fingerprint(value: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(value.as_bytes())[..4])
}
