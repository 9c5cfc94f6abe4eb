//! The circuit breaker of one integration, per process: closed → open after
//! `failure_threshold` consecutive failures → half-open after `open_for`, letting
//! `half_open_probes` calls through → closed after that many successes, or open again
//! on any failed probe. While open, calls are refused with the time left, and the job
//! is deferred (no attempt spent).
use super::{config::BreakerConfig, metrics};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
}

/// Leave to make one call. Report its result with [`Permit::success`] or
/// [`Permit::failure`]; dropping it reports nothing (e.g. the call was deferred).
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(integration: &str, config: BreakerConfig) -> Self {
        metrics::breaker_state(integration, BreakerState::Closed.gauge());
        Self {
            integration: integration.into(),
            config,
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
        }
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

    /// Lets a call through, or says how long to wait.
    pub fn admit(&self) -> Result<Permit, Duration> {
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
            settled: false,
        })
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
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Some(true));
    }

    /// The upstream failed (transport error, timeout, 5xx, 408).
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, Some(false));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(
            "t",
            BreakerConfig {
                failure_threshold: 2,
                open_for: Duration::from_millis(30),
                half_open_probes: 1,
            },
        );
        b.admit().expect("closed").failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().expect("closed").failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().expect("half-open probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        drop(b.admit().expect("probe"));
        b.admit().expect("the dropped probe freed its place").success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
