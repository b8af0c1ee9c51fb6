//! Compiles what kind a route is: a BI preset (its client id and operations) or a
//! generic route (its methods and where its key is injected).

use http::{HeaderName, Method};

use super::ctx::Ctx;
use super::schema::{Inject as InjectSpec, RouteSpec};
use crate::routes::{Inject, Kind, Preset};

/// The methods a generic route may take, and takes when it lists none.
const METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];

/// The route's preset, when it names a known one, and its kind, when that compiles.
pub(super) fn kind(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> (Option<Preset>, Option<Kind>) {
    let Some(name) = spec.preset.as_deref() else { return (None, generic_kind(ctx, location, spec)) };
    match Preset::from_name(name) {
        Some(preset) => (Some(preset), preset_kind(ctx, location, spec, preset)),
        None => {
            let message = format!("{name:?} is not \"rjmetrics-import\" or \"rjmetrics-export\"");
            ctx.problem(location, "preset", message);
            (None, None)
        }
    }
}

fn preset_kind(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec, preset: Preset) -> Option<Kind> {
    let client_id = match spec.client_id {
        None => {
            ctx.problem(location, "client_id", "is required by the BI presets");
            return None;
        }
        Some(0) => {
            ctx.problem(location, "client_id", "must be a positive integer");
            return None;
        }
        Some(id) => id.to_string(),
    };
    if spec.inject.is_some() {
        ctx.problem(location, "inject", "is set by the preset and cannot be given");
    }
    if spec.methods.is_some() {
        ctx.problem(location, "methods", "preset routes take operations, not methods");
    }
    if spec.validate_body.is_some() && preset != Preset::Import {
        ctx.problem(location, "validate_body", "only applies to the rjmetrics-import preset");
    }
    let enabled = operations(ctx, location, spec, preset);
    Some(Kind::Preset { preset, client_id, enabled, validate_body: spec.validate_body.unwrap_or(true) })
}

/// The bit set of the operations a preset route enables: all of them by default.
fn operations(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec, preset: Preset) -> u32 {
    let ops = preset.operations();
    let Some(list) = &spec.operations else { return (1u32 << ops.len()) - 1 };
    let mut bits = 0;
    for name in list {
        match ops.iter().position(|op| op.name == name) {
            Some(i) => bits |= 1 << i,
            None => {
                let known: Vec<&str> = ops.iter().map(|op| op.name).collect();
                let message =
                    format!("{name:?} is not an operation of {} ({})", preset.name(), known.join(", "));
                ctx.problem(location, "operations", message);
            }
        }
    }
    bits
}

fn generic_kind(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> Option<Kind> {
    for (field, set) in [
        ("client_id", spec.client_id.is_some()),
        ("operations", spec.operations.is_some()),
        ("validate_body", spec.validate_body.is_some()),
    ] {
        if set {
            ctx.problem(location, field, "only applies to preset routes");
        }
    }
    let methods = methods(ctx, location, spec);
    let Some(inject) = &spec.inject else {
        ctx.problem(location, "inject", "is required for a route without a preset");
        return None;
    };
    let inject = match (&inject.header, &inject.query) {
        (Some(header), None) => inject_header(ctx, location, header, inject)?,
        (None, Some(query)) if inject.format.is_none() => {
            if query.is_empty() || !query.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
                ctx.problem(location, "inject.query", format!("{query:?} must be a plain parameter name"));
                return None;
            }
            Inject::Query(query.clone())
        }
        _ => {
            ctx.problem(location, "inject", "needs exactly one of header (with optional format) or query");
            return None;
        }
    };
    Some(Kind::Generic { methods, inject })
}

/// A generic route's `methods`: [`METHODS`] when absent, else those listed (each one of
/// them).
fn methods(ctx: &mut Ctx<'_>, location: &str, spec: &RouteSpec) -> Vec<Method> {
    let Some(list) = &spec.methods else { return METHODS.to_vec() };
    let mut out = Vec::new();
    for m in list {
        match METHODS.iter().find(|known| known.as_str() == m) {
            Some(method) => out.push(method.clone()),
            None => ctx.problem(
                location,
                "methods",
                format!("{m:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            ),
        }
    }
    out
}

/// `inject = { header = …, format = … }`: a header keygate does not frame or route by,
/// and a format holding `{secret}` once between text a header value can hold.
fn inject_header(ctx: &mut Ctx<'_>, location: &str, header: &str, spec: &InjectSpec) -> Option<Inject> {
    let format = spec.format.as_deref().unwrap_or("{secret}");
    let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else {
        ctx.problem(location, "inject.header", format!("{header:?} is not a valid header name"));
        return None;
    };
    if crate::rewrite::frames_request(&name) {
        let message = format!("{header:?} frames or routes the request; keygate sets or strips it itself");
        ctx.problem(location, "inject.header", message);
        return None;
    }
    let parts: Vec<&str> = format.split("{secret}").collect();
    let [prefix, suffix] = parts.as_slice() else {
        // Not quoted: a format without `{secret}` often holds a pasted key.
        ctx.problem(location, "inject.format", "must contain {secret} exactly once");
        return None;
    };
    if let Some(why) = header_text_problem(prefix, suffix) {
        ctx.problem(location, "inject.format", why);
        return None;
    }
    Some(Inject::Header { name, prefix: (*prefix).into(), suffix: (*suffix).into() })
}

/// Why an `inject.format`'s text around `{secret}` cannot be a header value, if so.
fn header_text_problem(prefix: &str, suffix: &str) -> Option<&'static str> {
    let text = || prefix.bytes().chain(suffix.bytes());
    if !text().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Some("holds characters a header value cannot (only visible ASCII and spaces)");
    }
    (prefix.starts_with(' ') || suffix.ends_with(' '))
        .then_some("begins or ends with a space, which HTTP strips from header values")
}
