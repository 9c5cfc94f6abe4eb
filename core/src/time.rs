//! culm stores times as milliseconds since the Unix epoch ([`crate::now_ms`]) and shows
//! them as RFC 3339; these are the serde helpers that turn one into the other.
use serde::Serializer;

/// `ms` as RFC 3339 in UTC with milliseconds (`2026-11-23T17:00:00.000Z`); `None` when it
/// is out of chrono's range.
pub fn to_rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// `#[serde(serialize_with)]` for a stored time shown as RFC 3339 (`null` out of range).
pub fn serialize_rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match to_rfc3339(*ms) {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}

/// [`serialize_rfc3339`] for an optional time.
pub fn serialize_rfc3339_opt<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms.and_then(to_rfc3339) {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}
