//! The engine end to end, on SQLite and on PostgreSQL: emails in, cases out, transitions
//! recorded with their events, timers and mail in one transaction.

use countersign::domain::EventKind;
use std::collections::BTreeMap;

use crate::common::{fixture, on_both_backends, stored};
use countersign::engine::{Engine, EngineError};
use countersign::storage;
use countersign::workflow::{Actor, ActorRole, TransitionError, TransitionRequest};
use sqlx::Row;

fn caseworker(name: &str) -> Actor {
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

/// Asserts that a transition was refused for the given reason.
fn assert_refused(result: Result<storage::CaseRecord, EngineError>, expected: fn(&TransitionError) -> bool) {
    match result {
        Err(EngineError::Transition { source, .. }) if expected(&source) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_correct_form_becomes_a_validated_case_with_its_event_timers_and_acknowledgement() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        assert!(!report.already_ingested);
        assert_eq!(report.cases.len(), 1);
        let outcome = &report.cases[0];
        assert_eq!(outcome.reference, "CS-2026-000001");
        assert_eq!(outcome.workflow.as_deref(), Some("primary_user_gp"));
        assert_eq!(outcome.state, "validated");
        assert_eq!(outcome.finding_codes, Vec::<String>::new());

        let stored = engine.case(&outcome.reference).await;
        assert_eq!(stored.fields.get("user_first_name").map(String::as_str), Some("Siân"));
        assert_eq!(
            stored.fields.get("signatory_name").map(String::as_str),
            Some("Dr Ŵyn ap Gruffydd")
        );
        assert_eq!(stored.org_ods_code.as_deref(), Some("A81001"));
        assert_eq!(stored.sender.as_deref(), Some("wyn.apgruffydd@nhs.net"));
        // SLA: 5 working days from Friday 20 November is Friday 27 November.
        let due = chrono::DateTime::from_timestamp_millis(stored.due_at.unwrap())
            .unwrap()
            .with_timezone(&chrono::Local);
        assert_eq!(due.date_naive(), chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());

        let log = engine.events(&outcome.reference).await;
        let kinds: Vec<(&str, Option<&str>)> = log.iter().map(|e| (e.kind.as_str(), e.to_state.as_deref())).collect();
        assert_eq!(
            kinds,
            vec![("created", Some("received")), ("transition", Some("validated"))]
        );
        assert_eq!(log[1].transition.as_deref(), Some("validate"));
        assert_eq!(log[1].actor, "system");

        let armed: Vec<(String, String)> = engine
            .timers(&outcome.reference)
            .await
            .into_iter()
            .map(|t| (t.name, t.status.to_string()))
            .collect();
        assert_eq!(
            armed,
            vec![
                ("escalate_unauthorised".to_string(), "pending".to_string()),
                ("sla_at_risk".to_string(), "pending".to_string()),
                ("sla_breached".to_string(), "pending".to_string())
            ]
        );

        let mail = engine.outbox(&outcome.reference).await;
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].template, "acknowledgement");
        assert_eq!(mail[0].recipient.as_deref(), Some("wyn.apgruffydd@nhs.net"));
        assert_eq!(mail[0].status.as_str(), "pending");
        assert_eq!(mail[0].in_reply_to.as_deref(), Some("gp-1@practice.nhs.net"));

        // The raw message and its attachment are kept, with hashes and the detected type.
        let raw = fixture("mail/gp_form.eml");
        let row = sqlx::query("SELECT sha256, message_id, raw FROM raw_messages")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>(0), countersign::mail::sha256_hex(&raw));
        assert_eq!(
            row.get::<Option<String>, _>(1).as_deref(),
            Some("gp-1@practice.nhs.net")
        );
        assert_eq!(row.get::<Vec<u8>, _>(2), raw, "the raw message is kept byte for byte");
        let attachment = sqlx::query("SELECT detected_type, filename, sha256, id, LENGTH(content) FROM attachments")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(
            attachment.get::<Option<String>, _>(0).as_deref(),
            Some("application/pdf")
        );
        assert_eq!(
            attachment.get::<Option<String>, _>(1).as_deref(),
            Some("PU-GP-1 Riverside.pdf")
        );
        // The PDF is stored once, inside its message, and read from it byte for byte.
        assert_eq!(attachment.get::<i64, _>(4), 0, "no second copy of the attachment");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &outcome.reference)
            .await
            .unwrap()
            .unwrap();
        let (_, _, pdf) = storage::case_attachment(&mut conn, case.id, attachment.get::<i64, _>(3))
            .await
            .unwrap()
            .unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert_eq!(attachment.get::<String, _>(2), countersign::mail::sha256_hex(&pdf));
        drop(conn);
        // The organisation is recorded.
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let organisations = storage::search_organisations(&mut conn, "A81001", 10).await.unwrap();
        assert_eq!(organisations.iter().filter(|o| o.ods == "A81001").count(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_second_delivery_of_the_same_message_makes_no_second_case() {
    on_both_backends(|engine| async move {
        let first = engine.intake(&fixture("mail/gp_form.eml"), "imap:1").await.unwrap();
        let again = engine.intake(&fixture("mail/gp_form.eml"), "imap:2").await.unwrap();
        assert!(again.already_ingested);
        assert_eq!(again.raw_message_id, first.raw_message_id);
        assert_eq!(
            again.cases.iter().map(|c| &c.reference).collect::<Vec<_>>(),
            vec![&first.cases[0].reference]
        );
        assert_eq!(stored(&engine).await.cases, 1);
        assert_eq!(stored(&engine).await.raw_messages, 1);
    })
    .await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_message_make_one_case() {
    on_both_backends(|engine| async move {
        let raw = fixture("mail/gp_form.eml");
        let (a, b) = tokio::join!(engine.intake(&raw, "a"), engine.intake(&raw, "b"));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.cases[0].reference, b.cases[0].reference);
        assert!(a.already_ingested ^ b.already_ingested, "exactly one of them stored it");
        assert_eq!(stored(&engine).await.cases, 1);
    })
    .await;
}

#[tokio::test]
async fn the_same_pdf_in_a_new_message_is_linked_to_the_existing_case() {
    on_both_backends(|engine| async move {
        let first = engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        let resent = engine
            .intake(&fixture("mail/gp_form_resent.eml"), "test")
            .await
            .unwrap();
        assert!(!resent.already_ingested, "it is a different message");
        let reference = &first.cases[0].reference;
        assert_eq!(resent.cases[0].duplicate_of.as_ref(), Some(reference));
        assert_eq!(&resent.cases[0].reference, reference);
        assert_eq!(stored(&engine).await.cases, 1);
        assert_eq!(stored(&engine).await.duplicate_links, 1);
        assert!(
            engine
                .events(reference)
                .await
                .iter()
                .any(|e| e.kind == EventKind::DuplicateReceived)
        );
    })
    .await;
}

#[tokio::test]
async fn an_octet_stream_attachment_with_an_rfc2231_name_is_found() {
    on_both_backends(|engine| async move {
        let report = engine
            .intake(&fixture("mail/octet_stream_rfc2231.eml"), "test")
            .await
            .unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
        let name: Option<String> = sqlx::query_scalar("SELECT filename FROM attachments")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("Formulaire d’accès – Siân.pdf"));
        let claimed: String = sqlx::query_scalar("SELECT claimed_type FROM attachments")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(claimed, "application/octet-stream");
    })
    .await;
}

#[tokio::test]
async fn a_form_inside_a_forwarded_message_is_found() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/forwarded.eml"), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_org"));
        assert_eq!(
            report.cases[0].state, "validated",
            "{:?}",
            report.cases[0].finding_codes
        );
        let forwarded: i64 =
            sqlx::query_scalar("SELECT forwarded FROM attachments WHERE detected_type = 'application/pdf'")
                .fetch_one(&engine.db().pool)
                .await
                .unwrap();
        assert_eq!(forwarded, 1);
    })
    .await;
}

