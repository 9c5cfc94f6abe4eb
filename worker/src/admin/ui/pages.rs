//! The dashboard's pages and the forms behind their buttons. Each page reads what it
//! shows through the same calls as the `/v1` API (never a whole structure: the queue page
//! pages with cursors, the overview reads counts, history and the replica registry); each
//! action goes through the same modules as the API (`DeadLetters`, `Store`, `Scheduler`).
use super::{
    super::{AdminState, history::Window},
    Nav, chart, csrf, layout, problem, see_other,
    session::Sessions,
};
use crate::{
    dead_letters,
    store::{Cancelled, Cursor, DeadFilter, JobState, JobStatus, ListJobs, QueueStats},
};
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

type Params = Query<HashMap<String, String>>;
type Fields = Form<Vec<(String, String)>>;

fn param<'a>(q: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    q.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn age(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return String::new() };
    let s = ms / 1000;
    match s {
        ..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("dashboard: {e}");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        "culm could not read its store; see the server log.",
    )
}

fn state_tag(s: &str) -> Markup {
    html! { span class=(format!("tag {s}")) { (s) } }
}

// ---------------------------------------------------------------------------- login

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Log in · culm" } link rel="stylesheet" href="/ui/assets/app.css"; }
            body { main.login {
                h1 { "culm dashboard" }
                @if let Some(e) = error { div.msg.err { (e) } }
                form.card method="post" action="/ui/login" {
                    p { label { "Admin API token" br; input type="password" name="token" autocomplete="current-password" autofocus required size="40"; } }
                    p.muted { "A read token can look; an admin token can also act." }
                    button.primary type="submit" { "Log in" }
                }
            } }
        }
    };
    super::html_response(status, page)
}

pub(super) async fn login_form(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.viewer(&headers).is_ok() {
        return see_other("/ui", None);
    }
    login_page(StatusCode::OK, None)
}

