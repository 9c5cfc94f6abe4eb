//! The circuit breaker of one integration: closed → open after `failure_threshold`
//! consecutive failures → half-open after `open_for`, letting `half_open_probes` calls
//! through → closed after that many successes, or open again on any failed probe. While
//! open, calls are refused with the time left, and the job is deferred (no attempt spent).
//!
//! Shared across processes through Redis (`breaker.lua`, key
//! `<prefix>:integration:{<integration>}:breaker`): one replica's failures open it for
//! every replica, and the half-open probes are counted globally (leased for `open_for`,
//! so a probe whose process died frees its place). While Redis is unreachable each
//! process falls back to its own state, which otherwise mirrors the shared one.
use super::{config::BreakerConfig, conn::Conn, metrics};
use redis::Script;
use std::{
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("breaker.lua")));

/// The breaker's state, as exported in `culm_integration_breaker_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Probes go through.
    HalfOpen,
    /// Calls are refused.
    Open,
}

impl BreakerState {
    /// Label and gauge value.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A circuit breaker; clones share state.
#[derive(Clone)]
pub struct Breaker {
    integration: Arc<str>,
    config: BreakerConfig,
    state: Arc<Mutex<State>>,
    shared: Option<(Conn, Arc<str>)>,
}

/// Leave to make one call. Report its result with [`Permit::success`] or
/// [`Permit::failure`]; dropping it reports nothing (e.g. the call was deferred).
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    /// Admitted by the shared breaker (else by this process's own).
    shared: bool,
    settled: bool,
}

impl Breaker {
    /// A closed breaker of this process only.
    pub fn new(integration: &str, config: BreakerConfig) -> Self {
        metrics::breaker_state(integration, BreakerState::Closed.gauge());
        Self {
            integration: integration.into(),
            config,
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
            shared: None,
        }
    }

    /// A breaker shared by every process on `redis` under `key_prefix`.
    pub fn shared(integration: &str, config: BreakerConfig, redis: Conn, key_prefix: &str) -> Self {
        Self {
            shared: Some((
                redis,
                super::keys::IntegrationKeys::new(key_prefix, integration)
                    .breaker()
                    .into(),
            )),
            ..Self::new(integration, config)
        }
    }

    /// The Redis key of the shared state, if shared.
    pub fn key(&self) -> Option<&str> {
        self.shared.as_ref().map(|(_, k)| &**k)
    }

    /// Runs `breaker.lua`; `None` when the breaker is not shared or Redis failed.
    async fn script(&self, op: &str, probe: bool, result: &str) -> Option<(i64, Duration)> {
        let (conn, key) = self.shared.as_ref()?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
        let out: Result<(i64, i64, String), _> = SCRIPT
            .key(&**key)
            .arg(op)
            .arg(self.config.failure_threshold)
            .arg(ms(self.config.open_for))
            .arg(self.config.half_open_probes)
            .arg(u8::from(probe))
            .arg(result)
            .invoke_async(&mut conn.clone())
            .await;
        match out {
            Ok((code, wait, state)) => {
                let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                self.mirror(&state, wait);
                Some((code, wait))
            }
            Err(e) => {
                tracing::warn!(integration = %self.integration, "shared circuit breaker unreachable, using this process's: {e}");
                None
            }
        }
    }

    /// Takes the shared state as this process's own (for `state()`, metrics and the fallback).
    fn mirror(&self, state: &str, wait: Duration) {
        let mut s = self.lock();
        let to = match (state, &*s) {
            ("open", _) => State::Open {
                until: Instant::now() + wait,
            },
            ("half_open", State::HalfOpen { .. }) | ("closed", State::Closed { .. }) => return,
            ("half_open", _) => State::HalfOpen {
                in_flight: 0,
                successes: 0,
            },
            _ => State::Closed { failures: 0 },
        };
        self.transition(&mut s, to);
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned breaker still holds a valid state: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, state: &mut State, to: State) {
        let from = state.public();
        *state = to;
        let now = state.public();
        if from != now {
            tracing::warn!(integration = %self.integration, from = from.as_str(), to = now.as_str(), "circuit breaker");
            metrics::breaker_transition(&self.integration, now.as_str(), now.gauge());
        }
    }