#[tokio::test]
async fn two_forms_in_one_email_make_two_cases() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/two_forms.eml"), "test").await.unwrap();
        let workflows: Vec<_> = report
            .cases
            .iter()
            .map(|c| c.workflow.as_deref().unwrap_or("-"))
            .collect();
        assert_eq!(workflows, vec!["primary_user_gp", "additional_permissions"]);
        assert!(
            report.cases.iter().all(|c| c.state == "validated"),
            "{:?}",
            report.cases
        );
        assert_eq!(report.cases[1].reference, "CS-2026-000002");
    })
    .await;
}

#[tokio::test]
async fn an_email_without_a_form_still_becomes_a_case() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/no_form.eml"), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].workflow, None);
        assert_eq!(report.cases[0].state, "needs_review");
        assert_eq!(report.cases[0].finding_codes, vec!["no_form_found"]);
    })
    .await;
}

#[tokio::test]
async fn bytes_that_are_not_an_email_become_a_case_with_a_finding() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/garbage.eml"), "test").await.unwrap();
        assert_eq!(report.cases[0].finding_codes, vec!["message_malformed"]);
        let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM raw_messages")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(raw, fixture("mail/garbage.eml"), "kept as received");
    })
    .await;
}

#[tokio::test]
async fn a_broken_pdf_becomes_a_case_with_a_clear_finding() {
    on_both_backends(|engine| async move {
        let report = engine.intake(&fixture("mail/truncated_pdf.eml"), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        let codes = &report.cases[0].finding_codes;
        // lopdf may repair a truncated file enough to read some fields; either way the case
        // waits for a person and says why.
        assert_eq!(report.cases[0].state, "needs_review");
        assert!(!codes.is_empty(), "{codes:?}");
        let stored = engine.case(&report.cases[0].reference).await;
        assert!(stored.findings.iter().all(|f| !f.message.is_empty()));
    })
    .await;
}

#[tokio::test]
async fn every_hostile_pdf_attached_to_an_email_becomes_a_case() {
    on_both_backends(|engine| async move {
        for (i, name) in [
            "hostile_nested_50000.pdf",
            "hostile_nested_dicts.pdf",
            "hostile_kids_cycle.pdf",
            "hostile_not_a_pdf.pdf",
            "hostile_user_password.pdf",
        ]
        .iter()
        .enumerate()
        {
            let pdf = fixture(&format!("pdf/{name}"));
            let email = countersign::samples::email_with_form(
                "a@nhs.net",
                crate::common::AUTHSERV_ID,
                &format!("hostile-{i}@x"),
                "form",
                Some((name, pdf)),
            )
            .unwrap();
            let report = engine.intake(&email, "test").await.unwrap();
            assert_eq!(report.cases.len(), 1, "{name}");
            assert_eq!(report.cases[0].state, "needs_review", "{name}");
            let expected = if name.contains("password") {
                "pdf_password_protected"
            } else {
                "pdf_unreadable"
            };
            assert_eq!(report.cases[0].finding_codes, vec![expected], "{name}");
        }
        assert_eq!(stored(&engine).await.cases, 5);
    })
    .await;
}

#[tokio::test]
async fn a_form_with_findings_is_held_for_review() {
    on_both_backends(|engine| async move {
        let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
        let email = crate::common::form_email(
            &wf,
            1,
            &[("signatory_role", "Practice Manager")],
            "amara@nhs.net",
            "held@x",
            "form",
        );
        let report = engine.intake(&email, "test").await.unwrap();
        assert_eq!(report.cases[0].state, "needs_review");
        assert_eq!(report.cases[0].finding_codes, vec!["signatory_role_not_allowed"]);
        let log = engine.events(&report.cases[0].reference).await;
        assert_eq!(log[1].transition.as_deref(), Some("hold_for_review"));
        assert!(log[1].reason.as_deref().unwrap().contains("signatory_role_not_allowed"));
    })
    .await;
}

/// An email with no form waits unclassified, with no SLA. Given its form type, it is in the log
/// and its SLA clock starts (counted from the email's arrival), with its timers.
#[tokio::test]
async fn choosing_a_form_type_for_an_unclassified_case_logs_it_and_starts_its_sla() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/no_form.eml").await;
        assert!(engine.case(&reference).await.workflow.is_none());
        assert!(
            engine
                .timers(&reference)
                .await
                .iter()
                .all(|t| !t.name.starts_with("sla_"))
        );
        let keyed = engine
            .key_fields(
                &reference,
                Some("primary_user_gp"),
                &BTreeMap::new(),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        assert_eq!(keyed.workflow.as_deref(), Some("primary_user_gp"));
        let logged: Vec<String> = engine
            .events(&reference)
            .await
            .into_iter()
            .map(|e| e.kind.to_string())
            .collect();
        assert!(logged.contains(&"workflow_changed".to_string()), "{logged:?}");
        let pending: Vec<String> = engine
            .timers(&reference)
            .await
            .into_iter()
            .filter(|t| t.status.as_str() == "pending")
            .map(|t| t.name)
            .collect();
        assert!(
            pending.contains(&"sla_at_risk".to_string()) && pending.contains(&"sla_breached".to_string()),
            "{pending:?}"
        );
        // Received Friday 20 November: five working days on is Friday 27th.
        let due = chrono::DateTime::from_timestamp_millis(keyed.due_at.expect("a due time"))
            .unwrap()
            .with_timezone(&chrono::Local);
        assert_eq!(due.date_naive(), chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_flattened_form_is_keyed_by_hand_then_accepted_authorised_by_someone_else_and_provisioned() {
    on_both_backends(|engine| async move {
        let report = engine
            .intake(&fixture("mail/flattened_form.eml"), "test")
            .await
            .unwrap();
        let reference = report.cases[0].reference.clone();
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
        assert_eq!(report.cases[0].state, "needs_review");
        assert_eq!(report.cases[0].finding_codes, vec!["form_has_no_fields"]);

        let values: BTreeMap<String, String> = [
            ("form_id", "PU-GP-1"),
            ("org_name", "Riverside Surgery"),
            ("org_ods_code", "A81001"),
            ("user_first_name", "Siân"),
            ("user_last_name", "Ó Briain-Åkesson"),
            ("user_job_title", "Practice Manager"),
            ("user_email", "sian.obriain@nhs.net"),
            ("request_kind", "New"),
            ("signatory_name", "Dr Ŵyn ap Gruffydd"),
            ("signatory_role", "GP Partner"),
            ("signatory_email", "wyn.apgruffydd@nhs.net"),
            ("signatory_date", "10/11/2026"),
            ("signatory_declaration", "Yes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let keyed = engine
            .key_fields(&reference, None, &values, &caseworker("alice"))
            .await
            .unwrap();
        assert!(keyed.findings.is_empty(), "{:?}", keyed.findings);
        assert_eq!(keyed.org_ods_code.as_deref(), Some("A81001"));
        let edits = engine
            .events(&reference)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::FieldKeyed)
            .count();
        assert_eq!(
            edits,
            values.len(),
            "every keyed field is logged with its old and new value"
        );

        engine
            .transition(
                &reference,
                &to("validated", Some("keyed from the scan")),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        // Four-eyes: alice keyed and accepted it, so alice may not authorise it.
        assert_refused(
            engine
                .transition(&reference, &to("authorised", None), &caseworker("alice"))
                .await,
            |e| matches!(e, TransitionError::FourEyes { .. }),
        );
        engine
            .transition(&reference, &to("authorised", None), &caseworker("bob"))
            .await
            .unwrap();

        use countersign::provision::{Provisioner, RecordedByCaseworker};
        let provisioner = RecordedByCaseworker {
            recorded: vec![("open_exeter_user_id".into(), "OE778899".into())],
            note: None,
        };
        let done = provisioner
            .provision(&engine, &reference, &caseworker("bob"))
            .await
            .unwrap();
        assert_eq!(done.state, "provisioned");
        assert_eq!(
            done.recorded.get("open_exeter_user_id").map(String::as_str),
            Some("OE778899")
        );

        let states: Vec<String> = engine
            .events(&reference)
            .await
            .into_iter()
            .filter_map(|e| e.to_state)
            .collect();
        assert_eq!(
            states,
            vec!["received", "needs_review", "validated", "authorised", "provisioned"]
        );
        let templates: Vec<String> = engine
            .outbox(&reference)
            .await
            .into_iter()
            .map(|m| m.template)
            .collect();
        assert_eq!(templates, vec!["acknowledgement", "provisioned"]);
        assert!(
            engine
                .timers(&reference)
                .await
                .iter()
                .all(|t| t.status.as_str() != "pending"),
            "a final state has no live timers"
        );
    })
    .await;
}

#[tokio::test]
async fn an_illegal_transition_is_refused_and_changes_nothing() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let before = engine.case(&reference).await;
        let events_before = engine.events(&reference).await.len();
        assert_refused(
            engine
                .transition(&reference, &to("provisioned", None), &caseworker("alice"))
                .await,
            |e| matches!(e, TransitionError::NotAllowedFromState { .. }),
        );
        assert_refused(
            engine
                .transition(&reference, &to("rejected", None), &caseworker("alice"))
                .await,
            |e| matches!(e, TransitionError::ReasonRequired { .. }),
        );
        let after = engine.case(&reference).await;
        assert_eq!((after.state, after.version), (before.state, before.version));
        assert_eq!(engine.events(&reference).await.len(), events_before);
        assert!(matches!(
            engine
                .transition("CS-2026-999999", &to("rejected", Some("x")), &caseworker("a"))
                .await,
            Err(EngineError::CaseNotFound(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn requesting_information_arms_the_reminder_and_leaving_the_state_cancels_it() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        engine
            .transition(
                &reference,
                &to("awaiting_information", Some("Please re-sign page 2")),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        let live: Vec<(String, chrono::NaiveDate)> = engine
            .timers(&reference)
            .await
            .into_iter()
            .filter(|t| t.status.as_str() == "pending" && !t.name.starts_with("sla_"))
            .map(|t| {
                (
                    t.name,
                    chrono::DateTime::from_timestamp_millis(t.due_at)
                        .unwrap()
                        .with_timezone(&chrono::Local)
                        .date_naive(),
                )
            })
            .collect();
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        // From Friday 20 Nov: 5 working days is Fri 27 Nov, 10 is Fri 4 Dec.
        assert_eq!(
            live,
            vec![
                ("remind_sender".to_string(), day(27)),
                (
                    "close_without_reply".to_string(),
                    chrono::NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
                )
            ]
        );
        let mail = engine.outbox(&reference).await;
        assert_eq!(mail.last().map(|m| m.template.as_str()), Some("request_for_correction"));

        engine
            .transition(&reference, &to("needs_review", None), &caseworker("alice"))
            .await
            .unwrap();
        let all = engine.timers(&reference).await;
        assert!(
            all.iter()
                .filter(|t| t.name != "nudge_team" && !t.name.starts_with("sla_"))
                .all(|t| t.status.as_str() == "cancelled"),
            "{all:?}"
        );
        assert_eq!(
            all.iter()
                .filter(|t| t.status.as_str() == "pending")
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            vec!["sla_at_risk", "sla_breached", "nudge_team"],
            "the SLA timers run on until the case is closed"
        );
    })
    .await;
}

#[tokio::test]
async fn an_automatic_message_is_never_answered_automatically() {
    on_both_backends(|engine| async move {
        let raw = String::from_utf8(fixture("mail/gp_form.eml")).unwrap();
        let auto = raw
            .replacen("Subject:", "Auto-Submitted: auto-replied\r\nSubject:", 1)
            .replace("gp-1@practice", "auto-1@practice");
        let report = engine.intake(auto.as_bytes(), "test").await.unwrap();
        let mail = engine.outbox(&report.cases[0].reference).await;
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].status.as_str(), "suppressed");
        assert!(mail[0].suppressed_reason.as_deref().unwrap().contains("Auto-Submitted"));
    })
    .await;
}

#[tokio::test]
async fn an_unclassified_case_can_only_be_closed_off_or_keyed_into_a_workflow() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/no_form.eml").await;
        let err = engine
            .transition(&reference, &to("validated", Some("x")), &caseworker("alice"))
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Unclassified { .. }), "{err}");
        assert_refused(
            engine
                .transition(&reference, &to("rejected", None), &caseworker("alice"))
                .await,
            |e| matches!(e, TransitionError::ReasonRequired { .. }),
        );
        let done = engine
            .transition(
                &reference,
                &to("rejected", Some("no form attached")),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        assert_eq!(done.state, "rejected");
    })
    .await;
}

#[tokio::test]
async fn keying_a_case_into_a_workflow_is_an_event_in_the_log() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/no_form.eml").await;
        let values: std::collections::BTreeMap<String, String> =
            [("org_name".to_string(), "Riverside Surgery".to_string())].into();
        engine
            .key_fields(&reference, Some("primary_user_gp"), &values, &caseworker("alice"))
            .await
            .unwrap();
        let changed: Vec<_> = engine
            .events(&reference)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::WorkflowChanged)
            .collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].actor, "alice");
        assert!(changed[0].data.as_deref().unwrap().contains("primary_user_gp"));
        // Keying more fields in the same workflow is no workflow change.
        engine
            .key_fields(&reference, Some("primary_user_gp"), &values, &caseworker("alice"))
            .await
            .unwrap();
        let again = engine
            .events(&reference)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::WorkflowChanged)
            .count();
        assert_eq!(again, 1);
    })
    .await;
}

