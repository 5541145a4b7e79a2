//! Replies and resubmissions, as the security review attacked them: mail that names a case
//! changes it only when it is authenticated and from the case's own sender or signatory, only
//! before authorisation, one case per form; bounces are recorded and never ask for work. Every
//! test runs on SQLite and on PostgreSQL.

use countersign::domain::EventKind;
use std::collections::BTreeMap;

use crate::common::{AUTHSERV_ID, friday_morning, on_both_backends};
use countersign::engine::Engine;
use countersign::storage;
use countersign::workflow::{Actor, ActorRole, TransitionRequest};

const SENDER: &str = "practice.manager@nhs.net";

fn person(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

fn to(state: &str, reason: &str) -> TransitionRequest {
    TransitionRequest {
        to: state.into(),
        reason: Some(reason.into()),
        ..TransitionRequest::default()
    }
}

fn values(engine: &Engine, workflow: &str, n: usize, changes: &[(&str, &str)]) -> BTreeMap<String, String> {
    let wf = engine.workflows().get(workflow).unwrap();
    let mut values = countersign::samples::good_values(wf, n, friday_morning().date_naive());
    for (k, v) in changes {
        values.insert(k.to_string(), v.to_string());
    }
    values
}

fn pdf(engine: &Engine, workflow: &str, values: &BTreeMap<String, String>) -> Vec<u8> {
    countersign::pdf::generate::filled_form(engine.workflows().get(workflow).unwrap(), values).unwrap()
}

/// An email, authenticated by our server or not, optionally in reply to a Message-ID.
struct Mail<'a> {
    from: &'a str,
    subject: String,
    message_id: String,
    in_reply_to: Option<&'a str>,
    authenticated: bool,
    pdf: Option<Vec<u8>>,
}

impl Mail<'_> {
    fn bytes(&self) -> Vec<u8> {
        let domain = self.from.rsplit('@').next().unwrap();
        let mut builder = mail_builder::MessageBuilder::new()
            .from(self.from)
            .to("pcse.openexeter@nhs.net")
            .subject(self.subject.as_str())
            .message_id(self.message_id.as_str())
            .text_body("Please see attached.");
        if self.authenticated {
            builder = builder.header(
                "Authentication-Results",
                mail_builder::headers::raw::Raw::new(format!(
                    "{AUTHSERV_ID}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"
                )),
            );
        }
        if let Some(id) = self.in_reply_to {
            builder = builder.in_reply_to(id).references(id);
        }
        if let Some(pdf) = &self.pdf {
            builder = builder.attachment("application/pdf", "form.pdf", pdf.clone());
        }
        builder.write_to_vec().unwrap()
    }
}

/// A validated GP case from SENDER, authenticated; returns its reference.
async fn validated_case(engine: &Engine, n: usize) -> String {
    let v = values(engine, "primary_user_gp", n, &[]);
    let mail = Mail {
        from: SENDER,
        subject: "Primary User form".into(),
        message_id: format!("orig-{n}@practice.nhs.net"),
        in_reply_to: None,
        authenticated: true,
        pdf: Some(pdf(engine, "primary_user_gp", &v)),
    };
    let report = engine.intake(&mail.bytes(), "test").await.unwrap();
    assert_eq!(report.cases[0].state, "validated", "{:?}", report.cases[0]);
    report.cases[0].reference.clone()
}

fn new_user_form(engine: &Engine, n: usize) -> Vec<u8> {
    let v = values(
        engine,
        "primary_user_gp",
        n,
        &[("user_email", "mallory@nhs.net"), ("user_first_name", "Mallory")],
    );
    pdf(engine, "primary_user_gp", &v)
}

#[tokio::test]
async fn a_spoofed_reply_with_a_new_form_never_rewrites_an_authorised_case() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 1).await;
        engine
            .transition(&reference, &to("authorised", "ok"), &person("bob"))
            .await
            .unwrap();
        let before = engine.case(&reference).await;
        // The review's first route: any nhs.net mailbox, no authentication, the reference in
        // the subject, a form naming a new user.
        let spoof = Mail {
            from: "anyone.at.all@nhs.net",
            subject: format!("Re: [{reference}] updated form"),
            message_id: "spoof-1@nhs.net".into(),
            in_reply_to: None,
            authenticated: false,
            pdf: Some(new_user_form(&engine, 1)),
        };
        let report = engine.intake(&spoof.bytes(), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        let new = &report.cases[0];
        assert_ne!(new.reference, reference, "a case of its own");
        assert_eq!(new.state, "needs_review", "for a caseworker to look at");
        assert!(
            new.finding_codes.contains(&"refers_to_case".to_string()),
            "{:?}",
            new.finding_codes
        );
        let linked = engine.case(&new.reference).await;
        assert_eq!(linked.related_case_id, Some(before.id), "linked to the case it named");
        let after = engine.case(&reference).await;
        assert_eq!(after.state, "authorised");
        assert_eq!(after.version, before.version, "the named case did not change at all");
        assert_eq!(after.fields, before.fields);
    })
    .await;
}

