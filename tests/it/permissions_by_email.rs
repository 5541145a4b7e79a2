//! Additional permissions asked for by plain email (seed 001): accepted as an
//! `additional_permissions` case, the same case the form gives, only when the sender is
//! authenticated, at an NHS address, and a known signatory of the organisation with an
//! allowed role in the signatory register. On both databases, from a real Dovecot mailbox.

use crate::common::dovecot::Dovecot;
use crate::common::{AUTHSERV_ID, TestApp, on_both_backends};
use countersign::ingest::imap::ImapPoller;
use countersign::storage;

async fn signatory(app: &TestApp, role: &str, name: &str, email: &str) {
    app.register_signatory("A81001", role, name, email).await;
}

fn request(n: usize, from: &str, authserv: &str, permissions: Option<&str>) -> Vec<u8> {
    let mut body = "Dear PCSE,\n\nPlease give our colleague additional permissions in Open Exeter.\n\nODS code: A81001\nUser ID: OE123456\nUser email: jane.smith@nhs.net\n".to_string();
    if let Some(p) = permissions {
        body.push_str(&format!("Permissions: {p}\n"));
    }
    body.push_str("\nDr Ann Partner\n");
    countersign::samples::email(
        from,
        authserv,
        &format!("ap-email-{n}@practice.nhs.net"),
        "Additional permissions for Jane Smith",
        &body,
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn a_request_by_email_from_a_known_signatory_is_the_same_case_as_the_form() {
    on_both_backends(|app| async move {
        signatory(&app, "GP Partner", "Dr Ann Partner", "ann.partner@nhs.net").await;
        signatory(&app, "Practice Manager", "Mo Manager", "mo.manager@nhs.net").await;
        let dovecot = Dovecot::start();
        dovecot
            .deliver(
                "INBOX",
                &[
                    request(1, "ann.partner@nhs.net", AUTHSERV_ID, Some("Prior notification lists")),
                    request(2, "someone@nhs.net", AUTHSERV_ID, Some("Prior notification lists")),
                    request(3, "mo.manager@nhs.net", AUTHSERV_ID, Some("Prior notification lists")),
                    request(
                        4,
                        "ann.partner@nhs.net",
                        "not-our-server.example",
                        Some("Prior notification lists"),
                    ),
                    request(5, "ann.partner@nhs.net", AUTHSERV_ID, None),
                ],
            )
            .await;
        let summary = ImapPoller::new(crate::common::live(&app.engine()), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        assert_eq!(summary.ingested, 5);
        let mut conn = app.db().pool.acquire().await.unwrap();
        let mut cases = storage::list_cases(&mut conn, None, 10).await.unwrap();
        drop(conn);
        cases.sort_by_key(|c| c.id);
        assert!(
            cases
                .iter()
                .all(|c| c.workflow.as_deref() == Some("additional_permissions")),
            "{cases:?}"
        );
        let codes = |i: usize| cases[i].findings.iter().map(|f| f.code.as_str()).collect::<Vec<_>>();

        // The known GP Partner: accepted, named as the signatory, validated.
        let good = &cases[0];
        assert_eq!(good.state, "validated", "{:?}", codes(0));
        assert_eq!(
            good.fields.get("signatory_name").map(String::as_str),
            Some("Dr Ann Partner")
        );
        assert_eq!(
            good.fields.get("signatory_role").map(String::as_str),
            Some("GP Partner")
        );
        assert_eq!(
            good.fields.get("user_existing_id").map(String::as_str),
            Some("OE123456")
        );
        assert_eq!(
            good.fields.get("permissions_requested").map(String::as_str),
            Some("Prior notification lists")
        );
        assert_eq!(good.org_ods_code.as_deref(), Some("A81001"));
        // Its log says an email arrived, not a form.
        let created = &app.events(&good.reference).await[0];
        assert!(
            created
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("email received from ann.partner@nhs.net")),
            "{:?}",
            created.reason
        );

        assert_eq!(cases[1].state, "needs_review");
        assert_eq!(codes(1), vec!["signatory_not_known"]);
        assert_eq!(codes(2), vec!["signatory_role_not_allowed"]);
        assert_eq!(codes(3), vec!["sender_not_authenticated"]);
        assert_eq!(codes(4), vec!["required_field_missing"]);
        assert_eq!(cases[4].findings[0].field.as_deref(), Some("permissions_requested"));

        // The acknowledgement goes to the signatory who asked, as for a form.
        let mail = app.outbox(&good.reference).await;
        assert_eq!(mail[0].template, "acknowledgement");
        assert_eq!(mail[0].recipient.as_deref(), Some("ann.partner@nhs.net"));
    })
    .await;
}

#[tokio::test]
async fn a_request_by_email_from_outside_the_nhs_is_held() {
    on_both_backends(|app| async move {
        signatory(&app, "GP Partner", "Dr Ann Partner", "ann.partner@gmail.com").await;
        let report = app
            .receive(&request(
                9,
                "ann.partner@gmail.com",
                AUTHSERV_ID,
                Some("Prior notification lists"),
            ))
            .await;
        assert_eq!(report.cases[0].workflow.as_deref(), Some("additional_permissions"));
        assert_eq!(report.cases[0].state, "needs_review");
        assert!(
            report.cases[0].finding_codes.contains(&"sender_not_nhs".to_string()),
            "{:?}",
            report.cases[0].finding_codes
        );
    })
    .await;
}
