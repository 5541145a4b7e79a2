//! Router tests for the web app: every page and action, including the refusals (no sign-in,
//! wrong role, missing CSRF token, illegal transition, four-eyes, a stale page). Requests go
//! straight to the router (`oneshot`), no network port, with a cookie jar like a browser's.

use std::collections::BTreeMap;

use crate::common::{fixture, on_both_backends};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use countersign::engine::Engine;
use countersign::web::{Access, AppState, router, routes};
use countersign::workflow::ActorRole;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A browser: a router and the cookies it has been given.
pub(crate) struct Browser {
    app: Router,
    cookies: BTreeMap<String, String>,
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    /// The CSRF token in the page's first form.
    pub(crate) fn csrf(&self) -> String {
        let start = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end]
            .replace("&#x2F;", "/")
            .replace("&#x3D;", "=")
            .replace("&#x2B;", "+")
    }
}

impl Browser {
    pub(crate) async fn new(engine: &Engine) -> Browser {
        Self::at(engine, "http://countersign.test").await
    }

    /// A browser for the app served at `base_url`.
    async fn at(engine: &Engine, base_url: &str) -> Browser {
        let state = AppState::new(
            engine.clone(),
            &crate::common::root().join("templates"),
            false,
            base_url.into(),
        )
        .await
        .unwrap();
        Browser {
            app: router(state),
            cookies: BTreeMap::new(),
        }
    }

    pub(crate) fn with_state(state: AppState) -> Browser {
        Browser {
            app: router(state),
            cookies: BTreeMap::new(),
        }
    }

    pub(crate) async fn send(&mut self, request: Request<Body>) -> Page {
        let response = self.app.clone().oneshot(request).await.unwrap();
        for value in response.headers().get_all(header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || text.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_string(), value.to_string());
                }
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let location = headers.get(header::LOCATION).map(|l| l.to_str().unwrap().to_string());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            location,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub(crate) fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let request = Request::get(path)
            .header(header::COOKIE, self.cookie_header())
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            form.append_pair(k, v);
        }
        let request = Request::post(path)
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.finish()))
            .unwrap();
        self.send(request).await
    }

    /// Signs in (setting the password through the one-time link first).
    pub(crate) async fn sign_in_as(&mut self, engine: &Engine, email: &str, role: ActorRole) {
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let (_, token) = countersign::users::add(&mut conn, email, email, role, engine.now_ms())
            .await
            .unwrap();
        drop(conn);
        let page = self.get(&format!("/set-password/{token}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let csrf = page.csrf();
        let done = self
            .post(
                &format!("/set-password/{token}"),
                &[
                    ("csrf", &csrf),
                    ("password", "river otter lantern"),
                    ("confirm", "river otter lantern"),
                ],
            )
            .await;
        assert_eq!(
            done.location.as_deref(),
            Some("/sign-in?done=password"),
            "{}",
            done.body
        );
        let page = self.get("/sign-in").await;
        let csrf = page.csrf();
        let signed_in = self
            .post(
                "/sign-in",
                &[("csrf", &csrf), ("email", email), ("password", "river otter lantern")],
            )
            .await;
        // Managers (and admins) start on their dashboard, everyone else on the queue.
        let landing = if role.is_among(&[ActorRole::Manager]) {
            "/reports"
        } else {
            "/"
        };
        assert_eq!(signed_in.location.as_deref(), Some(landing), "{}", signed_in.body);
    }

    /// Adds a staff account on the admin page, as an admin would.
    async fn add_staff(&mut self, csrf: &str, email: &str, display_name: &str, role: &str) -> Page {
        self.post(
            "/admin/users",
            &[
                ("csrf", csrf),
                ("email", email),
                ("display_name", display_name),
                ("role", role),
            ],
        )
        .await
    }

    /// Fills in and sends the sign-in form, as a person would.
    async fn try_sign_in(&mut self, email: &str, password: &str) -> Page {
        let csrf = self.get("/sign-in").await.csrf();
        self.post("/sign-in", &[("csrf", &csrf), ("email", email), ("password", password)])
            .await
    }
}

fn sample_path(path: &str) -> String {
    path.replace("{token}", "not-a-token")
        .replace("{reference}", "CS-2026-000001")
        .replace("{email}", "someone@nhs.net")
        .replace("{table}", "weeks.csv")
        .replace("{id}", "1")
}

#[tokio::test]
async fn every_route_needs_sign_in_and_the_right_role() {
    on_both_backends(|engine| async move {
        engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        let mut anonymous = Browser::new(&engine).await;
        let table: Vec<_> = routes().iter().map(|r| (r.method, r.path, r.access)).collect();
        assert!(table.len() >= 27, "every route is listed: {}", table.len());
        for (method, path, access) in &table {
            let path = sample_path(path);
            let page = if *method == "GET" {
                anonymous.get(&path).await
            } else {
                anonymous.post(&path, &[]).await
            };
            let sent_to_sign_in = page
                .location
                .as_deref()
                .is_some_and(|to| to == "/sign-in" || to.starts_with("/sign-in?next="))
                && page.status.is_redirection();
            if *access == Access::Public {
                assert!(!sent_to_sign_in, "{method} {path} should be open");
            } else if path.starts_with("/api/") {
                assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert!(page.body.contains("sign_in_required"), "{}", page.body);
            } else {
                assert!(
                    sent_to_sign_in,
                    "{method} {path} must need sign-in, got {}",
                    page.status
                );
            }
        }
        let mut caseworker = Browser::new(&engine).await;
        caseworker
            .sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker)
            .await;
        for (method, path, access) in table
            .iter()
            .filter(|(_, _, a)| matches!(a, Access::Admin | Access::Manager))
        {
            let path = sample_path(path);
            let page = if *method == "GET" {
                caseworker.get(&path).await
            } else {
                caseworker.post(&path, &[]).await
            };
            assert!(
                matches!(page.status, StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY),
                "{method} {path} ({access:?}) gave {}",
                page.status
            );
        }
        let page = caseworker.get("/admin/users").await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        assert_eq!(caseworker.get("/reports").await.status, StatusCode::FORBIDDEN);
        let mut manager = Browser::new(&engine).await;
        manager.sign_in_as(&engine, "boss@nhs.net", ActorRole::Manager).await;
        assert_eq!(manager.get("/reports").await.status, StatusCode::OK);
        assert_eq!(manager.get("/admin/users").await.status, StatusCode::FORBIDDEN);
        let mut admin = Browser::new(&engine).await;
        admin.sign_in_as(&engine, "admin@nhs.net", ActorRole::Admin).await;
        assert_eq!(admin.get("/admin/users").await.status, StatusCode::OK);
        assert_eq!(
            admin.get("/reports").await.status,
            StatusCode::OK,
            "an admin may do what a manager may"
        );
    })
    .await;
}