#[tokio::test]
async fn an_unauthenticated_reply_by_message_id_never_replaces_a_validated_cases_form() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 2).await;
        let before = engine.case(&reference).await;
        // The review's second route: a stranger, In-Reply-To the practice's own message.
        let spoof = Mail {
            from: "attacker@evil.example",
            subject: "Re: Primary User form".into(),
            message_id: "spoof-2@evil.example".into(),
            in_reply_to: Some("orig-2@practice.nhs.net"),
            authenticated: false,
            pdf: Some(new_user_form(&engine, 2)),
        };
        let report = engine.intake(&spoof.bytes(), "test").await.unwrap();
        assert_ne!(report.cases[0].reference, reference);
        let after = engine.case(&reference).await;
        assert_eq!((after.state.as_str(), after.version), ("validated", before.version));
        assert_eq!(after.fields, before.fields);
        // Even the case's own address is not enough without authentication.
        let forged = Mail {
            from: SENDER,
            message_id: "spoof-3@practice.nhs.net".into(),
            ..spoof
        };
        let report = engine.intake(&forged.bytes(), "test").await.unwrap();
        assert_ne!(report.cases[0].reference, reference);
        assert_eq!(engine.case(&reference).await.version, before.version);
    })
    .await;
}

#[tokio::test]
async fn a_replacement_form_with_findings_sends_a_validated_case_back_and_voids_the_acceptance() {
    on_both_backends(|engine| async move {
        // Held for review (Practice Manager cannot sign), accepted by alice after a call.
        let v = values(&engine, "primary_user_gp", 3, &[("signatory_role", "Practice Manager")]);
        let first = Mail {
            from: SENDER,
            subject: "form".into(),
            message_id: "orig-3@practice.nhs.net".into(),
            in_reply_to: None,
            authenticated: true,
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
        };
        let reference = engine.intake(&first.bytes(), "test").await.unwrap().cases[0]
            .reference
            .clone();
        engine
            .transition(&reference, &to("validated", "confirmed by phone"), &person("alice"))
            .await
            .unwrap();
        // The sender, authenticated, sends a replacement that has a finding of its own.
        let v = values(&engine, "primary_user_gp", 3, &[("signatory_declaration", "Off")]);
        let replacement = Mail {
            from: SENDER,
            subject: format!("Re: [{reference}] new form"),
            message_id: "reply-3@practice.nhs.net".into(),
            in_reply_to: Some("orig-3@practice.nhs.net"),
            authenticated: true,
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
        };
        let report = engine.intake(&replacement.bytes(), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].reference, reference, "the same case");
        assert_eq!(
            report.cases[0].state, "needs_review",
            "findings: back to review, also from validated"
        );
        let after = engine.case(&reference).await;
        assert_eq!(
            after.fields.get("signatory_declaration").map(String::as_str),
            Some("Off")
        );
        let kinds = engine.event_kinds(&reference).await;
        assert!(kinds.contains(&EventKind::FormResubmitted), "{kinds:?}");
        assert!(kinds.contains(&EventKind::DecisionsVoided), "{kinds:?}");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let events = storage::events_for_case(&mut conn, after.id).await.unwrap();
        let voided = events.iter().find(|e| e.kind == EventKind::DecisionsVoided).unwrap();
        assert!(
            voided.reason.as_deref().unwrap().contains("accept by alice"),
            "{voided:?}"
        );
        // A clean replacement in review is validated by the checks, as a first form would be.
        drop(conn);
        let v = values(&engine, "primary_user_gp", 3, &[]);
        let clean = Mail {
            message_id: "reply-4@practice.nhs.net".into(),
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
            ..replacement
        };
        let report = engine.intake(&clean.bytes(), "test").await.unwrap();
        assert_eq!(
            (report.cases[0].reference.as_str(), report.cases[0].state.as_str()),
            (reference.as_str(), "validated")
        );
    })
    .await;
}

