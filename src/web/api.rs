//! The JSON API, `/api/v1`: cases (the queue's list with its filters, search and keyset
//! pages; one case with its fields, findings, events and correspondence; transitions with the
//! version the caller saw; notes; the original email and its attachments), the managers'
//! reports, organisations, and the workers' health. Other systems call it with a bearer token
//! (`countersign tokens create`); a signed-in member of staff may read it with their session.
//!
//! The OpenAPI 3.1 document (`/api/v1/openapi.json`) is generated from these handlers and
//! types by utoipa, so it cannot drift from them; a test checks every route against it and
//! schemathesis checks the running server against it. Every error is
//! `{ "error": { "code", "message" } }`, also when a path, query or body cannot be read.
//!
//! The first, unversioned addresses (`/api/cases`, `/api/cases/{reference}`, `/api/health`)
//! redirect permanently (308) to their `/api/v1` equivalents.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::ApiError;
use super::queue::{QueueFilter, load_queue};
use super::reports::PeriodQuery;
use super::view::download;
use super::{Access, AppState, RequestConnection, Route, WebError};
use crate::storage;
use crate::workflow::{Actor, TransitionRequest};

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/api/v1/openapi.json", Access::Public, openapi_document),
        Route::get("/api/v1/cases", Access::Staff, list_cases),
        Route::get("/api/v1/cases/{reference}", Access::Staff, get_case),
        Route::post("/api/v1/cases/{reference}/transitions", Access::Staff, fire_transition),
        Route::post("/api/v1/cases/{reference}/notes", Access::Staff, add_note),
        Route::post(
            "/api/v1/cases/{reference}/signatory-verification",
            Access::Staff,
            verify_signatory,
        ),
        Route::get("/api/v1/cases/{reference}/messages/{id}", Access::Staff, original_email),
        Route::get("/api/v1/cases/{reference}/attachments/{id}", Access::Staff, attachment),
        Route::get("/api/v1/cases/{reference}/evidence", Access::Staff, evidence_pack),
        Route::get("/api/v1/reports", Access::Manager, report),
        Route::get("/api/v1/reports/dashboard", Access::Manager, dashboard),
        Route::get("/api/v1/reports/lifecycle", Access::Manager, lifecycle),
        Route::get("/api/v1/organisations", Access::Staff, organisations),
        Route::get("/api/v1/health", Access::Staff, health),
        // The first addresses, before the API had a version.
        Route::get("/api/cases", Access::Public, moved),
        Route::get("/api/cases/{reference}", Access::Public, moved),
        Route::get("/api/health", Access::Public, moved),
    ]
}

/// The API's OpenAPI document, generated from the handlers below.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Countersign API",
        version = "1",
        description = "Read and drive Open Exeter access-request cases. Authenticate with `Authorization: Bearer <token>` (`countersign tokens create`)."
    ),
    paths(
        list_cases,
        get_case,
        fire_transition,
        add_note,
        verify_signatory,
        original_email,
        attachment,
        evidence_pack,
        report,
        dashboard,
        lifecycle,
        organisations,
        health
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, as JSON.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_document() -> Response {
    Json(openapi()).into_response()
}

/// Where an unversioned address went: the same path and query under `/api/v1`.
async fn moved(OriginalUri(uri): OriginalUri) -> Response {
    let rest = uri.path().strip_prefix("/api").unwrap_or(uri.path());
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Redirect::permanent(&format!("/api/v1{rest}{query}")).into_response()
}

// ---- Who is calling ---------------------------------------------------------------------------

/// The caller, as the access check found them: a member of staff (by session) or a service
/// account (by bearer token). What they do is recorded under [`ApiCaller::actor`].
#[derive(Debug, Clone)]
pub struct ApiCaller {
    pub actor: Actor,
    /// The staff account's id (for "my cases"); none for a token.
    pub user_id: Option<i64>,
    /// Whether the call came with a bearer token rather than a session cookie.
    pub by_token: bool,
}

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ApiCaller>()
            .cloned()
            .ok_or(ApiError(WebError::SignInRequired))
    }
}

impl ApiCaller {
    /// Changes need a token: a session cookie is sent by the browser to any site's request,
    /// and the API's changes carry no CSRF token.
    fn may_change(&self) -> Result<(), ApiError> {
        if self.by_token {
            Ok(())
        } else {
            Err(ApiError(WebError::Forbidden(
                "changes through the API need a bearer token (countersign tokens create)".into(),
            )))
        }
    }
}

