//! CSMS access-check problems by plain email (the `support` workflow): the shipped rules held
//! to their labelled sets, and the whole path on both databases with the real mail servers:
//! Dovecot in, the case sorted and its reply proposed, a caseworker confirming (or choosing
//! the problem first), Postfix out.

use std::collections::BTreeMap;

use crate::common::dovecot::Dovecot;
use crate::common::postfix::Postfix;
use crate::common::{AUTHSERV_ID, on_both_backends, root, workflows};
use countersign::engine::EngineError;
use countersign::ingest::imap::ImapPoller;
use countersign::outbox::Dispatcher;
use countersign::policy::FindingCode;
use countersign::workflow::evaluate::{LabelledSet, evaluate};
use countersign::workflow::{Actor, ActorRole, TransitionRequest};
use mail_parser::MessageParser;

fn labelled(file: &str) -> LabelledSet {
    let text = std::fs::read_to_string(root().join("tests/support").join(file)).expect("the labelled set");
    toml::from_str(&text).expect("a labelled set")
}

#[test]
fn the_shipped_rules_route_the_labelled_set_to_the_right_reply() {
    let set = workflows();
    let support = set.get("support").expect("the support workflow ships");
    let labelled = labelled("labelled.toml");
    assert!(labelled.message.len() >= 50, "the issue asks for at least 50 messages");
    let e = evaluate(support, &labelled).unwrap();
    println!("{}", e.report());
    assert!(e.accuracy() >= 0.9, "{}", e.report());
    // "unknown" is preferred to a wrong guess.
    assert!(e.wrong_guesses <= e.total / 20, "{}", e.report());
    for class in &e.per_class {
        assert!(class.expected >= 5, "{}: too few messages to judge it", class.class);
    }
}

#[test]
fn on_wording_the_rules_were_not_written_against_they_prefer_no_answer_to_a_wrong_one() {
    let set = workflows();
    let support = set.get("support").unwrap();
    let e = evaluate(support, &labelled("held_out.toml")).unwrap();
    println!("{}", e.report());
    assert_eq!(e.wrong_guesses, 0, "{}", e.report());
    assert_eq!(e.not_taken, 0, "{}", e.report());
}

