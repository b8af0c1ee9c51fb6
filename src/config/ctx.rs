//! The shared state of one compilation ([`Ctx`]: the inputs, the problems and warnings
//! found so far) and the small parsers every section uses.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::{Inputs, Problem, parse_duration};

/// What compiling collects: the inputs it reads from, the problems and the warnings.
pub(super) struct Ctx<'a> {
    pub(super) inputs: &'a Inputs,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<String>,
}

impl Ctx<'_> {
    /// Records a problem at `location` (a section or route) and `field`.
    pub(super) fn problem(&mut self, location: impl Into<String>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: location.into(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// The duration in `value`, or `default` when absent; a zero or unparsable one is a
    /// problem (and `default` stands in, so compiling can go on).
    pub(super) fn duration(
        &mut self,
        location: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value.as_deref().map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.problem(location, field, "must be greater than zero");
                default
            }
            Some(Err(e)) => {
                self.problem(location, field, e);
                default
            }
        }
    }
}

/// True for a name made of `[a-z0-9_-]`, as route and group names must be.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1` = /32, /128). Host bits set
/// are refused: `10.1.2.3/8` is more likely a typo than a wish for `10.0.0.0/8`.
pub(super) fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text.parse().map_err(|_| format!("{text:?} is not a CIDR or IP address"))?;
    if net.trunc() != net {
        return Err(format!("{text:?} has host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

/// `url` fit for an error message: user info, query and fragment become `***`, since
/// any of them may hold a credential (`https://***@host/base?***#***`). The user info
/// goes first, up to the last `@` wherever it stands: a password may hold `/`, `?`, `#`
/// or `@` itself (an `@` in a query then hides the host too, never the other way).
pub(super) fn masked_url(url: &str) -> String {
    let (scheme, rest) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    let (user, rest) = match rest.rfind('@') {
        Some(at) => ("***", &rest[at..]),
        None => ("", rest),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((before, _)) => (before, "#***"),
        None => (rest, ""),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (rest, ""),
    };
    format!("{scheme}{user}{rest}{query}{fragment}")
}