#[tokio::test]
async fn the_event_log_is_append_only() {
    on_both_backends(|engine| async move {
        engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        assert!(
            sqlx::query("UPDATE case_events SET actor = 'mallory'")
                .execute(&engine.db().pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("DELETE FROM case_events")
                .execute(&engine.db().pool)
                .await
                .is_err()
        );
        assert_eq!(
            // Below the storage API on purpose: this is what an attacker with SQL would try.
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM case_events WHERE actor = 'mallory'")
                .fetch_one(&engine.db().pool)
                .await
                .unwrap(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn a_stale_update_is_refused_rather_than_lost() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let stale = engine.case(&reference).await;
        engine
            .transition(&reference, &to("authorised", None), &caseworker("bob"))
            .await
            .unwrap();
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let mut write = countersign::engine::change::changeset(&stale, 0);
        write.columns.state = Some("rejected".into());
        let refused = storage::apply_change(&mut conn, write).await;
        assert!(
            matches!(refused, Err(storage::StorageError::Conflict(_))),
            "a write based on an old version must not land: {refused:?}"
        );
        drop(conn);
        assert_eq!(engine.case(&reference).await.state, "authorised");
    })
    .await;
}

#[tokio::test]
async fn case_references_count_up_within_the_year() {
    on_both_backends(|engine| async move {
        let mut refs = Vec::new();
        for name in ["mail/gp_form.eml", "mail/no_form.eml", "mail/forwarded.eml"] {
            refs.push(
                engine.intake(&fixture(name), "test").await.unwrap().cases[0]
                    .reference
                    .clone(),
            );
        }
        assert_eq!(refs, vec!["CS-2026-000001", "CS-2026-000002", "CS-2026-000003"]);
    })
    .await;
}

/// Emails a form generated from `workflow` after `edit` (so a test can make a form that is not
/// quite ours).
async fn intake_generated(
    engine: &Engine,
    message_id: &str,
    edit: impl FnOnce(&mut countersign::workflow::WorkflowDef),
) -> countersign::engine::IntakeReport {
    let mut wf = engine.workflows().get("primary_user_gp").unwrap().clone();
    let values = countersign::samples::good_values(&wf, 7, crate::common::friday_morning().date_naive());
    edit(&mut wf);
    let pdf = countersign::pdf::generate::filled_form(&wf, &values).unwrap();
    let email = countersign::samples::email_with_form(
        "amara.okafor7@nhs.net",
        crate::common::AUTHSERV_ID,
        message_id,
        "form",
        Some(("f.pdf", pdf)),
    )
    .unwrap();
    engine.intake(&email, "test").await.unwrap()
}

#[tokio::test]
async fn a_pdf_form_that_is_not_one_of_ours_is_a_finding() {
    on_both_backends(|engine| async move {
        let report = intake_generated(&engine, "other@x", |wf| {
            wf.recognise.form_id = Some("HR-LEAVE-2".into());
            for field in &mut wf.fields {
                if field.name != "form_id" {
                    field.name = format!("leave_{}", field.name);
                }
            }
        })
        .await;
        assert_eq!(report.cases[0].workflow, None);
        assert_eq!(report.cases[0].finding_codes, vec!["form_not_recognised"]);
    })
    .await;
}

#[tokio::test]
async fn a_form_without_its_form_id_is_matched_by_its_fields_and_flagged() {
    on_both_backends(|engine| async move {
        let report = intake_generated(&engine, "no-id@x", |wf| wf.fields.retain(|f| f.name != "form_id")).await;
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
        assert_eq!(report.cases[0].finding_codes, vec!["form_id_missing"]);
        assert_eq!(report.cases[0].state, "needs_review");
    })
    .await;
}

#[tokio::test]
async fn a_pdf_over_the_size_limit_is_a_finding() {
    on_both_backends(|engine| async move {
        let limits = countersign::pdf::ExtractLimits {
            max_bytes: 1000,
            ..engine.config().limits
        };
        let engine = engine.engine().with_limits(limits);
        let report = engine.intake(&fixture("mail/gp_form.eml"), "test").await.unwrap();
        assert_eq!(report.cases[0].finding_codes, vec!["pdf_too_large"]);
        assert_eq!(report.cases[0].state, "needs_review");
    })
    .await;
}

#[tokio::test]
async fn a_group_recorded_in_one_transaction_deduplicates_within_itself() {
    on_both_backends(|engine| async move {
        let first = fixture("mail/gp_form.eml");
        let second = fixture("mail/no_form.eml");
        let mut group = Vec::new();
        for raw in [&first, &second, &first] {
            group.push((raw.as_slice(), engine.prepare(raw).await, "test"));
        }
        let reports = engine.record_group(group).await.unwrap();
        let already: Vec<bool> = reports.iter().map(|r| r.already_ingested).collect();
        assert_eq!(
            already,
            vec![false, false, true],
            "the repeat is found in the same transaction"
        );
        assert_eq!(reports[2].cases[0].reference, reports[0].cases[0].reference);
        let raw_messages: i64 = stored(&engine).await.raw_messages;
        let cases: i64 = stored(&engine).await.cases;
        assert_eq!((raw_messages, cases), (2, 2));
    })
    .await;
}

/// Two people act on one case from the same page at once: the version each saw is checked
/// inside the transaction that writes, so exactly one change is made. (Checked before the
/// transaction, both went through: the second planned from the state the first had made.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_transitions_on_one_case_exactly_one_wins() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let seen = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        drop(conn);
        assert_eq!(seen.state, "validated");
        let ask = TransitionRequest {
            expected_version: Some(seen.version),
            ..to("awaiting_information", Some("please send page 2"))
        };
        let reject = TransitionRequest {
            expected_version: Some(seen.version),
            ..to("rejected", Some("not signed by a partner"))
        };
        let (a, b) = (caseworker("cw-a@nhs.net"), caseworker("cw-b@nhs.net"));
        let (first, second) = tokio::join!(
            engine.transition(&reference, &ask, &a),
            engine.transition(&reference, &reject, &b)
        );
        let outcomes = [first, second];
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        // The loser read the case after the winner committed (Stale: SQLite takes its write
        // lock at BEGIN), or before it (Conflict: PostgreSQL's version-checked update).
        let stale = outcomes
            .iter()
            .filter(|o| matches!(o, Err(EngineError::Stale { .. } | EngineError::Conflict(_))))
            .count();
        assert_eq!((won, stale), (1, 1), "{outcomes:?}");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let after = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.version, seen.version + 1, "one change, not two");
        let by_staff = storage::events_for_case(&mut conn, after.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EventKind::Transition && e.actor_role != "system")
            .count();
        assert_eq!(by_staff, 1, "one transition in the log");
    })
    .await;
}

