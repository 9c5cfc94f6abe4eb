//! Which queue each job type goes to, and the check that every job type can be routed
//! to a declared queue of a tier it may run in.
use crate::config::{Config, QueueSettings};
use culm_core::Registry;
use std::collections::BTreeMap;

/// Queue names, their settings and job routing overrides.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Declared queues.
    pub queues: BTreeMap<String, QueueSettings>,
    /// Job type → queue overrides.
    pub routes: BTreeMap<String, String>,
}

impl Routing {
    /// From configuration.
    pub fn from_config(c: &Config) -> Self {
        Self {
            queues: c.queue_settings(),
            routes: c.routes.clone(),
        }
    }

    /// Every routing problem: job types sent to undeclared queues or to queues of a tier
    /// they may not run in, and overrides naming unknown job types.
    pub fn problems(&self, registry: &Registry) -> Vec<String> {
        let mut out = Vec::new();
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