// ---- Inputs whose errors are JSON too --------------------------------------------------------

/// An extractor of the request's parts (`Query`, `Path`) whose refusal is a JSON 400, not
/// axum's plain text.
pub struct ApiInput<E>(pub E);

impl<E> FromRequestParts<AppState> for ApiInput<E>
where
    E: FromRequestParts<AppState> + Send,
    E::Rejection: std::fmt::Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        E::from_request_parts(parts, state)
            .await
            .map(ApiInput)
            .map_err(|e| ApiError(WebError::BadRequest(e.to_string())))
    }
}

/// A JSON body, read as `T`; a malformed one is a JSON 400.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state)
            .await
            .map_err(|e: JsonRejection| ApiError(WebError::BadRequest(e.body_text())))?;
        Ok(ApiJson(value))
    }
}

/// Refuses text no person or system means to send (control characters, including NUL, which
/// PostgreSQL would refuse deep inside a query): a 400 here, never a 500 there.
fn plain(name: &str, text: &str) -> Result<(), ApiError> {
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(ApiError(WebError::BadRequest(format!(
            "`{name}` contains control characters"
        ))));
    }
    Ok(())
}

// ---- What the API answers with ---------------------------------------------------------------

/// Every error: a stable code and a message for people.
#[derive(serde::Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `sign_in_required`, `forbidden`, `not_found`, `conflict`, `bad_request` or `internal`.
    pub code: String,
    pub message: String,
}

/// A case in a list.
#[derive(serde::Serialize, ToSchema)]
pub struct CaseSummary {
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    pub organisation_name: Option<String>,
    pub ods_code: Option<String>,
    /// Each finding once, in plain English.
    pub findings: Vec<String>,
    /// Working days since it arrived.
    pub age_working_days: i64,
    /// When its SLA runs out (RFC 3339), if it has one.
    pub due_at: Option<String>,
    /// `ok`, `at_risk`, `breached`, `paused` or `none`.
    pub sla: String,
    pub assignee: Option<String>,
}

/// A page of cases, and the cursor for the next (absent on the last page).
#[derive(serde::Serialize, ToSchema)]
pub struct CaseList {
    pub cases: Vec<CaseSummary>,
    pub next: Option<String>,
}

/// The queue's filters.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CaseListQuery {
    /// `open` (the default), `closed` or `all`.
    #[serde(default)]
    pub status: Option<String>,
    /// A workflow state, e.g. `needs_review`.
    #[serde(default)]
    pub state: Option<String>,
    /// A workflow name, e.g. `primary_user_gp`.
    #[serde(default)]
    pub workflow: Option<String>,
    /// A finding code, e.g. `signatory_role_not_allowed`.
    #[serde(default)]
    pub finding: Option<String>,
    /// `unassigned` (or `mine`, for a member of staff).
    #[serde(default)]
    pub assignee: Option<String>,
    /// `1`: only cases past their SLA.
    #[serde(default)]
    pub overdue: Option<String>,
    /// A reference, organisation name or ODS code, sender, or proposed user's name.
    #[serde(default)]
    pub q: Option<String>,
    /// The `next` cursor of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

/// A finding on a case's form.
#[derive(serde::Serialize, ToSchema)]
pub struct FindingView {
    pub code: String,
    /// The finding in plain English.
    pub label: String,
    /// The form field it is about.
    pub field: Option<String>,
    pub message: String,
}

/// One entry of the case's event log.
#[derive(serde::Serialize, ToSchema)]
pub struct EventView {
    /// RFC 3339.
    pub at: String,
    pub actor: String,
    pub actor_role: String,
    /// What happened: `created`, `transition`, `field_keyed`, `reply_received`, ...
    pub kind: String,
    pub transition: Option<String>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub reason: Option<String>,
}

/// An attachment of one of the case's emails.
#[derive(serde::Serialize, ToSchema)]
pub struct AttachmentView {
    pub id: i64,
    pub filename: Option<String>,
    /// The type detected from its bytes, not the one the sender claimed.
    pub detected_type: Option<String>,
    pub size: i64,
}

