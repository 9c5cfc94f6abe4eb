//! Priority tiers: every queue belongs to exactly one.
use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A queue's priority tier. Tiers group queues for deployment (`culm run --tiers critical`)
/// and bound where a job type may run (banking jobs only in `critical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Banking operations: card, account, transfer, top-up. Latency-sensitive.
    Critical,
    /// Synchronisation with external APIs (CRM, fraud, identity, rewards, tax).
    ThirdParty,
    /// Bulk work: mail campaigns, file transfers.
    Batch,
    /// Statements and reports.
    Reporting,
}

impl Tier {
    /// Every tier, in priority order.
    pub const ALL: [Tier; 4] = [Tier::Critical, Tier::ThirdParty, Tier::Batch, Tier::Reporting];

    /// The tier's configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Critical => "critical",
            Tier::ThirdParty => "third_party",
            Tier::Batch => "batch",
            Tier::Reporting => "reporting",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier name that is not one of the four.
#[derive(Debug, thiserror::Error)]
#[error("unknown tier `{0}` (expected one of critical, third_party, batch, reporting)")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}
