//! Response bodies: the generic acknowledgement every integration answers with, plus
//! the few fields real clients look for (Galileo's transaction id, a transfer id, a tax
//! amount), and Bamboo's order and catalog documents.

use serde_json::{Map, Value, json};

/// The generic body of the contract, with integration-specific fields merged in.
pub fn generic(integration: &str, method: &str, path: &str, id: &str, request: Option<&Value>) -> Value {
    let mut body = Map::new();
    body.insert("ok".into(), Value::Bool(true));
    body.insert("id".into(), Value::String(id.to_owned()));
    body.insert("integration".into(), Value::String(integration.to_owned()));
    body.insert("method".into(), Value::String(method.to_owned()));
    body.insert("path".into(), Value::String(path.to_owned()));
    if let Value::Object(extra) = extras(integration, id, request) {
        body.extend(extra);
    }
    Value::Object(body)
}

fn amount(request: Option<&Value>) -> f64 {
    request
        .and_then(|r| r.get("amount"))
        .and_then(|a| a.as_f64().or_else(|| a.as_str().and_then(|s| s.parse().ok())))
        .unwrap_or(0.0)
}

fn extras(integration: &str, id: &str, request: Option<&Value>) -> Value {
    match integration {
        "galileo" => json!({"status_code": 0, "status": "Success", "transaction_id": id}),
        "crossborder" => json!({"transfer_id": id, "status": "submitted", "fx_rate": 17.05}),
        "ding" => json!({"transfer_ref": id, "status": "Complete"}),
        "salesforce" => json!({"success": true, "errors": []}),
        "appsflyer" => json!({"status": "ok"}),
        "unit21" => json!({"event_id": id, "status": "received"}),
        "veriff" => json!({"status": "success", "verification": {"id": id, "status": "approved"}}),
        "persona" => json!({"inquiry_id": id, "status": "approved"}),
        "kard" => json!({"reward_id": id, "status": "accepted"}),
        "avalara" => {
            // 8.25 %: a plausible combined US sales-tax rate, rounded to cents.
            let tax = (amount(request) * 0.0825 * 100.0).round() / 100.0;
            json!({"transaction_code": id, "total_tax": tax, "status": "Committed"})
        }
        "mailer" => json!({"message_id": id, "status": "queued"}),
        "sftp" => json!({"file_id": id, "status": "transferred"}),
        _ => json!({}),
    }
}

/// Salesforce's answer to an sObject Collections upsert: one result per record, in
/// order, as Salesforce does with `allOrNone: false`. A record whose `email` is not an
/// address fails on its own (`INVALID_EMAIL_ADDRESS`). `None` when the body has no
/// `records` array.
pub fn salesforce_upsert(request: Option<&Value>) -> Option<Value> {
    let records = request?.get("records")?.as_array()?;
    let results = records
        .iter()
        .map(|r| {
            let email = r.get("email").and_then(Value::as_str).unwrap_or_default();
            if email.contains('@') {
                json!({"id": ulid::Ulid::new().to_string(), "success": true, "created": true, "errors": []})
            } else {
                json!({
                    "id": null,
                    "success": false,
                    "errors": [{"statusCode": "INVALID_EMAIL_ADDRESS", "message": format!("invalid email: {email}"), "fields": ["Email"]}],
                })
            }
        })
        .collect();
    Some(Value::Array(results))
}

/// `202` answer to a placed Bamboo order.
pub fn bamboo_order_placed(id: &str, order_id: &Value) -> Value {
    json!({"ok": true, "id": id, "integration": "bamboo", "order_id": order_id, "status": "pending"})
}

/// A Bamboo order as polled: `fulfilled` from the second poll on, with one card per unit.
pub fn bamboo_order(order_id: &str, sku: &str, quantity: u64, fulfilled: bool) -> Value {
    let cards: Vec<Value> = if fulfilled {
        (0..quantity)
            .map(|i| {
                let code = ulid::Ulid::new().to_string();
                json!({
                    "id": format!("{order_id}-{}", i + 1),
                    "sku": sku,
                    "card_code": code,
                    "pin": &code[code.len() - 4..],
                    "expiration_date": "2028-12-31",
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "ok": true,
        "integration": "bamboo",
        "order_id": order_id,
        "status": if fulfilled { "fulfilled" } else { "pending" },
        "cards": cards,
    })
}

/// Bamboo's product catalog (a handful of gift cards).
pub fn bamboo_catalog() -> Value {
    let product = |sku: &str, brand: &str, currency: &str, min: u32, max: u32| {
        json!({
            "sku": sku,
            "name": format!("{brand} gift card"),
            "brand": brand,
            "country": "US",
            "currency": currency,
            "min_price": min,
            "max_price": max,
        })
    };
    json!({
        "ok": true,
        "integration": "bamboo",
        "products": [
            product("AMZ-US-25", "Amazon", "USD", 25, 25),
            product("AMZ-US-VAR", "Amazon", "USD", 5, 500),
            product("STB-US-10", "Starbucks", "USD", 10, 10),
            product("TGT-US-VAR", "Target", "USD", 10, 200),
            product("UBR-US-25", "Uber", "USD", 25, 25),
        ],
    })
}
