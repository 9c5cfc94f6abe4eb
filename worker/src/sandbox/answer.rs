//! How the sandbox decides an answer once a request is neither injected to fail nor
//! unknown: Bamboo's rate-limited endpoints, the replay of a repeated idempotency key, and
//! Bamboo's orders.
use super::{
    Inner, REPLAY_CAPACITY, bodies,
    limits::{Decision, SlidingWindow},
};
use axum::{
    Json,
    http::{HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Bamboo's endpoints with their own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Limited {
    PlaceOrder,
    GetOrder,
    Catalog,
}

impl Limited {
    fn window(self) -> SlidingWindow {
        match self {
            Limited::PlaceOrder => SlidingWindow::new(2, 1_000),
            Limited::GetOrder => SlidingWindow::new(120, 60_000),
            Limited::Catalog => SlidingWindow::new(2, 3_600_000),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Limited::PlaceOrder => "2 requests per second on POST /bamboo/orders",
            Limited::GetOrder => "120 requests per minute on GET /bamboo/orders/{order_id}",
            Limited::Catalog => "2 requests per hour on GET /bamboo/catalog",
        }
    }
}

pub(super) struct Order {
    sku: String,
    quantity: u64,
    polls: u32,
}

/// An answer decided under the lock, sent after the latency.
pub(super) struct Answer {
    pub(super) status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub(super) fn new(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub(super) fn error(status: u16, message: impl Into<String>) -> Self {
        Self::new(status, json!({"ok": false, "error": message.into()}))
    }

    pub(super) fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    pub(super) fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(HeaderName::from_static(name), v);
            }
        }
        response
    }
}

/// Salesforce's sObject Collections upsert of contacts by our user id: many records in
/// one request, one result per record (`salesforce.sync_contact`'s batch handler).
const SALESFORCE_CONTACT_UPSERT: &str = "/composite/sobjects/Contact/user_id";

pub(super) struct Request<'a> {
    pub(super) integration: &'a str,
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) rest: &'a str,
    pub(super) body: Option<&'a Value>,
    pub(super) idempotency_key: Option<&'a str>,
    pub(super) now_ms: i64,
}

impl Inner {
    /// The answer to a request that is neither injected to fail nor unknown.
    pub(super) fn answer(&mut self, r: &Request<'_>) -> Answer {
        let limited = match (r.integration, r.method, r.rest) {
            ("bamboo", &Method::POST, "/orders") => Some(Limited::PlaceOrder),
            ("bamboo", &Method::GET, "/catalog") => Some(Limited::Catalog),
            ("bamboo", &Method::GET, rest) if rest.starts_with("/orders/") && rest.len() > "/orders/".len() => {
                Some(Limited::GetOrder)
            }
            _ => None,
        };
        let mut remaining = None;
        if let Some(l) = limited {
            let window = self.limits.entry(l).or_insert_with(|| l.window());
            let limit = window.limit();
            match window.check(r.now_ms) {
                Decision::Allow { remaining: left } => remaining = Some((limit, left)),
                Decision::Reject { retry_after_secs } => {
                    return Answer::new(
                        429,
                        json!({
                            "ok": false,
                            "error": format!("rate limit exceeded: {}", l.describe()),
                            "retry_after": retry_after_secs,
                        }),
                    )
                    .header("retry-after", retry_after_secs)
                    .header("x-ratelimit-limit", limit)
                    .header("x-ratelimit-remaining", 0);
                }
            }
        }
        // A repeated idempotency key gets the first answer again, as payment APIs do.
        let replay_key = r
            .idempotency_key
            .map(|k| format!("{} {} {} {k}", r.integration, r.method, r.path));
        if let Some((status, body)) = replay_key.as_ref().and_then(|k| self.replays.get(k)) {
            return Answer::new(*status, body.clone()).header("idempotent-replayed", "true");
        }
        let id = ulid::Ulid::new().to_string();
        let mut answer = match limited {
            Some(Limited::PlaceOrder) => self.place_order(&id, r.body),
            Some(Limited::GetOrder) => self.poll_order(&r.rest["/orders/".len()..]),
            Some(Limited::Catalog) => Answer::new(200, bodies::bamboo_catalog()),
            None if r.integration == "salesforce"
                && *r.method == Method::PATCH
                && r.rest == SALESFORCE_CONTACT_UPSERT =>
            {
                match bodies::salesforce_upsert(r.body) {
                    Some(results) => Answer::new(200, results),
                    None => Answer::error(400, "body must be a JSON object with a `records` array"),
                }
            }
            None => Answer::new(
                200,
                bodies::generic(r.integration, r.method.as_str(), r.path, &id, r.body),
            ),
        };
        if let Some((limit, left)) = remaining {
            answer = answer
                .header("x-ratelimit-limit", limit)
                .header("x-ratelimit-remaining", left);
        }
        if let Some(k) = replay_key.filter(|_| (200..300).contains(&answer.status)) {
            if self.replays.len() >= REPLAY_CAPACITY {
                self.replays.clear();
            }
            self.replays.insert(k, (answer.status, answer.body.clone()));
        }
        answer
    }

    fn place_order(&mut self, id: &str, body: Option<&Value>) -> Answer {
        let Some(body) = body.filter(|b| b.is_object()) else {
            return Answer::error(400, "body must be a JSON object with order_id, sku and quantity");
        };
        let order_id = match body.get("order_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Answer::error(400, "field `order_id` is required (a non-empty string)"),
        };
        let Some(sku) = body.get("sku").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
            return Answer::error(400, "field `sku` is required (a non-empty string)");
        };
        let Some(quantity) = body
            .get("quantity")
            .and_then(Value::as_u64)
            .filter(|q| (1..=100).contains(q))
        else {
            return Answer::error(400, "field `quantity` is required (an integer from 1 to 100)");
        };
        // Placing the same order id again is idempotent: the order is not duplicated.
        self.orders.entry(order_id.clone()).or_insert(Order {
            sku: sku.to_owned(),
            quantity,
            polls: 0,
        });
        Answer::new(202, bodies::bamboo_order_placed(id, &Value::String(order_id)))
    }

    fn poll_order(&mut self, order_id: &str) -> Answer {
        // An order this sandbox has not seen (e.g. placed before a restart) is treated as
        // placed just now, so a restarted sandbox does not strand pollers.
        let order = self.orders.entry(order_id.to_owned()).or_insert(Order {
            sku: "AMZ-US-25".to_owned(),
            quantity: 1,
            polls: 0,
        });
        order.polls += 1;
        Answer::new(
            200,
            bodies::bamboo_order(order_id, &order.sku, order.quantity, order.polls >= 2),
        )
    }
}
