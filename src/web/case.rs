//! The case page and what a caseworker does from it: transitions, claiming and assigning,
//! notes, keying a form by hand, and the form's PDF.

use crate::domain::{EventKind, OutboxStatus};
use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;

use super::auth::{CurrentUser, check_csrf, render};
use super::{AppState, RequestConnection, WebError};
use crate::storage;
use crate::workflow::TransitionRequest;
use crate::workflow::wellknown::{self, unclassified};

use super::queue::{QueueFilter, next_in_view};
use super::view::{base_context_and_csrf, closed_sla_status, sla_status, when};
use super::{Access, Route};

mod draw;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/cases/{reference}", Access::Staff, case_page),
        Route::get("/cases/{reference}/form.pdf", Access::Staff, form_pdf),
        Route::get("/cases/{reference}/attachments/{id}", Access::Staff, attachment),
        Route::get("/cases/{reference}/evidence.zip", Access::Staff, evidence_pack),
        Route::post("/cases/{reference}/transition", Access::Staff, transition),
        Route::post("/cases/{reference}/claim", Access::Staff, claim),
        Route::post("/cases/{reference}/request-form", Access::Staff, request_form),
        Route::post("/cases/{reference}/notes", Access::Staff, add_note),
        Route::post("/cases/{reference}/key", Access::Staff, key_fields),
        Route::post("/cases/{reference}/assign", Access::Staff, assign),
        Route::post("/cases/{reference}/verify-signatory", Access::Staff, verify_signatory),
        Route::post("/cases/{reference}/credential", Access::Staff, replace_credential),
    ]
}

#[derive(Debug)]
struct TimelineEntry {
    at: i64,
    when: Option<String>,
    kind: String,
    who: String,
    text: String,
}

#[derive(Debug)]
struct ActionView {
    to: String,
    label: String,
    reason_required: bool,
    /// The action sends an email (its transition names a template): it can be previewed.
    sends_mail: bool,
    records: Vec<RecordView>,
}

/// A value an action records, as its form asks for it.
#[derive(Debug)]
struct RecordView {
    name: String,
    label: String,
    hint: String,
    max_length: usize,
}

/// What the case page says first: the outcome of what the caseworker just did.
#[derive(serde::Deserialize, Default)]
pub struct CaseQuery {
    /// `moved`, `note`, `claimed`, `assigned` or `keyed`: a fixed set, so a link can never put
    /// words of its own on the page.
    #[serde(default)]
    done: String,
    /// The queue view the caseworker came from (its query string): "next case" stays in it.
    #[serde(default)]
    back: String,
}

pub async fn case_page(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    conn: RequestConnection,
    Path(reference): Path<String>,
    Query(query): Query<CaseQuery>,
) -> Result<Response, WebError> {
    show_case(
        &state,
        &user,
        token,
        &reference,
        Outcome::Done {
            done: query.done,
            back: query.back,
        },
        conn,
    )
    .await
}

/// What the page reports above the case.
enum Outcome {
    /// What was done, as a [`CaseQuery::done`] word (or nothing), and the queue view the
    /// caseworker came from.
    Done { done: String, back: String },
    /// An action that was refused, with why: shown in an error summary on the page itself,
    /// with the action chosen again (its form open) when it was a state move.
    Refused(WebError, Option<String>),
    /// Claiming a case a colleague (this address) has: asked first.
    TakeOver(String),
    /// The email an action would send, shown before anything is sent.
    Preview(Preview),
}

/// An action's email, previewed: the reason box keeps what was typed, to change and preview
/// again, or to send.
struct Preview {
    to: String,
    reason: String,
    mail: Vec<PreviewedMail>,
}

/// One email of a preview, rendered from its template.
struct PreviewedMail {
    recipient: Option<String>,
    subject: String,
    /// Its words as they would go (the caseworker's, if they edited them).
    text: String,
    /// The template's own words, to tell later whether the caseworker changed them.
    template_text: Option<String>,
    /// Why it would be held back, if it would be.
    held_back: Option<String>,
}

/// Acts on a case, then shows it: with a confirmation when it worked, or the case page with
/// the refusal in its error summary when the engine said no (never a bare error page).
async fn act_then_show(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    reference: &str,
    done: &str,
    result: Result<(), WebError>,
) -> Result<Response, WebError> {
    act_then_show_choosing(state, user, token, reference, done, result, None).await
}

/// [`act_then_show`] for a state move: a refusal reopens the chosen action's form.
async fn act_then_show_choosing(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    reference: &str,
    done: &str,
    result: Result<(), WebError>,
    chosen: Option<String>,
) -> Result<Response, WebError> {
    match result {
        Ok(()) => Ok(Redirect::to(&format!("/cases/{reference}?done={done}")).into_response()),
        Err(error @ (WebError::BadRequest(_) | WebError::Conflict(_) | WebError::Forbidden(_))) => {
            show_case(
                state,
                user,
                token,
                reference,
                Outcome::Refused(error, chosen),
                RequestConnection::default(),
            )
            .await
        }
        Err(other) => Err(other),
    }
}

