//! Open Exeter's new-user notifications (the `new_user` workflow): recognised by sender and
//! subject, fields read from labelled lines, checked against our records (the creator must be
//! one of the organisation's Primary Users, the new user's address an NHS one, the
//! organisation known and open, the notification authenticated), then authorised by a second
//! pair of eyes and provisioned through the provisioner seam. On both databases, from a real
//! Dovecot mailbox.

use crate::common::dovecot::Dovecot;
use crate::common::{AUTHSERV_ID, TestApp, on_both_backends};
use countersign::engine::EngineError;
use countersign::ingest::imap::ImapPoller;
use countersign::policy::FindingCode;
use countersign::provision::{Provisioner, RecordedByCaseworker};
use countersign::storage;
use countersign::workflow::{Actor, ActorRole, TransitionRequest};

const OPEN_EXETER: &str = "noreply@openexeter.nhs.uk";

fn notification(n: usize, ods: &str, user_email: &str, created_by: &str, authserv: &str) -> Vec<u8> {
    let body = format!(
        "A new user account has been created in Open Exeter.\n\nOrganisation code: {ods}\nOrganisation name: Riverside Surgery\nUser ID: OE10{n:04}\nUser name: New User {n}\nUser email: {user_email}\nCreated by: {created_by}\n"
    );
    countersign::samples::email(
        OPEN_EXETER,
        authserv,
        &format!("new-user-{n}@openexeter.nhs.uk"),
        "Open Exeter: new user created",
        &body,
        None,
    )
    .expect("an email")
}

async fn primary_user(app: &TestApp, ods: &str, email: &str) {
    app.register_signatory(ods, countersign::signatories::PRIMARY_USER, "Pat Manager", email)
        .await;
}