    /// Lets a call through, or says how long to wait: by the shared state, or by this
    /// process's own while Redis is unreachable.
    pub async fn admit(&self) -> Result<Permit, Duration> {
        match self.script("admit", false, "").await {
            Some((0, wait)) => Err(wait),
            Some((code, _)) => Ok(Permit {
                breaker: self.clone(),
                probe: code == 2,
                shared: true,
                settled: false,
            }),
            None => self.admit_local(),
        }
    }

    fn admit_local(&self) -> Result<Permit, Duration> {
        let mut s = self.lock();
        if let State::Open { until } = *s {
            let now = Instant::now();
            if now < until {
                return Err(until - now);
            }
            self.transition(
                &mut s,
                State::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
            );
        }
        let probe = match &mut *s {
            State::Closed { .. } => false,
            State::HalfOpen { in_flight, .. } => {
                if *in_flight >= self.config.half_open_probes {
                    // Probes are out; check again in a fraction of the open period.
                    return Err((self.config.open_for / 4).max(Duration::from_millis(50)));
                }
                *in_flight += 1;
                true
            }
            State::Open { .. } => return Err(self.config.open_for),
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            shared: false,
            settled: false,
        })
    }

    async fn settle_shared(&self, probe: bool, shared: bool, ok: Option<bool>) {
        let result = match ok {
            Some(true) => "ok",
            Some(false) => "fail",
            None => "none",
        };
        if !shared || self.script("settle", probe, result).await.is_none() {
            self.settle(probe && !shared, ok);
        }
    }

    fn settle(&self, probe: bool, ok: Option<bool>) {
        let mut s = self.lock();
        let next = match (&mut *s, ok) {
            (State::Closed { failures }, Some(true)) => {
                *failures = 0;
                None
            }
            (State::Closed { failures }, Some(false)) => {
                *failures += 1;
                (*failures >= self.config.failure_threshold).then(|| State::Open {
                    until: Instant::now() + self.config.open_for,
                })
            }
            (State::HalfOpen { in_flight, successes }, ok) if probe => {
                *in_flight = in_flight.saturating_sub(1);
                match ok {
                    Some(true) => {
                        *successes += 1;
                        (*successes >= self.config.half_open_probes).then_some(State::Closed { failures: 0 })
                    }
                    Some(false) => Some(State::Open {
                        until: Instant::now() + self.config.open_for,
                    }),
                    None => None,
                }
            }
            // A call admitted while closed that fails after the breaker opened changes nothing.
            _ => None,
        };
        if let Some(next) = next {
            self.transition(&mut s, next);
        }
    }
}

impl Permit {
    /// The upstream answered in a way that shows it is healthy.
    pub async fn success(mut self) {
        self.settled = true;
        self.breaker.settle_shared(self.probe, self.shared, Some(true)).await;
    }

    /// The upstream failed (transport error, timeout, 5xx, 408).
    pub async fn failure(mut self) {
        self.settled = true;
        self.breaker.settle_shared(self.probe, self.shared, Some(false)).await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.shared && self.probe {
            // Free the shared probe place now (its lease would free it after open_for).
            let (breaker, probe) = (self.breaker.clone(), self.probe);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { breaker.settle_shared(probe, true, None).await });
            }
        } else if !self.shared {
            self.breaker.settle(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_probes_and_closes() {
        let b = Breaker::new(
            "t",
            BreakerConfig {
                failure_threshold: 2,
                open_for: Duration::from_millis(30),
                half_open_probes: 1,
            },
        );
        b.admit().await.expect("closed").failure().await;
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().await.expect("closed").failure().await;
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().await.is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().await.expect("half-open probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().await.is_err(), "only one probe at a time");
        probe.failure().await;
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        drop(b.admit().await.expect("probe"));
        b.admit()
            .await
            .expect("the dropped probe freed its place")
            .success()
            .await;
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
