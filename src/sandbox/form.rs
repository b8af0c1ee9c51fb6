//! `application/x-www-form-urlencoded` pairs: query strings and form bodies.

use percent_encoding::percent_decode_str;

/// Decoded `(name, value)` pairs in order, duplicates kept (`+` is a space).
pub(super) fn pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// The first value named `name`: the sandbox's rule for repeated parameters.
pub(super) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_names_and_values_and_keeps_duplicates() {
        let p = pairs("api%6Bey=a+b&apikey=second&flag&&x=%2F");
        assert_eq!(p[0], ("apikey".to_owned(), "a b".to_owned()));
        assert_eq!(p[2], ("flag".to_owned(), String::new()));
        assert_eq!(p.len(), 4);
        assert_eq!(first(&p, "apikey"), Some("a b"));
        assert_eq!(first(&p, "x"), Some("/"));
        assert_eq!(first(&p, "missing"), None);
    }
}