fn person(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

fn to(state: &str, reason: Option<&str>) -> TransitionRequest {
    TransitionRequest {
        to: state.into(),
        reason: reason.map(str::to_string),
        ..TransitionRequest::default()
    }
}

#[tokio::test]
async fn a_new_user_notification_is_checked_authorised_by_someone_else_and_its_password_recorded() {
    on_both_backends(|app| async move {
        primary_user(&app, "A81001", "pat.manager@nhs.net").await;
        let dovecot = Dovecot::start();
        dovecot
            .deliver(
                "INBOX",
                &[
                    notification(1, "A81001", "jane.smith@nhs.net", "pat.manager@nhs.net", AUTHSERV_ID),
                    notification(2, "A81001", "jane.smith@gmail.com", "someone.else@nhs.net", AUTHSERV_ID),
                    notification(
                        3,
                        "A81001",
                        "sam.jones@nhs.net",
                        "pat.manager@nhs.net",
                        "not-our-server.example",
                    ),
                ],
            )
            .await;
        let summary = ImapPoller::new(crate::common::live(&app.engine()), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        assert_eq!(summary.ingested, 3);
        let mut conn = app.db().pool.acquire().await.unwrap();
        let cases = storage::list_cases(&mut conn, None, 10).await.unwrap();
        drop(conn);
        let of_user = |id: &str| {
            cases
                .iter()
                .find(|c| c.fields.get("new_user_id").map(String::as_str) == Some(id))
                .unwrap_or_else(|| panic!("no case for {id}: {cases:?}"))
                .clone()
        };
        let good = of_user("OE100001");
        assert_eq!(good.workflow.as_deref(), Some("new_user"));
        assert_eq!(good.state, "validated", "{:?}", good.findings);
        assert_eq!(good.org_ods_code.as_deref(), Some("A81001"));
        assert_eq!(
            good.fields.get("user_email").map(String::as_str),
            Some("jane.smith@nhs.net")
        );

        let bad = of_user("OE100002");
        assert_eq!(bad.state, "needs_review");
        let codes: Vec<FindingCode> = bad.findings.iter().map(|f| f.code).collect();
        assert!(codes.contains(&FindingCode::EmailNotNhs), "{codes:?}");
        assert!(codes.contains(&FindingCode::CreatorNotPrimaryUser), "{codes:?}");

        let forged = of_user("OE100003");
        assert_eq!(forged.state, "needs_review");
        assert!(
            forged
                .findings
                .iter()
                .any(|f| f.code == FindingCode::SenderNotAuthenticated)
        );
        assert!(
            !forged
                .findings
                .iter()
                .any(|f| f.code == FindingCode::CreatorNotPrimaryUser)
        );

        // Nothing is sent to Open Exeter's no-reply address.
        assert!(app.outbox(&good.reference).await.is_empty());

        // Four-eyes: who accepted the held case may not authorise it; someone else may.
        app.transition(
            &bad.reference,
            &to("validated", Some("phoned the practice: genuine")),
            &person("alice"),
        )
        .await
        .unwrap();
        let refused = app
            .transition(&bad.reference, &to("authorised", None), &person("alice"))
            .await
            .unwrap_err();
        assert!(matches!(refused, EngineError::Transition { .. }), "{refused}");
        app.transition(&bad.reference, &to("authorised", None), &person("bob"))
            .await
            .unwrap();

        // The clean one: authorised, then the password recorded through the provisioner seam.
        app.transition(&good.reference, &to("authorised", None), &person("alice"))
            .await
            .unwrap();
        let provisioner = RecordedByCaseworker {
            recorded: vec![],
            note: Some("first password set in Open Exeter and sent to the user's NHS mailbox".into()),
        };
        let done = provisioner
            .provision(&app.engine(), &good.reference, &person("alice"))
            .await
            .unwrap();
        assert_eq!(done.state, "provisioned");
        // The new account joins the Open Exeter account register (not as a Primary User).
        let mut conn = app.db().pool.acquire().await.unwrap();
        let accounts = storage::list_accounts(&mut conn, Some("A81001")).await.unwrap();
        drop(conn);
        assert_eq!(accounts.len(), 1, "{accounts:?}");
        assert_eq!(
            (
                accounts[0].user_id.as_str(),
                accounts[0].name.as_str(),
                accounts[0].email.as_deref()
            ),
            ("OE100001", "New User 1", Some("jane.smith@nhs.net"))
        );
        assert!(!accounts[0].primary_user);
        let events = app.events(&good.reference).await;
        assert!(events.iter().any(|e| e.transition.as_deref() == Some("provision")
            && e.reason.as_deref().is_some_and(|r| r.contains("first password set"))));
    })
    .await;
}

#[tokio::test]
async fn a_notification_from_anyone_else_is_not_taken_as_one() {
    on_both_backends(|app| async move {
        // The same words from another domain are just an email with no form.
        let lookalike = countersign::samples::email(
            "noreply@openexeter.nhs.uk.example.com",
            AUTHSERV_ID,
            "lookalike@x",
            "Open Exeter: new user created",
            "Organisation code: A81001\nUser ID: OE1\nUser email: a@nhs.net\nCreated by: b@nhs.net",
            None,
        )
        .unwrap();
        let report = app.receive(&lookalike).await;
        assert_eq!(report.cases[0].workflow, None);
        assert_eq!(report.cases[0].finding_codes, vec!["no_form_found"]);
    })
    .await;
}

#[tokio::test]
async fn a_notification_for_an_organisation_the_registry_does_not_hold_is_held() {
    on_both_backends(|app| async move {
        {
            let mut conn = app.db().pool.acquire().await.unwrap();
            let bytes = std::fs::read(crate::common::root().join("samples/ods/epraccur-sample.csv")).unwrap();
            let orgs = countersign::registry::parse_gp_practices(&bytes, "epraccur-sample.csv").unwrap();
            storage::import_registry(&mut conn, &orgs, "epraccur", app.now_ms())
                .await
                .unwrap();
        }
        primary_user(&app, "A81001", "pat.manager@nhs.net").await;
        primary_user(&app, "Z99999", "pat.manager@nhs.net").await;
        let known = app
            .receive(&notification(
                7,
                "A81001",
                "jo@nhs.net",
                "pat.manager@nhs.net",
                AUTHSERV_ID,
            ))
            .await;
        assert_eq!(known.cases[0].state, "validated", "{:?}", known.cases[0].finding_codes);
        let unknown = app
            .receive(&notification(
                8,
                "Z99999",
                "jo@nhs.net",
                "pat.manager@nhs.net",
                AUTHSERV_ID,
            ))
            .await;
        assert_eq!(unknown.cases[0].state, "needs_review");
        assert_eq!(unknown.cases[0].finding_codes, vec!["organisation_unknown"]);
    })
    .await;
}