async fn show_case(
    state: &AppState,
    user: &CurrentUser,
    token: CsrfToken,
    reference: &str,
    outcome: Outcome,
    conn: RequestConnection,
) -> Result<Response, WebError> {
    // One connection for the whole page (see `load_queue`): a view reads on the one its
    // session was read on.
    let mut conn = conn.acquire(state).await?;
    let file = storage::case_file(&mut conn, reference)
        .await?
        .ok_or(WebError::NotFound)?;
    let staff = state.staff.active_emails(&mut conn).await?;
    // The next case after this one in the queue view the caseworker came from (the whole open
    // queue when none), for the "n" shortcut and the link.
    let back = match &outcome {
        Outcome::Done { back, .. } => back.clone(),
        _ => String::new(),
    };
    let view: QueueFilter = format!("/?{back}")
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| Query::<QueueFilter>::try_from_uri(&uri).ok())
        .map(|Query(view)| view)
        .unwrap_or_default();
    let terminal = state.engine.workflows().terminal_states();
    let cursor = match view.scope(terminal) {
        storage::QueueScope::Open => format!("{}:{}", file.case.due_at.unwrap_or(0), file.case.id),
        _ => format!("0:{}", file.case.id),
    };
    let after = QueueFilter {
        after: cursor,
        done: String::new(),
        left: String::new(),
        ..view
    };
    let next_case = next_in_view(state, &mut conn, &after, user.0.id).await?;
    let event_chain = crate::audit::verdict(file.case.id, file.chain.recorded_length, &file.chain.events);
    drop(conn);
    let (mut context, csrf) = base_context_and_csrf(user, &token)?;
    context.insert("event_chain", &event_chain);
    let state_label = state
        .engine
        .workflows()
        .state_label(file.case.workflow.as_deref(), &file.case.state);
    let (case_reference, case_version) = (file.case.reference.clone(), file.case.version);
    context.insert(
        "assignee_options_html",
        &draw::assignee_options(&staff, file.assignee.as_deref()),
    );
    let actions = case_context(state, file, &user.actor(), &mut context);
    context.insert("next_case", &next_case);
    // Links onward keep the view: `?back=<the queue's query>`.
    context.insert("view_suffix", &after.view_suffix());
    context.insert("queue_link", &format!("/?{}", after.query_string()));
    let mut chosen = None;
    let mut preview = None;
    let status = match outcome {
        Outcome::Done { done, .. } => {
            let said = match done.as_str() {
                "moved" => Some(format!("Done: the case is now “{state_label}”.")),
                "note" => Some("Your note is added.".to_string()),
                "claimed" => Some("The case is yours.".to_string()),
                "assigned" => Some("The case's assignee is changed.".to_string()),
                "keyed" => Some("The fields are saved and the checks ran again.".to_string()),
                "signatory_verified" => {
                    Some("The signatory is recorded as verified, and the checks ran again.".to_string())
                }
                "credential_replaced" => Some(
                    "A new password is issued: its one-time link goes to the user, the user name to the Primary User. The old link no longer works."
                        .to_string(),
                ),
                "form_requested" => {
                    Some("The sender has been asked for the form; their reply will join this case.".to_string())
                }
                _ => None,
            };
            context.insert("success", &said);
            axum::http::StatusCode::OK
        }
        Outcome::Refused(error, refused_choice) => {
            chosen = refused_choice;
            context.insert("problem", &error.to_string());
            context.insert("problem_heading", error.heading());
            error.status()
        }
        Outcome::TakeOver(holder) => {
            context.insert("take_over", &holder);
            axum::http::StatusCode::OK
        }
        Outcome::Preview(previewed) => {
            chosen = Some(previewed.to.clone());
            preview = Some(previewed);
            axum::http::StatusCode::OK
        }
    };
    context.insert("has_actions", &!actions.is_empty());
    context.insert("chosen", &chosen);
    context.insert(
        "action_options_html",
        &draw::action_options(&actions, chosen.as_deref()),
    );
    context.insert(
        "action_forms_html",
        &draw::action_forms(
            &actions,
            &draw::ActionFormsFor {
                reference: &case_reference,
                csrf: &csrf,
                version: case_version,
                preview: preview.as_ref(),
                // The reason a request for information starts with; the mail lists the
                // findings itself.
                suggested_reason: crate::engine::notify::SUGGESTED_CORRECTION_REASON,
            },
        ),
    );
    Ok((status, token, render(state, "case.html.tera", &context)?).into_response())
}