pub(super) async fn login(State(state): State<AdminState>, Form(f): Form<LoginForm>) -> Response {
    let sessions: &Sessions = &state.inner.sessions;
    match sessions.login(&state.inner.tokens, &f.token, culm_core::now_ms()) {
        Some(s) => {
            tracing::info!(token = %s.name, admin = s.admin, "dashboard login");
            let mut r = see_other("/ui", None);
            if let Ok(v) = sessions.cookie(&s).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        None => {
            tracing::warn!("dashboard login refused: unknown token, or one without the read scope");
            login_page(
                StatusCode::UNAUTHORIZED,
                Some("Unknown token, or one that cannot read."),
            )
        }
    }
}

pub(super) async fn logout(State(state): State<AdminState>, headers: HeaderMap, Form(f): Fields) -> Response {
    // The cookie is cleared whatever the form carries (a forged logout only logs someone
    // out); the logout is logged when the form is the session's own.
    if let Ok(s) = state.viewer(&headers)
        && field(&f, "csrf") == Some(s.csrf.as_str())
    {
        tracing::info!(token = %s.name, "dashboard logout");
    }
    let mut r = see_other("/ui/login", None);
    if let Ok(v) = Sessions::clear().parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------- overview

pub(super) async fn overview(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let window = param(&q, "window").and_then(Window::parse).unwrap_or(Window {
        minutes: 60,
        per_point: 1,
    });
    let (stats, workers, history) = match tokio::try_join!(
        async { state.store().all_stats().await.map_err(|e| e.to_string()) },
        async { state.store().workers().await.map_err(|e| e.to_string()) },
        async { state.history(window, None).await.map_err(|e| e.message) },
    ) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    // Busy and capacity per queue, summed over the live replicas.
    let mut load: HashMap<&str, (u32, u32)> = HashMap::new();
    for w in &workers {
        for q in &w.queues {
            let e = load.entry(q.queue.as_str()).or_default();
            e.0 += q.busy;
            e.1 += q.capacity;
        }
    }
    let mut tiers: BTreeMap<&str, Vec<&QueueStats>> = BTreeMap::new();
    for q in &stats {
        tiers.entry(q.tier.as_str()).or_default().push(q);
    }
    let label = |at: Option<i64>| {
        at.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default()
    };
    let span = (
        label(history.total.first().map(|p| p.at)),
        label(history.total.last().map(|p| p.at)),
    );
    let per = if window.per_point == 1 {
        "per minute".to_owned()
    } else {
        format!("per {} minutes", window.per_point)
    };
    let body = html! {
        p.tabs {
            "Charts: "
            a href="/ui?window=1h" class=[(window.minutes == 60).then_some("on")] { "last hour" }
            a href="/ui?window=24h" class=[(window.minutes != 60).then_some("on")] { "last 24 hours" }
            span.muted { (workers.len()) " live replica(s)" }
        }
        div.grid {
            (chart::line_chart(&format!("Jobs {per}"), "jobs", (&span.0, &span.1), &[
                chart::Series { name: "processed", color: "#1e7d32", values: history.total.iter().map(|p| Some(p.processed as f64)).collect() },
                chart::Series { name: "failed", color: "#b3261e", values: history.total.iter().map(|p| Some(p.failed as f64)).collect() },
            ]))
            (chart::line_chart("Average wait per queue", "ms", (&span.0, &span.1), &history.queues.iter().enumerate()
                .filter(|(_, q)| q.points.iter().any(|p| p.wait_avg_ms.is_some()))
                .map(|(i, q)| chart::Series {
                    name: &q.queue,
                    color: chart::PALETTE[i % chart::PALETTE.len()],
                    values: q.points.iter().map(|p| p.wait_avg_ms.map(|w| w as f64)).collect(),
                }).collect::<Vec<_>>()))
        }
        @for (tier, queues) in &tiers {
            h2 { "Tier: " (tier) }
            table {
                thead { tr {
                    th { "Queue" } th.n { "Pending" } th.n { "Scheduled" } th.n { "Running" } th.n { "Dead" }
                    th { "Paused" } th.n { "Oldest pending" } th.n { "Busy / capacity" }
                } }
                tbody {
                    @for q in queues {
                        @let (busy, cap) = load.get(q.name.as_str()).copied().unwrap_or((0, 0));
                        tr class=[q.paused.then_some("paused")] {
                            td { a href=(format!("/ui/queues/{}", q.name)) { (q.name) } }
                            @let p = q.pending_by_priority;
                            td.n title=(format!("high {}, normal {}, low {}", p.high, p.normal, p.low)) {
                                (q.pending)
                                @if p.high > 0 { " " span.tag.prio-high { (p.high) " high" } }
                            }
                            td.n { (q.scheduled) } td.n { (q.running) }
                            td.n { @if q.dead > 0 { a href=(format!("/ui/dead?queue={}", q.name)) { (q.dead) } } @else { "0" } }
                            td { @if q.paused { span.tag.paused { "paused" } } }
                            td.n { (age(q.oldest_pending_age_ms)) }
                            td.n { (busy) " / " (cap) }
                        }
                    }
                }
            }
        }
    };
    layout(&s, "Overview", Nav::Overview, param(&q, "msg"), body)
}

// ---------------------------------------------------------------------------- queue

const STATES: [JobState; 6] = [
    JobState::Pending,
    JobState::Scheduled,
    JobState::Running,
    JobState::Dead,
    JobState::Done,
    JobState::Cancelled,
];

fn jobs_table(jobs: &[JobStatus]) -> Markup {
    html! {
        table {
            thead { tr { th { "Job id" } th { "Type" } th { "State" } th.n { "Attempts" } th { "Enqueued" } th { "When" } th { "Last error" } } }
            tbody {
                @for j in jobs {
                    tr {
                        td { a href=(format!("/ui/jobs/{}", j.id)) { code { (j.id) } } }
                        td { (j.job.as_deref().unwrap_or("?")) }
                        td { (state_tag(j.state.as_str())) }
                        td.n { (j.attempts) }
                        td { (when(j.enqueued_at)) }
                        td { (when(j.run_at.or(j.lease_expires_at).or(j.finished_at))) }
                        td { (j.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

pub(super) async fn queue(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if state.known_queue(&name).is_err() {
        return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No queue named `{name}`."));
    }
    let st = param(&q, "state")
        .and_then(|v| v.parse::<JobState>().ok())
        .unwrap_or(JobState::Pending);
    let cursor = param(&q, "cursor").and_then(Cursor::decode);
    let job = param(&q, "job");
    let (stats, page) = match tokio::try_join!(state.store().stats(&name), async {
        state
            .store()
            .list_jobs(&ListJobs {
                queue: &name,
                state: st,
                job,
                limit: 50,
                cursor,
            })
            .await
    }) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let next = page.next_cursor.map(|c| {
        let mut url = format!("/ui/queues/{name}?state={}&cursor={}", st.as_str(), c.encode());
        if let Some(j) = job {
            url.push_str(&format!("&job={}", super::encode(j)));
        }
        url
    });
    let body = html! {
        div.card {
            "Tier " strong { (stats.tier.as_str()) } " · pending " strong { (stats.pending) }
            @let p = stats.pending_by_priority;
            " (high " strong.prio-high { (p.high) } ", normal " strong { (p.normal) } ", low " strong { (p.low) } ")"
            " · scheduled " strong { (stats.scheduled) } " · running " strong { (stats.running) }
            " · dead " strong { (stats.dead) } " · oldest pending " strong { (age(stats.oldest_pending_age_ms)) } " · "
            @if stats.paused { span.tag.paused { "paused" } } @else { span.tag { "running" } }
            @if s.admin {
                " "
                form.inline method="post" action=(format!("/ui/queues/{name}/{}", if stats.paused { "resume" } else { "pause" })) {
                    (csrf(&s))
                    button type="submit" { @if stats.paused { "Resume" } @else { "Pause" } }
                }
            }
        }
        p.tabs {
            @for x in STATES {
                a href=(format!("/ui/queues/{name}?state={}", x.as_str())) class=[(x == st).then_some("on")] { (x.as_str()) }
            }
        }
        form.filters method="get" action=(format!("/ui/queues/{name}")) {
            input type="hidden" name="state" value=(st.as_str());
            label { "Job type" input type="text" name="job" value=(job.unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        (jobs_table(&page.jobs))
        p.pager {
            @if cursor.is_some() { a href=(format!("/ui/queues/{name}?state={}", st.as_str())) { "« first page" } " " }
            @if let Some(n) = &next { a href=(n) { "next page »" } } @else { span.muted { "end of list" } }
        }
    };
    layout(&s, &format!("Queue {name}"), Nav::Overview, param(&q, "msg"), body)
}

pub(super) async fn queue_action(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let s = match state.actor(&headers, field(&f, "csrf")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if state.known_queue(&name).is_err() {
        return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No queue named `{name}`."));
    }
    let r = match action.as_str() {
        "pause" => state.store().pause(&name).await,
        "resume" => state.store().resume(&name).await,
        _ => return problem(StatusCode::NOT_FOUND, Some(&s), "Unknown action."),
    };
    if let Err(e) = r {
        return internal(e);
    }
    tracing::info!(queue = %name, token = %s.name, "queue {action}d from the dashboard");
    see_other(&format!("/ui/queues/{name}"), Some(&format!("Queue {name} {action}d.")))
}

// ---------------------------------------------------------------------------- job

pub(super) async fn job(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut status = match state.store().status(&id).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    if status.is_none()
        && let Some(db) = state.db()
    {
        status = db.job_status(&id).await.ok().flatten();
    }
    let archived = match state.db() {
        Some(db) => db.dead_get(&id).await.ok().flatten(),
        None => None,
    };
    let Some(st) = status else {
        return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No job `{id}` in any queue."));
    };
    let body_info = state.store().job_body(&st.queue, &id).await.ok();
    let runs = match state.db() {
        Some(db) => db.job_runs(&id).await.ok(),
        None => None,
    };
    let follow_ups = state.store().follow_ups(&id, 25).await.unwrap_or_default();
    let tier = state
        .store()
        .routing()
        .queues
        .get(&st.queue)
        .map(|q| q.tier.as_str())
        .unwrap_or("");
    // A batch job type's jobs run in grouped handler calls; each still has its own row here.
    let max_batch = st
        .job
        .as_deref()
        .and_then(|j| state.store().registry().get(j))
        .and_then(|spec| spec.max_batch);
    let payload = body_info
        .as_ref()
        .and_then(|b| b.payload.clone())
        .or_else(|| archived.as_ref().map(|d| d.payload.clone()));
    let key = body_info.as_ref().and_then(|b| b.idempotency_key.clone());
    // Follow-ups and fan-outs carry idempotency keys derived from their parent's id.
    let parent = key
        .as_deref()
        .and_then(|k| k.split_once(':').map(|(p, _)| p))
        .filter(|p| p.len() == 26 && *p != id);
    let action = |path: &str, label: &str, danger: bool| {
        html! {
            form.inline method="post" action=(format!("/ui/jobs/{id}/{path}")) {
                (csrf(&s))
                button type="submit" class=[danger.then_some("danger")] { (label) }
            }
        }
    };
    let body = html! {
        div.card {
            table {
                tr { th { "State" } td { (state_tag(st.state.as_str())) } }
                tr { th { "Type" } td { (st.job.as_deref().unwrap_or("?")) } }
                tr { th { "Queue" } td { a href=(format!("/ui/queues/{}", st.queue)) { (st.queue) } } }
                tr { th { "Tier" } td { (tier) } }
                @if let Some(n) = max_batch { tr { th { "Batch handler" } td { "up to " (n) " jobs of this type per handler call, each settled on its own" } } }
                tr { th { "Attempts" } td { (st.attempts) } }
                @if let Some(p) = st.priority { tr { th { "Priority" } td { (p.as_str()) } } }
                tr { th { "Lease token" } td { @if let Some(t) = body_info.as_ref().and_then(|b| b.token) { code { (t) } } } }
                tr { th { "Enqueued" } td { (when(st.enqueued_at)) } }
                @if st.run_at.is_some() { tr { th { "Due" } td { (when(st.run_at)) } } }
                @if st.lease_expires_at.is_some() { tr { th { "Lease expires" } td { (when(st.lease_expires_at)) } } }
                @if st.finished_at.is_some() { tr { th { "Finished" } td { (when(st.finished_at)) } } }
                @if let Some(k) = &key { tr { th { "Idempotency key" } td { code { (k) } } } }
                @if let Some(p) = parent { tr { th { "Parent" } td { a href=(format!("/ui/jobs/{p}")) { code { (p) } } } } }
                @if let Some(b) = body_info.as_ref().and_then(|b| b.batch.as_deref()) { tr { th { "Batch" } td { a href=(format!("/ui/batches/{b}")) { code { (b) } } } } }
            }
            @if s.admin {
                p {
                    @if st.state == JobState::Dead { (action("retry", "Retry", false)) " " (action("purge", "Purge", true)) }
                    @if st.state.is_live() { (action("cancel", "Cancel", true)) }
                }
            }
        }
        h2 { "Follow-ups and fan-outs" }
        @if follow_ups.is_empty() { p.muted { "None found (they are found by culm's idempotency keys while those last)." } } @else {
            ul { @for (q, f) in &follow_ups { li { a href=(format!("/ui/jobs/{f}")) { code { (f) } } " on " (q) } } }
        }
        h2 { "Payload" }
        @match &payload {
            Some(p) => pre { (serde_json::to_string_pretty(p).unwrap_or_default()) },
            None => p.muted { "Not kept: a finished job's body is deleted." },
        }
        @if let Some(r) = &st.result { h2 { "Result" } pre { (serde_json::to_string_pretty(r).unwrap_or_default()) } }
        h2 { "Errors" }
        @if st.errors.is_empty() { p.muted { "None." } } @else {
            table { thead { tr { th.n { "Attempt" } th { "At" } th { "Error" } } }
                tbody { @for e in &st.errors { tr { td.n { (e.attempt) } td { (when(Some(e.at))) } td { (e.error) } } } } }
        }
        h2 { "Ledger" }
        @match &runs {
            None => p.muted { "PostgreSQL is not configured: no ledger." },
            Some(r) if r.is_empty() => p.muted { "No runs recorded yet." },
            Some(r) => table {
                thead { tr { th.n { "Attempt" } th { "Outcome" } th { "Started" } th { "Finished" } th.n { "ms" } th { "Worker" } th { "Error / summary" } } }
                tbody { @for run in r { tr {
                    td.n { (run.attempt) } td { (state_tag(&run.outcome)) } td { (when(run.started_at)) } td { (when(Some(run.finished_at))) }
                    td.n { (format!("{:.0}", run.duration_ms)) } td { code { (run.worker_id) } }
                    td { (run.error.as_deref().or(run.summary.as_deref()).unwrap_or("")) }
                } } }
            },
        }
    };
    layout(&s, &format!("Job {id}"), Nav::None, param(&q, "msg"), body)
}

pub(super) async fn job_action(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let s = match state.actor(&headers, field(&f, "csrf")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let back = format!("/ui/jobs/{id}");
    let msg = match action.as_str() {
        "retry" => match state.dead_letters().retry(&id).await {
            Ok(Some(r)) if r.runs_as == id => format!("Re-driven on {}.", r.queue),
            Ok(Some(r)) => {
                tracing::info!(job_id = %id, runs_as = %r.runs_as, token = %s.name, "dead job re-driven from the dashboard");
                return see_other(
                    &format!("/ui/jobs/{}", r.runs_as),
                    Some(&format!("Re-driven from the archive as a new job on {}.", r.queue)),
                );
            }
            Ok(None) => "Not a dead job (any more).".to_owned(),
            Err(e) => return internal(e),
        },
        "purge" => match state.dead_letters().purge(&id).await {
            Ok(true) => {
                tracing::info!(job_id = %id, token = %s.name, "dead job purged from the dashboard");
                return see_other("/ui/dead", Some(&format!("Job {id} purged.")));
            }
            Ok(false) => "Not a dead job (any more).".to_owned(),
            Err(e) => return internal(e),
        },
        "cancel" => match state.store().cancel(&id).await {
            Ok(Cancelled::Cancelled { .. }) => "Cancelled: it will not run.".to_owned(),
            Ok(Cancelled::Requested { .. }) => "Running: its handler was asked to stop.".to_owned(),
            Ok(Cancelled::Refused { state, .. }) => format!("Not cancelled: the job is {state}."),
            Ok(Cancelled::Unknown) => "No such job.".to_owned(),
            Err(e) => return internal(e),
        },
        _ => return problem(StatusCode::NOT_FOUND, Some(&s), "Unknown action."),
    };
    tracing::info!(job_id = %id, token = %s.name, "dashboard job {action}: {msg}");
    see_other(&back, Some(&msg))
}

// ---------------------------------------------------------------------------- dead letters

/// The dead-letter filter from query or form fields, with the error naming the field.
fn dead_filter(get: impl Fn(&str) -> Option<String>) -> Result<DeadFilter, String> {
    let now = culm_core::now_ms();
    let bound = |k: &str| {
        get(k)
            .map(|v| dead_letters::parse_time_bound(&v, now).map_err(|e| format!("{k}: {e}")))
            .transpose()
    };
    Ok(DeadFilter {
        queue: get("queue"),
        job: get("job"),
        error: get("error"),
        window: dead_letters::window(bound("since")?, bound("until")?)?,
    })
}

const FILTER_KEYS: [&str; 5] = ["queue", "job", "error", "since", "until"];

fn filter_query(get: impl Fn(&str) -> Option<String>) -> String {
    FILTER_KEYS
        .iter()
        .filter_map(|k| get(k).map(|v| format!("{k}={}", super::encode(&v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn filter_hidden(get: impl Fn(&str) -> Option<String>) -> Markup {
    html! { @for k in FILTER_KEYS { @if let Some(v) = get(k) { input type="hidden" name=(k) value=(v); } } }
}

pub(super) async fn dead(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| param(&q, k).map(str::to_owned);
    let filter = match dead_filter(get) {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some(&s), &e),
    };
    let offset: usize = param(&q, "offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    const PAGE: usize = 50;
    let jobs = match state.dead_letters().list(&filter, offset, PAGE + 1).await {
        Ok(j) => j,
        Err(dead_letters::DeadError::UnknownQueue(q)) => {
            return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No queue named `{q}`."));
        }
        Err(e) => return internal(e),
    };
    let more = jobs.len() > PAGE;
    let fq = filter_query(get);
    let queues: Vec<&String> = state.store().routing().queues.keys().collect();
    let body = html! {
        form.filters method="get" action="/ui/dead" {
            label { "Queue" select name="queue" {
                option value="" { "every queue" }
                @for name in &queues { option value=(name) selected[filter.queue.as_deref() == Some(name.as_str())] { (name) } }
            } }
            label { "Job type" input type="text" name="job" value=(get("job").unwrap_or_default()); }
            label { "Error contains" input type="text" name="error" value=(get("error").unwrap_or_default()); }
            label { "Since (2h or RFC 3339)" input type="text" name="since" size="12" value=(get("since").unwrap_or_default()); }
            label { "Until" input type="text" name="until" size="12" value=(get("until").unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        @if s.admin {
            p {
                a href=(format!("/ui/dead/confirm?action=retry&{fq}")) { "Retry everything that matches…" } " · "
                a href=(format!("/ui/dead/confirm?action=purge&{fq}")) { "Purge everything that matches…" }
            }
        }
        form method="post" action="/ui/dead/act" {
            (csrf(&s))
            table {
                thead { tr {
                    th { @if s.admin { input #select-all type="checkbox" title="select all"; } }
                    th { "Job id" } th { "Queue" } th { "Type" } th.n { "Attempts" } th { "Died" } th { "Last error" }
                } }
                tbody { @for d in jobs.iter().take(PAGE) { tr {
                    td { @if s.admin { input type="checkbox" name="ids" value=(d.id); } }
                    td { a href=(format!("/ui/jobs/{}", d.id)) { code { (d.id) } } }
                    td { (d.queue) } td { (d.job) } td.n { (d.attempts) } td { (when(Some(d.died_at))) }
                    td { (d.last_error.as_deref().unwrap_or("")) }
                } } }
            }
            @if jobs.is_empty() { p.muted { "No dead jobs match." } }
            @if s.admin && !jobs.is_empty() {
                p { "Selected: "
                    button type="submit" name="action" value="retry" { "Retry" } " "
                    button.danger type="submit" name="action" value="purge" { "Purge" }
                }
            }
        }
        p.pager {
            @if offset > 0 { a href=(format!("/ui/dead?{fq}&offset={}", offset.saturating_sub(PAGE))) { "« previous" } " " }
            @if more { a href=(format!("/ui/dead?{fq}&offset={}", offset + PAGE)) { "next »" } }
        }
    };
    layout(&s, "Dead letters", Nav::Dead, param(&q, "msg"), body)
}

/// The confirmation of a bulk action: how many dead jobs match, and the button.
pub(super) async fn dead_confirm(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| param(&q, k).map(str::to_owned);
    let action = param(&q, "action").unwrap_or("retry");
    if !matches!(action, "retry" | "purge") {
        return problem(StatusCode::BAD_REQUEST, Some(&s), "Unknown action.");
    }
    let filter = match dead_filter(get) {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some(&s), &e),
    };
    let count = match state.dead_letters().count(&filter).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    let described = FILTER_KEYS
        .iter()
        .filter_map(|k| get(k).map(|v| format!("{k} = {v}")))
        .collect::<Vec<_>>();
    let body = html! {
        div.card {
            p { "This will " strong { (action) } " " strong #match-count { (count) } " dead job(s)"
                @if described.is_empty() { " (every dead job)." } @else { " matching " (described.join(", ")) "." } }
            @if action == "purge" { p { "Purged jobs are deleted for good." } }
            @if s.admin && count > 0 {
                form method="post" action="/ui/dead/act" {
                    (csrf(&s))
                    input type="hidden" name="all" value="1";
                    (filter_hidden(get))
                    button type="submit" name="action" value=(action) class=(if action == "purge" { "danger" } else { "primary" }) {
                        "Yes, " (action) " " (count) " job(s)"
                    }
                    " " a href=(format!("/ui/dead?{}", filter_query(get))) { "Cancel" }
                }
            }
        }
    };
    layout(&s, "Confirm", Nav::Dead, None, body)
}

/// Retry or purge a selection (`ids`) or, with `all`, everything that matches the filter.
pub(super) async fn dead_act(State(state): State<AdminState>, headers: HeaderMap, Form(f): Fields) -> Response {
    let s = match state.actor(&headers, field(&f, "csrf")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let get = |k: &str| field(&f, k).filter(|v| !v.is_empty()).map(str::to_owned);
    let action = field(&f, "action").unwrap_or("");
    let dl = state.dead_letters();
    let ids: Vec<String> = f.iter().filter(|(k, _)| k == "ids").map(|(_, v)| v.clone()).collect();
    let back = format!("/ui/dead?{}", filter_query(get));
    let result = if field(&f, "all") == Some("1") {
        let filter = match dead_filter(get) {
            Ok(x) => x,
            Err(e) => return problem(StatusCode::BAD_REQUEST, Some(&s), &e),
        };
        match action {
            "retry" => dl.retry_matching(&filter).await.map(|b| (b.matched, b.applied)),
            "purge" => dl.purge_matching(&filter).await.map(|b| (b.matched, b.applied)),
            _ => return problem(StatusCode::BAD_REQUEST, Some(&s), "Unknown action."),
        }
    } else {
        if ids.is_empty() {
            return see_other(&back, Some("Nothing selected."));
        }
        match action {
            "retry" => dl.retry_ids(&ids).await.map(|r| (ids.len(), r.len())),
            "purge" => dl.purge_ids(&ids).await.map(|n| (ids.len(), n)),
            _ => return problem(StatusCode::BAD_REQUEST, Some(&s), "Unknown action."),
        }
    };
    match result {
        Ok((matched, applied)) => {
            tracing::info!(token = %s.name, matched, applied, "dead letters {action} from the dashboard");
            let verb = if action == "retry" { "Retried" } else { "Purged" };
            see_other(&back, Some(&format!("{verb} {applied} of {matched} dead job(s).")))
        }
        Err(e) => internal(e),
    }
}

// ---------------------------------------------------------------------------- schedules

pub(super) async fn schedules(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(sched) = state.inner.scheduler.as_ref() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&s),
            "This process has no schedule catalog loaded.",
        );
    };
    let all = match sched.list().await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let body = html! {
        table {
            thead { tr { th { "Schedule" } th { "Cron" } th { "Time zone" } th { "Job → queue" } th { "Next fires (local)" } th { "Last outcome" } th { "" } } }
            tbody { @for st in &all {
                @let paused = st.paused == Some(true);
                tr class=[paused.then_some("paused")] {
                    td { a href=(format!("/ui/schedules/{}", st.schedule.name)) { (st.schedule.name) }
                        @if !st.schedule.enabled { " " span.tag { "disabled" } }
                        @if paused { " " span.tag.paused { "paused" } } }
                    td { code { (st.schedule.cron) } }
                    td { (st.schedule.timezone) }
                    td { (st.schedule.job) " → " (st.schedule.queue) }
                    td { @for f in &st.next_fire_times { (f.local) br; } }
                    td { @if let Some(o) = &st.last_outcome { (state_tag(&o.outcome)) " " span.muted { (o.at) } } }
                    td { @if s.admin { (schedule_buttons(&s, &st.schedule.name, paused)) } }
                }
            } }
        }
    };
    layout(&s, "Schedules", Nav::Schedules, param(&q, "msg"), body)
}

fn schedule_buttons(s: &super::Session, name: &str, paused: bool) -> Markup {
    html! {
        form.inline method="post" action=(format!("/ui/schedules/{name}/trigger")) { (csrf(s)) button type="submit" { "Trigger" } }
        " "
        form.inline method="post" action=(format!("/ui/schedules/{name}/{}", if paused { "resume" } else { "pause" })) {
            (csrf(s)) button type="submit" { @if paused { "Resume" } @else { "Pause" } }
        }
    }
}

pub(super) async fn schedule(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Params,
) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(sched) = state.inner.scheduler.as_ref() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&s),
            "This process has no schedule catalog loaded.",
        );
    };
    let (st, ticks) = match tokio::try_join!(sched.get(&name), sched.ticks(&name)) {
        Ok(v) => v,
        Err(crate::scheduler::SchedulerError::UnknownSchedule(_)) => {
            return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No schedule named `{name}`."));
        }
        Err(e) => return internal(e),
    };
    let paused = st.paused == Some(true);
    let body = html! {
        div.card {
            p { (st.schedule.description) }
            p { "Cron " code { (st.schedule.cron) } " in " strong { (st.schedule.timezone) } " · job " code { (st.schedule.job) }
                " → queue " a href=(format!("/ui/queues/{}", st.schedule.queue)) { (st.schedule.queue) }
                " · overlap " (format!("{:?}", st.schedule.overlap).to_lowercase()) " · missed " (format!("{:?}", st.schedule.missed).to_lowercase())
                @if paused { " · " span.tag.paused { "paused" } } }
            p { "Next fires: " @for f in &st.next_fire_times { code { (f.local) } " " } }
            @if s.admin { (schedule_buttons(&s, &name, paused)) }
        }
        h2 { "Last ticks" }
        @if ticks.is_empty() { p.muted { "No ticks recorded yet." } } @else {
            table #ticks {
                thead { tr { th { "Tick (local)" } th { "Outcome" } th { "Recorded" } th { "Job" } th.n { "Lag ms" } th { "Error" } } }
                tbody { @for t in &ticks { tr {
                    td { @if let Some(l) = &t.tick_local { (l) } @else { span.muted { "manual trigger" } } }
                    td { (state_tag(&t.outcome)) }
                    td { (t.at) }
                    td { @if let Some(j) = &t.job_id { a href=(format!("/ui/jobs/{j}")) { code { (j) } } } }
                    td.n { @if let Some(l) = t.lag_ms { (l) } }
                    td { (t.error.as_deref().unwrap_or("")) }
                } } }
            }
        }
    };
    layout(&s, &format!("Schedule {name}"), Nav::Schedules, param(&q, "msg"), body)
}

pub(super) async fn schedule_action(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Fields,
) -> Response {
    let s = match state.actor(&headers, field(&f, "csrf")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(sched) = state.inner.scheduler.as_ref() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&s),
            "This process has no schedule catalog loaded.",
        );
    };
    let r = match action.as_str() {
        "trigger" => sched.trigger(&name).await.map(|o| match o.job_id() {
            Some(j) => format!("Triggered: job {j}."),
            None => format!("Trigger: {}.", o.as_str()),
        }),
        "pause" => sched.pause(&name).await.map(|_| "Paused.".to_owned()),
        "resume" => sched.resume(&name).await.map(|_| "Resumed.".to_owned()),
        _ => return problem(StatusCode::NOT_FOUND, Some(&s), "Unknown action."),
    };
    match r {
        Ok(msg) => {
            tracing::info!(schedule = %name, token = %s.name, "schedule {action} from the dashboard");
            see_other(&format!("/ui/schedules/{name}"), Some(&msg))
        }
        Err(crate::scheduler::SchedulerError::UnknownSchedule(_)) => {
            problem(StatusCode::NOT_FOUND, Some(&s), &format!("No schedule named `{name}`."))
        }
        Err(e) => internal(e),
    }
}

// ---------------------------------------------------------------------------- workers

pub(super) async fn workers(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let all = match state.store().workers().await {
        Ok(w) => w,
        Err(e) => return internal(e),
    };
    let body = html! {
        @if all.is_empty() { p.muted { "No live `culm run` replica." } } @else {
            table {
                thead { tr { th { "Replica" } th { "Host" } th { "Version" } th.n { "Busy / capacity" } th { "Queues (busy/capacity)" } th { "Started" } th { "Last heartbeat" } } }
                tbody { @for w in &all { tr {
                    td { code { (w.id) } } td { (w.host) } td { (w.version) } td.n { (w.busy) " / " (w.capacity) }
                    td { @for q in &w.queues { a href=(format!("/ui/queues/{}", q.queue)) { (q.queue) } " " (q.busy) "/" (q.capacity) br; } }
                    td { (when(Some(w.started_at))) } td { (when(Some(w.last_heartbeat))) }
                } } }
            }
        }
    };
    layout(&s, "Workers", Nav::Workers, param(&q, "msg"), body)
}

/// Every integration across the replicas: per endpoint the limit and the rate in force,
/// the last hour's requests, 429s, failures, deferrals and mean latency; the breaker.
pub(super) async fn integrations(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let all = match state.store().integrations(&state.inner.integrations).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let body = html! {
        p.muted { "Across every replica, from the state the integration clients share in Redis. Counts cover the last hour; a rate in force below its limit means a 429 lowered it (it recovers step by step)." }
        @if all.is_empty() { p.muted { "No integration is configured." } }
        @for i in &all {
            section.card id=(format!("integration-{}", i.name)) {
                h2 {
                    (i.name) " "
                    span class=(format!("tag breaker {}", i.breaker.state)) { "breaker " (i.breaker.state.replace('_', "-")) }
                    @if i.breaker.failures > 0 { " " span.muted { (i.breaker.failures) " consecutive failures" } }
                    @if let Some(u) = i.breaker.until { " " span.muted { "until " (when(Some(u))) } }
                }
                @if i.endpoints.is_empty() { p.muted { "No limit of its own and no call in the last hour." } } @else {
                    table {
                        thead { tr {
                            th { "Endpoint" } th { "Limit" } th.n { "Rate in force" }
                            th.n { "Requests (1 h)" } th.n { "429s" } th.n { "Failed" }
                            th.n { "Deferred: limiter" } th.n { "Deferred: breaker" } th.n { "Mean latency" }
                        } }
                        tbody { @for e in &i.endpoints { tr {
                            td { code { (e.endpoint) } }
                            td { @match &e.limit {
                                Some(l) => { (l.rate) " / " (l.per) @if l.endpoint == "*" { " " span.muted { "(integration-wide)" } } }
                                None => { span.muted { "none" } }
                            } }
                            td.n { @match (e.effective_rate, &e.limit) {
                                (Some(r), Some(l)) if r < l.rate => { span.tag.paused { (r) " / " (l.per) } }
                                (Some(r), Some(l)) => { (r) " / " (l.per) }
                                _ => { span.muted { "–" } }
                            } }
                            td.n { (e.requests) }
                            td.n { (e.rate_limited) }
                            td.n { (e.failed) }
                            td.n { (e.deferred_limiter) }
                            td.n { (e.deferred_breaker) }
                            td.n { @match e.mean_latency_ms { Some(ms) => { (format!("{ms:.1} ms")) } None => { span.muted { "–" } } } }
                        } } }
                    }
                }
            }
        }
    };
    layout(&s, "Integrations", Nav::Integrations, param(&q, "msg"), body)
}

/// The newest tracked batches across queues: counts and progress.
pub(super) async fn batches(State(state): State<AdminState>, headers: HeaderMap, Query(q): Params) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let all = match state.store().list_batches(100).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let body = html! {
        @if all.is_empty() { p.muted { "No batch yet (POST /v1/batches, or ctx.batch in a handler)." } } @else {
            table {
                thead { tr { th { "Batch" } th { "Queue" } th { "State" } th.n { "Done / total" } th.n { "Pending" } th.n { "Dead" } th.n { "Cancelled" } th.n { "Expired" } th { "Created" } th { "Description" } } }
                tbody { @for b in &all { tr {
                    td { a href=(format!("/ui/batches/{}", b.id)) { code { (b.id) } } }
                    td { (b.queue) } td { (state_tag(&b.state)) }
                    td.n { (b.total - b.pending) " / " (b.total) } td.n { (b.pending) } td.n { (b.dead) } td.n { (b.cancelled) } td.n { (b.expired) }
                    td { (when(Some(b.created_at))) } td { (b.description.as_deref().unwrap_or("")) }
                } } }
            }
        }
    };
    layout(&s, "Batches", Nav::Batches, param(&q, "msg"), body)
}

/// One tracked batch: counts, progress, callbacks and its members, a page at a time.
pub(super) async fn batch(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    let s = match state.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let b = match state.store().batch(&id).await {
        Ok(Some(b)) => b,
        Ok(None) => return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No batch `{id}`.")),
        Err(e) => return internal(e),
    };
    let cursor = param(&q, "cursor").and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
    let page = match state.store().batch_members(&id, cursor, 50).await {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let percent = ((b.total - b.pending) * 100).checked_div(b.total).unwrap_or(0);
    let body = html! {
        div.card {
            table {
                tr { th { "State" } td { (state_tag(&b.state)) } }
                tr { th { "Queue" } td { a href=(format!("/ui/queues/{}", b.queue)) { (b.queue) } } }
                tr { th { "Progress" } td { progress max=(b.total.max(1)) value=(b.total - b.pending) {} " " (percent) "% (" (b.total - b.pending) " of " (b.total) ")" } }
                tr { th { "Succeeded" } td { (b.succeeded) } }
                tr { th { "Dead" } td { (b.dead) } }
                tr { th { "Cancelled" } td { (b.cancelled) } }
                tr { th { "Expired" } td { (b.expired) } }
                tr { th { "Created" } td { (when(Some(b.created_at))) } }
                @if b.completed_at.is_some() { tr { th { "Completed" } td { (when(b.completed_at)) } } }
                @if let Some(d) = &b.description { tr { th { "Description" } td { (d) } } }
                @for (name, cb) in [("on_complete", &b.callbacks.on_complete), ("on_success", &b.callbacks.on_success)] {
                    @if let Some(cb) = cb { tr { th { (name) } td {
                        (cb.job) " " (state_tag(&cb.state))
                        @if let Some(j) = &cb.id { " " a href=(format!("/ui/jobs/{j}")) { code { (j) } } }
                    } } }
                }
            }
        }
        h2 { "Members" }
        @match &page {
            Some(p) if !p.jobs.is_empty() => {
                table {
                    thead { tr { th { "Job" } th { "State" } th { "Result" } } }
                    tbody { @for m in &p.jobs { tr {
                        td { a href=(format!("/ui/jobs/{}", m.id)) { code { (m.id) } } }
                        td { (state_tag(&m.state)) }
                        td { @if let Some(r) = &m.result { code { (r.to_string()) } } }
                    } } }
                }
                @if let Some(next) = &p.next_cursor { p { a href=(format!("/ui/batches/{id}?cursor={next}")) { "Next page" } } }
            }
            _ => { p.muted { "No members on this page." } }
        }
    };
    layout(&s, &format!("Batch {id}"), Nav::Batches, param(&q, "msg"), body)
}