/// Marking a duplicate links it to its original in the same transaction as the state change:
/// never a duplicate with no original, never a link without the state.
#[tokio::test]
async fn marking_a_duplicate_is_atomic() {
    on_both_backends(|engine| async move {
        let original = engine.receive_fixture("mail/gp_form.eml").await;
        let copy = engine.receive_fixture("mail/no_form.eml").await;
        let actor = caseworker("cw@nhs.net");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let before = storage::case_by_reference(&mut conn, &copy).await.unwrap().unwrap();
        drop(conn);
        for wrong in ["CS-2026-999999", copy.as_str()] {
            let request = TransitionRequest {
                duplicate_of: Some(wrong.into()),
                ..to("duplicate", Some("same request"))
            };
            let refused = engine.transition(&copy, &request, &actor).await;
            if wrong == copy {
                // Said plainly, not "no case CS-…" of a case that plainly exists.
                let message = refused.as_ref().unwrap_err().to_string();
                assert!(matches!(refused, Err(EngineError::DuplicateOfItself(_))), "{refused:?}");
                assert!(message.contains("cannot be a duplicate of itself"), "{message}");
            } else {
                assert!(matches!(refused, Err(EngineError::NoSuchOriginal(_))), "{refused:?}");
            }
            let mut conn = engine.db().pool.acquire().await.unwrap();
            let unchanged = storage::case_by_reference(&mut conn, &copy).await.unwrap().unwrap();
            assert_eq!(
                (unchanged.state, unchanged.version),
                (before.state.clone(), before.version)
            );
        }
        let request = TransitionRequest {
            duplicate_of: Some(original.to_lowercase()),
            ..to("duplicate", Some("same request"))
        };
        let marked = engine.transition(&copy, &request, &actor).await.unwrap();
        assert_eq!(marked.state, "duplicate");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let stored = storage::case_by_reference(&mut conn, &copy).await.unwrap().unwrap();
        let original_id = storage::case_by_reference(&mut conn, &original)
            .await
            .unwrap()
            .unwrap()
            .id;
        assert_eq!(stored.duplicate_of, Some(original_id));
        let events = storage::events_for_case(&mut conn, stored.id).await.unwrap();
        let reason = events.last().and_then(|e| e.reason.clone()).unwrap_or_default();
        assert!(reason.starts_with(&format!("duplicate of {original}")), "{reason}");
    })
    .await;
}

