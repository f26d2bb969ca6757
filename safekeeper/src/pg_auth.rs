//! The password exchange of the PostgreSQL port when `--pg-auth-public-key-path` is set:
//! AuthenticationCleartextPassword, the client's PasswordMessage carrying a JWT, verified
//! by [`crate::auth::JwtAuth`].
//!
//! Owns: that exchange and its size limit. Must never: allocate more than
//! [`MAX_PASSWORD_LEN`] for what the client sends before it is verified, log or echo the
//! token, or let a client past it without a verified token.

use pq_proto::backend::{Authentication, BeMessage};
use pq_proto::frontend::FeMessage;

use crate::auth::{AuthError, Claims, JwtAuth};
use crate::errors::ClientError;
use crate::session::Conn;

/// The largest PasswordMessage read: a token is a few hundred bytes.
pub const MAX_PASSWORD_LEN: usize = 8 * 1024;

/// Asks for the password and verifies it as a token. An error is answered by the caller
/// (28P01 for a missing or invalid token); `Ok(None)`: the client left.
pub async fn authenticate(conn: &mut Conn, auth: &JwtAuth) -> Result<Option<Claims>, ClientError> {
    conn.write_be(&BeMessage::Authentication(
        Authentication::CleartextPassword,
    ));
    conn.flush().await?;
    let limit = conn.max_message_len();
    conn.set_max_message_len(MAX_PASSWORD_LEN);
    let msg = conn.read_fe_message().await;
    conn.set_max_message_len(limit);
    let body = match msg {
        Ok(Some(FeMessage::Password(body))) => body,
        Ok(Some(FeMessage::Terminate)) | Ok(None) => return Ok(None),
        Ok(Some(_)) => {
            return Err(ClientError::Unexpected(
                "expected a PasswordMessage after AuthenticationCleartextPassword".into(),
            ));
        }
        // Over the limit, or not the protocol: not a token either way.
        Err(pq_proto::framed::ConnectionError::Protocol(_)) => {
            return Err(AuthError::Invalid(format!(
                "the password message is not a token (at most {MAX_PASSWORD_LEN} bytes)"
            ))
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    // The body is the password and its terminating NUL.
    let token = body.strip_suffix(b"\0").unwrap_or(&body);
    let token = std::str::from_utf8(token)
        .map_err(|_| AuthError::Invalid("the password is not UTF-8".into()))?;
    if token.is_empty() {
        return Err(AuthError::Missing.into());
    }
    Ok(Some(auth.verify(token)?))
}
