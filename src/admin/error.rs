//! [`AdminError`]: every way an admin request fails, mapped to its SPEC §7
//! code in one `match` and rendered by [`crate::problem`] in the default
//! problem+json shape (the admin API never uses `[errors]` templates).

use axum::response::{IntoResponse, Response};

use super::auth::Refusal;
use crate::manage::ManageError;
use crate::problem::{Code, FieldError, Problem, ProblemRenderer};
use crate::store::StoreError;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No valid admin token (401 `admin_unauthorized`).
    #[error("admin token refused: {0:?}")]
    Unauthorized(Refusal),
    /// The body is not JSON, or a cursor was altered (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// Bad fields, each named (422 `validation_failed`).
    #[error("invalid fields: {0:?}")]
    Validation(Vec<FieldError>),
    /// No such key, session or endpoint (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The key's state forbids the change (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// The path exists but not with this method (405, code `bad_request`
    /// as on the proxy listener; the router adds `Allow`).
    #[error("method {0} not allowed")]
    MethodNotAllowed(http::Method),
    /// The key store is unreachable or could not complete the call (503
    /// `auth_unavailable`): retrying later may work. The cause goes to the
    /// log, never to the client.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else failed (500 `internal_error`): hashing, or a bug. The
    /// cause goes to the log, never to the client.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// One bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// The problem the client sees.
    pub fn problem(&self) -> Problem {
        match self {
            Self::Unauthorized(refusal) => {
                Problem::new(Code::AdminUnauthorized).with_message(refusal_message(*refusal))
            }
            Self::BadRequest(message) => Problem::new(Code::BadRequest).with_message(sentence(message)),
            Self::Validation(errors) => {
                let message = match errors.as_slice() {
                    [one] => sentence(&format!(
                        "The field {} is invalid: {}",
                        quoted(&one.field),
                        one.message
                    )),
                    _ => format!(
                        "{} fields are invalid: {}. See `errors` for each.",
                        errors.len(),
                        errors
                            .iter()
                            .map(|e| quoted(&e.field))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                Problem {
                    message: Some(message.into()),
                    ..Problem::validation_failed(errors.clone())
                }
            }
            Self::NotFound(message) => Problem::new(Code::NotFound).with_message(sentence(message)),
            Self::Conflict(message) => Problem::new(Code::Conflict).with_message(sentence(message)),
            Self::MethodNotAllowed(method) => Problem::new(Code::BadRequest)
                .with_message(format!(
                    "This endpoint does not accept {method}; the Allow header lists the methods it does."
                ))
                .with_status(http::StatusCode::METHOD_NOT_ALLOWED),
            Self::Unavailable(_) => Problem::new(Code::AuthUnavailable).with_message(
                "The key store could not complete the request. Retry once it is back; /readyz says when.",
            ),
            Self::Internal(_) => Problem::new(Code::InternalError),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(error = %cause, "admin request failed"),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "admin request failed: the key store could not answer")
            }
            _ => {}
        }
        // The admin API always answers in the default problem shape.
        ProblemRenderer::default().render(&self.problem())
    }
}

impl From<ManageError> for AdminError {
    fn from(e: ManageError) -> Self {
        match e {
            // The id comes from the path: a malformed one names no key.
            ManageError::Invalid(errors) => match errors.as_slice() {
                [only] if only.field == "id" => {
                    Self::NotFound(format!("No key has this id: {}", only.message))
                }
                [only] if only.field == "session_id" => {
                    Self::NotFound(format!("No session has this id: {}", only.message))
                }
                _ => Self::Validation(errors),
            },
            ManageError::NotFound(id) => Self::NotFound(format!("No key has the id {id}.")),
            ManageError::SessionNotFound(id) => Self::NotFound(format!("No session has the id {id}.")),
            ManageError::OwnerNotFound(_) => {
                Self::NotFound("No key has this owner, and it has no usage history.".into())
            }
            ManageError::Conflict(message) => Self::Conflict(message),
            // Every failure of the store itself is the store's state, not
            // the request's: an outage, a lock held too long, but also a
            // schema or row the store cannot serve (a table dropped or
            // migrated by hand). The client can only retry later; 503 says
            // so, where a 500 would blame the gateway.
            ManageError::Store(
                e @ (StoreError::Unavailable(_)
                | StoreError::Database(_)
                | StoreError::Corrupt(_)
                | StoreError::Migration(_)),
            ) => Self::Unavailable(e.to_string()),
            other @ (ManageError::Import(_) | ManageError::Store(_) | ManageError::Hash(_)) => {
                Self::Internal(other.to_string())
            }
        }
    }
}

/// What the client is told for each refusal: what to do next.
fn refusal_message(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::NotConfigured => {
            "No admin token is configured, so the admin API refuses everything but /healthz, /readyz and /metrics. \
             Set KEYGATE_ADMIN_TOKEN to a long random token, or add the argon2id hash of one to admin.tokens in \
             the config file, then restart keygate."
        }
        Refusal::Missing => "Send an admin token in the Authorization header as 'Bearer <token>'.",
        Refusal::Wrong => {
            "The admin token is not valid. Send one of the tokens configured in admin.tokens or \
             KEYGATE_ADMIN_TOKEN, in full, as 'Bearer <token>'."
        }
        Refusal::Throttled => {
            "Too many invalid admin tokens were sent in the last second. Retry in a second."
        }
    }
}

/// `message` as a sentence: first letter capitalised, a full stop at the
/// end (messages from `manage` and serde are lowercase fragments).
fn sentence(message: &str) -> String {
    let mut chars = message.trim_end().chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

fn quoted(field: &str) -> String {
    format!("'{field}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_failure_is_a_503() {
        let down = AdminError::from(ManageError::Store(StoreError::Unavailable(
            "connection refused".into(),
        )));
        let problem = down.problem();
        assert_eq!(problem.code, Code::AuthUnavailable);
        assert_eq!(problem.code.status().as_u16(), 503);
        assert!(
            !format!("{:?}", problem.message).contains("connection refused"),
            "cause not shown"
        );
        for broken in [
            StoreError::Corrupt("bad row".into()),
            StoreError::Database("no such table: audit_log".into()),
            StoreError::Migration("schema newer".into()),
        ] {
            let problem = AdminError::from(ManageError::Store(broken)).problem();
            assert_eq!(problem.code, Code::AuthUnavailable);
            assert!(
                !format!("{:?}", problem.message).contains("audit_log"),
                "cause not shown"
            );
        }
    }

    #[test]
    fn unknown_and_malformed_session_ids_are_not_found() {
        let unknown = AdminError::from(ManageError::SessionNotFound(
            "ses_01jd3m5k7r9t2v4w6x8y0z1a2b".into(),
        ));
        assert_eq!(unknown.problem().code, Code::NotFound);
        let presented = "x".repeat(10_000);
        let malformed = AdminError::from(crate::manage::parse_session_id(&presented).unwrap_err());
        let problem = malformed.problem();
        assert_eq!(problem.code, Code::NotFound);
        let message = format!("{:?}", problem.message);
        assert!(!message.contains("xxx"), "the id is not echoed: {message}");
    }
}
