//! What every page shares: dates as people read them, SLA status words, and the context
//! every template gets.

use axum_csrf::CsrfToken;
use chrono::{DateTime, Local};

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::WebError;
use super::auth::CurrentUser;

/// Escapes `text` for HTML text or a quoted attribute value, onto `out`: for the parts of pages
/// drawn in Rust (through [`Html`] or [`escape`]), which Tera's autoescaping does not reach.
/// Every value from a sender passes through here or through Tera.
fn push_escaped(out: &mut String, text: &str) {
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

/// HTML written in Rust, for the parts of pages drawn there: markup only from string literals
/// (`'static`), every other value through [`Html::text`], which escapes it. So a value from a
/// sender cannot be passed as markup by mistake: it would not compile.
#[derive(Default)]
pub(crate) struct Html(String);

impl Html {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self(String::with_capacity(bytes))
    }

    /// Markup, as written here.
    pub(crate) fn markup(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Text or an attribute's value, escaped.
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        push_escaped(&mut self.0, text);
        self
    }

    /// A number, which needs no escaping.
    pub(crate) fn number(&mut self, number: i64) -> &mut Self {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(self.0, "{number}");
        self
    }

    /// `markup` when `yes`, else nothing: an attribute or a word that depends on a flag.
    pub(crate) fn markup_if(&mut self, yes: bool, markup: &'static str) -> &mut Self {
        if yes {
            self.0.push_str(markup);
        }
        self
    }

    /// A select's `<option>` with `value` and `label`, chosen when `selected`.
    pub(crate) fn option(&mut self, value: &str, label: &str, selected: bool) -> &mut Self {
        self.markup("<option value=\"")
            .text(value)
            .markup("\"")
            .markup_if(selected, " selected")
            .markup(">")
            .text(label)
            .markup("</option>")
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}

/// `text` escaped for HTML (see [`push_escaped`]).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_escaped(&mut out, text);
    out
}

/// A time as people here read it, in local time: `dd/mm/yyyy hh:mm`.
///
/// Written digit by digit: chrono's `format` parses its pattern and pads each part through
/// `fmt` on every call, 4,000 instructions a time, and the queue shows fifty of them (a tenth
/// of a queue page's instructions). Years outside 0–9999 go through chrono, as before.
pub(super) fn when(ms: Option<i64>) -> Option<String> {
    use chrono::{Datelike, Timelike};
    let local = DateTime::from_timestamp_millis(ms?)?.with_timezone(&Local);
    let year = match u32::try_from(local.year()) {
        Ok(year) if year <= 9999 => year,
        _ => return Some(local.format("%d/%m/%Y %H:%M").to_string()),
    };
    let mut out = String::with_capacity(16);
    for (number, width, then) in [
        (local.day(), 2, Some('/')),
        (local.month(), 2, Some('/')),
        (year, 4, Some(' ')),
        (local.hour(), 2, Some(':')),
        (local.minute(), 2, None),
    ] {
        for place in (0..width).rev() {
            // One decimal digit, so always a char.
            out.push(char::from_digit(number / 10_u32.pow(place) % 10, 10).unwrap_or('0'));
        }
        out.extend(then);
    }
    Some(out)
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
    base_context_and_csrf(user, token).map(|(context, _)| context)
}

/// [`base_context`], and the CSRF token it holds, for the forms a page draws in Rust (worked
/// out once: it is an HMAC).
pub(super) fn base_context_and_csrf(
    user: &CurrentUser,
    token: &CsrfToken,
) -> Result<(tera::Context, String), WebError> {
    let csrf = token.authenticity_token().map_err(WebError::internal)?;
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &csrf);
    Ok((context, csrf))
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
    fn times_read_as_chrono_writes_them_in_local_time() {
        use chrono::{DateTime, Local};
        // Every minute of a leap day's hours, both ends of the year, the epoch, far years
        // (chrono's own words), and none.
        let chrono_says = |ms: i64| {
            DateTime::from_timestamp_millis(ms).map(|t| t.with_timezone(&Local).format("%d/%m/%Y %H:%M").to_string())
        };
        let mut samples = vec![
            0_i64,
            1_709_164_800_000,
            1_735_689_599_999,
            -62_135_596_800_000,
            253_402_300_800_000,
            1,
        ];
        samples.extend((0..24 * 60).map(|minute| 1_709_164_800_000 + minute * 60_000 + 59_999));
        samples.extend((0..400).map(|day| 1_704_067_200_000 + day * 86_400_000 + 13 * 3_600_000));
        for ms in samples {
            assert_eq!(super::when(Some(ms)), chrono_says(ms), "{ms}");
        }
        assert_eq!(super::when(Some(1_709_164_800_000)).map(|t| t.len()), Some(16));
        assert_eq!(super::when(None), None);
        assert_eq!(super::when(Some(i64::MAX)), None);
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
