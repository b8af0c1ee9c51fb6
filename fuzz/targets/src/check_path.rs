//! `keygate::routes::check_path` never panics and accepts exactly the paths a model of
//! its documented rule accepts: origin form (`/` first), no backslash, no encoded `/`,
//! `\`, `.` or NUL (`%2f %5c %2e %00`, any case), no `.` or `..` segment, and no empty
//! segment except a single trailing one.

/// The target: raw bytes as a path.
pub fn check_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let accepted = keygate::routes::check_path(path).is_ok();
    assert_eq!(accepted, model_accepts(path), "check_path disagrees with the model on {path:?}");
}

fn model_accepts(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    if path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%00"].iter().any(|encoded| lower.contains(encoded)) {
        return false;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    segments.iter().enumerate().all(|(i, segment)| {
        *segment != "." && *segment != ".." && (!segment.is_empty() || i == segments.len() - 1)
    })
}

#[cfg(test)]
mod tests {
    use super::model_accepts;

    #[test]
    fn the_model_follows_the_rule() {
        for ok in ["/", "/import", "/import/", "/a%20b", "/x;y", "/%2", "/a.b/..c/.d."] {
            assert!(model_accepts(ok), "{ok}");
        }
        for bad in ["", "*", "a/b", "//", "/a//b", "/./a", "/a/..", "/a\\b", "/%2E", "/a%2fb", "/%5C", "/%00"]
        {
            assert!(!model_accepts(bad), "{bad}");
        }
    }
}
