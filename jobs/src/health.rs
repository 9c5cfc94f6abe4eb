//! Upstream health probes (queue `healthcheck`, third-party tier). A probe goes through
//! the same client stack, so a failing upstream also moves its breaker.
use crate::{
    http::{Integrations, client, config::INTEGRATIONS},
    job,
    support::{THIRD_PARTY, fan_out, follow},
};
use culm_core::{JobError, Outcome, Registry, RegistryError};

/// Registers the health job types.
pub fn register(r: &mut Registry) -> Result<(), RegistryError> {
    r.register::<Probe>()?.register::<ProbeAll>()?;
    Ok(())
}

job! {
    /// Probes one integration (`GET /health`).
    Probe = "health.probe" in "healthcheck" for THIRD_PARTY;
    "Probe one integration's health endpoint.";
    {
        /// Integration name, e.g. `galileo`.
        integration: String,
    }
    example Probe { integration: "galileo".into() };
    |j, ctx| {
        if !INTEGRATIONS.contains(&j.integration.as_str()) {
            return Err(JobError::permanent(format!(
                "unknown integration `{}` (known: {})",
                j.integration,
                INTEGRATIONS.join(", ")
            )));
        }
        let r = client(&ctx, &j.integration)?.get("health", "/health").send().await?;
        Ok(Outcome::done().with_summary(format!("{}: HTTP {}", j.integration, r.status)))
    }
}

job! {
    /// Enqueues a probe of every configured integration in one batch.
    ProbeAll = "health.probe_all" in "healthcheck" for THIRD_PARTY;
    "Probe every configured integration (one batched enqueue).";
    {}
    example ProbeAll {};
    |j, ctx| {
        let names: Vec<String> = ctx
            .dep::<Integrations>()
            .map(|i| i.names().map(str::to_owned).collect())
            .unwrap_or_default();
        let jobs = names
            .into_iter()
            .map(|integration| follow(&Probe { integration }))
            .collect::<Result<Vec<_>, _>>()?;
        let n = fan_out(&ctx, jobs).await?;
        Ok(Outcome::done().with_summary(format!("{n} probes enqueued")))
    }
}
