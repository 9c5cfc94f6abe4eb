//! Dashboard sessions: `POST /ui/login` with a read or admin token sets a signed,
//! HttpOnly, `SameSite=Strict` cookie that names the token (never holds it), whether it
//! may act, when it expires and the session's CSRF token. Nothing is stored server-side;
//! the HMAC key comes from `auth::session_key`.
use super::super::auth::{Token, identify, session_key};
use crate::config::Scope;
use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The cookie's name.
pub(super) const COOKIE: &str = "culm_session";

/// A logged-in user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    /// The token's configured name (shown, and logged with every action).
    pub name: String,
    /// An admin token: may act, not only look.
    pub admin: bool,
    /// Expiry, ms.
    pub exp: i64,
    /// Every form that changes something carries this.
    pub csrf: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(key: &[u8; 32], data: &[u8]) -> Hmac<Sha256> {
    // An HMAC key of any length is accepted; this cannot fail.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(data);
    m
}

/// Signs and parses session cookies.
#[derive(Clone)]
pub(crate) struct Sessions {
    key: [u8; 32],
    ttl_ms: i64,
}

impl Sessions {
    pub(crate) fn new(tokens: &[Token], ttl: std::time::Duration) -> Self {
        Sessions {
            key: session_key(tokens),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
        }
    }

    /// A session for the token whose secret is `given`, if it may read.
    pub(crate) fn login(&self, tokens: &[Token], given: &str, now: i64) -> Option<Session> {
        let t = identify(tokens, given.trim())?;
        if !t.grants(Scope::Read) {
            return None;
        }
        let csrf: [u8; 16] = rand::random();
        Some(Session {
            name: t.name.clone(),
            admin: t.grants(Scope::Admin),
            exp: now + self.ttl_ms,
            csrf: hex(&csrf),
        })
    }

    /// The `Set-Cookie` value for `s`.
    pub(crate) fn cookie(&self, s: &Session) -> String {
        let body = serde_json::to_vec(s).unwrap_or_default();
        let sig = mac(&self.key, &body).finalize().into_bytes();
        format!(
            "{COOKIE}={}.{}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
            hex(&body),
            hex(&sig),
            self.ttl_ms / 1000
        )
    }

    /// The `Set-Cookie` value that ends a session.
    pub(crate) fn clear() -> String {
        format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// The request's session, if its cookie is signed by us and not expired.
    pub(crate) fn read(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        let raw = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .next()?;
        let (body, sig) = raw.split_once('.')?;
        let (body, sig) = (unhex(body)?, unhex(sig)?);
        mac(&self.key, &body).verify_slice(&sig).ok()?;
        let s: Session = serde_json::from_slice(&body).ok()?;
        (s.exp > now).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sessions() -> (Sessions, Vec<Token>) {
        let tokens = vec![
            Token::new("ops", "admin-secret", vec![Scope::Admin]),
            Token::new("support", "read-secret", vec![Scope::Read]),
            Token::new("django", "enqueue-secret", vec![Scope::Enqueue]),
        ];
        (Sessions::new(&tokens, std::time::Duration::from_secs(60)), tokens)
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = cookie.split(';').next().unwrap_or_default().to_owned();
        h.insert(header::COOKIE, HeaderValue::from_str(&value).expect("header"));
        h
    }

    #[test]
    fn a_signed_session_round_trips_and_a_forged_or_expired_one_does_not() {
        let (s, tokens) = sessions();
        let admin = s.login(&tokens, "admin-secret", 0).expect("admin logs in");
        assert!(admin.admin && admin.name == "ops");
        let reader = s.login(&tokens, "read-secret", 0).expect("reader logs in");
        assert!(!reader.admin);
        assert!(
            s.login(&tokens, "enqueue-secret", 0).is_none(),
            "an enqueue token cannot read"
        );
        assert!(s.login(&tokens, "nope", 0).is_none());
        let cookie = s.cookie(&reader);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(
            !cookie.contains("read-secret"),
            "the token itself is never in the cookie"
        );
        assert_eq!(s.read(&headers(&cookie), 1), Some(reader.clone()));
        assert_eq!(s.read(&headers(&cookie), 60_001), None, "expired");
        // Flip the session to admin without the key: refused.
        let forged = Session { admin: true, ..reader };
        let other = Sessions {
            key: [7; 32],
            ttl_ms: 60_000,
        };
        assert_eq!(s.read(&headers(&other.cookie(&forged)), 1), None);
    }
}