/// A change commits whole or not at all: when its mail cannot be queued, the state, the
/// event and the timers it would have written are not there either.
#[tokio::test]
async fn a_change_whose_mail_cannot_be_queued_changes_nothing() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let before = engine.case(&reference).await;
        let events_before = engine.events(&reference).await.len();
        let timers_before = engine.timers(&reference).await.len();
        let refuse = match engine.db().backend {
            storage::Backend::Sqlite => {
                "CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'no mail today'); END;"
            }
            storage::Backend::Postgres => {
                "CREATE FUNCTION refuse_mail() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'no mail today'; END $$;
                 CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_mail();"
            }
        };
        sqlx::raw_sql(refuse).execute(&engine.db().pool).await.unwrap();
        // Asking for information queues mail and arms the reminder and closing timers.
        let asked = engine
            .transition(
                &reference,
                &to("awaiting_information", Some("page 2 is missing")),
                &caseworker("cw@nhs.net"),
            )
            .await;
        assert!(matches!(asked, Err(EngineError::Storage(_))), "{asked:?}");
        let after = engine.case(&reference).await;
        assert_eq!((after.state, after.version), (before.state, before.version));
        assert_eq!(after.sla_paused_at, None, "the SLA pause went with it");
        assert_eq!(engine.events(&reference).await.len(), events_before);
        assert_eq!(engine.timers(&reference).await.len(), timers_before);
    })
    .await;
}