fn caseworker(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

fn move_to(state: &str) -> TransitionRequest {
    TransitionRequest {
        to: state.into(),
        ..TransitionRequest::default()
    }
}

fn support_email(n: usize, subject: &str, body: &str, screenshot: bool) -> Vec<u8> {
    // A PNG signature and nothing else: a screenshot is kept, never read as a form.
    let attachment = screenshot.then(|| ("image/png", "screenshot.png", b"\x89PNG\r\n\x1a\n".to_vec()));
    countersign::samples::email(
        &format!("nurse{n}@nhs.net"),
        AUTHSERV_ID,
        &format!("support-{n}@practice.nhs.net"),
        subject,
        body,
        attachment,
    )
    .expect("an email")
}

#[tokio::test]
async fn a_support_email_is_sorted_its_reply_proposed_and_sent_only_when_a_caseworker_confirms() {
    on_both_backends(|app| async move {
        let engine = app.engine();
        let dovecot = Dovecot::start();
        let postfix = Postfix::start();
        dovecot
            .deliver(
                "INBOX",
                &[
                    support_email(
                        1,
                        "CSMS access check - no role",
                        "Hello,\nThe access check says I do not have a valid cervical screening role set up on my smartcard.\nSmartcard ID: 555123456789\nClaire",
                        true,
                    ),
                    support_email(
                        2,
                        "CSMS access check",
                        "I have done the access check but I'm not sure it worked.",
                        false,
                    ),
                ],
            )
            .await;
        let summary = ImapPoller::new(crate::common::live(&engine), dovecot.settings())
            .drain_once()
            .await
            .unwrap();
        assert_eq!(summary.ingested, 2);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let cases = countersign::storage::list_cases(&mut conn, None, 10).await.unwrap();
        drop(conn);
        let by_sender = |sender: &str| {
            cases
                .iter()
                .find(|c| c.sender.as_deref() == Some(sender))
                .unwrap_or_else(|| panic!("no case from {sender}"))
                .reference
                .clone()
        };
        let (recognised, unsure) = (by_sender("nurse1@nhs.net"), by_sender("nurse2@nhs.net"));

        // Sorted, its fields read from the text, and waiting for a caseworker: nothing sent.
        let case = app.case(&recognised).await;
        assert_eq!(case.workflow.as_deref(), Some("support"));
        assert_eq!(case.state, "validated", "{:?}", case.findings);
        assert_eq!(case.fields.get("problem").map(String::as_str), Some("no_csms_role"));
        assert_eq!(case.fields.get("smartcard_id").map(String::as_str), Some("555123456789"));
        assert!(case.findings.is_empty(), "{:?}", case.findings);
        let created = &app.events(&recognised).await[0];
        assert!(
            created.reason.as_deref().is_some_and(|r| r.contains("sorted as no_csms_role")),
            "the log says why: {:?}",
            created.reason
        );
        let unsure_case = app.case(&unsure).await;
        assert_eq!(unsure_case.workflow.as_deref(), Some("support"));
        assert_eq!(unsure_case.state, "needs_review");
        assert_eq!(unsure_case.fields.get("problem").map(String::as_str), Some("unknown"));
        assert!(unsure_case.findings.iter().any(|f| f.code == FindingCode::ProblemNotRecognised));
        assert!(app.outbox(&recognised).await.is_empty(), "no reply before a caseworker confirms");
        assert!(app.outbox(&unsure).await.is_empty());
        // The queue names each case's state as its workflow does, not by its internal name.
        let mut caseworker_browser = crate::web::Browser::new(&engine).await;
        caseworker_browser
            .sign_in_as(&engine, "cara@nhs.net", countersign::workflow::ActorRole::Caseworker)
            .await;
        let queue = caseworker_browser.get("/").await;
        assert!(queue.body.contains("<td>Reply proposed: confirm it</td>"), "{}", queue.body);
        assert!(!queue.body.contains("<td>validated</td>"));

        // The caseworker previews the proposed reply, then sends it.
        let preview = app
            .preview_transition(&recognised, &move_to("replied"), &caseworker("cara"))
            .await
            .unwrap();
        assert_eq!(preview[0].template, "support_no_role");
        app.transition(&recognised, &move_to("replied"), &caseworker("cara"))
            .await
            .unwrap();
        let queued = app.outbox(&recognised).await;
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].template, "support_no_role");

        // No problem chosen: there is no reply to send until a caseworker picks one.
        app.transition(&unsure, &move_to("validated"), &caseworker("cara"))
            .await
            .unwrap();
        let refused = app
            .transition(&unsure, &move_to("replied"), &caseworker("cara"))
            .await
            .unwrap_err();
        assert!(matches!(refused, EngineError::NoReplyChosen { .. }), "{refused}");
        app.transition(&unsure, &move_to("needs_review"), &caseworker("cara"))
            .await
            .expect_err("only a manager reopens; the case stays validated");
        assert_eq!(app.case(&unsure).await.state, "validated");

        // A case in review has its problem chosen by keying it; the finding goes.
        let third = app
            .receive(&support_email(
                3,
                "CSMS",
                "Hi, the access check is not right for me, please help.",
                false,
            ))
            .await
            .cases[0]
            .reference
            .clone();
        let values = BTreeMap::from([("problem".to_string(), "no_workgroup".to_string())]);
        let keyed = app.key_fields(&third, None, &values, &caseworker("cara")).await.unwrap();
        assert!(keyed.findings.is_empty(), "{:?}", keyed.findings);
        app.transition(&third, &move_to("validated"), &caseworker("cara"))
            .await
            .unwrap();
        let rewritten = TransitionRequest {
            mail_text: Some("Please ask your RA for the cervicalscreening workgroup. Ref above.".into()),
            ..move_to("replied")
        };
        app.transition(&third, &rewritten, &caseworker("cara")).await.unwrap();
        assert_eq!(app.outbox(&third).await[0].template, "support_no_workgroup");

        // Out through the real SMTP server: the reply quotes the smartcard ID it was given.
        let dispatcher = Dispatcher::new(engine.clone(), postfix.mailer_settings(), &root().join("templates")).unwrap();
        let sent = dispatcher.dispatch_due().await.unwrap();
        assert_eq!(sent.sent, 2);
        let delivered = postfix.wait_for(2);
        let texts: Vec<(String, String)> = delivered
            .iter()
            .map(|raw| {
                let m = MessageParser::default().parse(raw).unwrap();
                (
                    m.to().and_then(|t| t.first()).and_then(|a| a.address()).unwrap_or_default().to_string(),
                    m.body_text(0).unwrap_or_default().to_string(),
                )
            })
            .collect();
        let to_nurse1 = texts.iter().find(|(to, _)| to == "nurse1@nhs.net").expect("a reply to nurse 1");
        assert!(to_nurse1.1.contains("Smartcard ID: 555123456789"), "{}", to_nurse1.1);
        assert!(to_nurse1.1.contains("Registration Authority"), "{}", to_nurse1.1);
        let to_nurse3 = texts.iter().find(|(to, _)| to == "nurse3@nhs.net").expect("a reply to nurse 3");
        assert!(to_nurse3.1.contains("Please ask your RA"), "the caseworker's words: {}", to_nurse3.1);
    })
    .await;
}