#[tokio::test]
async fn a_trusted_replacement_after_authorisation_opens_its_own_linked_case() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 4).await;
        engine
            .transition(&reference, &to("authorised", "ok"), &person("bob"))
            .await
            .unwrap();
        let before = engine.case(&reference).await;
        let reply = Mail {
            from: SENDER,
            subject: format!("Re: [{reference}] a change"),
            message_id: "reply-5@practice.nhs.net".into(),
            in_reply_to: Some("orig-4@practice.nhs.net"),
            authenticated: true,
            pdf: Some(new_user_form(&engine, 4)),
        };
        let report = engine.intake(&reply.bytes(), "test").await.unwrap();
        assert_eq!(
            report.cases.len(),
            2,
            "the reply is noted on the case, the form opens its own"
        );
        assert_eq!(report.cases[0].reference, reference);
        let new = &report.cases[1];
        assert!(new.finding_codes.contains(&"refers_to_case".to_string()));
        let after = engine.case(&reference).await;
        assert_eq!(
            after.fields, before.fields,
            "authorised cases never change their fields by mail"
        );
        assert_eq!(after.state, "authorised");
        assert_eq!(engine.case(&new.reference).await.related_case_id, Some(before.id));
    })
    .await;
}

#[tokio::test]
async fn a_form_of_another_workflow_in_reply_opens_a_case_of_its_own() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 5).await;
        let before = engine.case(&reference).await;
        let v = values(&engine, "additional_permissions", 5, &[]);
        let reply = Mail {
            from: SENDER,
            subject: format!("Re: [{reference}] and the permissions form"),
            message_id: "reply-6@practice.nhs.net".into(),
            in_reply_to: Some("orig-5@practice.nhs.net"),
            authenticated: true,
            pdf: Some(pdf(&engine, "additional_permissions", &v)),
        };
        let report = engine.intake(&reply.bytes(), "test").await.unwrap();
        assert_eq!(report.cases.len(), 2);
        let ap = &report.cases[1];
        assert_eq!(ap.workflow.as_deref(), Some("additional_permissions"));
        assert!(
            !ap.finding_codes.contains(&"refers_to_case".to_string()),
            "a trusted, separate request"
        );
        assert_eq!(engine.case(&reference).await.fields, before.fields);
        assert_eq!(engine.case(&ap.reference).await.related_case_id, Some(before.id));
    })
    .await;
}