/// An email that came in about the case.
#[derive(serde::Serialize, ToSchema)]
pub struct MessageView {
    pub id: i64,
    /// `origin`, `reply`, `auto_reply`, `duplicate`, `bounce`...
    pub relation: String,
    pub from: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339.
    pub received_at: String,
    /// Whether the original is still kept (retention clears it).
    pub original_kept: bool,
    /// Who sent it: `verdict` (`pass`, `fail`, `missing`, `temporary`), `method` or `reason`,
    /// `decided_by` (`authentication_results`, `dkim`, `arc`, `exchange_internal`, `none`) and
    /// `own_check` (every DKIM signature: domain, selector, result, alignment).
    #[schema(value_type = Object)]
    pub sender_authentication: serde_json::Value,
    pub attachments: Vec<AttachmentView>,
}

/// An email we sent, or hold back, about the case.
#[derive(serde::Serialize, ToSchema)]
pub struct MailView {
    pub template: String,
    pub recipient: Option<String>,
    /// `pending`, `sent`, `failed` or `suppressed`.
    pub status: String,
    /// Why it was held back, or the last error.
    pub note: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// A case's timer.
#[derive(serde::Serialize, ToSchema)]
pub struct TimerView {
    pub name: String,
    /// RFC 3339.
    pub due_at: String,
    /// `pending`, `fired` or `cancelled`.
    pub status: String,
}

/// A staff note on a case.
#[derive(serde::Serialize, ToSchema)]
pub struct NoteView {
    pub author: String,
    pub text: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One case, whole.
#[derive(serde::Serialize, ToSchema)]
pub struct CaseDetail {
    pub reference: String,
    pub workflow: Option<String>,
    pub state: String,
    /// Send it back with a transition: a change made since is refused (409).
    pub version: i64,
    pub fields: BTreeMap<String, String>,
    pub findings: Vec<FindingView>,
    pub ods_code: Option<String>,
    pub organisation_name: Option<String>,
    pub sender: Option<String>,
    /// Values recorded by transitions, e.g. `open_exeter_user_id`.
    pub recorded: BTreeMap<String, String>,
    /// The reference of the case this one repeats, when it is marked a duplicate.
    pub duplicate_of: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    pub due_at: Option<String>,
    pub sla_paused: bool,
    pub events: Vec<EventView>,
    pub messages: Vec<MessageView>,
    pub mail: Vec<MailView>,
    pub timers: Vec<TimerView>,
    pub notes: Vec<NoteView>,
    /// Whether the case's hash-chained event log is intact, and where not.
    pub event_chain: crate::audit::ChainVerdict,
    /// The form's digital signatures: whether each matches the file, who signed, whether the
    /// certificate is trusted, and what changed after signing.
    pub digital_signatures: Vec<crate::pdf::signature::DigitalSignatureView>,
}

/// A transition to fire.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct TransitionBody {
    /// The state to move to (one of the workflow's transitions from the case's state).
    pub to: String,
    /// The case's `version` as the caller last read it.
    pub expected_version: i64,
    /// Why (some transitions require it).
    #[serde(default)]
    pub reason: Option<String>,
    /// Values the transition records, e.g. `{"open_exeter_user_id": "ABC123"}`.
    #[serde(default)]
    pub recorded: BTreeMap<String, String>,
    /// For a move to `duplicate`: the reference of the case this one repeats.
    #[serde(default)]
    pub duplicate_of: Option<String>,
}

/// A signatory verified: how, and the case version the caller saw.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct VerificationBody {
    /// How the signatory was verified (for example: phoned the practice's listed number).
    /// Not blank, at most 2,000 characters, no control characters but tab and line breaks
    /// (the pattern says so, as `plain` checks it).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub how: String,
    pub expected_version: i64,
}

/// A note to add.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct NoteBody {
    /// Not blank, at most 10,000 characters, no control characters but tab and line breaks.
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub text: String,
}

/// An organisation, with how many cases it has.
#[derive(serde::Serialize, ToSchema)]
pub struct OrganisationView {
    pub ods_code: String,
    pub name: String,
    /// `gp_practice` or `other`.
    pub kind: String,
    pub cases: i64,
}

#[derive(serde::Serialize, ToSchema)]
pub struct OrganisationList {
    pub organisations: Vec<OrganisationView>,
}

