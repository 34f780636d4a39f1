//! Per-subject rate limits: a token bucket per authenticated caller, and per caller and
//! tool where a tool has a limit of its own.
//!
//! Rules:
//! 1. The caller is the verified token's issuer and subject (`iss` + `sub`), whichever
//!    client it used; a token without `sub` counts by its `client_id`, and one with
//!    neither shares one bucket with every such token of its issuer. It is read from the
//!    request's [`AuthContext`] (set by the authentication layer), never from anything
//!    the client could write unverified.
//! 2. Every request that reaches the MCP endpoint after authentication takes one token
//!    from the caller's bucket ([`RateLimits::per_subject`]); each `tools/call` of a tool
//!    with its own limit ([`RateLimits::per_tool`]) also takes one from the caller's bucket
//!    for that tool. Buckets hold `burst` tokens (default: the rate's count) and refill
//!    evenly at the rate (`10/min`: one token every 6 s).
//! 3. An empty bucket answers **429** with `Retry-After` (whole seconds until a token is
//!    back, rounded up), a JSON-RPC error body (`code` -32000, `data.retryAfterSeconds`,
//!    `data.limit`), the response extension [`Refusal`] `rate_limited`, and counts
//!    `bmm_rate_limit_refusals_total{limit="subject"|"tool"}`. The request goes no further.
//! 4. Memory is bounded: at most [`RateLimits::capacity`] buckets are kept; the least
//!    useful ones are evicted first. An evicted bucket is refilled by the time it would be
//!    dropped for being idle, so eviction costs an idle caller nothing; a caller evicted
//!    while its bucket was part-empty starts again with a full one, at worst one burst
//!    more, which needs more distinct verified callers than the capacity to cause (each
//!    with its own buckets anyway).
//! 5. Without authentication (`--no-auth`, loopback only) there is no caller and no limit
//!    applies: every request would come from the same loopback address.
//!
//! The buckets are GCRA ("virtual scheduling"): one atomic per bucket, updated with a
//! compare-and-swap, inside a sharded cache whose lookups take a shard's read lock; no
//! lock is held while a request runs.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bmm_core::Rate;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::json_response;
use crate::context::AuthContext;
use crate::future::LocalOrInner;
use crate::refusal::Refusal;
use crate::tool_scope::CalledTools;

/// One limit: a rate and the burst a full bucket allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    rate: Rate,
    burst: u32,
}

impl RateLimit {
    /// `rate`, with a burst of the rate's count (`10/min`: 10 at once, then one every 6 s).
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            burst: rate.count(),
        }
    }

    /// Requests a full bucket allows at once (at least 1). Default is the rate's count.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.clamp(1, Rate::MAX_COUNT);
        self
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn gcra(self) -> Gcra {
        let per = u64::try_from(self.rate.per().as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(self.rate.count())).max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(self.burst)),
        }
    }
}

/// The rate limits of a server: per subject, and per subject and tool.
#[derive(Clone, Debug)]
#[must_use]
pub struct RateLimits {
    subject: Option<RateLimit>,
    tools: Vec<(String, RateLimit)>,
    capacity: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            subject: None,
            tools: Vec::new(),
            capacity: 100_000,
        }
    }
}

impl RateLimits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every request of one subject, whatever it is. Default is none.
    pub fn per_subject(mut self, limit: RateLimit) -> Self {
        self.subject = Some(limit);
        self
    }

    /// Calls of `tool` by one subject. A later limit for the same tool replaces the
    /// earlier one.
    pub fn per_tool(mut self, tool: impl Into<String>, limit: RateLimit) -> Self {
        let tool = tool.into();
        self.tools.retain(|(name, _)| *name != tool);
        self.tools.push((tool, limit));
        self
    }

    /// Buckets kept at most, over all subjects and tools (at least 64). Default is
    /// 100,000 (a few MiB).
    pub fn capacity(mut self, buckets: usize) -> Self {
        self.capacity = buckets.max(64);
        self
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.subject.is_none() && self.tools.is_empty()
    }

    /// Whether some tool has a limit of its own (the body must then be read).
    pub(crate) fn has_tool_limits(&self) -> bool {
        !self.tools.is_empty()
    }
}

/// Generic cell rate algorithm state of one limit, in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Time one token takes to come back.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run: a full bucket.
    tolerance: u64,
}

