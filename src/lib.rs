//! keygate: an authenticating reverse proxy that injects Magento BI (RJMetrics) API keys
//! on behalf of internal callers, so that those callers never hold the raw keys.
#![forbid(unsafe_code)]

pub mod sandbox;
pub mod secret;
