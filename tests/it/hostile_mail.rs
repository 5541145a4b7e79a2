//! Hostile mail that is not a reply: forged senders, phishing text in form fields, ambiguous
//! From headers, reused Message-IDs, attachment floods. On SQLite and on PostgreSQL.

use std::collections::BTreeMap;

use crate::common::{AUTHSERV_ID, friday_morning, on_both_backends, stored};
use countersign::engine::Engine;
use countersign::storage;

fn form(engine: &Engine, n: usize, changes: &[(&str, &str)]) -> Vec<u8> {
    let wf = engine.workflows().get("primary_user_gp").unwrap();
    let mut values: BTreeMap<String, String> = countersign::samples::good_values(wf, n, friday_morning().date_naive());
    for (k, v) in changes {
        values.insert(k.to_string(), v.to_string());
    }
    countersign::pdf::generate::filled_form(wf, &values).unwrap()
}

fn email(from: &str, message_id: &str, authenticated: bool, pdf: Option<Vec<u8>>) -> Vec<u8> {
    let domain = from.rsplit('@').next().unwrap();
    let mut builder = mail_builder::MessageBuilder::new()
        .from(from)
        .to("pcse.openexeter@nhs.net")
        .subject("Primary User form")
        .message_id(message_id)
        .text_body("Form attached.");
    if authenticated {
        builder = builder.header(
            "Authentication-Results",
            mail_builder::headers::raw::Raw::new(format!("{AUTHSERV_ID}; dmarc=pass header.from={domain}")),
        );
    }
    if let Some(pdf) = pdf {
        builder = builder.attachment("application/pdf", "form.pdf", pdf);
    }
    builder.write_to_vec().unwrap()
}

async fn outbox(engine: &Engine, reference: &str) -> Vec<(String, String, Option<String>, String)> {
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let case = storage::case_by_reference(&mut conn, reference).await.unwrap().unwrap();
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT template, status, suppressed_reason, context FROM outbox WHERE case_id = $1 ORDER BY id",
    )
    .bind(case.id)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows
}

#[tokio::test]
async fn no_automatic_mail_goes_to_an_unauthenticated_or_non_nhs_sender() {
    on_both_backends(|engine| async move {
        let cases = [
            ("victim@gmail.example", false, "not authenticated"),
            ("someone@gmail.example", true, "not an NHS address"),
            ("forged@nhs.net", false, "not authenticated"),
        ];
        for (i, (from, authenticated, why)) in cases.iter().enumerate() {
            let raw = email(from, &format!("m{i}@x"), *authenticated, Some(form(&engine, i, &[])));
            let reference = engine.intake(&raw, "test").await.unwrap().cases[0].reference.clone();
            let mail = outbox(&engine, &reference).await;
            assert_eq!(mail.len(), 1, "{from}: recorded, not dropped");
            assert_eq!(mail[0].1, "suppressed", "{from}");
            assert!(mail[0].2.as_deref().unwrap().contains(why), "{from}: {:?}", mail[0].2);
        }
        // An authenticated NHS sender still gets the acknowledgement.
        let raw = email("manager@nhs.net", "m9@x", true, Some(form(&engine, 9, &[])));
        let reference = engine.intake(&raw, "test").await.unwrap().cases[0].reference.clone();
        let mail = outbox(&engine, &reference).await;
        assert_eq!((mail[0].0.as_str(), mail[0].1.as_str()), ("acknowledgement", "pending"));
    })
    .await;
}

#[tokio::test]
async fn automatic_mail_quotes_no_free_text_from_the_form() {
    on_both_backends(|engine| async move {
        let phishing = "URGENT: your NHSmail account will be closed https://nhs-verify.evil.example/login";
        let pdf = form(&engine, 1, &[("org_name", phishing), ("signatory_role", phishing)]);
        let raw = email("manager@nhs.net", "phish@x", true, Some(pdf));
        let reference = engine.intake(&raw, "test").await.unwrap().cases[0].reference.clone();
        let mail = outbox(&engine, &reference).await;
        assert_eq!(mail[0].0, "acknowledgement");
        let context = &mail[0].3;
        assert!(
            !context.contains("nhs-verify"),
            "the attacker's words reach no mail: {context}"
        );
        assert!(
            context.contains("signatory_role_not_allowed"),
            "the finding is there, in our words"
        );
    })
    .await;
}

#[tokio::test]
async fn two_from_headers_make_a_malformed_message_that_is_never_validated() {
    on_both_backends(|engine| async move {
        let raw = email("manager@nhs.net", "two-from@x", true, Some(form(&engine, 2, &[])));
        let mut forged = b"From: boss@nhs.net\r\n".to_vec();
        forged.extend_from_slice(&raw);
        let report = engine.intake(&forged, "test").await.unwrap();
        let case = &report.cases[0];
        assert_eq!(case.state, "needs_review");
        assert!(
            case.finding_codes.contains(&"message_malformed".to_string()),
            "{:?}",
            case.finding_codes
        );
        assert!(case.finding_codes.contains(&"sender_not_authenticated".to_string()));
    })
    .await;
}