#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrganisationQuery {
    /// Part of a name or ODS code.
    #[serde(default)]
    pub q: Option<String>,
    /// At most this many (default 100, at most 500).
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// First day, `YYYY-MM-DD` (default: 13 weeks before `to`).
    #[serde(default)]
    pub from: Option<String>,
    /// Last day, `YYYY-MM-DD` (default: the end of this week).
    #[serde(default)]
    pub to: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

// ---- Handlers --------------------------------------------------------------------------------

/// The queue: cases with the same filters and search as the caseworkers' queue, a page at a
/// time (pass `next` back as `after`).
#[utoipa::path(get, path = "/api/v1/cases", tag = "cases", params(CaseListQuery),
    responses(
        (status = 200, description = "A page of cases", body = CaseList),
        (status = 400, description = "A filter cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    ))]
pub async fn list_cases(
    State(state): State<AppState>,
    caller: ApiCaller,
    conn: RequestConnection,
    ApiInput(Query(query)): ApiInput<Query<CaseListQuery>>,
) -> Result<Json<CaseList>, ApiError> {
    let take = |name: &str, value: Option<String>| -> Result<String, ApiError> {
        let value = value.unwrap_or_default();
        plain(name, &value)?;
        Ok(value)
    };
    let status = take("status", query.status)?;
    if !matches!(status.as_str(), "" | "open" | "closed" | "all") {
        return Err(ApiError(WebError::BadRequest("`status` is open, closed or all".into())));
    }
    let filter = QueueFilter {
        status,
        state: take("state", query.state)?,
        workflow: take("workflow", query.workflow)?,
        finding: take("finding", query.finding)?,
        assignee: take("assignee", query.assignee)?,
        overdue: take("overdue", query.overdue)?,
        q: take("q", query.q)?,
        after: take("after", query.after)?,
        ..QueueFilter::default()
    };
    let mut conn = conn.acquire(&state).await?;
    // A token has no cases of its own: "mine" finds none.
    let (rows, next) = load_queue(&state, &mut conn, &filter, caller.user_id.unwrap_or(0)).await?;
    drop(conn);
    let cases = rows
        .into_iter()
        .map(|row| CaseSummary {
            reference: row.reference,
            workflow: row.workflow,
            state: row.state,
            organisation_name: row.org_name,
            ods_code: row.org_ods_code,
            findings: row.findings,
            age_working_days: row.age_working_days,
            due_at: row.due_at.map(rfc3339),
            sla: row.sla.to_string(),
            assignee: row.assignee,
        })
        .collect();
    Ok(Json(CaseList { cases, next }))
}

/// The case with this reference, or a JSON 404.
async fn case_named(conn: &mut sqlx::AnyConnection, reference: &str) -> Result<storage::CaseRecord, ApiError> {
    plain("reference", reference)?;
    Ok(storage::case_by_reference(conn, reference)
        .await
        .map_err(WebError::from)?
        .ok_or(WebError::NotFound)?)
}

/// One case: its fields, findings, event log, correspondence (each email in, with its
/// attachments; each email out), timers and notes.
#[utoipa::path(get, path = "/api/v1/cases/{reference}", tag = "cases",
    params(("reference" = String, Path, description = "The case reference, e.g. CS-2026-000123")),
    responses(
        (status = 200, description = "The case", body = CaseDetail),
        (status = 400, description = "The reference cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 404, description = "No such case", body = ErrorBody),
    ))]
pub async fn get_case(
    State(state): State<AppState>,
    _caller: ApiCaller,
    conn: RequestConnection,
    ApiInput(Path(reference)): ApiInput<Path<String>>,
) -> Result<Json<CaseDetail>, ApiError> {
    let mut conn = conn.acquire(&state).await?;
    let case = case_named(&mut conn, &reference).await?;
    Ok(Json(case_detail(&mut conn, case).await?))
}

async fn case_detail(conn: &mut sqlx::AnyConnection, case: storage::CaseRecord) -> Result<CaseDetail, ApiError> {
    // The events are read once, as the chain stores them, for the list and the chain's check.
    let chain = storage::read_case_chain(conn, case.id).await.map_err(WebError::from)?;
    let event_chain = crate::audit::verdict(case.id, chain.recorded_length, &chain.events);
    let events: Vec<storage::CaseEvent> = chain.events.into_iter().map(|stored| stored.event).collect();
    let messages = storage::messages_of_case(conn, case.id).await.map_err(WebError::from)?;
    let mail = storage::outbox_for_case(conn, case.id).await.map_err(WebError::from)?;
    let timers = storage::timers_for_case(conn, case.id).await.map_err(WebError::from)?;
    let notes = storage::notes_for_case(conn, case.id).await.map_err(WebError::from)?;
    let signatures = storage::form_signatures(conn, case.id).await.map_err(WebError::from)?;
    let duplicate_of = match case.duplicate_of {
        Some(id) => storage::case_by_id(conn, id)
            .await
            .map_err(WebError::from)?
            .map(|original| original.reference),
        None => None,
    };
    Ok(CaseDetail {
        reference: case.reference,
        workflow: case.workflow,
        state: case.state,
        version: case.version,
        fields: case.fields,
        findings: case
            .findings
            .into_iter()
            .map(|f| FindingView {
                code: f.code.as_str().to_string(),
                label: f.code.label().to_string(),
                field: f.field,
                message: f.message,
            })
            .collect(),
        ods_code: case.org_ods_code,
        organisation_name: case.org_name,
        sender: case.sender,
        recorded: case.recorded,
        duplicate_of,
        created_at: rfc3339(case.created_at),
        updated_at: rfc3339(case.updated_at),
        due_at: case.due_at.map(rfc3339),
        sla_paused: case.sla_paused_at.is_some(),
        events: events
            .into_iter()
            .map(|e| EventView {
                at: rfc3339(e.at),
                actor: e.actor,
                actor_role: e.actor_role,
                kind: e.kind.to_string(),
                transition: e.transition,
                from_state: e.from_state,
                to_state: e.to_state,
                reason: e.reason,
            })
            .collect(),
        messages: messages
            .into_iter()
            .map(|m| MessageView {
                id: m.id,
                relation: m.relation,
                from: m.from_address,
                subject: m.subject,
                received_at: rfc3339(m.received_at),
                original_kept: m.raw.is_some(),
                sender_authentication: serde_json::to_value(crate::dkim::SenderVerdict::from_stored(
                    &m.sender_auth_json,
                ))
                .unwrap_or_default(),
                attachments: m
                    .attachments
                    .into_iter()
                    .map(|a| AttachmentView {
                        id: a.id,
                        filename: a.filename,
                        detected_type: a.detected,
                        size: a.size,
                    })
                    .collect(),
            })
            .collect(),
        mail: mail
            .into_iter()
            .map(|m| MailView {
                template: m.template,
                recipient: m.recipient,
                status: m.status.to_string(),
                note: m.suppressed_reason.or(m.last_error),
                created_at: rfc3339(m.created_at),
            })
            .collect(),
        timers: timers
            .into_iter()
            .map(|t| TimerView {
                name: t.name,
                due_at: rfc3339(t.due_at),
                status: t.status.to_string(),
            })
            .collect(),
        notes: notes
            .into_iter()
            .map(|n| NoteView {
                author: n.author,
                text: n.body,
                created_at: rfc3339(n.created_at),
            })
            .collect(),
        event_chain,
        digital_signatures: crate::pdf::signature::DigitalSignatureView::of_form(&signatures),
    })
}

/// Fires a transition, as the token's service account, if the workflow allows it from the
/// case's state for the token's role. The case must still be at `expected_version`.
#[utoipa::path(post, path = "/api/v1/cases/{reference}/transitions", tag = "cases",
    params(("reference" = String, Path, description = "The case reference")),
    request_body = TransitionBody,
    responses(
        (status = 200, description = "The case after the transition", body = CaseDetail),
        (status = 400, description = "The request cannot be read, or the transition needs a reason or a recorded value", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not allowed for this role, four-eyes, or not by token", body = ErrorBody),
        (status = 404, description = "No such case", body = ErrorBody),
        (status = 409, description = "The case changed since `expected_version`, or the workflow has no such transition from its state", body = ErrorBody),
    ))]