/// Only the values a transition declares (`records` in the workflow file) are recorded: a
/// form field that happens to share a name cannot write anything else onto the case.
#[tokio::test]
async fn a_transition_records_only_the_values_its_workflow_declares() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let rejected = engine
            .transition(
                &reference,
                &TransitionRequest {
                    recorded: vec![("open_exeter_user_id".into(), "OE1".into())],
                    ..to("rejected", Some("wrong form"))
                },
                &caseworker("cw@nhs.net"),
            )
            .await
            .unwrap();
        assert!(rejected.recorded.is_empty(), "{:?}", rejected.recorded);
        assert!(engine.case(&reference).await.recorded.is_empty());
    })
    .await;
}

/// Two people assigning one case from the same page: the version check is the engine's, so
/// exactly one assignment lands and is logged.
#[tokio::test]
async fn two_assignments_from_one_page_exactly_one_wins() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let mut ids = Vec::new();
        for email in ["a@nhs.net", "b@nhs.net"] {
            let (user, _) = countersign::users::add(&mut conn, email, email, ActorRole::Caseworker, 0)
                .await
                .unwrap();
            ids.push(user.id);
        }
        drop(conn);
        let seen = engine.case(&reference).await;
        let (a, b) = (caseworker("a@nhs.net"), caseworker("b@nhs.net"));
        let (first, second) = tokio::join!(
            engine.assign(&reference, Some((ids[0], "a@nhs.net")), &a, Some(seen.version)),
            engine.assign(&reference, Some((ids[1], "b@nhs.net")), &b, Some(seen.version))
        );
        let outcomes = [first, second];
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "{outcomes:?}");
        let after = engine.case(&reference).await;
        assert_eq!(after.version, seen.version + 1);
        let claims = engine
            .events(&reference)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::Claimed)
            .count();
        assert_eq!(claims, 1);
    })
    .await;
}

