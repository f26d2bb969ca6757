//! JWT authentication of clients (PostgreSQL protocol and HTTP API).
//!
//! Tokens are EdDSA (Ed25519) JWTs verified against public keys in PEM (a file, or a
//! directory of files for key rotation: a token is good if any key verifies it); claims
//! are `{"scope": "safekeeperdata"}` (every timeline) or `{"scope": "tenant", "tenant_id":
//! HEX}` (that tenant's timelines only). `exp` is honoured when present (60 s of leeway
//! for clock skew) and not required.
//!
//! Owns: [`JwtAuth`] (the keys, loaded by [`keys`]), [`Claims`] and what a scope allows.
//! Must never: accept a token signed with another algorithm (`none`, HS256 — also not
//! with the public key as the HMAC secret —, RS256, ...), accept a scope it does not
//! know, or echo a token (or any part of it) back.

mod keys;
#[cfg(test)]
mod tests;

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use utils::TenantId;

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (Neon's `safekeeperdata`).
    SafekeeperData,
    /// Only this tenant's timelines.
    Tenant(TenantId),
}

/// The verified claims of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// What the token grants.
    pub scope: Scope,
}

impl Claims {
    /// True if the token may act on `tenant`'s timelines.
    pub fn allows_tenant(&self, tenant: &TenantId) -> bool {
        match &self.scope {
            Scope::SafekeeperData => true,
            Scope::Tenant(t) => t == tenant,
        }
    }

    /// True if the token may act on the whole safekeeper (routes not about one tenant).
    pub fn allows_all(&self) -> bool {
        self.scope == Scope::SafekeeperData
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was given.
    #[error("authentication required: no token given")]
    Missing,
    /// The token is malformed, badly signed, expired, or of a refused algorithm.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but does not grant this.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The keys could not be read.
    #[error("could not load public keys from \"{path}\": {reason}")]
    Keys {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The public keys tokens are verified against.
pub struct JwtAuth {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The claims as they are on the wire. `exp` is typed so that a token whose `exp` is not
/// a number is refused here, whatever the JWT library makes of it.
#[derive(Deserialize)]
struct WireClaims {
    scope: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // read by the library's validation; typed here to refuse strings
    exp: Option<u64>,
}

impl JwtAuth {
    /// Loads the keys from a PEM file or a directory of PEM files (every regular file in
    /// it whose name does not start with a dot must be an Ed25519 public key).
    pub fn load(path: &Path) -> Result<JwtAuth, AuthError> {
        Ok(JwtAuth::from_keys(keys::load(path)?))
    }

    /// Verification with these keys (at least one).
    fn from_keys(keys: Vec<DecodingKey>) -> JwtAuth {
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Only EdDSA: `Validation::new` lists exactly one algorithm.
        validation.algorithms = vec![Algorithm::EdDSA];
        // `exp` is checked when present, not required (Neon's tokens have none).
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        // We name no audience; a token carrying one is not refused for it.
        validation.validate_aud = false;
        JwtAuth { keys, validation }
    }

    /// How many keys were loaded.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Look at the header first so the refusal of another algorithm says so (the
        // validation below refuses it as well). `none` is not even an algorithm to the
        // library: the header fails to parse.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {}", describe(e.kind()))))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted: tokens must be signed with EdDSA (Ed25519)",
                header.alg
            )));
        }
        let mut last = None;
        for key in &self.keys {
            match jsonwebtoken::decode::<WireClaims>(token, key, &self.validation) {
                Ok(data) => return claims(data.claims),
                Err(e) => {
                    // The signature is checked before the claims: an expired token or bad
                    // claims mean this key did verify it; no other key will say more.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(AuthError::Invalid(describe(e.kind())));
                    }
                    last = Some(e);
                }
            }
        }
        Err(AuthError::Invalid(
            last.map(|e| describe(e.kind()))
                .unwrap_or_else(|| "no key to verify it with".into()),
        ))
    }
}

/// The scope of verified wire claims.
fn claims(w: WireClaims) -> Result<Claims, AuthError> {
    let scope = match (w.scope.as_str(), w.tenant_id) {
        ("safekeeperdata", _) => Scope::SafekeeperData,
        ("tenant", Some(t)) => Scope::Tenant(t.parse().map_err(|_| {
            AuthError::Invalid("tenant_id is not 32 hexadecimal characters".into())
        })?),
        ("tenant", None) => {
            return Err(AuthError::Invalid(
                "scope \"tenant\" needs a tenant_id claim".into(),
            ));
        }
        _ => {
            return Err(AuthError::Invalid(
                "unknown scope: the safekeeper accepts \"safekeeperdata\" and \"tenant\"".into(),
            ));
        }
    };
    Ok(Claims { scope })
}

/// A refusal in words that carry nothing of the token itself.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "the signature does not match any configured key".into(),
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAlgorithm => {
            "the algorithm is not accepted: tokens must be signed with EdDSA (Ed25519)".into()
        }
        ErrorKind::InvalidToken => "not a JWT (expected three base64url parts)".into(),
        ErrorKind::Base64(_) => "a part of the token is not base64url".into(),
        ErrorKind::Json(_) => "the header or claims are not the expected JSON".into(),
        ErrorKind::Utf8(_) => "the header or claims are not UTF-8".into(),
        _ => "the token cannot be verified".into(),
    }
}
