//! `/v1/history`: per-minute processed and failed runs and wait time per queue, over the
//! last hour or day, from the history `ack.lua` keeps in Redis (what the dashboard's
//! charts draw).
use super::{
    AdminState, ApiError,
    error::ErrorBody,
    extract::bad_query,
    views::{HistoryQuery, HistoryView, QueueHistory},
};
use crate::store::MinuteStats;
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
};

/// A chart window: how many minutes, and how many minutes per point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub minutes: u32,
    pub per_point: usize,
}

impl Window {
    /// `1h` (one point a minute) or `24h` (one point per ten minutes).
    pub(crate) fn parse(s: &str) -> Option<Window> {
        match s {
            "1h" => Some(Window {
                minutes: 60,
                per_point: 1,
            }),
            "24h" => Some(Window {
                minutes: 24 * 60,
                per_point: 10,
            }),
            _ => None,
        }
    }
}

impl AdminState {
    /// Every queue's history over `w` (or only `queue`'s), bucketed, with the sum over
    /// the queues.
    pub(crate) async fn history(&self, w: Window, queue: Option<&str>) -> Result<HistoryView, ApiError> {
        let names: Vec<String> = match queue {
            Some(q) => {
                self.known_queue(q)?;
                vec![q.to_owned()]
            }
            None => self.store().routing().queues.keys().cloned().collect(),
        };
        let all = self.store().histories(&names, w.minutes).await?;
        let mut total: Vec<MinuteStats> = Vec::new();
        for points in &all {
            if total.is_empty() {
                total = points.clone();
                continue;
            }
            for (t, p) in total.iter_mut().zip(points) {
                let started = t.started + p.started;
                let wait = t.wait_avg_ms.unwrap_or(0) * t.started + p.wait_avg_ms.unwrap_or(0) * p.started;
                t.processed += p.processed;
                t.failed += p.failed;
                t.started = started;
                t.wait_avg_ms = (started > 0).then(|| wait / started);
            }
        }
        let routing = self.store().routing();
        Ok(HistoryView {
            minutes: w.minutes,
            minutes_per_point: w.per_point as u32,
            total: MinuteStats::bucket(&total, w.per_point),
            queues: names
                .into_iter()
                .zip(all)
                .map(|(queue, points)| QueueHistory {
                    tier: routing
                        .queues
                        .get(&queue)
                        .map(|s| s.tier.as_str().to_owned())
                        .unwrap_or_default(),
                    queue,
                    points: MinuteStats::bucket(&points, w.per_point),
                })
                .collect(),
        })
    }
}

/// Runs processed and failed and the average wait, per minute (`1h`) or per ten minutes
/// (`24h`), for every queue and summed over them. Every replica adds to it as it
/// acknowledges batches; kept 24 hours.
#[utoipa::path(get, path = "/v1/history", tag = "queues", params(HistoryQuery),
    responses((status = 200, body = HistoryView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "Unknown queue", body = ErrorBody)))]
pub(super) async fn get_history(
    State(state): State<AdminState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryView>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let w = Window::parse(q.window.as_deref().unwrap_or("1h")).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "window must be 1h or 24h").field("window")
    })?;
    Ok(Json(state.history(w, q.queue.as_deref()).await?))
}
