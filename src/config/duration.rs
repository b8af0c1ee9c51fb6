//! Durations as config writes them: `"250ms"`, `"10s"`, `"2m"`, `"1h"`, at most one
//! year.

use std::time::Duration;

/// The longest duration any setting takes: one year.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`, up to [`MAX_DURATION`]: every duration
/// keygate takes is added to the current time somewhere, and a longer one could
/// overflow it.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let not_a_duration = || format!("{text:?} is not a duration (use e.g. \"250ms\", \"10s\", \"2m\")");
    let n: u64 = digits.parse().map_err(|_| not_a_duration())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(not_a_duration()),
    };
    let too_long = || format!("{text:?} is longer than the longest duration keygate takes (8760h, one year)");
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let d = Duration::from_millis(millis);
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "10 sec", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_durations_are_refused_not_wrapped() {
        // u64::MAX minutes or hours overflow when multiplied: refused, never wrapped.
        for huge in
            ["18446744073709551615m", "18446744073709551615h", "307445734561825861m", "5124095576030432h"]
        {
            let err = parse_duration(huge).expect_err(huge);
            assert!(err.contains("longer than"), "{huge}: {err}");
        }
    }

    #[test]
    fn durations_stop_at_one_year() {
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("31536000s"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("31536000000ms"), Ok(MAX_DURATION));
        for over in ["8761h", "525601m", "31536001s", "31536000001ms", "18446744073709551615s"] {
            let err = parse_duration(over).expect_err(over);
            assert_eq!(
                err,
                format!("{over:?} is longer than the longest duration keygate takes (8760h, one year)")
            );
        }
        // Deadlines add a duration, or two, to the current time: the longest must fit.
        let now = tokio::time::Instant::now();
        assert!(now.checked_add(MAX_DURATION * 2).is_some());
    }
}
