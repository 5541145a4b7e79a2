//! The signatory register, on both backends: a signatory the register does not know is a
//! finding that a caseworker resolves by verifying them (how is recorded, they join the
//! register); a Primary User we provision joins it too, and only a real one may sign as an
//! existing Primary Contact; the coverage report lists organisations short of Primary Users.

use std::collections::BTreeMap;

use countersign::domain::EventKind;
use countersign::engine::EngineError;
use countersign::storage;
use countersign::workflow::{Actor, ActorRole, TransitionRequest};

use crate::common::{TestApp, on_both_backends};

fn caseworker(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

fn codes(case: &storage::CaseRecord) -> Vec<String> {
    case.findings.iter().map(|f| f.code.as_str().to_string()).collect()
}

async fn register(app: &TestApp, ods: &str, role: &str, name: &str, email: &str) {
    app.register_signatory(ods, role, name, email).await;
}

#[tokio::test]
async fn an_unknown_signatory_is_a_finding_until_a_caseworker_verifies_them_and_says_how() {
    on_both_backends(|app| async move {
        // The register knows someone else at the practice.
        register(&app, "A81001", "Caldicott Guardian", "Jo Bloggs", "jo.bloggs@nhs.net").await;
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let case = app.case(&reference).await;
        assert_eq!(codes(&case), vec!["signatory_not_known"]);
        assert_eq!(case.state, "needs_review");

        // Verifying needs a word on how.
        let refused = app.verify_signatory(&reference, "  ", &caseworker("alice"), None).await;
        assert!(
            matches!(refused, Err(EngineError::VerificationUnexplained)),
            "{refused:?}"
        );
        // ... and the version the caseworker saw.
        let stale = app
            .verify_signatory(&reference, "phoned", &caseworker("alice"), Some(case.version - 1))
            .await;
        assert!(matches!(stale, Err(EngineError::Stale { .. })), "{stale:?}");

        let how =
            "Phoned the practice on its listed number; the practice manager confirmed Dr ap Gruffydd is a GP Partner";
        let verified = app
            .verify_signatory(&reference, how, &caseworker("alice"), Some(case.version))
            .await
            .unwrap();
        assert_eq!(codes(&verified), Vec::<String>::new());
        let event = app
            .events(&reference)
            .await
            .into_iter()
            .find(|e| e.kind == EventKind::SignatoryVerified)
            .expect("the verification is in the log");
        assert_eq!(event.actor, "alice");
        assert_eq!(event.reason.as_deref(), Some(how));

        let mut conn = app.db().pool.acquire().await.unwrap();
        let known = storage::list_signatories(&mut conn, Some("A81001")).await.unwrap();
        let joined = known
            .iter()
            .find(|s| s.source == "verified")
            .expect("they joined the register");
        assert_eq!(joined.role, "GP Partner");
        assert_eq!(joined.email.as_deref(), Some("wyn.apgruffydd@nhs.net"));
        assert!(countersign::audit::verify(app.db()).await.unwrap().intact());
    })
    .await;
}

#[tokio::test]
async fn a_provisioned_primary_user_joins_the_register_and_only_a_real_one_signs_as_one() {
    on_both_backends(|app| async move {
        // A Primary User request goes all the way: validated, authorised, provisioned.
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        app.transition(
            &reference,
            &TransitionRequest {
                to: "authorised".into(),
                ..TransitionRequest::default()
            },
            &caseworker("bob"),
        )
        .await
        .unwrap();
        app.transition(
            &reference,
            &TransitionRequest {
                to: "provisioned".into(),
                recorded: vec![("open_exeter_user_id".into(), "OE778899".into())],
                ..TransitionRequest::default()
            },
            &caseworker("alice"),
        )
        .await
        .unwrap();
        let provisioned = app.case(&reference).await;
        let mut conn = app.db().pool.acquire().await.unwrap();
        let known = storage::list_signatories(&mut conn, Some("A81001")).await.unwrap();
        assert_eq!(known.len(), 1, "{known:?}");
        assert_eq!(known[0].role, "Primary User");
        assert_eq!(known[0].source, "provisioned");
        assert_eq!(
            known[0].email.as_deref(),
            provisioned.fields.get("user_email").map(String::as_str)
        );
        // ... and the Open Exeter account register, as a Primary User whose password was set
        // today (so its reminders run from now).
        let accounts = storage::list_accounts(&mut conn, Some("A81001")).await.unwrap();
        assert_eq!(accounts.len(), 1, "{accounts:?}");
        assert_eq!(accounts[0].user_id, "OE778899");
        assert!(accounts[0].primary_user);
        assert_eq!(
            accounts[0].email.as_deref(),
            provisioned.fields.get("user_email").map(String::as_str)
        );
        assert_eq!(accounts[0].password_changed_on, Some(app.today()));
        drop(conn);

        // A later form, keyed by hand, signed as the practice's existing Primary Contact.
        let later = app.receive_fixture("mail/no_form.eml").await;
        let workflow = app.workflows().get("primary_user_gp").unwrap();
        let signed = chrono::NaiveDate::from_ymd_opt(2026, 11, 18).unwrap();
        let mut values: BTreeMap<String, String> = countersign::samples::good_values(workflow, 7, signed);
        values.insert("org_ods_code".into(), "A81001".into());
        // Our own Primary User records alone do not make every other signatory unknown.
        let keyed = app
            .key_fields(&later, Some("primary_user_gp"), &values, &caseworker("alice"))
            .await
            .unwrap();
        assert!(
            !codes(&keyed).contains(&"signatory_not_known".to_string()),
            "{:?}",
            keyed.findings
        );
        values.insert("signatory_role".into(), "Existing Primary Contact".into());
        values.insert("signatory_name".into(), "Mallory Someone".into());
        values.insert("signatory_email".into(), "mallory@nhs.net".into());
        let keyed = app
            .key_fields(&later, Some("primary_user_gp"), &values, &caseworker("alice"))
            .await
            .unwrap();
        assert!(
            codes(&keyed).contains(&"signatory_not_primary_user".to_string()),
            "{:?}",
            keyed.findings
        );
        // Signed by the Primary User we provisioned: no finding.
        let first = provisioned.fields.get("user_first_name").cloned().unwrap_or_default();
        let last = provisioned.fields.get("user_last_name").cloned().unwrap_or_default();
        let email = provisioned.fields.get("user_email").cloned().unwrap_or_default();
        let values = BTreeMap::from([
            ("signatory_name".to_string(), format!("{first} {last}")),
            ("signatory_email".to_string(), email),
        ]);
        let keyed = app
            .key_fields(&later, None, &values, &caseworker("alice"))
            .await
            .unwrap();
        assert!(
            !codes(&keyed).contains(&"signatory_not_primary_user".to_string()),
            "{:?}",
            keyed.findings
        );

        // Coverage: A81001 has one Primary User now.
        let mut conn = app.db().pool.acquire().await.unwrap();
        let short = storage::primary_user_coverage(&mut conn, app.workflows().open_states())
            .await
            .unwrap();
        let practice = short
            .iter()
            .find(|c| c.ods_code == "A81001")
            .expect("A81001 has fewer than two");
        assert_eq!(practice.primary_users, 1);
        assert_eq!(practice.replacing, None);
        drop(conn);

        // An open request to replace that one Primary User is named beside it.
        let workflow = app.workflows().get("primary_user_gp").unwrap().clone();
        let replacement = crate::common::form_email(
            &workflow,
            11,
            &[("org_ods_code", "A81001"), ("request_kind", "Replacement")],
            "manager11@nhs.net",
            "replacement@x",
            "Replacing our Primary User",
        );
        let reference = app.receive(&replacement).await.cases[0].reference.clone();
        let mut conn = app.db().pool.acquire().await.unwrap();
        let short = storage::primary_user_coverage(&mut conn, app.workflows().open_states())
            .await
            .unwrap();
        let practice = short.iter().find(|c| c.ods_code == "A81001").unwrap();
        assert_eq!(practice.replacing.as_deref(), Some(reference.as_str()));
    })
    .await;
}

#[tokio::test]
async fn admins_keep_the_register_and_managers_read_the_coverage() {
    use axum::http::StatusCode;

    use crate::web::Browser;

    on_both_backends(|app| async move {
        let engine = app.engine();
        app.receive_fixture("mail/gp_form.eml").await;
        let mut admin = Browser::new(&engine).await;
        admin.sign_in_as(&engine, "admin@nhs.net", ActorRole::Admin).await;
        let page = admin.get("/admin/signatories?ods=a81001").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("No signatories for A81001"), "{}", page.body);
        let csrf = page.csrf();
        let added = admin
            .post(
                "/admin/signatories",
                &[
                    ("csrf", &csrf),
                    ("ods_code", "a81001"),
                    ("role", "Caldicott Guardian"),
                    ("name", "Jo Bloggs"),
                    ("email", "jo.bloggs@nhs.net"),
                ],
            )
            .await;
        assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.body);
        let page = admin.get("/admin/signatories?ods=A81001").await;
        assert!(
            page.body.contains("Jo Bloggs") && page.body.contains("admin by admin@nhs.net"),
            "{}",
            page.body
        );
        let refused = admin
            .post(
                "/admin/signatories",
                &[
                    ("csrf", &csrf),
                    ("ods_code", "A81001"),
                    ("role", "Lead GP"),
                    ("name", "X"),
                    ("email", "not an address"),
                ],
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);

        let mut conn = app.db().pool.acquire().await.unwrap();
        let rows = storage::register_rows(&mut conn, Some("A81001"), 10).await.unwrap();
        drop(conn);
        assert_eq!(rows.len(), 1);
        let removed = admin
            .post(
                &format!("/admin/signatories/{}/remove", rows[0].id),
                &[("csrf", &csrf), ("ods", "A81001")],
            )
            .await;
        assert_eq!(removed.status, StatusCode::SEE_OTHER);
        assert!(
            !admin
                .get("/admin/signatories?ods=A81001")
                .await
                .body
                .contains("Jo Bloggs")
        );

        // The practice has no Primary User: a manager sees it on the coverage page.
        let mut manager = Browser::new(&engine).await;
        manager.sign_in_as(&engine, "manager@nhs.net", ActorRole::Manager).await;
        let page = manager.get("/reports/coverage").await;
        assert_eq!(page.status, StatusCode::OK);
        let none =
            &page.body[page.body.find("No Primary User").unwrap()..page.body.find("Only one Primary User").unwrap()];
        assert!(none.contains("A81001"), "{none}");
        let mut caseworker = Browser::new(&engine).await;
        caseworker
            .sign_in_as(&engine, "cw@nhs.net", ActorRole::Caseworker)
            .await;
        assert_eq!(caseworker.get("/reports/coverage").await.status, StatusCode::FORBIDDEN);
    })
    .await;
}