/// The case page's template context, from its case file; returns the actions this person
/// may take, which are drawn once the page knows what it reports (a preview opens one).
fn case_context(
    state: &AppState,
    file: storage::CaseFile,
    actor: &crate::workflow::Actor,
    context: &mut tera::Context,
) -> Vec<ActionView> {
    let storage::CaseFile {
        case,
        message,
        attachments,
        chain,
        mail,
        timers,
        notes,
        assignee,
        named_case,
        related,
        messages,
        signatures,
        credentials,
    } = file;
    let events: Vec<storage::CaseEvent> = chain.events.into_iter().map(|stored| stored.event).collect();
    let workflow = case.workflow.as_deref().and_then(|w| state.engine.workflows().get(w));
    // Each email's text, parsed once, for the thread; the one that opened the case is among
    // them (parsed on its own only when it is not linked).
    let texts = email_texts(state, &messages);
    let body = match messages.iter().position(|m| m.id == case.origin_message_id) {
        Some(origin) => texts[origin].clone().flatten(),
        None => email_text(state, message.raw.as_deref()).flatten(),
    };
    let sender = crate::dkim::SenderVerdict::from_stored(&message.sender_auth_json);
    let auth = sender.auth.clone();
    // A closed case is judged by when it closed (met or missed), not by the clock running on.
    let closed_at = if state.engine.workflows().terminal_states().contains(&case.state) {
        events
            .iter()
            .filter(|e| e.to_state.as_deref() == Some(case.state.as_str()))
            .map(|e| e.at)
            .max()
    } else {
        None
    };
    let general: Vec<&str> = case
        .findings
        .iter()
        .filter(|f| f.field.is_none())
        .map(|f| f.message.as_str())
        .collect();
    let notes: Vec<serde_json::Value> = notes
        .into_iter()
        .map(|n| serde_json::json!({ "author": n.author, "body": n.body, "when": when(Some(n.created_at)) }))
        .collect();
    let related: Vec<serde_json::Value> = related
        .into_iter()
        .map(|c| serde_json::json!({ "reference": c.reference, "state": c.state }))
        .collect();
    context.insert(
        "workflow_title",
        &workflow
            .map(|w| w.title.clone())
            .unwrap_or_else(|| "Unclassified".into()),
    );
    context.insert(
        "state_label",
        &workflow
            .and_then(|w| w.state(&case.state))
            .map(|s| s.label.clone())
            .unwrap_or_else(|| case.state.clone()),
    );
    context.insert("field_rows_html", &draw::field_rows(&field_views(&case, workflow)));
    context.insert("general_findings", &general);
    context.insert("from", &message.from_address);
    context.insert("subject", &message.subject);
    context.insert("sent", &when(message.sent_at));
    context.insert("received", &when(Some(message.received_at)));
    context.insert("auth", &auth);
    context.insert("sender_check", &sender);
    // Times as the rest of the page writes them (the API keeps RFC 3339).
    let readable = |t: &mut Option<String>| {
        if let Some(ms) = t
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
        {
            *t = when(Some(ms));
        }
    };
    let mut digital_signatures = crate::pdf::signature::DigitalSignatureView::of_form(&signatures);
    for view in &mut digital_signatures {
        readable(&mut view.claimed_signing_time);
        readable(&mut view.certificate_valid_until);
    }
    context.insert("digital_signatures", &digital_signatures);
    context.insert("body", &body);
    context.insert("attachments", &attachments);
    context.insert(
        "thread_html",
        &draw::thread_items(&correspondence(state, &case, &messages, texts, &mail)),
    );
    let actions = actions(&case, workflow, actor, &events);
    // A case keyed by hand stays correctable (each change logged) until it is authorised.
    let was_keyed = events.iter().any(|e| e.kind == EventKind::FieldKeyed);
    context.insert(
        "timeline_html",
        &draw::timeline_items(&timeline(events, mail, timers, workflow)),
    );
    context.insert("notes", &notes);
    // A password issued on the case: where its link went and whether it was opened, never it.
    let credentials: Vec<serde_json::Value> = credentials
        .iter()
        .map(|c| {
            serde_json::json!({
                "sent_to": c.sent_to,
                "issued": when(Some(c.issued_at)),
                "expires": when(Some(c.expires_at)),
                "link_until": when(c.link_expires_at),
                "shown": when(c.shown_at),
                "waiting": c.waiting,
            })
        })
        .collect();
    context.insert("credentials", &credentials);
    // Mail that named a case but was not allowed to change it is a case of its own: each page
    // links to the other, so the caseworker sees both.
    context.insert("named_case", &named_case);
    context.insert("related_cases", &related);

    context.insert("assignee", &assignee);
    context.insert("due", &when(case.due_at));
    context.insert("closed", &when(closed_at));
    context.insert(
        "sla",
        match closed_at {
            Some(closed) => closed_sla_status(case.due_at, closed),
            None if case.workflow.is_none() => "",
            None => sla_status(
                case.due_at,
                case.sla_paused_at.is_some(),
                state.engine.now_ms(),
                state.engine.working_days_from_now(1),
            ),
        },
    );
    // What was recorded (the Open Exeter user ID at provisioning), under its declared label.
    let recorded_values: Vec<(String, &String)> = case
        .recorded
        .iter()
        .map(|(name, value)| {
            let label = workflow.map_or_else(|| name.replace('_', " "), |w| w.recorded_def(name).label);
            (label, value)
        })
        .collect();
    context.insert("recorded_values", &recorded_values);
    context.insert("has_pdf", &case.form_attachment_id.is_some());
    // A workflow of plain emails: what was read is from the email's text, not a form.
    context.insert("plain_email", &workflow.is_some_and(|w| w.form_id().is_none()));
    // A form with no fields (or no workflow yet) is keyed by hand beside the PDF, and what was
    // keyed can be corrected.
    let needs_keying = case
        .findings
        .iter()
        .any(|f| f.code == crate::policy::FindingCode::FormHasNoFields)
        || case.workflow.is_none()
        || was_keyed;
    let keyable = needs_keying && wellknown::KEYABLE_STATES.contains(&case.state.as_str());
    context.insert("keyable", &keyable);
    context.insert("was_keyed", &was_keyed);
    // The keying form's fields and form types only for the page that shows the form.
    if keyable {
        context.insert("key_fields", &key_field_views(&case, workflow));
        context.insert(
            "workflow_names",
            &state
                .engine
                .workflows()
                .iter()
                .map(|w| (&w.name, &w.title))
                .collect::<Vec<_>>(),
        );
    }
    // A signatory the register does not know is verified by a caseworker, who says how.
    context.insert(
        "signatory_to_verify",
        &case
            .findings
            .iter()
            .any(|f| f.code == crate::policy::FindingCode::SignatoryNotKnown),
    );
    context.insert("case", &CaseHeading::of(&case));
    actions
}