impl Gcra {
    /// Takes one token from `tat` (the bucket's theoretical arrival time) at `now`, or
    /// returns how long until one is back.
    fn take(&self, tat: &AtomicU64, now: u64) -> Result<(), Duration> {
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let next = current.max(now).saturating_add(self.interval);
            let ahead = next - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }
}

/// A bucket's key: the caller (a keyed 128-bit hash of issuer and subject or client) and
/// which limit (0: the subject's, `i + 1`: the `i`th tool's).
type Key = (u128, u32);

/// The shared state of every connection's [`RateLimited`] service.
pub(crate) struct Limiter {
    subject: Option<Gcra>,
    tools: HashMap<String, (u32, Gcra)>,
    buckets: quick_cache::sync::Cache<Key, Arc<AtomicU64>>,
    epoch: Instant,
    // Two independently keyed SipHashes: callers cannot choose colliding identities
    // without the keys, and 128 bits make accidental sharing negligible.
    hashers: (RandomState, RandomState),
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Subject(Duration),
    Tool(Duration),
}

impl Limiter {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        let tools = limits
            .tools
            .iter()
            .zip(1u32..)
            .map(|((name, limit), slot)| (name.clone(), (slot, limit.gcra())))
            .collect();
        Self {
            subject: limits.subject.map(RateLimit::gcra),
            tools,
            buckets: quick_cache::sync::Cache::new(limits.capacity),
            epoch: Instant::now(),
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    fn caller(&self, ctx: &AuthContext) -> u128 {
        let hash = |state: &RandomState| {
            let mut h = state.build_hasher();
            ctx.issuer().hash(&mut h);
            match (ctx.subject(), ctx.client_id()) {
                (Some(sub), _) => (0u8, sub).hash(&mut h),
                (None, Some(client)) => (1u8, client).hash(&mut h),
                (None, None) => 2u8.hash(&mut h),
            }
            h.finish()
        };
        (u128::from(hash(&self.hashers.0)) << 64) | u128::from(hash(&self.hashers.1))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn take(&self, key: Key, gcra: &Gcra, now: u64) -> Result<(), Duration> {
        let bucket = match self.buckets.get(&key) {
            Some(bucket) => bucket,
            None => {
                let bucket = Arc::new(AtomicU64::new(0));
                // Two first requests racing may each insert; the second insert wins and the
                // first's token is forgotten: at most one extra request, once.
                self.buckets.insert(key, Arc::clone(&bucket));
                bucket
            }
        };
        gcra.take(&bucket, now)
    }

    /// Takes the tokens one request needs: the caller's, then one per limited tool call.
    pub(crate) fn check(&self, ctx: &AuthContext, tools: &[String]) -> Result<(), Exceeded> {
        let caller = self.caller(ctx);
        let now = self.now();
        if let Some(gcra) = &self.subject {
            self.take((caller, 0), gcra, now)
                .map_err(Exceeded::Subject)?;
        }
        for tool in tools {
            if let Some((slot, gcra)) = self.tools.get(tool.as_str()) {
                self.take((caller, *slot), gcra, now)
                    .map_err(Exceeded::Tool)?;
            }
        }
        Ok(())
    }

    /// Buckets held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Layer that applies [`RateLimited`]. Built by [`crate::stack`] from the
/// [`RateLimits`] of the [`crate::ServeConfig`].
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// Applies `limits`; with none set the layer passes every request on.
    pub fn new(limits: &RateLimits) -> Self {
        Self {
            limiter: (!limits.is_empty()).then(|| Arc::new(Limiter::new(limits))),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// Middleware answering 429 to callers over their rate limits (see the module docs). It
/// runs behind [`crate::AuthLayer`] and [`crate::ToolScopeLayer`], which provide the
/// caller and the called tools.
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
}

impl<S> RateLimited<S> {
    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<crate::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = LocalOrInner<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if let Some(limiter) = &self.limiter
            && let Ok(ctx) = AuthContext::from_request(&request)
        {
            let tools = request
                .extensions()
                .get::<CalledTools>()
                .map_or(&[][..], CalledTools::names);
            if let Err(exceeded) = limiter.check(ctx, tools) {
                let mut response = too_many(exceeded);
                // The audit line names the caller it refused (crate::observe rule 2).
                response.extensions_mut().insert(ctx.clone());
                return LocalOrInner::local(response);
            }
        }
        LocalOrInner::inner(self.inner.call(request))
    }
}

fn too_many(exceeded: Exceeded) -> crate::body::LocalResponse {
    let (limit, wait) = match exceeded {
        Exceeded::Subject(wait) => ("subject", wait),
        Exceeded::Tool(wait) => ("tool", wait),
    };
    metrics::counter!("bmm_rate_limit_refusals_total", "limit" => limit).increment(1);
    tracing::debug!(limit, "request refused: rate limit");
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let message = match limit {
        "subject" => "rate limit exceeded: too many requests from this caller",
        _ => "rate limit exceeded: too many calls of this tool from this caller",
    };
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": message, "data": {"retryAfterSeconds": seconds, "limit": limit}}}),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response.extensions_mut().insert(Refusal::RATE_LIMITED);
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::scope::ScopeSet;

    fn caller(issuer: &str, claims: serde_json::Value) -> AuthContext {
        let claims = claims.as_object().cloned().unwrap_or_default();
        AuthContext::new(
            issuer.to_owned(),
            Vec::new(),
            ScopeSet::new(),
            ScopeSet::new(),
            u64::MAX,
            claims,
        )
    }

    fn per_second(count: u32, burst: u32) -> RateLimit {
        RateLimit::new(Rate::new(count, 1).unwrap_or_else(|| unreachable!())).burst(burst)
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let gcra = per_second(2, 3).gcra();
        let tat = AtomicU64::new(0);
        let start = 3_600_000_000_000;
        for _ in 0..3 {
            assert_eq!(gcra.take(&tat, start), Ok(()));
        }
        assert_eq!(gcra.take(&tat, start), Err(Duration::from_millis(500)));
        assert_eq!(
            gcra.take(&tat, start + 499_000_000),
            Err(Duration::from_millis(1))
        );
        assert_eq!(gcra.take(&tat, start + 500_000_000), Ok(()));
        // Long idle: full again, never more than the burst.
        let later = start + 60_000_000_000;
        for _ in 0..3 {
            assert_eq!(gcra.take(&tat, later), Ok(()));
        }
        assert!(gcra.take(&tat, later).is_err());
    }

    #[test]
    fn the_caller_is_issuer_and_subject_then_client() {
        let limiter = Limiter::new(&RateLimits::new().per_subject(per_second(1, 1)));
        let alice_a = caller("https://as", json!({"sub": "alice", "client_id": "a"}));
        let alice_b = caller("https://as", json!({"sub": "alice", "client_id": "b"}));
        let alice_elsewhere = caller("https://other", json!({"sub": "alice"}));
        let client_only = caller("https://as", json!({"client_id": "alice"}));
        assert_eq!(limiter.caller(&alice_a), limiter.caller(&alice_b));
        assert_ne!(limiter.caller(&alice_a), limiter.caller(&alice_elsewhere));
        assert_ne!(limiter.caller(&alice_a), limiter.caller(&client_only));
        assert!(limiter.check(&alice_a, &[]).is_ok());
        assert!(matches!(
            limiter.check(&alice_b, &[]),
            Err(Exceeded::Subject(_))
        ));
        assert!(limiter.check(&alice_elsewhere, &[]).is_ok());
        assert!(limiter.check(&client_only, &[]).is_ok());
    }

    #[test]
    fn refusal_is_429_with_retry_after_rounded_up_and_the_rate_limited_extension() {
        let response = too_many(Exceeded::Tool(Duration::from_millis(1_001)));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        assert_eq!(
            Refusal::from_response(&response),
            Some(Refusal::RATE_LIMITED)
        );
        let response = too_many(Exceeded::Subject(Duration::from_millis(3)));
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn memory_is_bounded_under_many_subjects() {
        let capacity = 1_000;
        let limiter = Limiter::new(
            &RateLimits::new()
                .per_subject(per_second(10, 10))
                .per_tool("slow", per_second(1, 1))
                .capacity(capacity),
        );
        let tools = ["slow".to_owned()];
        for i in 0..100_000 {
            let who = caller("https://as", json!({ "sub": format!("user-{i}") }));
            assert!(limiter.check(&who, &tools).is_ok());
            assert!(limiter.len() <= capacity, "{} buckets", limiter.len());
        }
        assert!(limiter.len() > capacity / 2, "{} buckets", limiter.len());
    }
}
