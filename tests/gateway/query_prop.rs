//! Property tests for query rewriting against a simple reference model: whatever mix of
//! `apikey` variants a caller sends (any letter case, percent-encoded name characters,
//! duplicates, empty values, `apikey[]`, surrounding spaces), exactly one `apikey`
//! carrying the real key leaves keygate, and every other parameter keeps its order and
//! exact bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keygate::rewrite::rewrite_query;
use keygate::secret::Secret;
use proptest::prelude::*;

/// One parameter of a generated query, with what the model expects of it.
#[derive(Debug, Clone)]
enum Param {
    /// Must survive byte for byte.
    Other(String),
    /// Some spelling of `apikey`: must be gone.
    Key(String),
    /// `&&`: dropped.
    Empty,
}

fn case_and_encoding() -> impl Strategy<Value = String> {
    // For each letter of "apikey": upper or lower, plain or %XX with either hex case.
    prop::collection::vec((any::<bool>(), 0u8..4, any::<bool>()), 6).prop_map(|choices| {
        "apikey"
            .chars()
            .zip(choices)
            .map(|(c, (upper, enc, hex_upper))| {
                let c = if upper { c.to_ascii_uppercase() } else { c };
                if enc == 0 {
                    let e = format!("%{:02X}", c as u8);
                    if hex_upper { e } else { e.to_ascii_lowercase() }
                } else {
                    c.to_string()
                }
            })
            .collect()
    })
}

fn key_param() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec!["", "", "", "+", "%20"]);
    let suffix = prop::sample::select(vec!["", "", "", "[]", "[0]", "%5B%5D", "[x]", "+"]);
    let value = prop::option::of(value());
    (prefix, case_and_encoding(), suffix, value).prop_map(|(p, name, s, v)| match v {
        Some(v) => format!("{p}{name}{s}={v}"),
        None => format!("{p}{name}{s}"),
    })
}

fn value() -> impl Strategy<Value = String> {
    let chars: Vec<char> = "abcXYZ019-._~%2F+=:/?@!$'()*,".chars().collect();
    prop::collection::vec(prop::sample::select(chars), 0..12).prop_map(|v| v.into_iter().collect())
}

fn other_param() -> impl Strategy<Value = String> {
    let plain = prop::collection::vec(
        prop::sample::select("abcdefghijklmnopqrstuvwxyz_-".chars().collect::<Vec<_>>()),
        1..9,
    )
    .prop_map(|v| v.into_iter().collect::<String>());
    let tricky = prop::sample::select(vec![
        "apikeys",
        "xapikey",
        "api_key",
        "apikey2",
        "api-key",
        "api%20key",
        "apike",
        "key",
        "%61pikeys",
    ])
    .prop_map(str::to_owned);
    let name =
        prop_oneof![3 => plain, 1 => tricky].prop_filter("not a credential name", |n| !means_apikey(n));
    (name, prop::option::of(value())).prop_map(|(n, v)| match v {
        Some(v) => format!("{n}={v}"),
        None => n,
    })
}

fn param() -> impl Strategy<Value = Param> {
    prop_oneof![
        4 => other_param().prop_map(Param::Other),
        3 => key_param().prop_map(Param::Key),
        1 => Just(Param::Empty),
    ]
}

fn secret_value() -> impl Strategy<Value = String> {
    let chars: Vec<char> = (' '..='~').collect();
    prop::collection::vec(prop::sample::select(chars), 1..24)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("secrets have no trailing space", |s| !s.ends_with(' '))
}

/// The reference model's idea of a credential name: percent-decode, `+` is a space,
/// trim, compare without case; `apikey[...]` counts too.
fn means_apikey(raw_name: &str) -> bool {
    let spaced = raw_name.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().to_ascii_lowercase();
    let decoded = decoded.trim();
    decoded == "apikey" || decoded.starts_with("apikey[")
}

/// RFC 3986 unreserved characters stay; every other byte becomes `%XX`.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query_of(params: &[Param]) -> String {
    params
        .iter()
        .map(|p| match p {
            Param::Other(s) | Param::Key(s) => s.as_str(),
            Param::Empty => "",
        })
        .collect::<Vec<_>>()
        .join("&")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn exactly_one_real_apikey_and_the_rest_untouched(
        params in prop::collection::vec(param(), 0..12),
        key in secret_value(),
    ) {
        let secret = Secret::parse(&key).expect("generated secrets are valid");
        let query = query_of(&params);
        let got = rewrite_query(Some(&query), &["apikey"], Some(("apikey", &secret)))
            .expect("no ';' in generated queries")
            .expect("a key was injected");

        let others: Vec<&str> = params
            .iter()
            .filter_map(|p| match p { Param::Other(s) => Some(s.as_str()), _ => None })
            .collect();
        let injected = format!("apikey={}", encode(&key));
        let mut expected = others.clone();
        expected.push(&injected);
        prop_assert_eq!(got.split('&').collect::<Vec<_>>(), expected);

        let keys: Vec<&str> = got
            .split('&')
            .filter(|p| means_apikey(p.split('=').next().unwrap_or("")))
            .collect();
        prop_assert_eq!(keys, vec![injected.as_str()]);
    }

    #[test]
    fn without_injection_every_apikey_is_removed(params in prop::collection::vec(param(), 0..12)) {
        let query = query_of(&params);
        let got = rewrite_query(Some(&query), &["apikey"], None).expect("no ';' in generated queries");
        let others: Vec<&str> = params
            .iter()
            .filter_map(|p| match p { Param::Other(s) => Some(s.as_str()), _ => None })
            .collect();
        let expected = (!others.is_empty()).then(|| others.join("&"));
        prop_assert_eq!(got.as_deref(), expected.as_deref());
    }

    #[test]
    fn an_apikey_hidden_after_a_semicolon_is_refused(
        before in prop::collection::vec(other_param(), 0..4),
        host in other_param(),
        key in key_param(),
    ) {
        let mut pieces = before.clone();
        pieces.push(format!("{host};{key}"));
        let query = pieces.join("&");
        let secret = Secret::parse("k").expect("valid");
        prop_assert!(rewrite_query(Some(&query), &["apikey"], Some(("apikey", &secret))).is_err());
    }
}

#[test]
fn an_absent_query_gets_just_the_key() {
    let secret = Secret::parse("a b/c").unwrap();
    let got = rewrite_query(None, &["apikey"], Some(("apikey", &secret))).unwrap();
    assert_eq!(got.as_deref(), Some("apikey=a%20b%2Fc"));
}