#[tokio::test]
async fn set_password_links_work_once_and_refuse_weak_passwords() {
    on_both_backends(|engine| async move {
        let mut browser = Browser::new(&engine).await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let (_, token) =
            countersign::users::add(&mut conn, "new@nhs.net", "New", ActorRole::Caseworker, engine.now_ms())
                .await
                .unwrap();
        drop(conn);
        let page = browser.get(&format!("/set-password/{token}")).await;
        let csrf = page.csrf();
        let weak = browser
            .post(
                &format!("/set-password/{token}"),
                &[("csrf", &csrf), ("password", "password123"), ("confirm", "password123")],
            )
            .await;
        assert_eq!(weak.status, StatusCode::BAD_REQUEST);
        assert!(weak.body.contains("at least 12"), "{}", weak.body);
        let csrf = weak.csrf();
        let ok = browser
            .post(
                &format!("/set-password/{token}"),
                &[
                    ("csrf", &csrf),
                    ("password", "river otter lantern"),
                    ("confirm", "river otter lantern"),
                ],
            )
            .await;
        assert_eq!(ok.location.as_deref(), Some("/sign-in?done=password"));
        let confirmed = browser.get("/sign-in?done=password").await;
        assert!(
            confirmed.body.contains("Your password is set"),
            "a confirmation, not silence"
        );
        let again = browser.get(&format!("/set-password/{token}")).await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert!(
            again.body.contains(r#"<header class="site">"#) && again.body.contains("<h1>There is a problem</h1>"),
            "an error is a page in the app's layout, not a bare Bad Request: {}",
            again.body
        );
        assert!(
            again.body.contains("expired or has already been used"),
            "{}",
            again.body
        );
    })
    .await;
}

#[tokio::test]
async fn signing_in_from_a_link_lands_on_it_and_unknown_pages_and_first_runs_are_explained() {
    on_both_backends(|engine| async move {
        engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        let mut browser = Browser::new(&engine).await;
        // No staff accounts yet: the sign-in page says how to create the first admin.
        let first = browser.get("/sign-in").await;
        assert!(
            first.body.contains("countersign users add you@nhs.net --role admin"),
            "{}",
            first.body
        );
        // A link to a case, followed while signed out, comes back to the case after sign-in.
        let asked = browser.get("/cases/CS-2026-000001?tab=pdf").await;
        let to = asked.location.clone().unwrap();
        assert_eq!(to, "/sign-in?next=%2Fcases%2FCS-2026-000001%3Ftab%3Dpdf");
        let page = browser.get(&to).await;
        // (Tera escapes `/` in attributes as `&#x2F;`.)
        assert!(
            page.body
                .contains(r#"name="next" value="&#x2F;cases&#x2F;CS-2026-000001?tab=pdf""#),
            "{}",
            page.body
        );
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let (_, token) = countersign::users::add(&mut conn, "cw@nhs.net", "cw", ActorRole::Caseworker, engine.now_ms())
            .await
            .unwrap();
        countersign::users::set_password_with_token(&mut conn, &token, "river otter lantern", engine.now_ms())
            .await
            .unwrap();
        drop(conn);
        let csrf = browser.get("/sign-in").await.csrf();
        let signed_in = browser
            .post(
                "/sign-in",
                &[
                    ("csrf", &csrf),
                    ("email", "cw@nhs.net"),
                    ("password", "river otter lantern"),
                    ("next", "/cases/CS-2026-000001?tab=pdf"),
                ],
            )
            .await;
        assert_eq!(signed_in.location.as_deref(), Some("/cases/CS-2026-000001?tab=pdf"));
        // Only this app's own pages: never another site.
        for elsewhere in ["//evil.example/", "https://evil.example/", "/\\evil.example"] {
            assert_eq!(countersign::web::auth::local_path(elsewhere), None, "{elsewhere}");
        }
        // An unknown address is a page in the app's layout; under the API, JSON.
        let missing = browser.get("/no/such/page").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.body.contains("<h1>Page not found</h1>") && missing.body.contains(r#"<header class="site">"#));
        let api = browser.get("/api/no-such-thing").await;
        assert_eq!(api.status, StatusCode::NOT_FOUND);
        assert!(api.body.contains("not_found"), "{}", api.body);
    })
    .await;
}

#[tokio::test]
async fn repeated_failed_sign_ins_back_off_then_lock_the_account() {
    crate::common::on_both_backends_clocked(|engine, clock| async move {
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "jo@nhs.net", ActorRole::Caseworker).await;
        let mut stranger = Browser::new(&engine).await;
        for attempt in 1..=5 {
            let page = stranger.try_sign_in("jo@nhs.net", "wrong password here").await;
            assert_eq!(page.status, StatusCode::UNAUTHORIZED);
            if attempt == 5 {
                assert!(page.body.contains("locked"), "{}", page.body);
                break;
            }
            assert!(page.body.contains("do not match"), "{}", page.body);
            // Straight after a failure the next attempt must wait (1, 2, 4, 8 s): even the
            // right password is refused unchecked, and the refusal does not count.
            let wait = countersign::users::backoff_ms(attempt);
            assert_eq!(wait, 1000 << (attempt - 1));
            let page = stranger.try_sign_in("jo@nhs.net", "river otter lantern").await;
            assert_eq!(page.status, StatusCode::UNAUTHORIZED);
            let seconds = wait / 1000;
            let expected = format!(
                "wait {seconds} second{} and try again",
                if seconds == 1 { "" } else { "s" }
            );
            assert!(page.body.contains(&expected), "{expected}: {}", page.body);
            clock.advance(chrono::Duration::milliseconds(wait));
        }
        // Even the right password is refused while locked.
        let page = stranger.try_sign_in("jo@nhs.net", "river otter lantern").await;
        assert!(page.body.contains("locked"), "{}", page.body);
        // An unknown address gets the same words as a wrong password.
        let page = stranger.try_sign_in("nobody@nhs.net", "whatever whatever").await;
        assert!(page.body.contains("do not match"), "{}", page.body);
        // When the lock ends, the right password works again.
        clock.advance(chrono::Duration::milliseconds(countersign::users::LOCKOUT_MS));
        let page = stranger.try_sign_in("jo@nhs.net", "river otter lantern").await;
        assert!(page.status.is_redirection(), "{}: {}", page.status, page.body);
    })
    .await;
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    on_both_backends(|engine| async move {
        let reference = engine.intake(&fixture("mail/no_form.eml"), "test").await.unwrap().cases[0]
            .reference
            .clone();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let page = browser
            .post(
                &format!("/cases/{reference}/transition"),
                &[("to", "rejected"), ("reason", "x"), ("version", "1")],
            )
            .await;
        assert!(
            matches!(page.status, StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY),
            "{}",
            page.status
        );
        let page = browser
            .post(
                &format!("/cases/{reference}/transition"),
                &[
                    ("csrf", "forged"),
                    ("to", "rejected"),
                    ("reason", "x"),
                    ("version", "1"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN);
        let page = browser
            .post(
                "/sign-in",
                &[("email", "cw@nhs.net"), ("password", "river otter lantern")],
            )
            .await;
        assert!(page.status.is_client_error(), "sign-in is protected too");
    })
    .await;
}

#[tokio::test]
async fn the_queue_lists_open_cases_by_urgency_with_filters_and_search() {
    on_both_backends(|engine| async move {
        for name in ["mail/gp_form.eml", "mail/no_form.eml", "mail/forwarded.eml"] {
            engine.intake(&fixture(name), "test").await.unwrap();
        }
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let page = browser.get("/").await;
        assert_eq!(page.status, StatusCode::OK);
        for reference in ["CS-2026-000001", "CS-2026-000002", "CS-2026-000003"] {
            assert!(page.body.contains(reference), "{reference}");
        }
        assert!(page.body.contains("on track") && page.body.contains("Riverside Surgery"));
        let filtered = browser.get("/?finding=no_form_found").await;
        assert!(filtered.body.contains("CS-2026-000002") && !filtered.body.contains("CS-2026-000001"));
        let searched = browser.get("/?q=rx1").await;
        assert!(
            searched.body.contains("CS-2026-000003") && !searched.body.contains("CS-2026-000001"),
            "search by ODS code"
        );
        let by_name = browser.get("/?q=Siân").await;
        assert!(
            by_name.body.contains("CS-2026-000001"),
            "search by the proposed user's name"
        );
        let unassigned = browser.get("/?assignee=mine").await;
        assert!(unassigned.body.contains("No open cases match"));
        let health: serde_json::Value = serde_json::from_str(&browser.get("/api/v1/health").await.body).unwrap();
        assert_eq!(health["outbox"]["pending"], 2, "two acknowledgements waiting: {health}");
        assert!(health["pending_timers"].as_i64().unwrap() > 0);
        let api = browser.get("/api/v1/cases?state=needs_review").await;
        let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
        let refs: Vec<&str> = json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["reference"].as_str().unwrap())
            .collect();
        assert_eq!(refs, vec!["CS-2026-000002"]);
    })
    .await;
}

#[tokio::test]
async fn closed_cases_are_found_by_search_state_and_open_exeter_id_and_paused_cases_are_not_late() {
    on_both_backends(|engine| async move {
        use countersign::workflow::{Actor, TransitionRequest};
        for name in ["mail/gp_form.eml", "mail/no_form.eml", "mail/forwarded.eml"] {
            engine.intake(&fixture(name), "test").await.unwrap();
        }
        let alice = Actor {
            name: "alice@nhs.net".into(),
            role: ActorRole::Caseworker,
        };
        let bob = Actor {
            name: "bob@nhs.net".into(),
            role: ActorRole::Caseworker,
        };
        let to = |state: &str, recorded: &[(&str, &str)]| TransitionRequest {
            to: state.into(),
            reason: Some("test".into()),
            recorded: recorded.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..TransitionRequest::default()
        };
        // CS-2026-000001 provisioned (closed, with its Open Exeter user ID); CS-2026-000003 sent
        // back to the practice (its SLA clock paused); CS-2026-000002 (no form) stays open.
        engine
            .transition("CS-2026-000001", &to("authorised", &[]), &bob)
            .await
            .unwrap();
        engine
            .transition(
                "CS-2026-000001",
                &to("provisioned", &[("open_exeter_user_id", "OE424242")]),
                &bob,
            )
            .await
            .unwrap();
        engine
            .transition("CS-2026-000003", &to("awaiting_information", &[]), &alice)
            .await
            .unwrap();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let open = browser.get("/").await;
        assert!(
            !open.body.contains("CS-2026-000001"),
            "the open queue leaves closed cases out"
        );
        assert!(
            open.body.contains(r#"<span class="tag sla-paused">paused</span>"#),
            "{}",
            open.body
        );
        assert!(!open.body.contains("sla-breached"));
        // The no-form case's finding, once, in plain English, and no SLA tag: it has no workflow.
        assert!(open.body.contains("No form attached") && !open.body.contains(">no_form_found<"));
        // The finding filter counts the open cases that have each finding.
        assert!(open.body.contains(">No form attached (1)</option>"), "{}", open.body);
        assert!(open.body.contains("no SLA yet"));
        let closed = browser.get("/?status=closed").await;
        assert!(closed.body.contains("<h1>Closed cases</h1>"));
        assert!(closed.body.contains("CS-2026-000001") && !closed.body.contains("CS-2026-000002"));
        assert!(closed.body.contains(r#"<span class="tag sla-closed">closed</span>"#));
        let by_state = browser.get("/?state=provisioned").await;
        assert!(
            by_state.body.contains("CS-2026-000001"),
            "a final state asked for by name lists closed cases"
        );
        let everything = browser.get("/?status=all").await;
        for reference in ["CS-2026-000001", "CS-2026-000002", "CS-2026-000003"] {
            assert!(everything.body.contains(reference), "{reference}");
        }
        let by_id = browser.get("/?status=all&q=OE424242").await;
        assert!(
            by_id.body.contains("CS-2026-000001") && !by_id.body.contains("CS-2026-000003"),
            "found by the Open Exeter user ID recorded at provisioning: {}",
            by_id.body
        );
        let by_ods = browser.get("/?status=all&q=A81001").await;
        assert!(by_ods.body.contains("CS-2026-000001"), "found by ODS code once closed");
        let by_reference = browser.get("/?q=CS-2026-000001").await;
        assert!(
            !by_reference.body.contains("href=\"/cases/CS-2026-000001\""),
            "the open queue still leaves it out"
        );
        // Pages of closed cases: newest first, the cursor carries on below the last id.
        let newest = browser.get("/?status=all").await;
        let first = newest.body.find("CS-2026-000003").unwrap();
        let last = newest.body.find("CS-2026-000001").unwrap();
        assert!(first < last, "newest first");
        // The email without a form does not dead-end: its page offers to ask for the form.
        let no_form = browser.get("/cases/CS-2026-000002").await;
        assert!(no_form.body.contains("Ask the sender for the form"), "{}", no_form.body);
        let version = if no_form.body.contains(r#"name="version" value="1""#) {
            "1"
        } else {
            "2"
        };
        let asked = browser
            .post(
                "/cases/CS-2026-000002/request-form",
                &[("csrf", &no_form.csrf()), ("version", version)],
            )
            .await;
        assert_eq!(
            asked.location.as_deref(),
            Some("/cases/CS-2026-000002?done=form_requested")
        );
        let said = browser.get(asked.location.as_deref().unwrap()).await;
        assert!(
            said.body.contains("The sender has been asked for the form"),
            "{}",
            said.body
        );
    })
    .await;
}

/// "Next case" (`n`) stays within the queue view the caseworker opened the case from.
#[tokio::test]
async fn next_case_stays_within_the_filtered_view() {
    on_both_backends(|engine| async move {
        for name in ["mail/gp_form.eml", "mail/no_form.eml", "mail/forwarded.eml"] {
            engine.intake(&fixture(name), "test").await.unwrap();
        }
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        // The rows of a view, in order: their links carry the view.
        let rows = |body: &str| -> Vec<String> {
            body.split(r#"<td><a href="/cases/"#)
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_string())
                .collect()
        };
        let next = |body: &str| {
            body.split(r#"id="next-case" href=""#)
                .nth(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        };
        let reviewing = rows(&browser.get("/?state=validated").await.body);
        assert_eq!(reviewing.len(), 2, "{reviewing:?}");
        assert!(
            reviewing.iter().all(|r| r.ends_with("?back=state%3Dvalidated")),
            "{reviewing:?}"
        );
        let first = browser.get(&format!("/cases/{}", reviewing[0])).await;
        assert_eq!(
            next(&first.body).as_deref(),
            Some(format!("/cases/{}", reviewing[1]).as_str()),
            "the next case is the view's next row"
        );
        let validated = rows(&browser.get("/?state=needs_review").await.body);
        assert_eq!(validated.len(), 1, "{validated:?}");
        let alone = browser.get(&format!("/cases/{}", validated[0])).await;
        assert_eq!(next(&alone.body), None, "alone in its view, it has no next case");
        let unfiltered = browser
            .get(&format!("/cases/{}", validated[0].split('?').next().unwrap()))
            .await;
        assert!(next(&unfiltered.body).is_some() || rows(&browser.get("/").await.body).len() == 1);
        assert!(unfiltered.body.contains("Back to the queue"));
    })
    .await;
}

/// Ingests `count` generated sample emails (good and bad forms of every workflow).
async fn ingest_samples(engine: &Engine, count: usize) {
    let workflows = crate::common::workflows();
    let today = crate::common::friday_morning().date_naive();
    for email in countersign::samples::sample_emails(&workflows, count, today, crate::common::AUTHSERV_ID).unwrap() {
        engine.intake(&email, "test").await.unwrap();
    }
}

#[tokio::test]
async fn free_text_search_finds_names_emails_and_organisations_folded_for_case_and_accents() {
    on_both_backends(|engine| async move {
        ingest_samples(&engine, 12).await;
        // A common name: more cases than the search index is asked for, so the queue is walked.
        sqlx::query(
            "INSERT INTO cases (reference, workflow, state, fields, findings, org_name, origin_message_id, created_at, updated_at, due_at)
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1001)
             SELECT 'CS-2099-' || i, 'primary_user_gp', 'needs_review', '{}', '[]', 'Common Lane Surgery',
                    (SELECT MIN(id) FROM raw_messages), 0, 0, 9000000000000 + i FROM n",
        )
        .execute(&engine.db().pool)
        .await
        .unwrap();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        // The references of the queue rows on a page, sorted.
        let cases_on = |body: &str| -> Vec<String> {
            let mut found: Vec<String> = body
                .match_indices("data-case=\"")
                .filter_map(|(at, m)| body[at + m.len()..].split('"').next().map(str::to_string))
                .collect();
            found.sort();
            found
        };
        let orgs = |body: &str| -> Vec<u32> {
            (0..12)
                .filter(|n| body.contains(&format!("Riverside Medical Practice {n} <span")))
                .collect()
        };

        // Part of an email address: a rare term, one case.
        let page = browser.get("/?q=obriain7%40nhs").await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(orgs(&page.body), vec![7], "the case whose user's email it is: {}", page.body);
        // Without its accents, and in capitals.
        let with_accents: Vec<String> =
            sqlx::query_scalar("SELECT reference FROM cases WHERE fields LIKE '%Briain-Åkesson%' ORDER BY reference")
                .fetch_all(&engine.db().pool)
                .await
                .unwrap();
        assert!(with_accents.len() >= 6, "{with_accents:?}");
        for q in ["akesson", "AKESSON", "%C3%85kesson", "briain-%C3%A5kesson"] {
            let page = browser.get(&format!("/?q={q}")).await;
            assert_eq!(cases_on(&page.body), with_accents, "every case with that name matches {q}");
        }
        // LIKE's wildcards are text: "100%" is not "100" followed by anything (CS-2099-100 exists).
        let page = browser.get("/?q=2099-100%25").await;
        assert!(page.body.contains("No open cases match"), "a percent sign is literal");
        let page = browser.get("/?q=medical_practice").await;
        assert!(page.body.contains("No open cases match"), "an underscore is literal");
        // A common term: a page of matches, most urgent first, and a next page.
        let page = browser.get("/?q=common+lane").await;
        assert!(page.body.contains("CS-2099-1<"), "the most urgent match first");
        assert!(page.body.contains("rel=\"next\""), "more than a page of matches");
        assert!(orgs(&page.body).is_empty());
        // The index follows an edit.
        sqlx::query("UPDATE cases SET org_name = 'Quayside Health Centre' WHERE reference = $1")
            .bind(&with_accents[0])
            .execute(&engine.db().pool)
            .await
            .unwrap();
        let page = browser.get("/?q=quayside").await;
        assert_eq!(cases_on(&page.body), vec![with_accents[0].clone()]);
    })
    .await;
}

#[tokio::test]
async fn the_queue_pages_with_a_keyset_cursor() {
    on_both_backends(|engine| async move {
        ingest_samples(&engine, 55).await;
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let first = browser.get("/").await;
        let rows = first.body.matches("<a href=\"/cases/CS-").count();
        assert_eq!(rows, 50);
        let end = first.body.find("\" rel=\"next\"").expect("a next page");
        let start = first.body[..end].rfind("href=\"").unwrap() + 6;
        let next = first.body[start..end]
            .replace("&amp;", "&")
            .replace("&#x2F;", "/")
            .replace("&#x3D;", "=");
        let second = browser.get(&next).await;
        let more = second.body.matches("<a href=\"/cases/CS-").count();
        assert!(more > 0 && rows + more <= 55, "{more}");
        assert!(!second.body.contains("rel=\"next\""));
    })
    .await;
}

#[tokio::test]
async fn the_case_page_shows_fields_findings_email_pdf_and_timeline() {
    on_both_backends(|engine| async move {
        let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
        let email = crate::common::form_email(
            &wf,
            1,
            &[("signatory_role", "Practice Manager")],
            "amara@nhs.net",
            "page-1@x",
            "Our form",
        );
        let reference = engine.intake(&email, "test").await.unwrap().cases[0].reference.clone();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.body.contains("A Practice Manager cannot sign this form"),
            "the finding beside its field"
        );
        assert!(page.body.contains("Siân") && page.body.contains("Our form") && page.body.contains("passed (dmarc)"));
        assert!(page.body.contains(&format!("/cases/{reference}/form.pdf")));
        assert!(
            page.body.contains("acknowledgement") && page.body.contains("hold for review"),
            "timeline"
        );
        assert!(
            page.body.contains("Accept after review") && page.body.contains("Request information"),
            "the allowed actions"
        );
        assert!(!page.body.contains("Record provisioning"), "and only those");
        assert!(page.headers.get(header::CONTENT_SECURITY_POLICY).is_some());
        // The email's text, parsed once, under "the email that opened the case" and in the
        // correspondence.
        let said = "Please find our completed form attached.";
        assert_eq!(page.body.matches(said).count(), 2, "{}", page.body);
        assert!(!page.body.contains("cleared by the retention policy"));

        let pdf = browser.get(&format!("/cases/{reference}/form.pdf")).await;
        assert_eq!(pdf.status, StatusCode::OK);
        assert_eq!(pdf.headers[header::CONTENT_TYPE], "application/pdf");
        assert_eq!(pdf.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            pdf.headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("sandbox")
        );
        assert!(
            pdf.headers[header::CONTENT_DISPOSITION]
                .to_str()
                .unwrap()
                .starts_with("inline")
        );

        let csrf = page.csrf();
        browser
            .post(
                &format!("/cases/{reference}/notes"),
                &[("csrf", &csrf), ("body", "Rang the practice.\nThey will resend.")],
            )
            .await;
        browser
            .post(&format!("/cases/{reference}/claim"), &[("csrf", &csrf)])
            .await;
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert!(page.body.contains("Rang the practice.") && page.body.contains("cw@nhs.net"));
        // Its line break is kept (shown by the note's style, the text itself escaped).
        assert!(
            page.body
                .contains("<p class=\"note-body\">Rang the practice.\nThey will resend.</p>"),
            "{}",
            page.body
        );

        // Once retention clears the email's bytes, the thread says so and the text is gone
        // from both places.
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = countersign::storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        countersign::storage::clear_raw_message(&mut conn, case.origin_message_id)
            .await
            .unwrap();
        drop(conn);
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert!(page.body.contains("cleared by the retention policy"), "{}", page.body);
        assert!(!page.body.contains(said));
    })
    .await;
}

/// Words a caseworker edited in the preview are the words that go; words left as the
/// template wrote them follow the template (and the reason as it is when sent).
#[tokio::test]
async fn edited_email_words_are_sent_as_written_and_unedited_ones_follow_the_template() {
    on_both_backends(|engine| async move {
        let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
        let mut references = Vec::new();
        for n in [3, 4] {
            let email = crate::common::form_email(&wf, n, &[], "amara@nhs.net", &format!("edit-{n}@x"), "Form");
            references.push(engine.intake(&email, "test").await.unwrap().cases[0].reference.clone());
        }
        let mut alice = Browser::new(&engine).await;
        alice.sign_in_as(&engine, "alice@nhs.net", ActorRole::Caseworker).await;
        for (reference, edited) in references.iter().zip([true, false]) {
            let page = alice.get(&format!("/cases/{reference}")).await;
            let csrf = page.csrf();
            let version = if page.body.contains(r#"name="version" value="2""#) {
                "2"
            } else {
                "1"
            };
            let words = if edited {
                "Dear colleague, please sign page 1 again."
            } else {
                "as the template wrote it"
            };
            let sent = alice
                .post(
                    &format!("/cases/{reference}/transition"),
                    &[
                        ("csrf", &csrf),
                        ("to", "awaiting_information"),
                        ("reason", "The date is missing."),
                        ("version", version),
                        ("mail_text", words),
                        ("previewed_text", "as the template wrote it"),
                    ],
                )
                .await;
            assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.body);
            let mut conn = engine.db().pool.acquire().await.unwrap();
            let id = countersign::storage::case_by_reference(&mut conn, reference)
                .await
                .unwrap()
                .unwrap()
                .id;
            let mail = countersign::storage::outbox_for_case(&mut conn, id).await.unwrap();
            let request = mail.iter().find(|m| m.template == "request_for_correction").unwrap();
            assert_eq!(
                request.context_json.contains("please sign page 1 again"),
                edited,
                "{}",
                request.context_json
            );
            assert_eq!(request.context_json.contains("body_override"), edited);
            assert!(
                request.context_json.contains("The date is missing."),
                "the reason is kept either way"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn actions_follow_the_workflow_roles_four_eyes_and_concurrency() {
    on_both_backends(|engine| async move {
        let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
        let email = crate::common::form_email(
            &wf,
            2,
            &[("signatory_role", "Practice Manager")],
            "amara@nhs.net",
            "act-1@x",
            "Form",
        );
        let reference = engine.intake(&email, "test").await.unwrap().cases[0].reference.clone();
        let path = format!("/cases/{reference}/transition");
        let mut alice = Browser::new(&engine).await;
        alice.sign_in_as(&engine, "alice@nhs.net", ActorRole::Caseworker).await;
        let mut bob = Browser::new(&engine).await;
        bob.sign_in_as(&engine, "bob@nhs.net", ActorRole::Caseworker).await;

        let page = alice.get(&format!("/cases/{reference}")).await;
        let csrf = page.csrf();
        // Illegal from here.
        let refused = alice
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("to", "provisioned"),
                    ("version", "2"),
                    ("open_exeter_user_id", "OE1"),
                ],
            )
            .await;
        assert_eq!(refused.status, StatusCode::CONFLICT);
        assert!(refused.body.contains("cannot move to provisioned"), "{}", refused.body);
        // A manager's transition, refused to a caseworker.
        let refused = alice
            .post(&path, &[("csrf", &csrf), ("to", "rejected"), ("version", "2")])
            .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "a reason is needed: {}",
            refused.body
        );
        assert!(
            refused.body.contains("<h2>There is a problem</h2>") && refused.body.contains("needs a reason"),
            "said on the case page itself: {}",
            refused.body
        );
        assert!(
            refused.body.contains(r#"data-chosen="rejected""#),
            "the refused action's form is open again: {}",
            refused.body
        );
        let accepted = alice
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("to", "validated"),
                    ("reason", "Checked with the practice: she is a partner."),
                    ("version", "2"),
                ],
            )
            .await;
        assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
        // Before a request for information goes, its email can be read as the practice will
        // read it, with the reason typed; nothing is sent or changed by looking.
        let previewed = alice
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("to", "awaiting_information"),
                    ("reason", "Please have a GP partner sign it."),
                    ("version", "3"),
                    ("preview", "1"),
                ],
            )
            .await;
        assert_eq!(
            previewed.status,
            StatusCode::OK,
            "{:?} {}",
            previewed.location,
            previewed.body
        );
        assert!(
            previewed.body.contains("The email, before it goes"),
            "{}",
            previewed.body
        );
        assert!(
            previewed.body.contains("Please have a GP partner sign it."),
            "the reason, in the email and in the box"
        );
        assert!(
            previewed
                .body
                .contains("Please correct your request for a Primary User account"),
            "{}",
            previewed.body
        );
        let json: serde_json::Value =
            serde_json::from_str(&alice.get(&format!("/api/v1/cases/{reference}")).await.body).unwrap();
        assert_eq!(json["state"], "validated", "a preview changes nothing");
        assert!(
            previewed.body.contains(r#"name="mail_text""#),
            "the email's words can be edited"
        );
        // Edited words are previewed as edited.
        let edited = alice
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("to", "awaiting_information"),
                    ("reason", "Please have a GP partner sign it."),
                    ("version", "3"),
                    ("preview", "1"),
                    ("mail_text", "Dear Dr Okafor, page 1 needs a partner's signature."),
                    ("previewed_text", "what the template said"),
                ],
            )
            .await;
        assert!(
            edited
                .body
                .contains("Dear Dr Okafor, page 1 needs a partner&#x27;s signature."),
            "{}",
            edited.body
        );
        // Bob's page is now stale.
        let stale = bob.get(&format!("/cases/{reference}")).await;
        let bob_csrf = stale.csrf();
        let conflict = bob
            .post(
                &path,
                &[
                    ("csrf", &bob_csrf),
                    ("to", "awaiting_information"),
                    ("reason", "x"),
                    ("version", "2"),
                ],
            )
            .await;
        assert_eq!(conflict.status, StatusCode::CONFLICT);
        assert!(conflict.body.contains("Someone else changed"), "{}", conflict.body);
        // Four-eyes: alice accepted it, so alice is not offered "Authorise" (and the engine
        // refuses it if she asks anyway); bob is offered it.
        let alices_page = alice.get(&format!("/cases/{reference}")).await;
        assert!(
            !alices_page.body.contains(r#"<option value="authorised""#),
            "{}",
            alices_page.body
        );
        assert!(
            bob.get(&format!("/cases/{reference}"))
                .await
                .body
                .contains(r#"<option value="authorised""#)
        );
        let four_eyes = alice
            .post(&path, &[("csrf", &csrf), ("to", "authorised"), ("version", "3")])
            .await;
        assert_eq!(four_eyes.status, StatusCode::FORBIDDEN);
        assert!(four_eyes.body.contains("four-eyes"), "{}", four_eyes.body);
        let authorised = bob
            .post(&path, &[("csrf", &bob_csrf), ("to", "authorised"), ("version", "3")])
            .await;
        assert_eq!(authorised.status, StatusCode::SEE_OTHER, "{}", authorised.body);
        // The Open Exeter user ID has the format the workflow declares; a wrong one is said
        // on the case page, and nothing is mailed.
        for (wrong, says) in [
            ("hello world", "is not a valid Open Exeter user ID"),
            ("", "Open Exeter user ID"),
        ] {
            let refused = bob
                .post(
                    &path,
                    &[
                        ("csrf", &bob_csrf),
                        ("to", "provisioned"),
                        ("version", "4"),
                        ("open_exeter_user_id", wrong),
                    ],
                )
                .await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{wrong:?}: {}", refused.body);
            assert!(
                refused.body.contains(says) && refused.body.contains("error-summary"),
                "{}",
                refused.body
            );
        }
        let provisioned = bob
            .post(
                &path,
                &[
                    ("csrf", &bob_csrf),
                    ("to", "provisioned"),
                    ("version", "4"),
                    ("open_exeter_user_id", "oe445566"),
                ],
            )
            .await;
        assert_eq!(provisioned.status, StatusCode::SEE_OTHER, "{}", provisioned.body);
        assert_eq!(
            provisioned.location.as_deref(),
            Some(format!("/cases/{reference}?done=moved").as_str())
        );
        let page = bob.get(provisioned.location.as_deref().unwrap()).await;
        assert!(page.body.contains("Provisioned"), "the page shows the new state");
        assert!(
            page.body.contains("Done: the case is now “Provisioned”."),
            "a confirmation banner"
        );
        assert!(
            page.body
                .contains("<dt>Open Exeter user ID</dt><dd class=\"recorded\">OE445566</dd>"),
            "the ID is shown on the case afterwards: {}",
            page.body
        );
        let json: serde_json::Value =
            serde_json::from_str(&bob.get(&format!("/api/v1/cases/{reference}")).await.body).unwrap();
        assert_eq!(json["state"], "provisioned");
        assert_eq!(json["recorded"]["open_exeter_user_id"], "OE445566");
    })
    .await;
}

#[tokio::test]
async fn a_flattened_form_is_keyed_beside_its_pdf_and_checked_by_the_same_rules() {
    on_both_backends(|engine| async move {
        let reference = engine
            .intake(&fixture("mail/flattened_form.eml"), "test")
            .await
            .unwrap()
            .cases[0]
            .reference
            .clone();
        let mut browser = Browser::new(&engine).await;
        browser
            .sign_in_as(&engine, "keyer@nhs.net", ActorRole::Caseworker)
            .await;
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert!(
            page.body.contains("Key the form in by hand") && page.body.contains("form.pdf"),
            "keying form beside the PDF"
        );
        let csrf = page.csrf();
        let fields = [
            ("field.org_name", "Riverside Surgery"),
            ("field.org_ods_code", "A81001"),
            ("field.user_first_name", "Siân"),
            ("field.user_last_name", "Ó Briain-Åkesson"),
            ("field.user_job_title", "Practice Manager"),
            ("field.user_email", "sian.obriain@nhs.net"),
            ("field.request_kind", "New"),
            ("field.signatory_name", "Dr Ŵyn ap Gruffydd"),
            ("field.signatory_role", "Practice Manager"),
            ("field.signatory_email", "wyn.apgruffydd@nhs.net"),
            ("field.signatory_date", "10/11/2026"),
            ("field.signatory_declaration", "Yes"),
        ];
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        form.extend(fields.iter().copied());
        let saved = browser.post(&format!("/cases/{reference}/key"), &form).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert!(
            page.body.contains("A Practice Manager cannot sign this form"),
            "the same rules ran on the keyed fields"
        );
        // The timeline names each keyed field with its old and new value, not a bare
        // "field keyed" line.
        let role_label = engine
            .workflows()
            .get("primary_user_gp")
            .unwrap()
            .field("signatory_role")
            .unwrap()
            .label
            .clone();
        assert!(
            page.body
                .contains(&format!("{role_label}: (empty) → “Practice Manager”")),
            "{}",
            page.body
        );
        // What was keyed stays correctable before authorisation, each change logged.
        assert!(page.body.contains("Correct the keyed fields"), "{}", page.body);
        let csrf = page.csrf();
        let corrected = browser
            .post(
                &format!("/cases/{reference}/key"),
                &[("csrf", &csrf), ("field.signatory_role", "GP Partner")],
            )
            .await;
        assert_eq!(corrected.status, StatusCode::SEE_OTHER, "{}", corrected.body);
        let page = browser.get(&format!("/cases/{reference}")).await;
        assert!(
            page.body
                .contains(&format!("{role_label}: “Practice Manager” → “GP Partner”")),
            "{}",
            page.body
        );
        assert!(
            !page.body.contains("A Practice Manager cannot sign this form"),
            "checked again"
        );
        let json: serde_json::Value =
            serde_json::from_str(&browser.get(&format!("/api/v1/cases/{reference}")).await.body).unwrap();
        let keyed = json["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "field_keyed")
            .count();
        assert_eq!(
            keyed,
            fields.len() + 1,
            "each keyed field (and the correction) is in the event log with old and new values"
        );
    })
    .await;
}

#[tokio::test]
async fn cases_are_marked_duplicate_claimed_in_bulk_and_assigned() {
    on_both_backends(|engine| async move {
        let first = engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap().cases[0]
            .reference
            .clone();
        let second = engine.intake(&fixture("mail/no_form.eml"), "test").await.unwrap().cases[0]
            .reference
            .clone();
        let third = engine
            .intake(&fixture("mail/forwarded.eml"), "test")
            .await
            .unwrap()
            .cases[0]
            .reference
            .clone();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let mut other = Browser::new(&engine).await;
        other.sign_in_as(&engine, "other@nhs.net", ActorRole::Caseworker).await;
        let csrf = browser.get("/").await.csrf();
        let done = browser
            .post(
                "/cases/bulk",
                &[("csrf", &csrf), ("action", "claim"), ("case", &first), ("case", &third)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let mine = browser.get("/?assignee=mine").await;
        assert!(mine.body.contains(&first) && mine.body.contains(&third) && !mine.body.contains(&second));
        let assigned = browser
            .post(
                &format!("/cases/{third}/assign"),
                &[("csrf", &csrf), ("assignee", "other@nhs.net")],
            )
            .await;
        assert_eq!(assigned.status, StatusCode::SEE_OTHER);
        assert!(other.get("/?assignee=mine").await.body.contains(&third));

        // Claiming a colleague's case asks first, on the page and in bulk.
        let asked = browser.post(&format!("/cases/{third}/claim"), &[("csrf", &csrf)]).await;
        assert_eq!(asked.status, StatusCode::OK);
        assert!(asked.body.contains("other@nhs.net has this case") && asked.body.contains("Yes, take it"));
        assert!(
            other.get("/?assignee=mine").await.body.contains(&third),
            "not taken yet"
        );
        let bulk = browser
            .post(
                "/cases/bulk",
                &[
                    ("csrf", &csrf),
                    ("action", "claim"),
                    ("case", &third),
                    ("back", "assignee=unassigned&q=x"),
                ],
            )
            .await;
        assert_eq!(
            bulk.location.as_deref(),
            Some("/?assignee=unassigned&q=x&done=0&left=1"),
            "back to the same filtered view, saying one case was left with its colleague"
        );
        let said = browser.get(bulk.location.as_deref().unwrap()).await;
        assert!(said.body.contains("1 left with the colleague"), "{}", said.body);
        assert!(other.get("/?assignee=mine").await.body.contains(&third), "still theirs");
        let taken = browser
            .post(&format!("/cases/{third}/claim"), &[("csrf", &csrf), ("confirm", "yes")])
            .await;
        assert_eq!(
            taken.location.as_deref(),
            Some(format!("/cases/{third}?done=claimed").as_str())
        );
        assert!(browser.get("/?assignee=mine").await.body.contains(&third));
        // The queue counts its open cases by state, each a filter.
        let queue = browser.get("/").await;
        assert!(queue.body.contains(r#"<ul class="state-counts""#), "{}", queue.body);
        assert!(queue.body.contains(r#"href="/?state=needs_review""#));

        let page = browser.get(&format!("/cases/{second}")).await;
        let version = if page.body.contains("name=\"version\" value=\"1\"") {
            "1"
        } else {
            "2"
        };
        let missing = browser
            .post(
                &format!("/cases/{second}/transition"),
                &[
                    ("csrf", &csrf),
                    ("to", "duplicate"),
                    ("reason", "same request"),
                    ("version", version),
                    ("duplicate_of", "CS-2026-999999"),
                ],
            )
            .await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let marked = browser
            .post(
                &format!("/cases/{second}/transition"),
                &[
                    ("csrf", &csrf),
                    ("to", "duplicate"),
                    ("reason", "same request"),
                    ("version", version),
                    ("duplicate_of", &first),
                ],
            )
            .await;
        assert_eq!(marked.status, StatusCode::SEE_OTHER, "{}", marked.body);
        let json: serde_json::Value =
            serde_json::from_str(&browser.get(&format!("/api/v1/cases/{second}")).await.body).unwrap();
        assert_eq!(json["state"], "duplicate");
        assert!(
            json["duplicate_of"]
                .as_str()
                .is_some_and(|original| original.starts_with("CS-"))
        );
    })
    .await;
}

#[tokio::test]
async fn admins_change_roles_enable_and_unlock_accounts_and_staff_have_nhs_addresses() {
    crate::common::on_both_backends_clocked(|engine, clock| async move {
        let mut admin = Browser::new(&engine).await;
        admin.sign_in_as(&engine, "admin@nhs.net", ActorRole::Admin).await;
        let mut worker = Browser::new(&engine).await;
        worker.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let csrf = admin.get("/admin/users").await.csrf();
        // Not an NHS address: said on the page, and no account made.
        let outsider = admin.add_staff(&csrf, "someone@gmail.com", "X", "caseworker").await;
        assert_eq!(outsider.status, StatusCode::BAD_REQUEST);
        assert!(outsider.body.contains("need an NHS address") && outsider.body.contains("error-summary"));
        let mut conn = engine.db().pool.acquire().await.unwrap();
        assert!(
            countersign::users::find_by_email(&mut conn, "someone@gmail.com")
                .await
                .unwrap()
                .is_none()
        );
        drop(conn);
        // A role change applies from the next sign-in (their session ends now).
        let changed = admin
            .post("/admin/users/cw@nhs.net/role", &[("csrf", &csrf), ("role", "manager")])
            .await;
        assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
        assert!(changed.body.contains("cw@nhs.net is now manager"), "{}", changed.body);
        assert!(
            worker
                .get("/")
                .await
                .location
                .as_deref()
                .is_some_and(|l| l.starts_with("/sign-in"))
        );
        // Disabled, then enabled again: the case page's "Assign to" list, kept for a few
        // seconds, follows each change made here at once.
        let reference = engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap().cases[0]
            .reference
            .clone();
        let case_page = format!("/cases/{reference}");
        let offered = "<option value=\"cw@nhs.net\">";
        assert!(
            admin.get(&case_page).await.body.contains(offered),
            "offered while active"
        );
        admin.post("/admin/users/cw@nhs.net/disable", &[("csrf", &csrf)]).await;
        assert!(!admin.get(&case_page).await.body.contains(offered), "not once disabled");
        let enabled = admin.post("/admin/users/cw@nhs.net/enable", &[("csrf", &csrf)]).await;
        assert!(enabled.body.contains("cw@nhs.net is enabled again"), "{}", enabled.body);
        assert!(admin.get(&case_page).await.body.contains(offered), "offered again");
        admin.add_staff(&csrf, "newcomer@nhs.net", "N", "caseworker").await;
        assert!(
            admin
                .get(&case_page)
                .await
                .body
                .contains("<option value=\"newcomer@nhs.net\">"),
            "a new account is offered at once"
        );
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let user = countersign::users::find_by_email(&mut conn, "cw@nhs.net")
            .await
            .unwrap()
            .unwrap();
        assert!(!user.disabled && user.role == ActorRole::Manager);
        drop(conn);
        // Locked out by failed sign-ins, then unlocked by the admin.
        let mut stranger = Browser::new(&engine).await;
        for attempt in 1..=5 {
            stranger.try_sign_in("cw@nhs.net", "wrong password entirely").await;
            clock.advance(chrono::Duration::milliseconds(countersign::users::backoff_ms(attempt)));
        }
        let locked = stranger.try_sign_in("cw@nhs.net", "river otter lantern").await;
        assert!(locked.body.contains("locked"), "locked out: {}", locked.body);
        let unlocked = admin.post("/admin/users/cw@nhs.net/unlock", &[("csrf", &csrf)]).await;
        assert!(unlocked.body.contains("may sign in again"), "{}", unlocked.body);
        let mut fresh = Browser::new(&engine).await;
        let back = fresh.try_sign_in("cw@nhs.net", "river otter lantern").await;
        assert_eq!(
            back.location.as_deref(),
            Some("/reports"),
            "a manager now: {}",
            back.body
        );
        // An admin cannot demote themself by one click.
        let own = admin
            .post(
                "/admin/users/admin@nhs.net/role",
                &[("csrf", &csrf), ("role", "caseworker")],
            )
            .await;
        assert_eq!(own.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test]
async fn admins_edit_organisations_and_see_each_workflow_drawn() {
    on_both_backends(|engine| async move {
        engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        let mut admin = Browser::new(&engine).await;
        admin.sign_in_as(&engine, "admin@nhs.net", ActorRole::Admin).await;
        let page = admin.get("/admin/organisations?q=a81").await;
        assert!(page.body.contains("A81001") && page.body.contains("Riverside Surgery"));
        let csrf = page.csrf();
        let saved = admin
            .post(
                "/admin/organisations/A81001",
                &[("csrf", &csrf), ("name", "Riverside Medical Centre")],
            )
            .await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER);
        assert!(
            admin
                .get("/admin/organisations")
                .await
                .body
                .contains("Riverside Medical Centre")
        );
        let workflows = admin.get("/admin/workflows").await;
        assert_eq!(workflows.body.matches("<svg").count(), 6, "a diagram per workflow");
        // The workflows of plain emails say how they know their mail and what they sort it into.
        assert!(workflows.body.contains("plain emails") && workflows.body.contains("Known problems"));
        assert!(workflows.body.contains("No CSMS role on the smartcard") && workflows.body.contains("support_no_role"));
        assert!(
            workflows
                .body
                .contains("created_by must be a Primary User of the organisation")
        );
        // The new-user workflow says what password it issues, and where each half goes.
        assert!(
            workflows
                .body
                .contains("issues a 14-character password that lasts 30 days")
                && workflows.body.contains("goes to user_email")
                && workflows.body.contains("separately to created_by"),
            "{}",
            workflows.body
        );
        assert!(
            workflows.body.contains("Awaiting information from sender") && workflows.body.contains("remind_sender")
        );
        let added = admin.add_staff(&csrf, "new.cw@nhs.net", "New CW", "caseworker").await;
        assert!(
            added.body.contains("set-password") && added.body.contains("new.cw@nhs.net"),
            "a one-time link to hand over"
        );
    })
    .await;
}

#[tokio::test]
async fn served_over_https_cookies_are_secure_and_hsts_is_sent() {
    on_both_backends(|engine| async move {
        let mut plain = Browser::new(&engine).await;
        let page = plain.get("/sign-in").await;
        assert!(page.headers.get(header::STRICT_TRANSPORT_SECURITY).is_none());
        let mut tls = Browser::at(&engine, "https://countersign.pcse.example").await;
        let page = tls.get("/sign-in").await;
        assert!(page.headers.get(header::STRICT_TRANSPORT_SECURITY).is_some());
        let cookies: Vec<&str> = page
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert!(
            !cookies.is_empty() && cookies.iter().all(|c| c.contains("Secure")),
            "{cookies:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_nul_in_the_search_box_is_just_ignored() {
    on_both_backends(|engine| async move {
        ingest_samples(&engine, 2).await;
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let page = browser.get("/?q=Riverside%00Surgery").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    })
    .await;
}

#[test]
fn no_page_template_uses_inline_styles_that_our_own_csp_blocks() {
    for entry in std::fs::read_dir(crate::common::root().join("templates/ui"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if entry.path().extension().is_some_and(|e| e == "tera") {
            assert!(
                !text.contains("style=\""),
                "{} has a style= attribute",
                entry.path().display()
            );
        }
    }
}

#[tokio::test]
async fn mail_that_names_a_case_it_may_not_change_is_linked_both_ways_on_the_case_pages() {
    on_both_backends(|engine| async move {
        let workflow = engine.workflows().get("primary_user_gp").unwrap().clone();
        let original = crate::common::form_email(&workflow, 1, &[], "manager@nhs.net", "orig@nhs.net", "form");
        let named = engine.intake(&original, "test").await.unwrap().cases[0].reference.clone();
        let spoof = format!(
            "From: someone@nhs.net\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Re: [{named}] change\r\nMessage-ID: <spoof@nhs.net>\r\n\r\nPlease change the user.\r\n"
        );
        let new = engine.intake(spoof.as_bytes(), "test").await.unwrap().cases[0].reference.clone();
        let mut browser = Browser::new(&engine).await;
        browser.sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker).await;
        let page = browser.get(&format!("/cases/{named}")).await;
        assert!(page.body.contains("id=\"related-cases\"") && page.body.contains(&new), "{}", page.body);
        let page = browser.get(&format!("/cases/{new}")).await;
        assert!(page.body.contains("id=\"named-case\"") && page.body.contains(&named));
        assert!(page.body.contains("refers to case"), "the finding says why");
    })
    .await;
}

/// 32 requests to one page at once, straight to the router on the test's worker threads.
async fn all_at_once(app: &Router, cookies: &str, method: &str, path: &str, body: &str) -> Vec<StatusCode> {
    let requests = (0..32).map(|_| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::COOKIE, cookies)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_string()))
            .unwrap();
        let app = app.clone();
        tokio::spawn(async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            // Read the whole body: a page that stalls half-way is not an answer.
            let body = response.into_body().collect().await.unwrap().to_bytes();
            if status.is_server_error() {
                eprintln!("{status}: {}", String::from_utf8_lossy(&body));
            }
            status
        })
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|done| done.unwrap())
        .collect()
}

/// Waits until every connection of the pool is back in it (a dropped connection goes back in a
/// task of its own), then says how many times one has been handed back.
async fn connections_returned_when_settled(engine: &Engine) -> u64 {
    let pool = &engine.db().pool;
    for _ in 0..500 {
        if pool.num_idle() == pool.size() as usize {
            return engine.db().connections_returned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("a connection was never handed back to the pool");
}

/// A read is served on one pooled connection: the access check lends the connection it read
/// the session (or the API token) on to the handler, instead of returning it for the handler
/// to take another (a ping and a return more per page). A POST lends none: its connection
/// would be held for as long as its client took to send the body.
#[tokio::test]
async fn a_read_takes_one_pooled_connection_and_a_post_holds_none_while_its_body_arrives() {
    on_both_backends(|engine| async move {
        ingest_samples(&engine, 3).await;
        let mut browser = Browser::new(&engine).await;
        browser
            .sign_in_as(&engine, "one-connection@nhs.net", ActorRole::Caseworker)
            .await;
        let reference = {
            let mut conn = engine.db().pool.acquire().await.unwrap();
            countersign::storage::list_cases(&mut conn, None, 1).await.unwrap()[0]
                .reference
                .clone()
        };
        let token = {
            let mut conn = engine.db().pool.acquire().await.unwrap();
            countersign::tokens::issue(
                &mut conn,
                "one-connection",
                ActorRole::Caseworker,
                None,
                engine.now_ms(),
            )
            .await
            .unwrap()
            .1
        };
        let reads = [
            format!("/cases/{reference}"),
            "/".to_string(),
            "/api/v1/cases".to_string(),
            format!("/api/v1/cases/{reference}"),
        ];
        for path in &reads {
            for bearer in [None, Some(&token)] {
                if bearer.is_some() && !path.starts_with("/api/") {
                    continue;
                }
                let before = connections_returned_when_settled(&engine).await;
                let mut request = Request::get(path.as_str()).header(header::COOKIE, browser.cookie_header());
                if let Some(token) = bearer {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let page = browser.send(request.body(Body::empty()).unwrap()).await;
                assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
                let taken = connections_returned_when_settled(&engine).await - before;
                assert_eq!(
                    taken,
                    1,
                    "{path} (by token: {}) took {taken} connections",
                    bearer.is_some()
                );
            }
        }

        // A page asked for with no session cookie (anyone on the internet) is sent to sign
        // in without taking a connection at all.
        let before = connections_returned_when_settled(&engine).await;
        let anonymous = browser
            .send(Request::get(format!("/cases/{reference}")).body(Body::empty()).unwrap())
            .await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        assert_eq!(connections_returned_when_settled(&engine).await - before, 0);

        // A POST whose body never comes: its session is read and the connection given back,
        // while the handler still waits for the form.
        let before = connections_returned_when_settled(&engine).await;
        let never_ending = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
        let request = Request::post(format!("/cases/{reference}/claim"))
            .header(header::COOKIE, browser.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(never_ending)
            .unwrap();
        let waiting = tokio::spawn(browser.app.clone().oneshot(request));
        let pool = &engine.db().pool;
        let mut given_back = false;
        for _ in 0..500 {
            if engine.db().connections_returned() > before && pool.num_idle() == pool.size() as usize {
                given_back = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(given_back, "a POST held its connection while waiting for its body");
        assert!(!waiting.is_finished(), "the POST is still waiting for its body");
        waiting.abort();
    })
    .await;
}

/// A deadlock detector, not a timing test: every kind of page, 32 at once, answers while a
/// drop-folder drain, the outbox dispatcher and the timer scheduler write to the database.
/// A handler that held one pooled connection and waited for another froze the service once
/// four case pages were open at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_page_answers_32_at_once_while_mail_is_drained_and_sent() {
    on_both_backends(|engine| async move {
        ingest_samples(&engine, 40).await;
        let drop_folder = tempfile::tempdir().unwrap();
        let today = crate::common::friday_morning().date_naive();
        let emails =
            countersign::samples::sample_emails(&crate::common::workflows(), 240, today, crate::common::AUTHSERV_ID)
                .unwrap();
        for (n, email) in emails.iter().enumerate().skip(40) {
            std::fs::write(drop_folder.path().join(format!("{n:04}.eml")), email).unwrap();
        }
        let mut admin = Browser::new(&engine).await;
        admin.sign_in_as(&engine, "admin@nhs.net", ActorRole::Admin).await;
        let reference = "CS-2026-000001";
        let csrf = admin.get(&format!("/cases/{reference}")).await.csrf();
        let cookies = admin.cookie_header();

        let (stop_tx, stop) = countersign::ingest::shutdown_channel();
        let sent_mail = tempfile::tempdir().unwrap();
        let settings = countersign::config::MailerSettings {
            mail_folder: sent_mail.path().to_path_buf(),
            ..Default::default()
        };
        let dispatcher = countersign::outbox::Dispatcher::new(
            engine.engine(),
            settings.clone(),
            &crate::common::root().join("templates"),
        )
        .unwrap();
        let scheduler = countersign::scheduler::Scheduler::new(engine.engine(), Default::default()).unwrap();
        let drain = {
            let (engine, folder) = (engine.clone(), drop_folder.path().to_path_buf());
            tokio::spawn(async move {
                countersign::ingest::dropfolder::scan_once(&engine, &folder)
                    .await
                    .unwrap()
            })
        };
        let sending = {
            let stop = stop.clone();
            tokio::spawn(async move { dispatcher.run_until_stopped(stop).await })
        };
        let timers = tokio::spawn(async move { scheduler.run_until_stopped(stop).await });

        let note = format!(
            "csrf={}&body=looked+at+it",
            url::form_urlencoded::byte_serialize(csrf.as_bytes()).collect::<String>()
        );
        let pages: Vec<(&str, String, String)> = vec![
            ("GET", "/".into(), String::new()),
            ("GET", "/?q=surgery".into(), String::new()),
            ("GET", format!("/cases/{reference}"), String::new()),
            ("GET", format!("/cases/{reference}/form.pdf"), String::new()),
            ("POST", format!("/cases/{reference}/notes"), note),
            ("GET", "/admin/users".into(), String::new()),
            ("GET", "/admin/organisations".into(), String::new()),
            ("GET", "/admin/workflows".into(), String::new()),
            ("GET", "/api/v1/cases".into(), String::new()),
            ("GET", format!("/api/v1/cases/{reference}"), String::new()),
            ("GET", "/api/v1/health".into(), String::new()),
            ("GET", "/health".into(), String::new()),
        ];
        let limit = std::time::Duration::from_secs(120);
        for (method, path, body) in &pages {
            let statuses = tokio::time::timeout(limit, all_at_once(&admin.app, &cookies, method, path, body))
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: 32 requests at once did not all answer in {limit:?}"));
            let expected = if *method == "POST" {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::OK
            };
            let wrong: Vec<_> = statuses.iter().filter(|s| **s != expected).collect();
            assert!(wrong.is_empty(), "{method} {path}: {wrong:?}");
        }
        let drained = tokio::time::timeout(limit, drain)
            .await
            .expect("the drain finished")
            .unwrap();
        assert_eq!(drained.ingested, 200, "{drained:?}");
        stop_tx.send(true).unwrap();
        tokio::time::timeout(limit, sending)
            .await
            .expect("the dispatcher stopped")
            .unwrap();
        tokio::time::timeout(limit, timers)
            .await
            .expect("the scheduler stopped")
            .unwrap();
        let page = admin.get(&format!("/cases/{reference}")).await;
        assert_eq!(
            page.body.matches("looked at it").count(),
            32,
            "every note was written once"
        );
    })
    .await;
}

/// The health view shows each running mail source as it is now, from memory: a failing
/// database cannot record its own failure, but the view still says what is wrong.
#[tokio::test]
async fn api_health_shows_the_live_state_of_each_mail_source() {
    on_both_backends(|engine| async move {
        let mut state = AppState::new(
            engine.engine(),
            &crate::common::root().join("templates"),
            false,
            "http://countersign.test".into(),
        )
        .await
        .unwrap();
        let health = countersign::ingest::HealthHandle::default();
        health.update(|h| {
            h.state = "failing".into();
            h.backlog = 7;
            h.last_error = Some("database or disk is full".into());
        });
        std::sync::Arc::make_mut(&mut state.live_mail_sources).push(("drop:data/inbox".into(), health));
        let mut browser = Browser::with_state(state);
        browser.sign_in_as(&engine, "ops@nhs.net", ActorRole::Manager).await;
        let page = browser.get("/api/v1/health").await;
        assert_eq!(page.status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&page.body).unwrap();
        let source = &json["mail_sources"][0];
        assert_eq!(source["source"], "drop:data/inbox");
        assert_eq!(source["health"]["state"], "failing");
        assert_eq!(source["health"]["backlog"], 7);
        assert_eq!(source["health"]["last_error"], "database or disk is full");
    })
    .await;
}