pub async fn fire_transition(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiInput(Path(reference)): ApiInput<Path<String>>,
    ApiJson(body): ApiJson<TransitionBody>,
) -> Result<Json<CaseDetail>, ApiError> {
    caller.may_change()?;
    plain("reference", &reference)?;
    plain("to", &body.to)?;
    for (name, value) in &body.recorded {
        plain(name, name)?;
        plain(name, value)?;
    }
    if let Some(reason) = &body.reason {
        plain("reason", reason)?;
    }
    if let Some(original) = &body.duplicate_of {
        plain("duplicate_of", original)?;
    }
    let request = TransitionRequest {
        to: body.to,
        reason: body.reason.filter(|r| !r.trim().is_empty()),
        recorded: body.recorded.into_iter().collect(),
        expected_version: Some(body.expected_version),
        duplicate_of: body.duplicate_of,
        mail_text: None,
    };
    let updated = state
        .engine
        .transition(&reference, &request, &caller.actor)
        .await
        .map_err(WebError::from)?;
    tracing::info!(case = %updated.reference, actor = %caller.actor.name, to = %updated.state, "transition by API");
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    Ok(Json(case_detail(&mut conn, updated).await?))
}

/// Records that the caller verified the signatory the case's form names, and how: the
/// signatory joins the register for the organisation and the case's rules run again.
#[utoipa::path(post, path = "/api/v1/cases/{reference}/signatory-verification", tag = "cases",
    params(("reference" = String, Path, description = "The case reference")),
    request_body = VerificationBody,
    responses(
        (status = 200, description = "The case after the verification", body = CaseDetail),
        (status = 400, description = "No `how`, the request cannot be read, or the case names no signatory", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not by token", body = ErrorBody),
        (status = 404, description = "No such case", body = ErrorBody),
        (status = 409, description = "The case changed since `expected_version`", body = ErrorBody),
    ))]
