//! The one error type of the web layer, mapped to HTTP: pages get a short HTML message, the
//! JSON API gets `{ "error": { "code", "message" } }`. Internal causes are logged, not shown.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::engine::EngineError;
use crate::workflow::TransitionError;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("sign in first")]
    SignInRequired,
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("something went wrong; it has been logged")]
    Internal(String),
}

impl WebError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            WebError::SignInRequired => StatusCode::UNAUTHORIZED,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            WebError::SignInRequired => "sign_in_required",
            WebError::Forbidden(_) => "forbidden",
            WebError::NotFound => "not_found",
            WebError::Conflict(_) => "conflict",
            WebError::BadRequest(_) => "bad_request",
            WebError::Internal(_) => "internal",
        }
    }

    /// The page's heading, in plain words (never a bare "Conflict" or "Bad Request").
    pub(crate) fn heading(&self) -> &'static str {
        match self {
            WebError::SignInRequired => "Sign in first",
            WebError::Forbidden(_) => "You cannot do that",
            WebError::NotFound => "Page not found",
            WebError::Conflict(_) => "Someone else changed this first",
            WebError::BadRequest(_) => "There is a problem",
            WebError::Internal(_) => "Sorry, something went wrong",
        }
    }

    /// The error as a page in the app's layout, its message in the NHS error-summary pattern.
    /// Written here rather than with the templates: it must render even when they cannot.
    fn page(&self) -> String {
        let escape = |text: &str| {
            text.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let message = match self {
            WebError::NotFound => {
                "There is no page at this address. Check it, or find the case from the queue.".to_string()
            }
            WebError::Conflict(why) => format!("{why} Reload the page to see the case as it is now, then try again."),
            other => other.to_string(),
        };
        let heading = self.heading();
        format!(
            "<!doctype html><html lang=\"en-GB\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{heading} – Countersign</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
             <body><a class=\"skip-link\" href=\"#main\">Skip to main content</a>\
             <header class=\"site\"><a href=\"/\">Countersign</a></header>\
             <main class=\"page\" id=\"main\"><h1>{heading}</h1>\
             <div class=\"error-summary\" role=\"alert\"><p>{}</p></div>\
             <p><a href=\"/\">Back to the queue</a></p></main></body></html>",
            escape(&message)
        )
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "request failed");
        WebError::Internal(error.to_string())
    }
}

impl From<EngineError> for WebError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::CaseNotFound(_) => WebError::NotFound,
            EngineError::Conflict(_) | EngineError::Stale { .. } => WebError::Conflict(error.to_string()),
            EngineError::NoSuchOriginal(_) | EngineError::DuplicateOfItself(_) => {
                WebError::BadRequest(error.to_string())
            }
            EngineError::Transition {
                source: TransitionError::RoleNotAllowed { .. } | TransitionError::FourEyes { .. },
                ..
            } => WebError::Forbidden(error.to_string()),
            // What the form was missing, or got wrong: the caseworker puts it right.
            EngineError::Transition {
                source:
                    TransitionError::ReasonRequired { .. }
                    | TransitionError::MissingRecordedValue { .. }
                    | TransitionError::RecordedValueInvalid { .. },
                ..
            } => WebError::BadRequest(error.to_string()),
            EngineError::Transition { .. }
            | EngineError::Unclassified { .. }
            | EngineError::NotKeyable { .. }
            | EngineError::NoReplyChosen { .. }
            | EngineError::NoFormToAskFor { .. }
            | EngineError::CredentialUndeliverable { .. }
            | EngineError::NoCredentialToReplace { .. } => WebError::Conflict(error.to_string()),
            EngineError::UnknownField { .. }
            | EngineError::UnknownWorkflow(_)
            | EngineError::VerificationUnexplained
            | EngineError::ReplacementUnexplained
            | EngineError::NoSignatoryToVerify { .. }
            | EngineError::AccountFile(_) => WebError::BadRequest(error.to_string()),
            EngineError::Storage(e) => WebError::internal(e),
            EngineError::NotDurable { .. }
            | EngineError::PreparationFailed(_)
            | EngineError::CredentialIssue(_)
            | EngineError::CredentialKey(_) => WebError::internal(error),
        }
    }
}

impl From<crate::storage::StorageError> for WebError {
    fn from(error: crate::storage::StorageError) -> Self {
        WebError::internal(error)
    }
}

impl From<crate::evidence::EvidenceError> for WebError {
    fn from(error: crate::evidence::EvidenceError) -> Self {
        WebError::internal(error)
    }
}

impl From<crate::users::UserError> for WebError {
    fn from(error: crate::users::UserError) -> Self {
        use crate::users::UserError;
        match error {
            UserError::Storage(e) => WebError::internal(e),
            UserError::Hash(e) => WebError::internal(e),
            other => WebError::BadRequest(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for WebError {
    fn from(error: sqlx::Error) -> Self {
        WebError::internal(error)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if matches!(self, WebError::SignInRequired) {
            return Redirect::to("/sign-in").into_response();
        }
        (self.status(), Html(self.page())).into_response()
    }
}

/// The API's form of the same errors.
pub struct ApiError(pub WebError);

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.0.code(), "message": self.0.to_string() } });
        (self.0.status(), Json(body)).into_response()
    }
}