#[tokio::test]
async fn an_unauthenticated_support_email_is_held_and_a_form_still_goes_to_its_own_workflow() {
    on_both_backends(|app| async move {
        let forged = countersign::samples::email(
            "nurse9@nhs.net",
            "not-our-server.example",
            "forged-1@practice.nhs.net",
            "CSMS access check",
            "I have forgotten my smartcard passcode.",
            None,
        )
        .unwrap();
        let reference = app.receive(&forged).await.cases[0].reference.clone();
        let case = app.case(&reference).await;
        assert_eq!(case.workflow.as_deref(), Some("support"));
        assert_eq!(
            case.fields.get("problem").map(String::as_str),
            Some("forgotten_passcode")
        );
        assert_eq!(case.state, "needs_review");
        assert!(
            case.findings
                .iter()
                .any(|f| f.code == FindingCode::SenderNotAuthenticated)
        );

        // A form whose covering email talks about CSMS is still a form.
        let set = workflows();
        let gp = set.get("primary_user_gp").unwrap();
        let mut values = countersign::samples::good_values(gp, 1, crate::common::friday_morning().date_naive());
        values.insert("org_name".into(), "CSMS access check practice".into());
        let pdf = countersign::pdf::generate::filled_form(gp, &values).unwrap();
        let with_form = countersign::samples::email(
            &values["signatory_email"],
            AUTHSERV_ID,
            "form-csms@practice.nhs.net",
            "Primary user form - CSMS access check",
            "Form attached; we also need the CSMS access check.",
            Some(("application/pdf", "form.pdf", pdf)),
        )
        .unwrap();
        let report = app.receive(&with_form).await;
        assert_eq!(report.cases[0].workflow.as_deref(), Some("primary_user_gp"));
    })
    .await;
}

#[tokio::test]
async fn a_reply_quotes_a_smartcard_id_only_when_it_is_one() {
    on_both_backends(|app| async move {
        let phishing = support_email(
            4,
            "CSMS access check - no role",
            "The access check says no valid cervical screening role.\nSmartcard ID: verify at https://nhs-verify.evil.example/login now",
            false,
        );
        let reference = app.receive(&phishing).await.cases[0].reference.clone();
        let case = app.case(&reference).await;
        assert_eq!(case.fields.get("problem").map(String::as_str), Some("no_csms_role"));
        assert!(case.fields["smartcard_id"].contains("nhs-verify"), "read, and shown to staff");
        app.transition(&reference, &move_to("replied"), &caseworker("cara"))
            .await
            .unwrap();
        let mail = app.outbox(&reference).await;
        assert_eq!(mail[0].template, "support_no_role");
        assert!(
            !mail[0].context_json.contains("nhs-verify"),
            "the sender's text reaches no mail: {}",
            mail[0].context_json
        );
        assert!(mail[0].context_json.contains("\"fields\":{}"), "{}", mail[0].context_json);
    })
    .await;
}