pub async fn verify_signatory(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiInput(Path(reference)): ApiInput<Path<String>>,
    ApiJson(body): ApiJson<VerificationBody>,
) -> Result<Json<CaseDetail>, ApiError> {
    caller.may_change()?;
    plain("reference", &reference)?;
    plain("how", &body.how)?;
    if body.how.chars().count() > 2_000 {
        return Err(ApiError(WebError::BadRequest(
            "`how` is at most 2,000 characters.".into(),
        )));
    }
    let updated = state
        .engine
        .verify_signatory(&reference, &body.how, &caller.actor, Some(body.expected_version))
        .await
        .map_err(WebError::from)?;
    tracing::info!(case = %updated.reference, actor = %caller.actor.name, "signatory verified by API");
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    Ok(Json(case_detail(&mut conn, updated).await?))
}

/// Adds a note to the case, in the caller's name.
#[utoipa::path(post, path = "/api/v1/cases/{reference}/notes", tag = "cases",
    params(("reference" = String, Path, description = "The case reference")),
    request_body = NoteBody,
    responses(
        (status = 201, description = "The note as added", body = NoteView),
        (status = 400, description = "The note is empty or cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not by token", body = ErrorBody),
        (status = 404, description = "No such case", body = ErrorBody),
    ))]
pub async fn add_note(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiInput(Path(reference)): ApiInput<Path<String>>,
    ApiJson(body): ApiJson<NoteBody>,
) -> Result<Response, ApiError> {
    caller.may_change()?;
    let text = body.text.trim();
    plain("text", text)?;
    if text.is_empty() {
        return Err(ApiError(WebError::BadRequest("A note cannot be empty.".into())));
    }
    if text.chars().count() > 10_000 {
        return Err(ApiError(WebError::BadRequest(
            "A note is at most 10,000 characters.".into(),
        )));
    }
    let now = state.engine.now_ms();
    let mut tx = state.engine.db().begin_write().await.map_err(WebError::from)?;
    let case = case_named(&mut tx, &reference).await?;
    storage::add_note(&mut tx, case.id, &caller.actor.name, text, now)
        .await
        .map_err(WebError::from)?;
    tx.commit().await.map_err(WebError::from)?;
    let note = NoteView {
        author: caller.actor.name,
        text: text.to_string(),
        created_at: rfc3339(now),
    };
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

/// One of the case's emails exactly as it arrived (`message/rfc822`).
#[utoipa::path(get, path = "/api/v1/cases/{reference}/messages/{id}", tag = "cases",
    params(
        ("reference" = String, Path, description = "The case reference"),
        ("id" = i64, Path, description = "The message's id, from the case's `messages`"),
    ),
    responses(
        (status = 200, description = "The original email", content_type = "message/rfc822", body = Vec<u8>),
        (status = 400, description = "The address cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 404, description = "No such case, no such email of it, or no longer kept", body = ErrorBody),
    ))]