/// What the template itself shows of the case (the rest is drawn in [`draw`]): not its fields
/// and findings, which it would otherwise turn into JSON for nothing.
#[derive(serde::Serialize)]
struct CaseHeading<'a> {
    reference: &'a str,
    state: &'a str,
    version: i64,
    workflow: Option<&'a str>,
    sender: Option<&'a str>,
    org_name: Option<&'a str>,
    org_ods_code: Option<&'a str>,
    duplicate_of: Option<i64>,
}

impl<'a> CaseHeading<'a> {
    fn of(case: &'a storage::CaseRecord) -> Self {
        Self {
            reference: &case.reference,
            state: &case.state,
            version: case.version,
            workflow: case.workflow.as_deref(),
            sender: case.sender.as_deref(),
            org_name: case.org_name.as_deref(),
            org_ods_code: case.org_ods_code.as_deref(),
            duplicate_of: case.duplicate_of,
        }
    }
}

/// A field of the form as the field table shows it.
#[derive(Debug)]
struct FieldView {
    label: String,
    /// What the form (or the caseworker) gave, in words; none when it was left empty.
    value: Option<String>,
    /// What the checks found about it.
    findings: Vec<String>,
}

/// The workflow's fields with the findings about each, in the workflow's order.
fn field_views(case: &storage::CaseRecord, workflow: Option<&crate::workflow::WorkflowDef>) -> Vec<FieldView> {
    let Some(workflow) = workflow else {
        return Vec::new();
    };
    workflow
        .fields
        .iter()
        .map(|def| {
            let findings = case
                .findings
                .iter()
                .filter(|f| f.field.as_deref() == Some(def.name.as_str()))
                .map(|f| f.message.clone())
                .collect();
            // A plain email's problem is shown by its name in words, with whom its reply sends
            // the sender to.
            let value = case.fields.get(&def.name).map(|value| {
                workflow
                    .classify
                    .as_ref()
                    .filter(|c| c.field == def.name)
                    .and_then(|c| c.class(value))
                    .map(|class| match &class.refer_to {
                        Some(to) => format!("{} (reply: {}, refers them to their {to})", class.label, class.template),
                        None => format!("{} (reply: {})", class.label, class.template),
                    })
                    .unwrap_or_else(|| value.clone())
            });
            FieldView {
                label: def.label.clone(),
                value,
                findings,
            }
        })
        .collect()
}

/// One message in a case's correspondence.
#[derive(Debug)]
struct ThreadEntry {
    at: i64,
    when: String,
    /// `in` (mail we received) or `out` (mail we sent or held back).
    direction: &'static str,
    who: String,
    subject: String,
    /// What kind of message: the email that opened the case, a reply, our acknowledgement...
    kind: String,
    /// Its text: received mail as sent (shown escaped), ours as rendered from its template.
    text: String,
    /// Ours: sent, waiting, failed or held back (with why).
    status: String,
    attachments: Vec<ThreadAttachment>,
}

/// An attachment of a received email, linked for download.
#[derive(Debug)]
struct ThreadAttachment {
    name: String,
    href: String,
    size: i64,
}

/// Each email's plain text, in order ([`email_text`]).
fn email_texts(state: &AppState, messages: &[storage::CaseMessage]) -> Vec<Option<Option<String>>> {
    messages.iter().map(|m| email_text(state, m.raw.as_deref())).collect()
}