/// A group numbers its cases in one go and gives back the numbers it did not use: a copy of a
/// form already in the group (linked, not a new case) leaves no gap in the references.
#[tokio::test]
async fn a_group_that_opens_fewer_cases_than_it_might_leaves_no_gap_in_references() {
    on_both_backends(|engine| async move {
        let form = fixture("mail/gp_form.eml");
        let copy = String::from_utf8_lossy(&form)
            .replacen("Message-ID: <", "Message-ID: <copy-", 1)
            .into_bytes();
        assert_ne!(copy, form, "the fixture has a Message-ID to change");
        let no_form = fixture("mail/no_form.eml");
        let mut group = Vec::new();
        for raw in [&form, &copy, &no_form] {
            group.push((raw.as_slice(), engine.prepare(raw).await, "test"));
        }
        let reports = engine.record_group(group).await.unwrap();
        let references: Vec<&str> = reports.iter().map(|r| r.cases[0].reference.as_str()).collect();
        assert_eq!(references, vec!["CS-2026-000001", "CS-2026-000001", "CS-2026-000002"]);
        assert_eq!(reports[1].cases[0].duplicate_of.as_deref(), Some("CS-2026-000001"));
        let next = engine.intake(&fixture("mail/forwarded.eml"), "test").await.unwrap();
        assert_eq!(next.cases[0].reference, "CS-2026-000003");
    })
    .await;
}

