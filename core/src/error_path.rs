//! Where a deserialization error points, for messages that name the field at fault.
use serde_path_to_error::Path;

/// The dotted path of the field a [`serde_path_to_error`] failure is about, or `None` when
/// the error concerns the whole document.
///
/// serde reports a missing field at the path of the struct that should hold it; this
/// appends the field's own name, so the payload, request body or config key named in the
/// error is the one to fix (`payload.sku`, not `payload`). An unknown field is already in
/// the path. `message` is the error's text, where serde names the missing field.
pub fn field_path(path: &Path, message: &str) -> Option<String> {
    let named = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path.to_string().as_str(), named) {
        (".", None) => None,
        (".", Some(field)) => Some(field.to_owned()),
        (parent, Some(field)) => Some(format!("{parent}.{field}")),
        (p, None) => Some(p.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized, to provoke serde errors")]
    struct Line {
        sku: String,
        quantity: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only deserialized, to provoke serde errors")]
    struct Order {
        id: String,
        lines: Vec<Line>,
    }

    fn path_of(v: serde_json::Value) -> Option<String> {
        let e = serde_path_to_error::deserialize::<_, Order>(v).expect_err("invalid on purpose");
        field_path(e.path(), &e.inner().to_string())
    }

    #[test]
    fn names_the_field_itself() {
        use serde_json::json;
        assert_eq!(path_of(json!({"lines": []})).as_deref(), Some("id"));
        assert_eq!(path_of(json!({"id": "a", "lines": [], "x": 1})).as_deref(), Some("x"));
        assert_eq!(
            path_of(json!({"id": "a", "lines": [{"sku": "s"}]})).as_deref(),
            Some("lines[0].quantity")
        );
        assert_eq!(
            path_of(json!({"id": "a", "lines": [{"sku": "s", "quantity": "2"}]})).as_deref(),
            Some("lines[0].quantity")
        );
        assert_eq!(
            path_of(json!({"id": "a", "lines": [{"sku": "s", "quantity": 2, "y": 0}]})).as_deref(),
            Some("lines[0].y")
        );
        assert_eq!(path_of(json!("an order")), None);
    }
}