/// An email's plain text: none when retention has cleared its bytes, `Some(None)` when it has
/// no plain-text part. Parsing is the costly part of a case page with large emails, so each
/// is parsed once.
fn email_text(state: &AppState, raw: Option<&[u8]>) -> Option<Option<String>> {
    raw.map(|raw| crate::mail::parse(raw, &state.engine.config().mail).text_body)
}

/// Every message in and out of a case, in order: the emails linked to it (with their
/// attachments, linked for download) and our own mail, rendered as it reads, with what
/// happened to it.
fn correspondence(
    state: &AppState,
    case: &storage::CaseRecord,
    messages: &[storage::CaseMessage],
    texts: Vec<Option<Option<String>>>,
    mail: &[storage::OutboxRecord],
) -> Vec<ThreadEntry> {
    let mut thread: Vec<ThreadEntry> = messages
        .iter()
        .zip(texts)
        .map(|(m, text)| {
            let text = match text {
                Some(text) => text.unwrap_or_else(|| "(no plain-text part)".into()),
                None => "(the email's text has been cleared by the retention policy)".into(),
            };
            ThreadEntry {
                at: m.received_at,
                when: when(Some(m.received_at)).unwrap_or_default(),
                direction: "in",
                who: m.from_address.clone().unwrap_or_else(|| "(no sender)".into()),
                subject: m.subject.clone().unwrap_or_default(),
                kind: match m.relation.as_str() {
                    "origin" => "the email that opened the case".into(),
                    "reply" => "a reply".into(),
                    "auto_reply" => "an automatic reply".into(),
                    "duplicate" => "the same form again".into(),
                    other => other.replace('_', " "),
                },
                text,
                status: String::new(),
                attachments: m
                    .attachments
                    .iter()
                    .map(|a| ThreadAttachment {
                        name: a.filename.clone().unwrap_or_else(|| format!("attachment {}", a.id)),
                        href: format!("/cases/{}/attachments/{}", case.reference, a.id),
                        size: a.size,
                    })
                    .collect(),
            }
        })
        .collect();
    for out in mail {
        let context: serde_json::Value = serde_json::from_str(&out.context_json).unwrap_or_default();
        let (subject, text) = match state.mail.render(&out.template, &context) {
            Ok(rendered) => (rendered.subject, rendered.text),
            Err(_) => (out.template.replace('_', " "), "(this message cannot be shown)".into()),
        };
        let status = match (&out.suppressed_reason, out.status) {
            (Some(why), _) => format!("held back: {why}"),
            (None, OutboxStatus::Failed) => format!("failed: {}", out.last_error.clone().unwrap_or_default()),
            (None, other) => other.to_string(),
        };
        thread.push(ThreadEntry {
            at: out.created_at,
            when: when(Some(out.created_at)).unwrap_or_default(),
            direction: "out",
            who: out.recipient.clone().unwrap_or_else(|| "(no recipient)".into()),
            subject,
            kind: out.template.replace('_', " "),
            text,
            status,
            attachments: Vec::new(),
        });
    }
    thread.sort_by_key(|t| t.at);
    thread
}

/// One attachment of one of a case's emails, as a download: never shown inline, since its
/// bytes are whatever the sender sent.
pub async fn attachment(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path((reference, id)): Path<(String, i64)>,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let case = storage::case_by_reference(&mut conn, &reference)
        .await?
        .ok_or(WebError::NotFound)?;
    let (name, _, bytes) = storage::case_attachment(&mut conn, case.id, id)
        .await?
        .ok_or(WebError::NotFound)?;
    drop(conn);
    super::view::download(
        bytes,
        "application/octet-stream",
        &name.unwrap_or_else(|| format!("attachment-{id}")),
    )
}

/// The case's evidence pack (a zip with a SHA-256 manifest); its download is logged.
pub async fn evidence_pack(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(reference): Path<String>,
) -> Result<Response, WebError> {
    let pack = crate::evidence::evidence_pack(state.engine.db(), &reference, state.engine.now_ms())
        .await?
        .ok_or(WebError::NotFound)?;
    tracing::info!(case = %reference, actor = %user.0.email, "evidence pack downloaded");
    super::view::download(pack.bytes, "application/zip", &pack.file_name)
}

/// The fields a caseworker may key by hand (not the digital signature).
fn key_field_views(
    case: &storage::CaseRecord,
    workflow: Option<&crate::workflow::WorkflowDef>,
) -> Vec<serde_json::Value> {
    let Some(workflow) = workflow else {
        return Vec::new();
    };
    workflow
        .fields
        .iter()
        .filter(|f| f.kind != crate::workflow::FieldKind::Signature)
        .map(|f| serde_json::json!({ "name": f.name, "label": f.label, "value": case.fields.get(&f.name), "options": f.options }))
        .collect()
}