pub async fn original_email(
    State(state): State<AppState>,
    _caller: ApiCaller,
    ApiInput(Path((reference, id))): ApiInput<Path<(String, i64)>>,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let case = case_named(&mut conn, &reference).await?;
    let raw = storage::messages_of_case(&mut conn, case.id)
        .await
        .map_err(WebError::from)?
        .into_iter()
        .find(|m| m.id == id)
        .and_then(|m| m.raw)
        .ok_or(WebError::NotFound)?;
    Ok(download(raw, "message/rfc822", &format!("{reference}-{id}.eml"))?)
}

/// An attachment of one of the case's emails (a PDF form, usually), as sent.
#[utoipa::path(get, path = "/api/v1/cases/{reference}/attachments/{id}", tag = "cases",
    params(
        ("reference" = String, Path, description = "The case reference"),
        ("id" = i64, Path, description = "The attachment's id, from the case's `messages`"),
    ),
    responses(
        (status = 200, description = "The attachment's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "The address cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 404, description = "No such case, or no such attachment of it", body = ErrorBody),
    ))]
pub async fn attachment(
    State(state): State<AppState>,
    _caller: ApiCaller,
    ApiInput(Path((reference, id))): ApiInput<Path<(String, i64)>>,
) -> Result<Response, ApiError> {
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let case = case_named(&mut conn, &reference).await?;
    let (name, _, bytes) = storage::case_attachment(&mut conn, case.id, id)
        .await
        .map_err(WebError::from)?
        .ok_or(WebError::NotFound)?;
    Ok(download(
        bytes,
        "application/octet-stream",
        &name.unwrap_or_else(|| format!("attachment-{id}")),
    )?)
}

/// The case's evidence pack: a zip of its emails as they arrived, their attachments, the
/// fields read, the verdicts, the hash-chained event log, and `MANIFEST.sha256` (check it with
/// `sha256sum -c MANIFEST.sha256` in the unpacked folder).
#[utoipa::path(get, path = "/api/v1/cases/{reference}/evidence", tag = "cases",
    params(("reference" = String, Path, description = "The case reference")),
    responses(
        (status = 200, description = "The evidence pack", content_type = "application/zip", body = Vec<u8>),
        (status = 400, description = "The address cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 404, description = "No such case", body = ErrorBody),
    ))]
pub async fn evidence_pack(
    State(state): State<AppState>,
    caller: ApiCaller,
    ApiInput(Path(reference)): ApiInput<Path<String>>,
) -> Result<Response, ApiError> {
    let pack = crate::evidence::evidence_pack(state.engine.db(), &reference, state.engine.now_ms())
        .await
        .map_err(WebError::from)?
        .ok_or(WebError::NotFound)?;
    tracing::info!(case = %reference, actor = %caller.actor.name, "evidence pack downloaded");
    Ok(download(pack.bytes, "application/zip", &pack.file_name)?)
}

/// The managers' report for a period (by default the last 13 weeks), and the same figures for
/// the period before it: what `/reports` shows.
#[utoipa::path(get, path = "/api/v1/reports", tag = "reports", params(ReportQuery),
    responses(
        (status = 200, description = "The report and the previous period's", body = Object),
        (status = 400, description = "The dates cannot be read, or cover over five years", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "Managers and admins only", body = ErrorBody),
    ))]
pub async fn report(
    State(state): State<AppState>,
    _caller: ApiCaller,
    ApiInput(Query(query)): ApiInput<Query<ReportQuery>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let today = state.engine.clock().now().date_naive();
    let period = PeriodQuery::new(query.from.unwrap_or_default(), query.to.unwrap_or_default())
        .period(today)
        .map_err(WebError::BadRequest)?;
    // A shared report needs no read of the open cases.
    let both = state
        .reports
        .report_and_previous(&state.engine, period)
        .await
        .map_err(WebError::from)?;
    Ok(Json(serde_json::json!({
        "from": period.from.to_string(), "to": period.to.to_string(),
        "report": both.0, "previous": both.1,
    })))
}