#[tokio::test]
async fn a_message_the_service_died_on_three_times_is_set_aside_not_read_again() {
    on_both_backends(|engine| async move {
        let dir = tempfile::tempdir().unwrap();
        let poison = email("manager@nhs.net", "poison@x", true, Some(form(&engine, 3, &[])));
        std::fs::write(dir.path().join("poison.eml"), &poison).unwrap();
        // Three starts, each of which counted its try and then died while preparing it.
        for _ in 0..countersign::engine::MAX_PREPARE_ATTEMPTS {
            assert_eq!(engine.guard_preparations(&[&poison]).await.unwrap(), vec![None]);
        }
        let summary = countersign::ingest::dropfolder::scan_once(&engine, dir.path())
            .await
            .unwrap();
        assert_eq!((summary.ingested, summary.quarantined), (0, 1));
        let reason = std::fs::read_to_string(dir.path().join("quarantine/poison.eml.reason.txt")).unwrap();
        assert!(reason.contains("stopped the service 3 times"), "{reason}");
        let cases: i64 = stored(&engine).await.cases;
        assert_eq!(cases, 0, "not read again");

        // A message that is read to the end leaves no count behind, so redeliveries are fine.
        let good = email("manager@nhs.net", "good@x", true, Some(form(&engine, 4, &[])));
        for round in 0..5 {
            std::fs::write(dir.path().join(format!("good-{round}.eml")), &good).unwrap();
            let summary = countersign::ingest::dropfolder::scan_once(&engine, dir.path())
                .await
                .unwrap();
            assert_eq!((summary.ingested, summary.quarantined), (1, 0), "round {round}");
        }
        let left: i64 = stored(&engine).await.prepare_attempts;
        assert_eq!(left, 0);

        // A group's tries are counted together: a message twice in it counts once, and only
        // the poisoned one among good ones is set aside.
        for _ in 0..countersign::engine::MAX_PREPARE_ATTEMPTS {
            engine.guard_preparations(&[&poison]).await.unwrap();
        }
        let verdicts = engine.guard_preparations(&[&good, &poison, &good]).await.unwrap();
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts[0].is_none() && verdicts[2].is_none(), "{verdicts:?}");
        assert!(
            verdicts[1].as_deref().unwrap_or_default().contains("3 times"),
            "{verdicts:?}"
        );
        // The good message's one count is left (until it is recorded); the poisoned one's is cleared.
        assert_eq!(stored(&engine).await.prepare_attempts, 1);
    })
    .await;
}

#[tokio::test]
async fn the_drop_folder_has_a_size_limit_like_the_mailbox() {
    on_both_backends(|engine| async move {
        let dir = tempfile::tempdir().unwrap();
        let big = email("manager@nhs.net", "big@x", true, Some(form(&engine, 5, &[])));
        std::fs::write(dir.path().join("big.eml"), &big).unwrap();
        let summary = countersign::ingest::dropfolder::scan_once_limited(&engine, dir.path(), big.len() - 1)
            .await
            .unwrap();
        assert_eq!(summary.quarantined, 1);
        let reason = std::fs::read_to_string(dir.path().join("quarantine/big.eml.reason.txt")).unwrap();
        assert!(reason.contains("over the limit"), "{reason}");
    })
    .await;
}

#[tokio::test]
async fn a_reused_message_id_with_other_bytes_is_stored_and_flagged_never_dropped() {
    on_both_backends(|engine| async move {
        let decoy = email("someone@nhs.net", "predictable-1@nhs.net", true, None);
        engine.intake(&decoy, "test").await.unwrap();
        let genuine = email(
            "manager@nhs.net",
            "predictable-1@nhs.net",
            true,
            Some(form(&engine, 6, &[])),
        );
        let report = engine.intake(&genuine, "test").await.unwrap();
        assert!(!report.already_ingested, "different bytes: not a redelivery");
        assert_eq!(report.cases.len(), 1);
        assert_eq!(
            report.cases[0].workflow.as_deref(),
            Some("primary_user_gp"),
            "its form was read"
        );
        assert!(report.cases[0].finding_codes.contains(&"message_id_reused".to_string()));
        // The genuine one delivered again is a redelivery, and makes nothing new.
        let again = engine.intake(&genuine, "test").await.unwrap();
        assert!(again.already_ingested);
        let stored: i64 = stored(&engine).await.raw_messages;
        assert_eq!(stored, 2);
    })
    .await;
}

#[tokio::test]
async fn an_email_with_hundreds_of_attachments_is_read_only_to_its_cap() {
    on_both_backends(|engine| async move {
        let mut builder = mail_builder::MessageBuilder::new()
            .from("manager@nhs.net")
            .to("pcse.openexeter@nhs.net")
            .subject("many")
            .message_id("many@x")
            .text_body("x");
        for i in 0..300 {
            builder = builder.attachment(
                "application/pdf",
                format!("fake-{i}.pdf"),
                b"%PDF-1.7 not really".to_vec(),
            );
        }
        let report = engine.intake(&builder.write_to_vec().unwrap(), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        let codes = &report.cases[0].finding_codes;
        assert!(codes.contains(&"too_many_attachments".to_string()), "{codes:?}");
        assert!(
            codes.len() <= countersign::mail::MAX_ATTACHMENTS + 2,
            "bounded: {} findings",
            codes.len()
        );
    })
    .await;
}

#[tokio::test]
async fn an_email_that_makes_the_mail_parser_panic_becomes_a_case_with_a_finding() {
    on_both_backends(|engine| async move {
        // Found by the `email` fuzz target (tests/fuzz): mail-parser 0.11.9 panics on it.
        let raw = crate::common::fixture("mail/fuzz/mail_parser_invalid_part_id.eml");
        let report = engine.intake(&raw, "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert!(report.cases[0].finding_codes.contains(&"message_malformed".to_string()));
    })
    .await;
}