/// Events, mail and timers, in time order.
/// What an event changed, for the timeline: a keyed field's name with its old and new value,
/// the values a transition recorded.
fn event_detail(event: &storage::CaseEvent, workflow: Option<&crate::workflow::WorkflowDef>) -> String {
    let Some(data) = event
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
    else {
        return String::new();
    };
    let label = |name: &str| {
        workflow
            .and_then(|w| w.field(name))
            .map(|f| f.label.clone())
            .unwrap_or_else(|| name.replace('_', " "))
    };
    let quoted = |value: &serde_json::Value| match value.as_str() {
        Some(text) => format!("“{text}”"),
        None => "(empty)".to_string(),
    };
    if event.kind == EventKind::FieldKeyed {
        let field = data["field"].as_str().unwrap_or("a field");
        return format!("{}: {} → {}", label(field), quoted(&data["old"]), quoted(&data["new"]));
    }
    match data.as_object() {
        Some(values) if event.kind == EventKind::Transition => values
            .iter()
            .map(|(name, value)| format!("{}: {}", label(name), quoted(value)))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    }
}

fn timeline(
    events: Vec<storage::CaseEvent>,
    mail: Vec<storage::OutboxRecord>,
    timers: Vec<storage::TimerRecord>,
    workflow: Option<&crate::workflow::WorkflowDef>,
) -> Vec<TimelineEntry> {
    let mut timeline: Vec<TimelineEntry> = events
        .into_iter()
        .map(|e| {
            let change = match (&e.from_state, &e.to_state) {
                (Some(f), Some(t)) => format!("{f} → {t}"),
                (None, Some(t)) => format!("→ {t}"),
                _ => String::new(),
            };
            let detail = event_detail(&e, workflow);
            TimelineEntry {
                at: e.at,
                when: when(Some(e.at)),
                // A transition shows its own name ("hold for review"), other events their kind.
                kind: e.transition.as_deref().unwrap_or(e.kind.as_str()).replace('_', " "),
                text: [change, detail, e.reason.unwrap_or_default()]
                    .into_iter()
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join(" · "),
                who: e.actor,
            }
        })
        .collect();
    for mail in mail {
        let note = mail.suppressed_reason.or(mail.last_error).unwrap_or_default();
        timeline.push(TimelineEntry {
            at: mail.created_at,
            when: when(Some(mail.created_at)),
            kind: "mail".into(),
            who: mail.recipient.unwrap_or_default(),
            text: format!("{} ({}) {note}", mail.template, mail.status).trim().to_string(),
        });
    }
    for timer in timers {
        timeline.push(TimelineEntry {
            at: timer.due_at,
            when: when(Some(timer.due_at)),
            kind: "timer".into(),
            who: String::new(),
            text: format!("{} ({})", timer.name.replace('_', " "), timer.status),
        });
    }
    timeline.sort_by_key(|t| t.at);
    timeline
}

/// The actions the workflow allows from the case's state, for this role, and only those.
fn actions(
    case: &storage::CaseRecord,
    workflow: Option<&crate::workflow::WorkflowDef>,
    actor: &crate::workflow::Actor,
    events: &[storage::CaseEvent],
) -> Vec<ActionView> {
    let role = actor.role;
    match workflow {
        Some(workflow) => {
            let history = crate::engine::change::history_of(workflow, events);
            workflow
                .transitions_from(&case.state)
                .filter(|t| role.is_among(&t.by))
                // Offer nothing four-eyes would refuse this person.
                .filter(|t| !crate::workflow::machine::four_eyes_forbids(workflow, t, actor, &history))
                .map(|t| ActionView {
                    to: t.to.clone(),
                    label: t.label.clone(),
                    reason_required: t.reason_required,
                    sends_mail: t.template.is_some(),
                    records: t
                        .records
                        .iter()
                        .map(|name| {
                            let def = workflow.recorded_def(name);
                            RecordView {
                                name: name.clone(),
                                label: def.label,
                                hint: def.hint,
                                max_length: def.max_length,
                            }
                        })
                        .collect(),
                })
                .collect()
        }
        None if case.state == unclassified::STATE && role.is_among(unclassified::BY) => unclassified::EXITS
            .iter()
            .map(|(to, label)| ActionView {
                to: to.to_string(),
                label: label.to_string(),
                reason_required: true,
                sends_mail: false,
                records: vec![],
            })
            .collect(),
        None => vec![],
    }
}

/// The case's PDF, inline, sandboxed: it can show, but not run script or reach anything.
pub async fn form_pdf(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(reference): Path<String>,
) -> Result<Response, WebError> {
    let mut conn = state.engine.db().pool.acquire().await?;
    let case = storage::case_by_reference(&mut conn, &reference)
        .await?
        .ok_or(WebError::NotFound)?;
    let attachment = case.form_attachment_id.ok_or(WebError::NotFound)?;
    let (_, detected, bytes) = storage::case_attachment(&mut conn, case.id, attachment)
        .await?
        .ok_or(WebError::NotFound)?;
    let is_pdf = detected.as_deref() == Some("application/pdf");
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if is_pdf {
            "application/pdf"
        } else {
            "application/octet-stream"
        }),
    );
    let disposition = format!(
        "{}; filename=\"{}.pdf\"",
        if is_pdf { "inline" } else { "attachment" },
        case.reference
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(WebError::internal)?,
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; frame-ancestors 'self'"),
    );
    Ok(response)
}

