//! The JSON API, `/api/v1`, on both backends: bearer tokens (made, used, expired, revoked,
//! by role), every route in the generated OpenAPI document, transitions with the version the
//! caller saw, notes, the original email and its attachments, JSON errors for every bad input,
//! and the old unversioned addresses redirecting.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use countersign::storage;
use countersign::web::{Access, api, routes};
use countersign::workflow::ActorRole;
use serde_json::{Value, json};

use crate::common::{TestApp, on_both_backends};
use crate::web::{Browser, Page};

/// Makes a token with `role`, expiring at `expires_at`; returns the token itself.
pub(crate) async fn token(app: &TestApp, name: &str, role: ActorRole, expires_at: Option<i64>) -> String {
    let mut conn = app.db().pool.acquire().await.unwrap();
    let (_, secret) = countersign::tokens::issue(&mut conn, name, role, expires_at, app.now_ms())
        .await
        .unwrap();
    secret
}

/// Sends a request with `token` as its bearer, and `body` as JSON when there is one.
pub(crate) async fn call(browser: &mut Browser, method: &str, path: &str, token: &str, body: Option<Value>) -> Page {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    };
    browser.send(request.unwrap()).await
}

pub(crate) fn json_of(page: &Page) -> Value {
    serde_json::from_str(&page.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", page.body))
}

/// Asserts the page is a JSON error with this status and code.
fn assert_error(page: &Page, status: StatusCode, code: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert_eq!(json_of(page)["error"]["code"], code, "{}", page.body);
    assert!(
        json_of(page)["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn every_api_route_is_in_the_openapi_document_and_every_documented_path_is_a_route() {
    let document = serde_json::to_value(api::openapi()).unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().unwrap();
    let routes: Vec<_> = routes()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/") && r.path != "/api/v1/openapi.json")
        .collect();
    assert!(routes.len() >= 10, "{}", routes.len());
    for route in &routes {
        let operation = &paths
            .get(route.path)
            .unwrap_or_else(|| panic!("{} is not in the document", route.path))[route.method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
        let responses = operation["responses"].as_object().unwrap();
        if route.access != Access::Public {
            assert!(
                responses.contains_key("401"),
                "{} {} documents no 401",
                route.method,
                route.path
            );
        }
    }
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            assert!(
                routes
                    .iter()
                    .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                "{method} {path} is documented but not served"
            );
        }
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn tokens_authenticate_by_role_until_they_expire_or_are_revoked() {
    on_both_backends(|app| async move {
        app.receive_fixture("mail/gp_form.eml").await;
        let mut browser = Browser::new(&app).await;
        let reader = token(&app, "reader", ActorRole::Caseworker, None).await;
        let page = call(&mut browser, "GET", "/api/v1/cases", &reader, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(json_of(&page)["cases"].as_array().unwrap().len(), 1);

        // Only the hash is kept, and the use is recorded.
        let mut conn = app.db().pool.acquire().await.unwrap();
        let stored = storage::api_token_by_name(&mut conn, "reader").await.unwrap().unwrap();
        assert!(stored.last_used_at.is_some());
        assert!(storage::api_token_by_hash(&mut conn, &reader).await.unwrap().is_none());
        drop(conn);

        // A caseworker's token may not read the managers' reports; a manager's may.
        let page = call(&mut browser, "GET", "/api/v1/reports", &reader, None).await;
        assert_error(&page, StatusCode::FORBIDDEN, "forbidden");
        let manager = token(&app, "dashboards", ActorRole::Manager, None).await;
        let page = call(
            &mut browser,
            "GET",
            "/api/v1/reports?from=2026-11-01&to=2026-11-30",
            &manager,
            None,
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(json_of(&page)["from"], "2026-11-01");
        assert!(json_of(&page)["report"].is_object());
        let page = call(&mut browser, "GET", "/api/v1/reports/dashboard", &manager, None).await;
        assert_eq!(json_of(&page)["open"], 1, "{}", page.body);

        // Unknown, expired and revoked tokens are all refused alike.
        let page = call(&mut browser, "GET", "/api/v1/cases", "cs_not-a-real-token", None).await;
        assert_error(&page, StatusCode::UNAUTHORIZED, "sign_in_required");
        let expired = token(&app, "old", ActorRole::Caseworker, Some(app.now_ms() - 1)).await;
        let page = call(&mut browser, "GET", "/api/v1/cases", &expired, None).await;
        assert_error(&page, StatusCode::UNAUTHORIZED, "sign_in_required");
        let mut conn = app.db().pool.acquire().await.unwrap();
        countersign::tokens::revoke(&mut conn, "reader", app.now_ms())
            .await
            .unwrap();
        drop(conn);
        let page = call(&mut browser, "GET", "/api/v1/cases", &reader, None).await;
        assert_error(&page, StatusCode::UNAUTHORIZED, "sign_in_required");

        // A name is never reused.
        let mut conn = app.db().pool.acquire().await.unwrap();
        let again = countersign::tokens::issue(&mut conn, "reader", ActorRole::Caseworker, None, app.now_ms()).await;
        assert!(
            matches!(again, Err(countersign::tokens::TokenError::NameTaken(_))),
            "{again:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_service_account_fires_a_transition_with_the_version_it_saw_and_a_stale_one_is_refused() {
    on_both_backends(|app| async move {
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let mut browser = Browser::new(&app).await;
        let bot = token(&app, "triage-bot", ActorRole::Caseworker, None).await;
        let case = json_of(&call(&mut browser, "GET", &format!("/api/v1/cases/{reference}"), &bot, None).await);
        assert_eq!(case["state"], "validated");
        assert_eq!(case["messages"][0]["relation"], "origin");
        assert!(case["events"].as_array().unwrap().iter().any(|e| e["kind"] == "created"));
        let version = case["version"].as_i64().unwrap();

        let body = json!({ "to": "awaiting_information", "expected_version": version, "reason": "the signatory's role is missing" });
        let path = format!("/api/v1/cases/{reference}/transitions");
        let page = call(&mut browser, "POST", &path, &bot, Some(body.clone())).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let moved = json_of(&page);
        assert_eq!(moved["state"], "awaiting_information");
        assert_eq!(moved["version"].as_i64().unwrap(), version + 1);
        let last = moved["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["actor"], "token:triage-bot", "the token's name is the actor: {last}");
        assert_eq!(last["actor_role"], "caseworker");

        // The same request again carries the old version: refused, and nothing changes.
        let page = call(&mut browser, "POST", &path, &bot, Some(body)).await;
        assert_error(&page, StatusCode::CONFLICT, "conflict");
        assert_eq!(app.case(&reference).await.version, version + 1);

        // A move the workflow does not allow from here, and one to a state that does not exist.
        let version = version + 1;
        for to in ["provisioned", "nowhere"] {
            let page = call(&mut browser, "POST", &path, &bot, Some(json!({ "to": to, "expected_version": version }))).await;
            assert!(
                matches!(page.status, StatusCode::CONFLICT | StatusCode::BAD_REQUEST),
                "{to}: {} {}",
                page.status,
                page.body
            );
            assert!(json_of(&page)["error"]["code"].is_string());
        }
        assert_eq!(app.case(&reference).await.state, "awaiting_information");

        // A signed-in person may read through the API, but changes need a token (no CSRF here).
        let mut person = Browser::new(&app).await;
        person.sign_in_as(&app, "cw@nhs.net", ActorRole::Caseworker).await;
        assert_eq!(person.get(&format!("/api/v1/cases/{reference}")).await.status, StatusCode::OK);
        let request = Request::post(&path)
            .header(header::COOKIE, person.cookie_header())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "to": "rejected", "expected_version": version, "reason": "x" }).to_string()))
            .unwrap();
        assert_error(&person.send(request).await, StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(app.case(&reference).await.state, "awaiting_information");
    })
    .await;
}

#[tokio::test]
async fn notes_the_original_email_and_its_pdf_come_through_the_api() {
    on_both_backends(|app| async move {
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let mut browser = Browser::new(&app).await;
        let bot = token(&app, "archiver", ActorRole::Caseworker, None).await;
        let page = call(
            &mut browser,
            "POST",
            &format!("/api/v1/cases/{reference}/notes"),
            &bot,
            Some(json!({ "text": "  copied to the archive  " })),
        )
        .await;
        assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
        assert_eq!(json_of(&page)["text"], "copied to the archive");
        let case = json_of(&call(&mut browser, "GET", &format!("/api/v1/cases/{reference}"), &bot, None).await);
        assert_eq!(case["notes"][0]["author"], "token:archiver");
        let page = call(
            &mut browser,
            "POST",
            &format!("/api/v1/cases/{reference}/notes"),
            &bot,
            Some(json!({ "text": "   " })),
        )
        .await;
        assert_error(&page, StatusCode::BAD_REQUEST, "bad_request");

        let message = &case["messages"][0];
        let page = call(
            &mut browser,
            "GET",
            &format!("/api/v1/cases/{reference}/messages/{}", message["id"]),
            &bot,
            None,
        )
        .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.headers[header::CONTENT_TYPE], "message/rfc822");
        assert_eq!(
            page.body.as_bytes(),
            crate::common::fixture("mail/gp_form.eml").as_slice()
        );

        let attachment = &message["attachments"][0];
        let page = call(
            &mut browser,
            "GET",
            &format!("/api/v1/cases/{reference}/attachments/{}", attachment["id"]),
            &bot,
            None,
        )
        .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.headers[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .starts_with("attachment;")
        );
        assert!(page.body.starts_with("%PDF-"), "the form as sent");
        // The evidence pack (its contents are checked in `evidence::`).
        let page = call(
            &mut browser,
            "GET",
            &format!("/api/v1/cases/{reference}/evidence"),
            &bot,
            None,
        )
        .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.headers[header::CONTENT_TYPE], "application/zip");
        assert!(page.body.starts_with("PK"), "a zip");
        let page = call(&mut browser, "GET", "/api/v1/cases/CS-2099-999999/evidence", &bot, None).await;
        assert_error(&page, StatusCode::NOT_FOUND, "not_found");
        // Another case's attachment is never reached through this case's address.
        let page = call(
            &mut browser,
            "GET",
            &format!("/api/v1/cases/{reference}/attachments/999999"),
            &bot,
            None,
        )
        .await;
        assert_error(&page, StatusCode::NOT_FOUND, "not_found");
    })
    .await;
}

#[tokio::test]
async fn every_bad_input_is_a_json_error_and_the_old_addresses_redirect() {
    on_both_backends(|app| async move {
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let mut browser = Browser::new(&app).await;
        let bot = token(&app, "fuzzer", ActorRole::Caseworker, None).await;
        let transitions = format!("/api/v1/cases/{reference}/transitions");
        for (method, path, body) in [
            ("GET", "/api/v1/cases?status=sideways".to_string(), None),
            ("GET", "/api/v1/cases?q=%00".to_string(), None),
            ("GET", "/api/v1/cases/%00".to_string(), None),
            (
                "GET",
                format!("/api/v1/cases/{reference}/attachments/not-a-number"),
                None,
            ),
            ("GET", "/api/v1/organisations?limit=many".to_string(), None),
            ("GET", "/api/v1/reports?from=yesterday".to_string(), None),
            ("POST", transitions.clone(), Some(json!({ "to": "rejected" }))),
            ("POST", transitions.clone(), Some(json!("not an object"))),
        ] {
            let bot = if path.contains("/reports") {
                token(&app, "fuzzer-manager", ActorRole::Manager, None).await
            } else {
                bot.clone()
            };
            let page = call(&mut browser, method, &path, &bot, body).await;
            assert_error(&page, StatusCode::BAD_REQUEST, "bad_request");
        }
        let page = call(&mut browser, "GET", "/api/v1/cases/CS-2026-999999", &bot, None).await;
        assert_error(&page, StatusCode::NOT_FOUND, "not_found");
        let page = call(&mut browser, "GET", "/api/v1/no-such-thing", &bot, None).await;
        assert_error(&page, StatusCode::NOT_FOUND, "not_found");

        let page = browser.get("/api/cases?state=validated").await;
        assert_eq!(page.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(page.location.as_deref(), Some("/api/v1/cases?state=validated"));
        let page = browser.get(&format!("/api/cases/{reference}")).await;
        assert_eq!(page.location, Some(format!("/api/v1/cases/{reference}")));

        // The document is public, so that clients can be generated without a token.
        let document = browser.get("/api/v1/openapi.json").await;
        assert_eq!(document.status, StatusCode::OK);
        let document = json_of(&document);
        assert!(document["paths"]["/api/v1/cases"].is_object());
        // What the API refuses in a note or a verification is declared, so that clients (and
        // schemathesis) send what it takes: not blank, not too long, no control characters.
        for (schema, field, longest) in [("NoteBody", "text", 10_000), ("VerificationBody", "how", 2_000)] {
            let declared = &document["components"]["schemas"][schema]["properties"][field];
            assert_eq!(declared["minLength"], 1, "{schema}: {declared}");
            assert_eq!(declared["maxLength"], longest, "{schema}: {declared}");
            let pattern = regex::Regex::new(declared["pattern"].as_str().unwrap()).unwrap();
            for taken in [
                "copied to the archive",
                "  two\nlines\tand a tab  ",
                "Siân Ó Briain-Åkesson",
            ] {
                assert!(pattern.is_match(taken), "{schema} refuses {taken:?}");
            }
            for refused in ["", "   ", "\n\t", "nul\u{0}here", "escape\u{1b}[31m", "c1\u{85}"] {
                assert!(!pattern.is_match(refused), "{schema} takes {refused:?}");
            }
        }
    })
    .await;
}
