//! The dashboard under `/ui`: server-rendered pages (maud) over the same store, scheduler,
//! dead-letter and history calls as the `/v1` API, with embedded assets and a little
//! progressive JavaScript (live refresh). Reading works without JavaScript.
//!
//! Security: `POST /ui/login` takes a read or admin token in a form field and sets a
//! signed session cookie (`session`); a read session sees, an admin session acts. Every
//! form that changes something carries the session's CSRF token, checked before acting;
//! the cookie is `SameSite=Strict` as well. Tokens never appear in a URL or a log line.
mod chart;
mod pages;
pub(crate) mod session;

use super::AdminState;
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use maud::{DOCTYPE, Markup, html};
use session::Session;

pub(crate) use session::Sessions;

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

/// The dashboard's routes (not in the OpenAPI document: they answer HTML).
pub(super) fn router() -> Router<AdminState> {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/queues/{name}", get(pages::queue))
        .route("/ui/queues/{name}/{action}", post(pages::queue_action))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/{action}", post(pages::job_action))
        .route("/ui/dead", get(pages::dead))
        .route("/ui/dead/confirm", get(pages::dead_confirm))
        .route("/ui/dead/act", post(pages::dead_act))
        .route("/ui/schedules", get(pages::schedules))
        .route("/ui/schedules/{name}", get(pages::schedule))
        .route("/ui/schedules/{name}/{action}", post(pages::schedule_action))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/integrations", get(pages::integrations))
        .route("/ui/batches", get(pages::batches))
        .route("/ui/batches/{id}", get(pages::batch))
        .route(
            "/ui/assets/app.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
}

fn asset(body: &'static str, ty: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Where a page sits in the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Dead,
    Schedules,
    Workers,
    Integrations,
    Batches,
    None,
}

/// The page frame: navigation, who is logged in, the flash message and `body`.
fn layout(s: &Session, title: &str, nav: Nav, msg: Option<&str>, body: Markup) -> Response {
    let link = |href: &str, label: &str, n: Nav| {
        html! { a href=(href) class=[(nav == n).then_some("on")] { (label) } }
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · culm" }
                link rel="stylesheet" href="/ui/assets/app.css";
            }
            body {
                header {
                    strong { "culm" }
                    (link("/ui", "Overview", Nav::Overview))
                    (link("/ui/dead", "Dead letters", Nav::Dead))
                    (link("/ui/schedules", "Schedules", Nav::Schedules))
                    (link("/ui/workers", "Workers", Nav::Workers))
                    (link("/ui/integrations", "Integrations", Nav::Integrations))
                    (link("/ui/batches", "Batches", Nav::Batches))
                    span.who {
                        label { input #autorefresh type="checkbox"; " auto-refresh" }
                        " · " (s.name) @if s.admin { " (admin)" } @else { " (read only)" } " "
                        form.inline method="post" action="/ui/logout" {
                            (csrf(s)) button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(m) = msg { div.msg { (m) } }
                    (body)
                }
                script src="/ui/assets/app.js" {}
            }
        }
    };
    html_response(StatusCode::OK, page)
}

fn html_response(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.into_string(),
    )
        .into_response()
}

/// The hidden CSRF field every mutating form carries.
fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A 303 to `to`, with an optional message shown by the next page.
fn see_other(to: &str, msg: Option<&str>) -> Response {
    let location = match msg {
        Some(m) => format!("{to}{}msg={}", if to.contains('?') { '&' } else { '?' }, encode(m)),
        None => to.to_owned(),
    };
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An error page.
fn problem(status: StatusCode, s: Option<&Session>, message: &str) -> Response {
    let body = html! { div.msg.err { (message) } p { a href="/ui" { "Back to the overview" } } };
    match s {
        Some(s) => {
            let mut r = layout(s, "Problem", Nav::None, None, body);
            *r.status_mut() = status;
            r
        }
        None => html_response(status, html! { (DOCTYPE) html { body { (body) } } }),
    }
}

impl AdminState {
    /// The request's session, or a redirect to the login page.
    #[allow(clippy::result_large_err, reason = "the error is the response to send")]
    fn viewer(&self, headers: &HeaderMap) -> Result<Session, Response> {
        self.inner
            .sessions
            .read(headers, culm_core::now_ms())
            .ok_or_else(|| see_other("/ui/login", None))
    }

    /// The session of a request that changes something: an admin session whose form
    /// carries its CSRF token.
    #[allow(clippy::result_large_err, reason = "the error is the response to send")]
    fn actor(&self, headers: &HeaderMap, form_csrf: Option<&str>) -> Result<Session, Response> {
        let s = self.viewer(headers)?;
        let ok = form_csrf.is_some_and(|c| bool::from(subtle::ConstantTimeEq::ct_eq(c.as_bytes(), s.csrf.as_bytes())));
        if !ok {
            return Err(problem(
                StatusCode::FORBIDDEN,
                Some(&s),
                "This form is stale or did not come from this dashboard (CSRF check failed). Reload the page and try again.",
            ));
        }
        if !s.admin {
            return Err(problem(
                StatusCode::FORBIDDEN,
                Some(&s),
                "Your token can read but not act: log in with an admin token.",
            ));
        }
        Ok(s)
    }
}
