//! `quota`: requests per consumer per UTC day and/or month, by plan.
//!
//! Each consumer (set by an auth plugin, `tollgate_sdk::consumer`) has a plan
//! (`consumers: {alice: basic}`, else `default_plan`) with `per_day` and/or `per_month`
//! limits. Counters live in shared data keyed by consumer and window (the UTC day or month,
//! from the host's clock) and are updated with compare-and-swap, so the quota is exact
//! across worker threads. Allowed responses carry `x-quota-remaining` (the smaller of what
//! is left in the day and the month, after this request), `x-quota-limit` and
//! `x-quota-reset` (seconds until that window ends); an exhausted quota is answered `429`
//! with `Retry-After` and a JSON body. See README.md.

pub mod config;
pub mod logic;

#[cfg(any(target_arch = "wasm32", feature = "native-bench"))]
#[doc(hidden)]
pub mod plugin;
