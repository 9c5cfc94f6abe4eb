//! Which queue each job type goes to, and the check that every job type can be routed
//! to a declared queue of a tier it may run in.
use crate::config::{Config, JobPolicy, JobTypeConfig, PolicySource, QueueSettings};
use culm_core::{Backoff, Registry};
use std::collections::BTreeMap;

/// Queue names, their settings and job routing overrides.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Declared queues.
    pub queues: BTreeMap<String, QueueSettings>,
    /// Job type → queue overrides.
    pub routes: BTreeMap<String, String>,
    /// Job types given a retry policy or timeout in `[job_types]`.
    pub job_types: BTreeMap<String, JobTypeConfig>,
}

impl Routing {
    /// From configuration, with the retry policies and timeouts `registry`'s job types
    /// declare.
    pub fn from_config(c: &Config, registry: &Registry) -> Self {
        Self {
            queues: c.queue_settings(registry),
            routes: c.routes.clone(),
            job_types: c.job_types.clone(),
        }
    }

    /// Every routing problem: job types sent to undeclared queues or to queues of a tier
    /// they may not run in, and overrides naming unknown job types.
    pub fn problems(&self, registry: &Registry) -> Vec<String> {
        let mut out = Vec::new();
        for job in self.job_types.keys() {
            if registry.get(job).is_none() {
                out.push(format!(
                    "[job_types] names job type `{job}`, which this binary does not know"
                ));
            }
        }
        for job in self.routes.keys() {
            if registry.get(job).is_none() {
                out.push(format!(
                    "[routes] names job type `{job}`, which this binary does not know"
                ));
            }
        }
        for spec in registry.iter() {
            let (queue, via) = match self.routes.get(spec.name) {
                Some(q) => (q.as_str(), "[routes] override"),
                None => (spec.queue, "its declaration"),
            };
            match self.queues.get(queue) {
                None => out.push(format!(
                    "job type `{}` is routed by {via} to queue `{queue}`, which is not declared under [queues]",
                    spec.name
                )),
                Some(q) if !spec.allows(q.tier) => out.push(format!(
                    "job type `{}` is routed by {via} to queue `{queue}` (tier {}), but it may only run in: {}",
                    spec.name,
                    q.tier,
                    spec.allowed_tiers()
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// A job type as callers see it: where it runs, under which retry policy and timeout,
/// and the JSON Schema of its payload (`culm jobs --json`, `GET /v1/job-types`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobType {
    /// Durable job type name, e.g. `platform.noop`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The queue it is routed to (a `[routes]` override, else its declaration).
    pub queue: String,
    /// Tiers whose queues may run it.
    pub tiers: Vec<String>,
    /// How long one attempt may run, ms.
    pub timeout_ms: u64,
    /// Where the timeout is set (absent when the queue is not declared).
    pub timeout_source: Option<PolicySource>,
    /// The retry policy it runs under.
    pub retry: RetryView,
    /// How long a finished job's result and summary are kept, ms (the queue's `result_ttl`).
    pub result_ttl_ms: u64,
    /// A batch job type's batch size: its handler takes up to this many jobs of the type
    /// in one call, each still settled on its own; absent for one job per call. A pool
    /// groups at most its queue's concurrency.
    pub max_batch: Option<usize>,
    /// JSON Schema (draft 2020-12) of the payload, generated from the Rust type.
    #[schema(value_type = Option<Object>)]
    pub payload_schema: Option<serde_json::Value>,
    /// An example payload, valid under the schema.
    #[schema(value_type = Option<Object>)]
    pub example: Option<serde_json::Value>,
}

/// A job type's retry policy.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct RetryView {
    /// Attempts including the first; after the last the job is dead-lettered.
    pub max_attempts: u32,
    /// `exponential` (full jitter), `fixed` or `delays`.
    pub backoff: String,
    /// The shortest wait between attempts, ms (exponential: before jitter).
    pub backoff_base_ms: u64,
    /// The longest wait between attempts, ms.
    pub backoff_cap_ms: u64,
    /// The waits after the first, second, … failure, ms (`fixed` and `delays`; the last
    /// repeats); empty for exponential backoff.
    pub delays_ms: Vec<u64>,
    /// Where the policy is set (absent when the queue is not declared).
    pub source: Option<PolicySource>,
}

impl RetryView {
    fn of(p: &JobPolicy) -> Self {
        let (base, cap, delays) = match &p.retry.backoff {
            Backoff::Exponential { base, cap } => (ms(*base), ms(*cap), Vec::new()),
            Backoff::Fixed(d) => (ms(*d), ms(*d), vec![ms(*d)]),
            Backoff::Delays(list) => {
                let delays: Vec<u64> = list.iter().map(|d| ms(*d)).collect();
                let (lo, hi) = (delays.iter().min(), delays.iter().max());
                (lo.copied().unwrap_or(0), hi.copied().unwrap_or(0), delays)
            }
        };
        RetryView {
            max_attempts: p.retry.max_attempts,
            backoff: p.retry.kind().to_owned(),
            backoff_base_ms: base,
            backoff_cap_ms: cap,
            delays_ms: delays,
            source: Some(p.retry_source),
        }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Routing {
    /// Every registered job type with its routing, policy and payload schema, by name.
    /// A job type routed to an undeclared queue (which `culm check` refuses) shows zero
    /// timeout and retries.
    pub fn job_types(&self, registry: &Registry) -> Vec<JobType> {
        registry
            .iter()
            .map(|spec| {
                let queue = self.routes.get(spec.name).map(String::as_str).unwrap_or(spec.queue);
                let q = self.queues.get(queue);
                let policy = q.map(|q| q.policy(spec.name));
                JobType {
                    name: spec.name.to_owned(),
                    description: spec.description.to_owned(),
                    queue: queue.to_owned(),
                    tiers: spec.tiers.iter().map(|t| t.as_str().to_owned()).collect(),
                    timeout_ms: policy.map(|p| ms(p.timeout)).unwrap_or(0),
                    timeout_source: policy.map(|p| p.timeout_source),
                    retry: policy.map(RetryView::of).unwrap_or_default(),
                    result_ttl_ms: q.map(|q| ms(q.result_ttl)).unwrap_or(0),
                    max_batch: spec.max_batch,
                    payload_schema: spec.schema.clone(),
                    example: spec.example.clone(),
                }
            })
            .collect()
    }
}
