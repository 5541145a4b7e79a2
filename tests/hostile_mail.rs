//! Hostile mail that is not a reply: forged senders, phishing text in form fields, ambiguous
//! From headers, reused Message-IDs, attachment floods. On SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeMap;

use common::{AUTHSERV_ID, friday_morning, on_both_backends};
use countersign::engine::Engine;
use countersign::storage;

fn form(engine: &Engine, n: usize, changes: &[(&str, &str)]) -> Vec<u8> {
    let wf = engine.workflows.get("primary_user_gp").unwrap();
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
    let mut conn = engine.db.pool.acquire().await.unwrap();
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
