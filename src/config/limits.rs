//! Compiles what keygate does about the vendor's limits: a route's batching and
//! update-status keys (docs/configuration.md, "Vendor limits") and `[coordination]`.

use std::time::Duration;

use super::ctx::Ctx;
use super::ctx::masked_url;
use super::parse_duration;
use super::schema::{Coordination, RouteSpec};
use crate::routes::{Preset, VendorLimits};
use crate::secret::Secret;

/// Most batches of one upsert in flight at once.
const MAX_CONCURRENCY: u64 = 16;
/// Most retries of one batch.
const MAX_RETRIES: u64 = 10;
/// The longest `update_status_ttl`: an answer older than this says little.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// A route's batching and update-status settings; a key given on the wrong preset is a
/// problem, and so is a value out of range (the default stands in for it).
pub(super) fn vendor_limits(
    ctx: &mut Ctx<'_>,
    location: &str,
    spec: &RouteSpec,
    preset: Option<Preset>,
) -> VendorLimits {
    let defaults = VendorLimits::default();
    let import = preset == Some(Preset::Import);
    let export = preset == Some(Preset::Export);
    for (field, set, applies, name) in [
        ("batch_concurrency", spec.batch_concurrency.is_some(), import, "rjmetrics-import"),
        ("batch_retries", spec.batch_retries.is_some(), import, "rjmetrics-import"),
        ("update_status_ttl", spec.update_status_ttl.is_some(), export, "rjmetrics-export"),
    ] {
        if set && !applies {
            ctx.problem(location, field, format!("only applies to the {name} preset"));
        }
    }
    let mut in_range = |field: &str, value: Option<u64>, min: u64, max: u64, default: u64| match value {
        None => default,
        Some(n) if (min..=max).contains(&n) => n,
        Some(n) => {
            ctx.problem(location, field, format!("{n} is not between {min} and {max}"));
            default
        }
    };
    let batch_concurrency =
        in_range("batch_concurrency", spec.batch_concurrency, 1, MAX_CONCURRENCY, 1) as usize;
    let batch_retries = in_range("batch_retries", spec.batch_retries, 0, MAX_RETRIES, 3) as u32;
    let update_status_ttl = match spec.update_status_ttl.as_deref().map(parse_duration) {
        None => defaults.update_status_ttl,
        Some(Ok(ttl)) if ttl <= MAX_TTL => ttl,
        Some(Ok(_)) => {
            ctx.problem(location, "update_status_ttl", "is longer than 1h");
            defaults.update_status_ttl
        }
        Some(Err(e)) => {
            ctx.problem(location, "update_status_ttl", e);
            defaults.update_status_ttl
        }
    };
    VendorLimits { batch_concurrency, batch_retries, update_status_ttl }
}

/// The compiled `[coordination]`: the Redis URL, held like a secret since it may carry
/// a password, and its masked form for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CoordinationSettings {
    /// The URL as written (exposed only to open the connection).
    pub redis: std::sync::Arc<Secret>,
    /// `redis://***@host:port/db`: safe to log.
    pub masked: String,
}

/// Checks `[coordination] redis`: a `redis://` URL with a host that the Redis client
/// accepts. Every message shows the URL masked.
pub(super) fn coordination(ctx: &mut Ctx<'_>, spec: Option<&Coordination>) -> Option<CoordinationSettings> {
    let url = spec?.redis.as_deref()?;
    let masked = masked_url(url);
    let problem =
        |ctx: &mut Ctx<'_>, why: &str| ctx.problem("coordination", "redis", format!("{masked:?} {why}"));
    if !url.starts_with("redis://") {
        problem(ctx, "must be a redis:// URL (TLS to Redis, rediss://, is not supported)");
        return None;
    }
    let parsed = redis::Client::open(url);
    if parsed.is_err() || url.len() <= "redis://".len() || url.contains(['#', ' ']) {
        problem(ctx, "is not a valid redis://[user:password@]host[:port][/db] URL");
        return None;
    }
    match Secret::parse(url) {
        Ok(secret) => Some(CoordinationSettings { redis: std::sync::Arc::new(secret), masked }),
        Err(_) => {
            problem(ctx, "holds characters a URL cannot");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Inputs, compile};

    const ROUTES: &str = "[secrets.k]\nvalue = \"k\"\n\
        [[routes]]\nname = \"i\"\nprefix = \"/i\"\npreset = \"rjmetrics-import\"\nclient_id = 1\nsecret = \"k\"\n\
        upstream = \"http://127.0.0.1:9\"\nallow = [\"127.0.0.1\"]\nBATCH\n\
        [[routes]]\nname = \"e\"\nprefix = \"/e\"\npreset = \"rjmetrics-export\"\nclient_id = 1\nsecret = \"k\"\n\
        upstream = \"http://127.0.0.1:9\"\nallow = [\"127.0.0.1\"]\nTTL\n";

    fn problems(batch: &str, ttl: &str, extra: &str) -> Vec<String> {
        let text = format!("{extra}\n{}", ROUTES.replace("BATCH", batch).replace("TTL", ttl));
        let inputs = Inputs::parse(Path::new("k.toml"), text.as_bytes()).unwrap();
        match compile(&inputs, 1, None) {
            Ok(_) => Vec::new(),
            Err(p) => p.list.iter().map(|p| format!("{}: {}: {}", p.location, p.field, p.message)).collect(),
        }
    }

    #[test]
    fn batching_and_ttl_keys_are_checked_per_preset_and_range() {
        assert!(
            problems("batch_concurrency = 16\nbatch_retries = 0", "update_status_ttl = \"0s\"", "")
                .is_empty()
        );
        assert_eq!(
            problems("batch_concurrency = 0\nbatch_retries = 11", "update_status_ttl = \"2h\"", ""),
            [
                "routes[0] \"i\": batch_concurrency: 0 is not between 1 and 16",
                "routes[0] \"i\": batch_retries: 11 is not between 0 and 10",
                "routes[1] \"e\": update_status_ttl: is longer than 1h",
            ]
        );
        assert_eq!(
            problems("update_status_ttl = \"1s\"", "batch_retries = 1", ""),
            [
                "routes[0] \"i\": update_status_ttl: only applies to the rjmetrics-export preset",
                "routes[1] \"e\": batch_retries: only applies to the rjmetrics-import preset",
            ]
        );
    }

    #[test]
    fn a_bad_redis_url_is_a_problem_that_never_shows_the_password() {
        let ok = "[coordination]\nredis = \"redis://user:hunter2@127.0.0.1:6379/0\"";
        assert!(problems("", "", ok).is_empty());
        for bad in ["http://user:hunter2@h:1", "rediss://user:hunter2@h", "redis://user:hunter2@h:notaport"] {
            let found = problems("", "", &format!("[coordination]\nredis = {bad:?}"));
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert!(found[0].starts_with("coordination: redis: "), "{found:?}");
            assert!(!found[0].contains("hunter2"), "{found:?}");
        }
    }
}