/// The queue now: open cases by state, past their SLA, due within a working day, paused,
/// received today.
#[utoipa::path(get, path = "/api/v1/reports/dashboard", tag = "reports",
    responses(
        (status = 200, description = "The dashboard", body = Object),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "Managers and admins only", body = ErrorBody),
    ))]
pub async fn dashboard(State(state): State<AppState>, _caller: ApiCaller) -> Result<Json<serde_json::Value>, ApiError> {
    let now = state.reports.queue_now(&state.engine).await.map_err(WebError::from)?;
    Ok(Json(serde_json::to_value(&now.dashboard).map_err(WebError::internal)?))
}

/// The Open Exeter account register by commissioning region and by organisation (worst
/// first): what `/reports/lifecycle` shows.
#[utoipa::path(get, path = "/api/v1/reports/lifecycle", tag = "reports",
    responses(
        (status = 200, description = "The lifecycle report: `today`, `regions`, `organisations`", body = Object),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 403, description = "Managers and admins only", body = ErrorBody),
    ))]
pub async fn lifecycle(State(state): State<AppState>, _caller: ApiCaller) -> Result<Json<serde_json::Value>, ApiError> {
    let report = super::reports::lifecycle_report(&state).await?;
    Ok(Json(serde_json::to_value(&report).map_err(WebError::internal)?))
}

/// Organisations that have sent forms, by name, with how many cases each has.
#[utoipa::path(get, path = "/api/v1/organisations", tag = "organisations", params(OrganisationQuery),
    responses(
        (status = 200, description = "Organisations", body = OrganisationList),
        (status = 400, description = "The query cannot be read", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    ))]
pub async fn organisations(
    State(state): State<AppState>,
    _caller: ApiCaller,
    ApiInput(Query(query)): ApiInput<Query<OrganisationQuery>>,
) -> Result<Json<OrganisationList>, ApiError> {
    let text = query.q.unwrap_or_default();
    plain("q", &text)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let found = storage::search_organisations(&mut conn, &text, limit)
        .await
        .map_err(WebError::from)?;
    Ok(Json(OrganisationList {
        organisations: found
            .into_iter()
            .map(|o| OrganisationView {
                ods_code: o.ods,
                name: o.name,
                kind: o.kind,
                cases: o.cases,
            })
            .collect(),
    }))
}

/// What the workers are doing: each mailbox's last poll, backlog and error; messages not
/// ingested; outbound mail by status; timers waiting.
#[utoipa::path(get, path = "/api/v1/health", tag = "operations",
    responses(
        (status = 200, description = "The workers' state", body = Object),
        (status = 401, description = "No valid token or session", body = ErrorBody),
    ))]
pub async fn health(State(state): State<AppState>, _caller: ApiCaller) -> Result<Json<serde_json::Value>, ApiError> {
    let mut conn = state.engine.db().pool.acquire().await.map_err(WebError::from)?;
    let mailboxes = storage::mailbox_health(&mut conn).await.map_err(WebError::from)?;
    let ingest_errors = storage::open_ingest_errors(&mut conn).await.map_err(WebError::from)?;
    let mut outbox = serde_json::Map::new();
    for (status, count) in storage::outbox_counts_by_status(&mut conn)
        .await
        .map_err(WebError::from)?
    {
        outbox.insert(status, count.into());
    }
    let timers = storage::pending_timer_count(&mut conn).await.map_err(WebError::from)?;
    let live: Vec<serde_json::Value> = state
        .live_mail_sources
        .iter()
        .map(|(name, health)| serde_json::json!({ "source": name, "health": health.snapshot() }))
        .collect();
    Ok(Json(serde_json::json!({
        "mail_sources": live, "mailboxes": mailboxes, "ingest_errors": ingest_errors,
        "outbox": outbox, "pending_timers": timers,
    })))
}

/// The actor an API token acts as.
pub fn token_actor(token: &storage::ApiToken) -> Actor {
    Actor {
        name: crate::tokens::actor_name(token),
        role: token.role,
    }
}

/// The actor a signed-in member of staff acts as.
pub fn staff_actor(user: &storage::User) -> Actor {
    Actor {
        name: user.email.clone(),
        role: user.role,
    }
}