/// A group holds its new cases back and stores them with one statement, under ids taken
/// ahead: each is stored with the organisation it names and an event chain that starts with
/// its own events, including an event a later email of the group added (the copy of its form),
/// and a change after the group extends that chain intact.
#[tokio::test]
async fn a_group_stores_its_new_cases_together_with_their_organisations_and_chains() {
    on_both_backends(|engine| async move {
        let form = fixture("mail/gp_form.eml");
        let copy = String::from_utf8_lossy(&form)
            .replacen("Message-ID: <", "Message-ID: <copy-", 1)
            .into_bytes();
        let no_form = fixture("mail/no_form.eml");
        let mut group = Vec::new();
        for raw in [&form, &no_form, &copy] {
            group.push((raw.as_slice(), engine.prepare(raw).await, "test"));
        }
        let reports = engine.record_group(group).await.unwrap();
        let reference = reports[0].cases[0].reference.clone();
        assert_eq!(reports[2].cases[0].duplicate_of.as_deref(), Some(reference.as_str()));
        let kinds: Vec<EventKind> = engine.events(&reference).await.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&EventKind::DuplicateReceived), "{kinds:?}");

        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let ods = case.org_ods_code.clone().expect("the form names its organisation");
        let organisations = storage::search_organisations(&mut conn, &ods, 10).await.unwrap();
        assert_eq!(organisations.len(), 1, "{organisations:?}");
        assert_eq!(
            organisations[0].cases, 1,
            "the case is stored with its organisation's id"
        );
        let other = storage::case_by_reference(&mut conn, &reports[1].cases[0].reference)
            .await
            .unwrap()
            .unwrap();
        assert!(
            other.id > case.id,
            "ids follow the order the group's cases were opened in"
        );
        drop(conn);

        engine
            .transition(
                &reference,
                &to("awaiting_information", Some("page 2 is missing")),
                &caseworker("cw@nhs.net"),
            )
            .await
            .unwrap();
        let report = countersign::audit::verify(engine.db()).await.unwrap();
        assert!(report.intact(), "{:?}", report.findings);
        let events = engine.events(&reference).await.len() + engine.events(&other.reference).await.len();
        assert_eq!(report.events, events as u64);
    })
    .await;
}

#[tokio::test]
async fn a_closed_case_is_due_no_more_and_older_closed_cases_are_cleared_at_start() {
    on_both_backends(|engine| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        assert!(
            engine.case(&reference).await.due_at.is_some(),
            "an open case has a due time"
        );
        engine
            .transition(
                &reference,
                &to("rejected", Some("not our form")),
                &caseworker("cw@nhs.net"),
            )
            .await
            .unwrap();
        assert_eq!(engine.case(&reference).await.due_at, None, "closed: due no more");

        // Cases closed before the rule (here, synthetic ones that still have due times) are
        // cleared by the start-up job, in slices, and only the closed ones.
        let now = engine.now_ms();
        let seeded = countersign::seed::cases(300, 1, now, 1, 7);
        let closed: Vec<&str> = seeded
            .iter()
            .filter(|c| engine.workflows().terminal_states().contains(&c.state))
            .map(|c| c.reference.as_str())
            .collect();
        let open: Vec<&str> = seeded
            .iter()
            .filter(|c| !engine.workflows().terminal_states().contains(&c.state))
            .map(|c| c.reference.as_str())
            .collect();
        assert!(!closed.is_empty() && !open.is_empty());
        crate::common::store_seeded(&engine, &seeded).await;
        assert!(engine.case(closed[0]).await.due_at.is_some());
        let cleared = engine.clear_due_times_of_closed_cases().await.unwrap();
        assert_eq!(cleared as usize, closed.len());
        for reference in &closed {
            assert_eq!(engine.case(reference).await.due_at, None, "{reference}");
        }
        assert!(engine.case(open[0]).await.due_at.is_some(), "open cases keep theirs");
        assert_eq!(
            engine.clear_due_times_of_closed_cases().await.unwrap(),
            0,
            "nothing left to do"
        );
    })
    .await;
}

/// A synthetic case is linked to its email as the email that opened it, as every real case is:
/// the case page finds a case's emails by those links (an unlinked case took two reads more,
/// and the million-case benchmark measured that instead of a real case's page).
#[tokio::test]
async fn seeded_cases_are_linked_to_their_email_as_the_one_that_opened_them() {
    on_both_backends(|engine| async move {
        let now = engine.now_ms();
        // More than one statement's worth of cases (200).
        let seeded = countersign::seed::cases(250, 1, now, 1, 7);
        let origin = crate::common::store_seeded(&engine, &seeded).await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        for case in [&seeded[0], &seeded[249]] {
            let file = storage::case_file(&mut conn, &case.reference).await.unwrap().unwrap();
            let links: Vec<(i64, &str)> = file.messages.iter().map(|m| (m.id, m.relation.as_str())).collect();
            assert_eq!(links, vec![(origin, "origin")], "{}", case.reference);
            assert_eq!(file.message.subject, None, "the synthetic email, which has no subject");
        }
    })
    .await;
}