#[derive(serde::Deserialize)]
pub struct TransitionForm {
    csrf: String,
    to: String,
    #[serde(default)]
    reason: String,
    /// The case version the page showed: a newer one means someone else acted meanwhile.
    /// (Text: beside a flattened map, serde reads every value as a string.)
    version: String,
    /// For "mark as duplicate": the case this one repeats.
    #[serde(default)]
    duplicate_of: String,
    /// `1`: show the email this action would send, and send nothing yet.
    #[serde(default)]
    preview: String,
    /// The email as the caseworker edited it in the preview (empty: the template's words).
    #[serde(default)]
    mail_text: String,
    /// The email as the preview showed it: when `mail_text` is still the same, nobody edited
    /// it, and the template's words go (with the reason as it is now).
    #[serde(default)]
    previewed_text: String,
    /// The values the transition records, by the names its workflow gives them (`records`);
    /// the engine keeps only those the transition declares.
    #[serde(flatten)]
    values: BTreeMap<String, String>,
}

pub async fn transition(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<TransitionForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let version = form
        .version
        .trim()
        .parse()
        .map_err(|_| WebError::BadRequest("The page sent no case version; reload it and try again.".into()))?;
    let recorded = form
        .values
        .into_iter()
        .map(|(name, value)| (name, value.trim().to_string()))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    // The version check and the duplicate link are the engine's, inside its transaction.
    let request = TransitionRequest {
        duplicate_of: (form.to == wellknown::DUPLICATE).then(|| form.duplicate_of.clone()),
        to: form.to,
        reason: Some(form.reason.trim().to_string()).filter(|r| !r.is_empty()),
        recorded,
        expected_version: Some(version),
        mail_text: {
            let normal = |text: &str| text.replace("\r\n", "\n").trim().to_string();
            Some(normal(&form.mail_text)).filter(|t| !t.is_empty() && *t != normal(&form.previewed_text))
        },
    };
    // A refusal reopens the chosen action's form.
    let chosen = Some(request.to.clone());
    if form.preview == "1" {
        return match state
            .engine
            .preview_transition(&reference, &request, &user.actor())
            .await
        {
            Ok(mail) => {
                // The template's own words too (with the reason as it is), so that sending
                // unchanged words later sends the template, and changed ones are kept.
                let unedited = TransitionRequest {
                    mail_text: None,
                    ..request.clone()
                };
                let template_words = state
                    .engine
                    .preview_transition(&reference, &unedited, &user.actor())
                    .await
                    .unwrap_or_default();
                let shown = Preview {
                    to: request.to.clone(),
                    reason: request.reason.clone().unwrap_or_default(),
                    mail: mail
                        .iter()
                        .zip(template_words.iter().map(Some).chain(std::iter::repeat(None)))
                        .map(|(m, plain)| PreviewedMail {
                            template_text: plain.map(|p| previewed(&state, p).text),
                            ..previewed(&state, m)
                        })
                        .collect(),
                };
                show_case(
                    &state,
                    &user,
                    token,
                    &reference,
                    Outcome::Preview(shown),
                    RequestConnection::default(),
                )
                .await
            }
            Err(error) => {
                let refused = Outcome::Refused(WebError::from(error), chosen);
                show_case(&state, &user, token, &reference, refused, RequestConnection::default()).await
            }
        };
    }
    let result = state.engine.transition(&reference, &request, &user.actor()).await;
    let result = result.map(drop).map_err(WebError::from);
    act_then_show_choosing(&state, &user, token, &reference, "moved", result, chosen).await
}

/// A composed email as the preview shows it: rendered from its template, with whether it
/// would be held back.
fn previewed(state: &AppState, mail: &storage::NewMail) -> PreviewedMail {
    let context: serde_json::Value = serde_json::from_str(&mail.context_json).unwrap_or_default();
    let (subject, text) = match state.mail.render(&mail.template, &context) {
        Ok(rendered) => (rendered.subject, rendered.text),
        Err(e) => (mail.template.clone(), format!("(this email cannot be shown: {e})")),
    };
    PreviewedMail {
        recipient: mail.recipient.clone(),
        subject,
        text,
        template_text: None,
        held_back: mail.suppressed_reason.clone(),
    }
}

#[derive(serde::Deserialize)]
pub struct VersionedForm {
    csrf: String,
    version: String,
}

#[derive(serde::Deserialize)]
pub struct ReplaceCredentialForm {
    csrf: String,
    version: String,
    #[serde(default)]
    reason: String,
}

/// Withdraws a case's unseen password and issues a new one (a link that expired, or was
/// opened by someone else).
pub async fn replace_credential(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<ReplaceCredentialForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let version = form.version.trim().parse().ok();
    let result = state
        .engine
        .replace_credential(&reference, &user.actor(), &form.reason, version)
        .await;
    act_then_show(
        &state,
        &user,
        token,
        &reference,
        "credential_replaced",
        result.map(drop).map_err(WebError::from),
    )
    .await
}

