use http::{HeaderName, HeaderValue};

use super::*;

fn secret(s: &str) -> Secret {
    Secret::parse(s).unwrap()
}

fn scrubber(keys: &[&str]) -> Scrubber {
    let secrets: Vec<Secret> = keys.iter().map(|k| secret(k)).collect();
    Scrubber::new(&secrets).unwrap()
}

fn scrubbed(s: &Scrubber, text: &str) -> String {
    String::from_utf8(s.scrub(text.as_bytes()).unwrap_or_else(|| text.as_bytes().to_vec())).unwrap()
}

#[test]
fn every_form_of_the_value_is_found() {
    let s = scrubber(&["s3cr/t k+y"]);
    for form in [
        "s3cr/t k+y",
        "s3cr%2Ft%20k%2By",
        "s3cr%2ft%20k%2by",
        "s3cr%2Ft+k%2By",
        "s3cr%2ft+k%2by",
        "s3cr\\/t k+y",
        // Every non-alphanumeric byte encoded, as stricter encoders do.
        "s3cr%2Ft%20k%2By",
    ] {
        assert_eq!(scrubbed(&s, &format!("<{form}>")), "<[REDACTED]>", "{form}");
    }
    let strict = scrubber(&["a-b.c_d~e"]);
    assert_eq!(scrubbed(&strict, "x=a%2Db%2Ec%5Fd%7Ee"), "x=[REDACTED]");
    assert_eq!(scrubbed(&strict, "x=a-b.c_d~e"), "x=[REDACTED]");
    assert_eq!(s.scrub(b"s3cr/t k"), None, "a partial value is not the value");
}

#[test]
fn letter_case_does_not_hide_a_key() {
    let s = scrubber(&["abcdef0123456789abcdef0123456789"]);
    for form in ["ABCDEF0123456789ABCDEF0123456789", "AbCdEf0123456789abcdef0123456789"] {
        assert_eq!(scrubbed(&s, &format!("key={form};")), "key=[REDACTED];", "{form}");
    }
}

#[test]
fn every_secret_is_found_not_just_one() {
    let s = scrubber(&["import-key-1", "export-key-2", "generic-key-3"]);
    assert_eq!(
        scrubbed(&s, "a export-key-2 b generic-key-3 c import-key-1"),
        "a [REDACTED] b [REDACTED] c [REDACTED]"
    );
    assert!(!s.finds(b"import-key-export-key"));
}

#[test]
fn the_longest_form_wins_so_nothing_is_half_replaced() {
    // The raw value is a prefix of its encoded form's neighbour: "a b" vs "a+b" vs "a%20b".
    let s = scrubber(&["a b", "a b c"]);
    assert_eq!(scrubbed(&s, "[a b c] [a b] [a%20b%20c]"), "[[REDACTED]] [[REDACTED]] [[REDACTED]]");
}

#[test]
fn header_names_holding_a_key_are_removed_and_values_redacted() {
    let s = scrubber(&["deadbeef00", "other/key"]);
    let mut h = HeaderMap::new();
    h.insert("x-deadbeef00", HeaderValue::from_static("1"));
    h.insert("x-DEADBEEF00-2", HeaderValue::from_static("2"));
    h.insert("x-other%2Fkey", HeaderValue::from_static("3"));
    h.append("x-echo", HeaderValue::from_static("apikey=DEADBEEF00"));
    h.append("x-echo", HeaderValue::from_static("k=other%2fkey&x=1"));
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    s.headers(&mut h);
    let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-type", "x-echo"]);
    let echoes: Vec<&str> = h.get_all("x-echo").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(echoes, ["apikey=[REDACTED]", "k=[REDACTED]&x=1"]);
    assert_eq!(h["content-type"], "text/plain");
}

/// Feeds `text` through push/finish cut at `cuts` and returns what came out.
fn streamed(s: &Scrubber, text: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut held = Vec::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
        out.extend(s.push(&mut held, &text[from..cut]));
        from = cut;
    }
    out.extend(s.finish(held));
    out
}

#[test]
fn a_key_split_across_pieces_is_still_found() {
    let s = scrubber(&["SENTINEL/split", "k2"]);
    let text = b"head SENTINEL%2Fsplit mid sentinel/SPLIT k2 tail SENTINEL/split";
    let whole = s.scrub(text).unwrap();
    for a in 0..=text.len() {
        assert_eq!(streamed(&s, text, &[a]), whole, "cut at {a}");
        for b in a..=text.len() {
            assert_eq!(streamed(&s, text, &[a, b]), whole, "cuts at {a}, {b}");
        }
    }
    let one_by_one: Vec<usize> = (1..text.len()).collect();
    assert_eq!(streamed(&s, text, &one_by_one), whole);
}

#[test]
fn streaming_holds_back_less_than_the_longest_form() {
    let s = scrubber(&["0123456789"]);
    let mut held = Vec::new();
    let out = s.push(&mut held, &[b'x'; 100]);
    assert_eq!(out.len() + held.len(), 100);
    assert!(held.len() < "0123456789".len(), "{} bytes held", held.len());
}

#[test]
fn a_scrubber_without_secrets_finds_nothing() {
    let s = Scrubber::new(std::iter::empty()).unwrap();
    assert!(!s.finds(b"anything"));
    let mut held = Vec::new();
    assert_eq!(s.push(&mut held, b"abc"), b"abc");
    assert_eq!(s.finish(held), b"");
}

#[test]
fn debug_shows_no_value() {
    let s = scrubber(&["topsecret", "t0psecret2"]);
    let text = format!("{s:?}");
    assert!(!text.to_ascii_lowercase().contains("topsecret") && !text.contains("t0p"), "{text}");
    assert!(text.contains("[REDACTED]"));
}
