//! Bearer tokens: loaded from the environment at start-up, compared in constant time.
//! Only SHA-256 digests of secrets are kept in memory past start-up.
use super::ApiError;
use crate::config::{AdminConfig, Scope};
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One accepted token.
#[derive(Clone)]
pub struct Token {
    /// Name (from config), for logs.
    pub name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token with `secret` and `scopes`.
    pub fn new(name: impl Into<String>, secret: &str, scopes: Vec<Scope>) -> Self {
        Token {
            name: name.into(),
            digest: Sha256::digest(secret.as_bytes()).into(),
            scopes,
        }
    }

    pub(super) fn grants(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || (scope == Scope::Read && self.scopes.contains(&Scope::Admin))
    }
}

/// The token whose secret is `given`, comparing every token in constant time.
pub(super) fn identify<'a>(tokens: &'a [Token], given: &str) -> Option<&'a Token> {
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut matched = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            matched = Some(t);
        }
    }
    matched
}

/// The dashboard's session-signing key, derived from the configured tokens' digests: every
/// replica with the same tokens accepts the same sessions, and changing the tokens ends
/// every session.
pub(super) fn session_key(tokens: &[Token]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"culm dashboard session v1");
    for t in tokens {
        h.update(t.digest);
    }
    h.finalize().into()
}

/// A configured token whose secret is missing.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The environment variable is unset or empty.
    #[error("admin.tokens[{index}] (`{name}`): environment variable {env} is not set; export it or remove the token")]
    MissingSecret {
        /// Position in `[[admin.tokens]]`.
        index: usize,
        name: String,
        /// The variable that should hold the secret.
        env: String,
    },
}

/// Reads every configured token's secret from the environment, plus `CULM_ADMIN_TOKEN`
/// (every scope) when set.
pub fn tokens_from_config(admin: &AdminConfig) -> Result<Vec<Token>, TokenError> {
    let mut out = Vec::new();
    for (index, t) in admin.tokens.iter().enumerate() {
        let secret = std::env::var(&t.env).unwrap_or_default();
        if secret.is_empty() {
            return Err(TokenError::MissingSecret {
                index,
                name: t.name.clone(),
                env: t.env.clone(),
            });
        }
        out.push(Token::new(&t.name, &secret, t.scopes.clone()));
    }
    if let Ok(secret) = std::env::var("CULM_ADMIN_TOKEN")
        && !secret.is_empty()
    {
        out.push(Token::new(
            "CULM_ADMIN_TOKEN",
            &secret,
            vec![Scope::Enqueue, Scope::Read, Scope::Admin],
        ));
    }
    Ok(out)
}

/// Checks the `Authorization: Bearer` header: 401 without a known token, 403 when the
/// token lacks `scope`. Every token is compared, so timing says nothing about which matched.
pub(super) fn authorize(tokens: &[Token], headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token (Authorization: Bearer <token>)",
        )
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(unauthorized)?;
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut matched: Option<&Token> = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&digest)) {
            matched = Some(t);
        }
    }
    let token = matched.ok_or_else(unauthorized)?;
    if token.grants(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token `{}` lacks the `{}` scope", token.name, scope_name(scope)),
        ))
    }
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Enqueue => "enqueue",
        Scope::Read => "read",
        Scope::Admin => "admin",
    }
}
