//! What every page shares: dates as people read them, SLA status words, and the context
//! every template gets.

use axum_csrf::CsrfToken;
use chrono::{DateTime, Local};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::WebError;
use super::auth::CurrentUser;

/// Escapes `text` for HTML text or a quoted attribute value, onto `out`: for the parts of pages
/// drawn in Rust (the charts, the workflow diagrams, the queue's rows), which Tera's
/// autoescaping does not reach. Every value from a sender passes through here or through Tera.
pub(crate) fn push_escaped(out: &mut String, text: &str) {
    let mut done = 0;
    for (at, byte) in text.bytes().enumerate() {
        let entity = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#x27;",
            _ => continue,
        };
        // `at` is an ASCII byte, so both slices end on character boundaries.
        out.push_str(&text[done..at]);
        out.push_str(entity);
        done = at + 1;
    }
    out.push_str(&text[done..]);
}

/// `text` escaped for HTML (see [`push_escaped`]).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

pub(super) fn when(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::from_timestamp_millis)
        .map(|t| t.with_timezone(&Local).format("%d/%m/%Y %H:%M").to_string())
}

/// On track, at risk (due before `at_risk_until`, a working day from now) or breached, as
/// text; the page adds colour.
pub(super) fn sla_status(due_at: Option<i64>, paused: bool, now: i64, at_risk_until: i64) -> &'static str {
    if paused {
        // The sender has the ball: the clock is stopped, so the case cannot be late.
        return "paused";
    }
    match due_at {
        Some(due) if due < now => "breached",
        Some(due) if due <= at_risk_until => "at risk",
        _ => "on track",
    }
}

/// The SLA of a closed case: met when it closed by its due time (or had none), else missed.
pub(super) fn closed_sla_status(due_at: Option<i64>, closed_at: i64) -> &'static str {
    match due_at {
        Some(due) if closed_at > due => "missed",
        _ => "met",
    }
}

pub(super) fn base_context(user: &CurrentUser, token: &CsrfToken) -> Result<tera::Context, WebError> {
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    Ok(context)
}

/// A form that carries only its CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// A file to download, named `name` (only plain characters reach the header): never shown
/// inline, since its bytes are whatever the sender sent.
pub(super) fn download(bytes: Vec<u8>, content_type: &'static str, name: &str) -> Result<Response, WebError> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")).map_err(WebError::internal)?,
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Opened in a tab all the same, it runs nothing and loads nothing.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::{closed_sla_status, escape, sla_status};

    #[test]
    fn escaping_leaves_no_markup_and_keeps_every_other_character() {
        assert_eq!(
            escape(r#"<script>alert('x')</script> & "Ó Briain""#),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;Ó Briain&quot;"
        );
        assert_eq!(escape("plain – text"), "plain – text");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn sla_status_is_breached_past_due_at_risk_within_a_working_day_else_on_track() {
        let (now, at_risk_until) = (1_000, 5_000);
        assert_eq!(sla_status(Some(999), false, now, at_risk_until), "breached");
        assert_eq!(
            sla_status(Some(999), true, now, at_risk_until),
            "paused",
            "never breached while paused"
        );
        assert_eq!(sla_status(Some(1_000), false, now, at_risk_until), "at risk");
        assert_eq!(sla_status(Some(5_000), false, now, at_risk_until), "at risk");
        assert_eq!(sla_status(Some(5_001), false, now, at_risk_until), "on track");
        assert_eq!(sla_status(None, false, now, at_risk_until), "on track");
    }

    #[test]
    fn a_closed_case_met_its_sla_when_it_closed_by_the_due_time() {
        assert_eq!(closed_sla_status(Some(1_000), 1_000), "met");
        assert_eq!(closed_sla_status(Some(1_000), 1_001), "missed");
        assert_eq!(closed_sla_status(None, 5_000), "met");
    }
}