#[tokio::test]
async fn a_form_sent_in_reply_to_a_case_without_one_classifies_that_case() {
    on_both_backends(|engine| async move {
        let first = Mail {
            from: SENDER,
            subject: "Primary User request".into(),
            message_id: "noform-1@practice.nhs.net".into(),
            in_reply_to: None,
            authenticated: true,
            pdf: None,
        };
        let report = engine.intake(&first.bytes(), "test").await.unwrap();
        let reference = report.cases[0].reference.clone();
        assert_eq!(report.cases[0].workflow, None);
        let v = values(&engine, "primary_user_gp", 6, &[]);
        let sorry = Mail {
            subject: format!("Re: [{reference}] sorry, now attached"),
            message_id: "noform-2@practice.nhs.net".into(),
            in_reply_to: Some("noform-1@practice.nhs.net"),
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
            ..first
        };
        let report = engine.intake(&sorry.bytes(), "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].reference, reference);
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
        assert_eq!(
            report.cases[0].state, "validated",
            "checked as if the form had come first"
        );
        let after = engine.case(&reference).await;
        assert_eq!(after.fields.get("org_ods_code"), v.get("org_ods_code"));
        assert!(engine.event_kinds(&reference).await.contains(&EventKind::Classified));
    })
    .await;
}

/// An email with no form never dead-ends: a caseworker asks the sender for the form (the mail
/// goes, threaded, and is logged), and the form that comes back in reply to our request joins
/// the case. A case with a form has no form to ask for.
#[tokio::test]
async fn a_caseworker_asks_for_the_missing_form_and_the_answer_joins_the_case() {
    on_both_backends(|engine| async move {
        let first = Mail {
            from: SENDER,
            subject: "Open Exeter access please".into(),
            message_id: "ask-1@practice.nhs.net".into(),
            in_reply_to: None,
            authenticated: true,
            pdf: None,
        };
        let reference = engine.intake(&first.bytes(), "test").await.unwrap().cases[0]
            .reference
            .clone();
        let asked = engine.request_form(&reference, &person("alice"), None).await.unwrap();
        assert!(asked.workflow.is_none(), "still waiting for its form");
        assert!(engine.event_kinds(&reference).await.contains(&EventKind::FormRequested));
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let id = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap()
            .id;
        let mail = storage::outbox_for_case(&mut conn, id).await.unwrap();
        drop(conn);
        let request = mail
            .iter()
            .find(|m| m.template == "request_form")
            .expect("the request is queued");
        assert_eq!(request.recipient.as_deref(), Some(SENDER));
        assert_eq!(request.suppressed_reason, None, "a person decided to write: it goes");
        let our_id: String = sqlx::query_scalar("SELECT message_id FROM outbox WHERE template = 'request_form'")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        let v = values(&engine, "primary_user_gp", 7, &[]);
        let answer = Mail {
            subject: format!("Re: [{reference}] Please send your Open Exeter form"),
            message_id: "ask-2@practice.nhs.net".into(),
            in_reply_to: Some(our_id.trim_matches(['<', '>'])),
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
            ..first
        };
        let report = engine.intake(&answer.bytes(), "test").await.unwrap();
        assert_eq!(
            report.cases[0].reference, reference,
            "the form joins the case it was asked for"
        );
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
        let refused = engine.request_form(&reference, &person("alice"), None).await;
        assert!(
            matches!(refused, Err(countersign::engine::EngineError::NoFormToAskFor { .. })),
            "{refused:?}"
        );
    })
    .await;
}

/// A delivery report returning `returned` (whole, as message/rfc822).
fn bounce(returned: &[u8], message_id: &str) -> Vec<u8> {
    let mut mail = format!(
        "From: MAILER-DAEMON@mx.practice.nhs.net\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be delivered.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.practice.nhs.net\r\n\r\nFinal-Recipient: rfc822; gone@practice.nhs.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         --b\r\nContent-Type: message/rfc822\r\n\r\n"
    )
    .into_bytes();
    mail.extend_from_slice(returned);
    mail.extend_from_slice(b"\r\n--b--\r\n");
    mail
}

#[tokio::test]
async fn a_bounce_is_recorded_on_the_case_it_returns_and_asks_for_no_work() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 7).await;
        let before = engine.case(&reference).await;
        // The practice's own message comes back, carrying its valid form.
        let v = values(&engine, "primary_user_gp", 7, &[]);
        let original = Mail {
            from: SENDER,
            subject: "Primary User form".into(),
            message_id: "orig-7@practice.nhs.net".into(),
            in_reply_to: None,
            authenticated: true,
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
        };
        let report = engine
            .intake(&bounce(&original.bytes(), "bounce-1@mx"), "test")
            .await
            .unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(
            report.cases[0].reference, reference,
            "linked to the case of the returned message"
        );
        let after = engine.case(&reference).await;
        assert_eq!((after.state.as_str(), after.version), ("validated", before.version));
        assert!(
            engine
                .event_kinds(&reference)
                .await
                .contains(&EventKind::DeliveryReportReceived)
        );

        // A bounce that matches nothing, carrying a valid form of its own: kept, closed, never
        // a validated case nor one that asks for work.
        let v = values(&engine, "primary_user_gp", 8, &[]);
        let stray = Mail {
            from: "someone@practice.nhs.net",
            subject: "form".into(),
            message_id: "never-seen@practice.nhs.net".into(),
            in_reply_to: None,
            authenticated: true,
            pdf: Some(pdf(&engine, "primary_user_gp", &v)),
        };
        let report = engine
            .intake(&bounce(&stray.bytes(), "bounce-2@mx"), "test")
            .await
            .unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].state, "closed");
        assert_eq!(report.cases[0].finding_codes, vec!["delivery_report".to_string()]);
    })
    .await;
}

#[tokio::test]
async fn an_unauthenticated_auto_reply_naming_a_case_is_kept_apart_and_asks_for_no_work() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 9).await;
        let before = engine.case(&reference).await;
        let ooo = format!(
            "From: {SENDER}\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Out of office: [{reference}]\r\n\
             Auto-Submitted: auto-replied\r\nIn-Reply-To: <orig-9@practice.nhs.net>\r\nMessage-ID: <ooo-9@nhs.net>\r\n\r\nAway.\r\n"
        );
        let report = engine.intake(ooo.as_bytes(), "test").await.unwrap();
        assert_ne!(report.cases[0].reference, reference);
        assert_eq!(report.cases[0].state, "closed");
        assert_eq!(engine.case(&reference).await.version, before.version);
    })
    .await;
}

#[tokio::test]
async fn an_email_with_half_a_million_references_is_threaded_by_its_latest() {
    on_both_backends(|engine| async move {
        let reference = validated_case(&engine, 10).await;
        let mut references: Vec<String> = (0..450_000).map(|i| format!("<junk-{i}@evil.example>")).collect();
        references.push("<orig-10@practice.nhs.net>".into());
        let mail = format!(
            "From: {SENDER}\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Re: form\r\nMessage-ID: <refs-1@practice.nhs.net>\r\n\
             Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=nhs.net\r\n\
             References: {}\r\n\r\nThanks.\r\n",
            references.join("\r\n ")
        );
        let report = engine.intake(mail.as_bytes(), "test").await.unwrap();
        assert_eq!(report.cases[0].reference, reference);
        assert!(engine.event_kinds(&reference).await.contains(&EventKind::ReplyReceived));
    })
    .await;
}