/// Asks the sender of an email that came with no form for the form.
pub async fn request_form(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<VersionedForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let version = form.version.trim().parse().ok();
    let result = state.engine.request_form(&reference, &user.actor(), version).await;
    act_then_show(
        &state,
        &user,
        token,
        &reference,
        "form_requested",
        result.map(drop).map_err(WebError::from),
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct ClaimForm {
    csrf: String,
    /// `yes`: take the case from the colleague who has it.
    #[serde(default)]
    confirm: String,
}

pub async fn claim(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<ClaimForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    if form.confirm != "yes" {
        // A colleague's case is taken only when asked twice.
        let mut conn = state.engine.db().pool.acquire().await?;
        let case = storage::case_by_reference(&mut conn, &reference)
            .await?
            .ok_or(WebError::NotFound)?;
        let holder = match case.assignee_id.filter(|id| *id != user.0.id) {
            Some(id) => storage::user_email_by_id(&mut conn, id).await?,
            None => None,
        };
        drop(conn);
        if let Some(holder) = holder {
            return show_case(
                &state,
                &user,
                token,
                &reference,
                Outcome::TakeOver(holder),
                RequestConnection::default(),
            )
            .await;
        }
    }
    let result = assign_case(&state, &user, &reference, Some(&user.0)).await;
    act_then_show(&state, &user, token, &reference, "claimed", result).await
}

#[derive(serde::Deserialize)]
pub struct VerifyForm {
    csrf: String,
    how: String,
    version: Option<i64>,
}

/// Records that the caseworker verified the form's signatory, and how: the signatory joins the
/// register and the case's rules run again.
pub async fn verify_signatory(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<VerifyForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let result = state
        .engine
        .verify_signatory(&reference, &form.how, &user.actor(), form.version)
        .await
        .map(|_| ())
        .map_err(WebError::from);
    act_then_show(&state, &user, token, &reference, "signatory_verified", result).await
}

#[derive(serde::Deserialize)]
pub struct NoteForm {
    csrf: String,
    body: String,
}

pub async fn add_note(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<NoteForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    if form.body.trim().is_empty() {
        return Err(WebError::BadRequest("A note cannot be empty.".into()));
    }
    let mut tx = state.engine.db().begin_write().await?;
    let case = storage::case_by_reference(&mut tx, &reference)
        .await?
        .ok_or(WebError::NotFound)?;
    storage::add_note(&mut tx, case.id, &user.0.email, form.body.trim(), state.engine.now_ms()).await?;
    tx.commit().await?;
    Ok(Redirect::to(&format!("/cases/{reference}?done=note#notes")).into_response())
}

/// Keys the fields of a printed, flattened or scanned form (or puts an unclassified case in a
/// workflow), then the rules run again.
pub async fn key_fields(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let value = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    check_csrf(&token, &value("csrf"))?;
    let workflow = Some(value("workflow")).filter(|w| !w.is_empty());
    let fields: std::collections::BTreeMap<String, String> = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("field.")
                .map(|name| (name.to_string(), v.trim().to_string()))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let result = if fields.is_empty() && workflow.is_none() {
        Err(WebError::BadRequest("Key at least one field.".into()))
    } else {
        state
            .engine
            .key_fields(&reference, workflow.as_deref(), &fields, &user.actor())
            .await
            .map(drop)
            .map_err(WebError::from)
    };
    act_then_show(&state, &user, token, &reference, "keyed", result).await
}

#[derive(serde::Deserialize)]
pub struct AssignForm {
    csrf: String,
    /// A staff email, or empty to unassign.
    #[serde(default)]
    assignee: String,
}

pub(super) async fn assign_case(
    state: &AppState,
    actor: &CurrentUser,
    reference: &str,
    assignee: Option<&crate::users::User>,
) -> Result<(), WebError> {
    let assignee = assignee.map(|u| (u.id, u.email.as_str()));
    state.engine.assign(reference, assignee, &actor.actor(), None).await?;
    Ok(())
}

pub async fn assign(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
    Path(reference): Path<String>,
    Form(form): Form<AssignForm>,
) -> Result<Response, WebError> {
    check_csrf(&token, &form.csrf)?;
    let assignee = if form.assignee.trim().is_empty() {
        None
    } else {
        let mut conn = state.engine.db().pool.acquire().await?;
        let found = crate::users::find_by_email(&mut conn, &form.assignee)
            .await?
            .filter(|u| !u.disabled);
        drop(conn);
        match found {
            Some(user) => Some(user),
            None => {
                let problem = WebError::BadRequest(format!("There is no active member of staff {}.", form.assignee));
                return act_then_show(&state, &user, token, &reference, "assigned", Err(problem)).await;
            }
        }
    };
    let result = assign_case(&state, &user, &reference, assignee.as_ref()).await;
    act_then_show(&state, &user, token, &reference, "assigned", result).await
}
