//! Outbound mail against a real SMTP server (Debian's Postfix, delivering into a Maildir that
//! the tests read back), and timers on the working-day calendar with a clock the tests move.

use countersign::domain::EventKind;
use std::sync::Arc;

use crate::common::postfix::{MANAGERS, Postfix};
use crate::common::{
    TestApp, TestClock, TestDatabase, engine_with_clock, fixture, friday_morning, on_both_backends_clocked, stored,
};
use chrono::{Local, TimeZone};
use countersign::engine::Engine;
use countersign::outbox::{AfterSendHook, Dispatcher};
use countersign::scheduler::Scheduler;
use countersign::storage::{self, Backend};
use countersign::workflow::{Actor, ActorRole, TransitionRequest};
use mail_parser::MessageParser;

fn dispatcher(engine: &Engine, postfix: &Postfix) -> Dispatcher {
    Dispatcher::new(
        engine.clone(),
        postfix.mailer_settings(),
        &crate::common::root().join("templates"),
    )
    .unwrap()
}

fn scheduler(engine: &Engine) -> Scheduler {
    let settings = countersign::config::SchedulerSettings {
        managers_address: Some(MANAGERS.into()),
        team_address: Some(crate::common::postfix::TEAM.into()),
        ..Default::default()
    };
    Scheduler::new(engine.clone(), settings).unwrap()
}

fn at(y: i32, m: u32, d: u32, h: u32) -> chrono::DateTime<Local> {
    Local.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

fn caseworker(name: &str) -> Actor {
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

async fn outbox_rows(engine: &Engine) -> Vec<(String, Option<String>, String)> {
    let rows = sqlx::query("SELECT template, recipient, status FROM outbox ORDER BY id")
        .fetch_all(&engine.db().pool)
        .await
        .unwrap();
    use sqlx::Row;
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

fn header(raw: &[u8], name: &str) -> Option<String> {
    let message = MessageParser::default().parse(raw)?;
    message.header_raw(name).map(|v| v.trim().to_string())
}

#[tokio::test]
async fn the_acknowledgement_reaches_the_practice_threaded_and_marked_automatic() {
    on_both_backends_clocked(|engine, _clock| async move {
        let postfix = Postfix::start();
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let summary = dispatcher(&engine, &postfix).dispatch_due().await.unwrap();
        assert_eq!(summary.sent, 1);
        let delivered = postfix.wait_for(1);
        let message = MessageParser::default().parse(&delivered[0]).unwrap();
        assert_eq!(
            message.to().and_then(|t| t.first()).and_then(|a| a.address()),
            Some("wyn.apgruffydd@nhs.net")
        );
        assert!(
            message.subject().unwrap().contains(&format!("[{reference}]")),
            "{:?}",
            message.subject()
        );
        assert_eq!(message.in_reply_to().as_text(), Some("gp-1@practice.nhs.net"));
        assert_eq!(message.references().as_text(), Some("gp-1@practice.nhs.net"));
        assert_eq!(header(&delivered[0], "Auto-Submitted").as_deref(), Some("auto-replied"));
        let stored: String = sqlx::query_scalar("SELECT message_id FROM outbox")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        assert_eq!(
            format!("<{}>", message.message_id().unwrap()),
            stored,
            "the Message-ID we stored is the one sent"
        );
        assert!(message.body_text(0).unwrap().contains(&reference));
        assert!(message.body_html(0).unwrap().contains(&reference), "an HTML part too");
        assert_eq!(outbox_rows(&engine).await[0].2, "sent");
    })
    .await;
}

#[tokio::test]
async fn mail_waits_while_the_smtp_server_is_down_and_goes_out_when_it_is_back() {
    on_both_backends_clocked(|engine, clock| async move {
        let postfix = Postfix::start();
        postfix.stop();
        engine.receive_fixture("mail/gp_form.eml").await;
        engine.receive_fixture("mail/forwarded.eml").await;
        let dispatcher = dispatcher(&engine, &postfix);
        let summary = dispatcher.dispatch_due().await.unwrap();
        assert_eq!((summary.sent, summary.retrying), (0, 1));
        let (status, attempts, error): (String, i64, Option<String>) = {
            use sqlx::Row;
            let r = sqlx::query("SELECT status, attempts, last_error FROM outbox ORDER BY id LIMIT 1")
                .fetch_one(&engine.db().pool)
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!((status.as_str(), attempts), ("pending", 1));
        assert!(error.is_some());
        // The first is not due again until its backoff has passed; the second fails too.
        let summary = dispatcher.dispatch_due().await.unwrap();
        assert_eq!((summary.sent, summary.retrying), (0, 1));
        assert_eq!(
            dispatcher.dispatch_due().await.unwrap(),
            Default::default(),
            "nothing due until the backoff passes"
        );

        postfix.start_again();
        clock.advance(chrono::Duration::minutes(1));
        let summary = dispatcher.dispatch_due().await.unwrap();
        assert_eq!(summary.sent, 2, "{summary:?}");
        assert_eq!(postfix.wait_for(2).len(), 2);
        assert!(outbox_rows(&engine).await.iter().all(|(_, _, status)| status == "sent"));
    })
    .await;
}

#[tokio::test]
async fn a_crash_between_sending_and_marking_sent_resends_with_the_same_message_id() {
    on_both_backends_clocked(|engine, clock| async move {
        let postfix = Postfix::start();
        engine.receive_fixture("mail/gp_form.eml").await;
        let sent = Arc::new(tokio::sync::Notify::new());
        let signal = sent.clone();
        let hook: AfterSendHook = Arc::new(move |_id| {
            let signal = signal.clone();
            Box::pin(async move {
                signal.notify_one();
                std::future::pending::<()>().await;
            })
        });
        let doomed = dispatcher(&engine, &postfix).with_after_send_hook(hook);
        let task = tokio::spawn(async move { doomed.dispatch_due().await });
        sent.notified().await;
        task.abort();
        let _ = task.await;
        assert_eq!(outbox_rows(&engine).await[0].2, "pending", "sent, but not marked");

        // The claim lapses; another dispatcher sends it again.
        clock.advance(chrono::Duration::minutes(5));
        assert_eq!(dispatcher(&engine, &postfix).dispatch_due().await.unwrap().sent, 1);
        let delivered = postfix.wait_for(2);
        let ids: Vec<Option<String>> = delivered.iter().map(|m| header(m, "Message-ID")).collect();
        assert_eq!(ids[0], ids[1], "the copy is recognisable by its Message-ID");
        assert_eq!(outbox_rows(&engine).await[0].2, "sent");
    })
    .await;
}

#[tokio::test]
async fn auto_replies_bounces_list_mail_and_our_own_mail_get_no_automatic_answer() {
    on_both_backends_clocked(|engine, _clock| async move {
        let postfix = Postfix::start();
        let form = String::from_utf8(fixture("mail/gp_form.eml")).unwrap();
        let variants = [
            ("Auto-Submitted: auto-replied\r\n", "Auto-Submitted"),
            ("Precedence: bulk\r\n", "Precedence"),
            ("List-Id: <practices.lists.example>\r\n", "List-Id"),
        ];
        for (i, (header_line, _)) in variants.iter().enumerate() {
            let email = form.replacen("Subject:", &format!("{header_line}Subject:"), 1).replace("gp-1@practice", &format!("variant-{i}@practice"));
            // A different PDF each time, so they are not linked as duplicates.
            let email = email.replacen("Riverside", &format!("Riverside{i}"), 1);
            engine.intake(email.as_bytes(), "test").await.unwrap();
        }
        let bounce = "From: MAILER-DAEMON@mx.nhs.net\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\
                      Message-ID: <bounce-1@mx.nhs.net>\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
                      --b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n--b--\r\n";
        engine.intake(bounce.as_bytes(), "test").await.unwrap();
        let ours = form.replace("wyn.apgruffydd@nhs.net", crate::common::OUR_ADDRESS).replace("gp-1@practice", "ours-1@practice");
        engine.intake(ours.as_bytes(), "test").await.unwrap();

        let summary = dispatcher(&engine, &postfix).dispatch_due().await.unwrap();
        assert_eq!(summary.sent, 0, "{summary:?} {:?}", outbox_rows(&engine).await);
        let rows = outbox_rows(&engine).await;
        assert!(rows.iter().all(|(_, _, status)| status == "suppressed"), "{rows:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(postfix.messages().is_empty());
        assert_eq!(stored(&engine).await.raw_messages, 5, "each message is kept: nothing is lost");
    })
    .await;
}

#[tokio::test]
async fn a_reply_with_a_corrected_form_threads_into_its_case() {
    on_both_backends_clocked(|engine, _clock| async move {
        let postfix = Postfix::start();
        // A form signed by a Practice Manager: held for review, then sent back for correction.
        let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
        let mut values = countersign::samples::good_values(&wf, 3, friday_morning().date_naive());
        values.insert("signatory_role".into(), "Practice Manager".into());
        let pdf = countersign::pdf::generate::filled_form(&wf, &values).unwrap();
        let sender = values["signatory_email"].clone();
        let email = countersign::samples::email_with_form(
            &sender,
            crate::common::AUTHSERV_ID,
            "orig-1@practice.nhs.net",
            "Form",
            Some(("f.pdf", pdf)),
        )
        .unwrap();
        let reference = engine.intake(&email, "test").await.unwrap().cases[0].reference.clone();
        engine
            .transition(
                &reference,
                &to("awaiting_information", "Please have a GP partner sign page 2."),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        let dispatcher = dispatcher(&engine, &postfix);
        dispatcher.dispatch_due().await.unwrap();
        let delivered = postfix.wait_for(2);
        let request = delivered
            .iter()
            .find(|m| header(m, "Subject").is_some_and(|s| s.contains("correct")))
            .expect("the request for correction");
        let request_id = MessageParser::default()
            .parse(request)
            .unwrap()
            .message_id()
            .unwrap()
            .to_string();
        assert!(
            MessageParser::default()
                .parse(request)
                .unwrap()
                .body_text(0)
                .unwrap()
                .contains("must be signed by an authorised signatory")
        );

        // The practice replies to it, with the corrected form.
        values.insert("signatory_role".into(), "GP Partner".into());
        let corrected = countersign::pdf::generate::filled_form(&wf, &values).unwrap();
        let reply = mail_builder::MessageBuilder::new()
            .from(("Practice Manager", sender.as_str()))
            .to("pcse.openexeter@nhs.net")
            .subject(format!("Re: [{reference}] Please correct your form"))
            .message_id("reply-1@practice.nhs.net")
            .in_reply_to(request_id.as_str())
            .references(request_id.as_str())
            .header(
                "Authentication-Results",
                mail_builder::headers::raw::Raw::new(format!(
                    "{}; dmarc=pass header.from=nhs.net",
                    crate::common::AUTHSERV_ID
                )),
            )
            .text_body("Corrected form attached.")
            .attachment("application/pdf", "corrected.pdf", corrected)
            .write_to_vec()
            .unwrap();
        let report = engine.intake(&reply, "test").await.unwrap();
        assert_eq!(report.cases.len(), 1);
        assert_eq!(report.cases[0].reference, reference, "no new case");
        assert_eq!(report.cases[0].state, "needs_review");
        assert_eq!(stored(&engine).await.cases, 1);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            case.fields.get("signatory_role").map(String::as_str),
            Some("GP Partner")
        );
        assert!(case.findings.is_empty(), "{:?}", case.findings);
        let kinds: Vec<String> = storage::events_for_case(&mut conn, case.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind.to_string())
            .collect();
        assert!(
            kinds.contains(&"reply_received".to_string()) && kinds.contains(&"form_resubmitted".to_string()),
            "{kinds:?}"
        );
        let timers = storage::timers_for_case(&mut conn, case.id).await.unwrap();
        assert!(
            timers
                .iter()
                .filter(|t| t.name == "remind_sender" || t.name == "close_without_reply")
                .all(|t| t.status.as_str() == "cancelled")
        );
        // The case file lists both emails, each with its own PDF, and the first as the origin.
        let file = storage::case_file(&mut conn, &reference).await.unwrap().unwrap();
        let names = |attachments: &[storage::AttachmentSummary]| -> Vec<String> {
            attachments.iter().filter_map(|a| a.filename.clone()).collect()
        };
        let by_email: Vec<(String, Vec<String>)> = file
            .messages
            .iter()
            .map(|m| (m.relation.clone(), names(&m.attachments)))
            .collect();
        assert_eq!(
            by_email,
            vec![
                ("origin".to_string(), vec!["f.pdf".to_string()]),
                ("reply".to_string(), vec!["corrected.pdf".to_string()])
            ]
        );
        assert_eq!(names(&file.attachments), vec!["f.pdf".to_string()]);
    })
    .await;
}

#[tokio::test]
async fn a_reply_quoting_the_case_reference_joins_the_case_only_from_its_authenticated_sender() {
    on_both_backends_clocked(|engine, _clock| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let reply = |from: &str, id: &str, auth: &str| {
            format!("From: {from}\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Re: [{reference}] thanks\r\nMessage-ID: <{id}>\r\n{auth}\r\nAny news?\r\n").into_bytes()
        };
        let authenticated = format!("Authentication-Results: {}; dmarc=pass header.from=nhs.net\r\n", crate::common::AUTHSERV_ID);
        let sender = engine
            .intake(&reply("wyn.apgruffydd@nhs.net", "r0@nhs.net", &authenticated), "test")
            .await
            .unwrap();
        assert_eq!(sender.cases[0].reference, reference);
        // Same domain is not the same person: a mailbox of its own opens a linked case.
        let same_domain = engine
            .intake(&reply("someone.else@nhs.net", "r1@nhs.net", &authenticated), "test")
            .await
            .unwrap();
        assert_ne!(same_domain.cases[0].reference, reference);
        assert!(same_domain.cases[0].finding_codes.contains(&"refers_to_case".to_string()));
        let stranger = engine.intake(&reply("mallory@example.com", "r2@example.com", ""), "test").await.unwrap();
        assert_ne!(stranger.cases[0].reference, reference, "a reference alone does not attach mail to a case");
    })
    .await;
}

#[tokio::test]
async fn an_out_of_office_reply_is_recorded_on_the_case_and_not_answered() {
    on_both_backends_clocked(|engine, _clock| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let ooo = format!(
            "From: wyn.apgruffydd@nhs.net\r\nTo: pcse.openexeter@nhs.net\r\nSubject: Out of office: [{reference}]\r\n\
             Auto-Submitted: auto-replied\r\nIn-Reply-To: <gp-1@practice.nhs.net>\r\nMessage-ID: <ooo-1@nhs.net>\r\n\
             Authentication-Results: {}; dmarc=pass header.from=nhs.net\r\n\r\nI am away until Monday.\r\n",
            crate::common::AUTHSERV_ID
        );
        let before = outbox_rows(&engine).await.len();
        let report = engine.intake(ooo.as_bytes(), "test").await.unwrap();
        assert_eq!(report.cases[0].reference, reference);
        assert_eq!(report.cases[0].state, "validated", "no transition");
        assert_eq!(outbox_rows(&engine).await.len(), before, "nothing queued in answer");
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let events = storage::events_for_case(&mut conn, case.id).await.unwrap();
        assert!(events.iter().any(|e| e.kind == EventKind::AutoReplyReceived));
    })
    .await;
}

#[tokio::test]
async fn automatic_mail_is_rate_limited_per_recipient() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let clock = TestClock::at(friday_morning());
    let engine = engine_with_clock(&database.url, clock.clone()).await;
    let postfix = Postfix::start();
    let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
    for n in 0..7 {
        let email = crate::common::form_email(&wf, n, &[], "busy@nhs.net", &format!("busy-{n}@nhs.net"), "Form");
        engine.intake(&email, "test").await.unwrap();
    }
    let dispatcher = dispatcher(&engine, &postfix);
    let summary = dispatcher.dispatch_due().await.unwrap();
    assert_eq!((summary.sent, summary.deferred), (5, 2), "{summary:?}");
    clock.advance(chrono::Duration::minutes(61));
    assert_eq!(dispatcher.dispatch_due().await.unwrap().sent, 2);
    assert_eq!(postfix.wait_for(7).len(), 7);
}

#[tokio::test]
async fn a_reminder_and_an_auto_close_fire_on_the_right_working_day() {
    on_both_backends_clocked(|engine, clock| async move {
        let scheduler = scheduler(&engine);
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        engine
            .transition(
                &reference,
                &to("awaiting_information", "Please re-sign."),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        // Asked on Friday 20 Nov: 5 working days on is Friday 27 Nov.
        clock.set(at(2026, 11, 27, 9));
        assert!(
            scheduler
                .fire_due_timers()
                .await
                .unwrap()
                .iter()
                .all(|t| t.timer != "remind_sender"),
            "not before the hour it was set for"
        );
        clock.set(at(2026, 11, 27, 10));
        let fired = scheduler.fire_due_timers().await.unwrap();
        assert!(
            fired
                .iter()
                .any(|t| t.timer == "remind_sender" && t.effect == "mail:reminder"),
            "{fired:?}"
        );
        assert_eq!(
            scheduler.fire_due_timers().await.unwrap(),
            vec![],
            "each timer fires once"
        );
        // 10 working days on is Friday 4 December: closed, with a final notice.
        clock.set(at(2026, 12, 3, 23));
        assert!(
            scheduler
                .fire_due_timers()
                .await
                .unwrap()
                .iter()
                .all(|t| t.timer != "close_without_reply")
        );
        clock.set(at(2026, 12, 4, 10));
        let fired = scheduler.fire_due_timers().await.unwrap();
        assert!(
            fired
                .iter()
                .any(|t| t.timer == "close_without_reply" && t.effect == "transition:closed"),
            "{fired:?}"
        );
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(case.state, "closed");
        let templates: Vec<String> = outbox_rows(&engine).await.into_iter().map(|r| r.0).collect();
        assert_eq!(
            templates,
            vec!["acknowledgement", "request_for_correction", "reminder", "final_notice"]
        );
        let timers = storage::timers_for_case(&mut conn, case.id).await.unwrap();
        assert!(
            timers.iter().all(|t| t.status.as_str() != "pending"),
            "a closed case has no live timers: {timers:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn escalations_to_managers_fire_at_risk_and_at_breach_across_bank_holidays() {
    on_both_backends_clocked(|engine, clock| async move {
        let scheduler = scheduler(&engine);
        // Received Thursday 24 December 2026. Working days: 29, 30, 31 Dec, then 4 and 5 Jan
        // (25 and 28 Dec and 1 Jan are bank holidays). SLA 5 days, at risk 1 day before.
        clock.set(at(2026, 12, 24, 10));
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        let fired_by = |y, m, d| {
            let scheduler = &scheduler;
            let clock = clock.clone();
            async move {
                clock.set(at(y, m, d, 11));
                scheduler
                    .fire_due_timers()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|t| t.timer)
                    .collect::<Vec<_>>()
            }
        };
        // Validated on receipt; not authorised 3 working days on (31 Dec): the managers hear.
        assert_eq!(fired_by(2026, 12, 31).await, vec!["escalate_unauthorised"]);
        let on_jan_4 = fired_by(2027, 1, 4).await;
        assert!(on_jan_4.contains(&"sla_at_risk".to_string()), "{on_jan_4:?}");
        assert!(!on_jan_4.contains(&"sla_breached".to_string()));
        let on_jan_5 = fired_by(2027, 1, 5).await;
        assert_eq!(on_jan_5, vec!["sla_breached"]);
        let escalations: Vec<(String, Option<String>)> = outbox_rows(&engine)
            .await
            .into_iter()
            .filter(|r| r.0 == "escalation")
            .map(|r| (r.0, r.1))
            .collect();
        assert!(
            escalations.len() >= 2 && escalations.iter().all(|(_, to)| to.as_deref() == Some(MANAGERS)),
            "{escalations:?}"
        );
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let kinds: Vec<String> = storage::events_for_case(&mut conn, case.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind.to_string())
            .collect();
        assert!(
            kinds.contains(&"sla_at_risk".to_string()) && kinds.contains(&"sla_breached".to_string()),
            "{kinds:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn two_schedulers_on_one_postgres_database_fire_each_timer_once() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let clock = TestClock::at(friday_morning());
    let engine = engine_with_clock(&database.url, clock.clone()).await;
    let db = engine.db().clone();
    let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
    let cases = 25;
    for n in 0..cases {
        let email = crate::common::form_email(&wf, n, &[], "amara@nhs.net", &format!("many-{n}@nhs.net"), "Form");
        engine.intake(&email, "test").await.unwrap();
    }
    let pending = stored(&engine).await.pending_timers;
    assert_eq!(pending, 3 * cases as i64);
    clock.set(at(2026, 12, 31, 12));
    let (first, second) = (scheduler(&engine), scheduler(&engine));
    let (a, b) = tokio::join!(first.fire_due_timers(), second.fire_due_timers());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        3 * cases,
        "every timer fired exactly once between them"
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM case_events WHERE kind IN ('escalated', 'sla_at_risk', 'sla_breached')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(events, 3 * cases as i64);
    let escalations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE template = 'escalation'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(escalations, 3 * cases as i64);
    db.close().await;
    database.drop_database().await;
}

#[tokio::test]
async fn two_dispatchers_on_one_postgres_database_send_each_message_once() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let engine = engine_with_clock(&database.url, TestClock::at(friday_morning())).await;
    let db = engine.db().clone();
    let postfix = Postfix::start();
    let wf = engine.workflows().get("primary_user_org").unwrap().clone();
    for n in 0..12 {
        let email = crate::common::form_email(&wf, n, &[], &format!("m{n}@nhs.net"), &format!("d-{n}@nhs.net"), "Form");
        engine.intake(&email, "test").await.unwrap();
    }
    let (first, second) = (dispatcher(&engine, &postfix), dispatcher(&engine, &postfix));
    let (a, b) = tokio::join!(first.dispatch_due(), second.dispatch_due());
    assert_eq!(a.unwrap().sent + b.unwrap().sent, 12);
    let delivered = postfix.wait_for(12);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(postfix.messages().len(), 12, "no message sent twice");
    assert_eq!(delivered.len(), 12);
    db.close().await;
    database.drop_database().await;
}

#[tokio::test]
async fn the_daily_digest_runs_once_on_working_days_and_housekeeping_keeps_open_cases_raw() {
    on_both_backends_clocked(|engine, clock| async move {
        let scheduler = scheduler(&engine);
        let open = engine.receive_fixture("mail/gp_form.eml").await;
        let closed = engine.receive_fixture("mail/no_form.eml").await;
        engine
            .transition(&closed, &to("rejected", "no form"), &caseworker("alice"))
            .await
            .unwrap();
        // Monday 23 Nov 2026, 08:05: the 08:00 digest is due.
        clock.set(at(2026, 11, 23, 8) + chrono::Duration::minutes(5));
        let ran = scheduler.run_due_jobs().await.unwrap();
        assert!(
            ran.iter().any(|r| r == "daily_digest: 1 open, 0 past their SLA"),
            "the rejected case is not open: {ran:?}"
        );
        // A short summary of the dashboard and last week's report, with a link: no list of
        // cases (the outbox keeps what the template is given).
        let context: String = sqlx::query_scalar("SELECT context FROM outbox WHERE template = 'daily_digest'")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        let context: serde_json::Value = serde_json::from_str(&context).unwrap();
        assert_eq!(context["open_total"], 1);
        assert_eq!(context["received"], 2, "both cases came in the week before: {context}");
        assert_eq!(context["completed"], 1, "{context}");
        assert!(context["reports_link"].as_str().unwrap().ends_with("/reports"));
        assert!(context.get("breaching").is_none(), "no list of hundreds of lines");
        assert_eq!(
            scheduler.run_due_jobs().await.unwrap(),
            Vec::<String>::new(),
            "once per occurrence"
        );
        let digests = outbox_rows(&engine)
            .await
            .into_iter()
            .filter(|r| r.0 == "daily_digest")
            .count();
        assert_eq!(digests, 1);
        // Friday 25 December is a bank holiday: the digest is skipped.
        clock.set(at(2026, 12, 25, 8) + chrono::Duration::minutes(5));
        let ran = scheduler.run_due_jobs().await.unwrap();
        assert!(
            ran.iter().any(|r| r == "daily_digest: skipped: not a working day"),
            "{ran:?}"
        );
        // Three years on, housekeeping clears the closed case's raw message, not the open one's.
        clock.set(at(2029, 11, 27, 2) + chrono::Duration::minutes(45));
        let ran = scheduler.run_due_jobs().await.unwrap();
        assert!(ran.iter().any(|r| r.starts_with("housekeeping: cleared 1 ")), "{ran:?}");
        let kept = stored(&engine).await.raw_messages_kept;
        assert_eq!(kept, 1);
        let _ = open;
    })
    .await;
}

#[tokio::test]
async fn housekeeping_keeps_a_closed_cases_pdf_when_it_clears_the_email_it_came_in() {
    on_both_backends_clocked(|engine, clock| async move {
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        engine
            .transition(&reference, &to("rejected", "wrong form"), &caseworker("alice"))
            .await
            .unwrap();
        let (attachment_id, sha256): (i64, String) =
            sqlx::query_as("SELECT id, sha256 FROM attachments WHERE detected_type = 'application/pdf'")
                .fetch_one(&engine.db().pool)
                .await
                .unwrap();
        // Three years on, the closed case's email is cleared; the signed PDF is evidence, kept.
        clock.set(at(2029, 11, 27, 2) + chrono::Duration::minutes(45));
        let ran = scheduler(&engine).run_due_jobs().await.unwrap();
        assert!(ran.iter().any(|r| r.starts_with("housekeeping: cleared 1 ")), "{ran:?}");
        assert_eq!(stored(&engine).await.raw_messages_kept, 0);
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let (_, _, pdf) = storage::case_attachment(&mut conn, case.id, attachment_id)
            .await
            .unwrap()
            .expect("the PDF is still there");
        assert_eq!(countersign::mail::sha256_hex(&pdf), sha256, "byte for byte");
    })
    .await;
}

#[tokio::test]
async fn the_sla_clock_stops_while_the_sender_has_the_ball() {
    on_both_backends_clocked(|engine, clock| async move {
        // Received Friday 20 Nov, due Friday 27 Nov (5 working days).
        let reference = engine.receive_fixture("mail/gp_form.eml").await;
        // Monday 23 Nov: sent back to the practice with 4 working days left.
        clock.set(at(2026, 11, 23, 10));
        engine
            .transition(
                &reference,
                &to("awaiting_information", "Please re-sign."),
                &caseworker("alice"),
            )
            .await
            .unwrap();
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let live: Vec<String> = storage::timers_for_case(&mut conn, case.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.status.as_str() == "pending")
            .map(|t| t.name)
            .collect();
        assert!(!live.iter().any(|n| n.starts_with("sla_")), "paused: {live:?}");
        drop(conn);
        // Wednesday 25 Nov: the practice replies; 4 working days from then is Tuesday 1 Dec.
        clock.set(at(2026, 11, 25, 10));
        engine
            .transition(&reference, &to("needs_review", "reply"), &caseworker("alice"))
            .await
            .unwrap();
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let due = chrono::DateTime::from_timestamp_millis(case.due_at.unwrap())
            .unwrap()
            .with_timezone(&Local)
            .date_naive();
        assert_eq!(due, chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        let live: Vec<String> = storage::timers_for_case(&mut conn, case.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.status.as_str() == "pending")
            .map(|t| t.name)
            .collect();
        assert!(
            live.contains(&"sla_at_risk".to_string()) && live.contains(&"sla_breached".to_string()),
            "{live:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn mail_goes_out_over_starttls_and_implicit_tls_with_the_certificate_checked() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let clock = TestClock::at(friday_morning());
    let engine = TestApp::new(engine_with_clock(&database.url, clock.clone()).await);
    let postfix = Postfix::start_with(true);
    let templates = crate::common::root().join("templates");
    let with = |security, port, ca: bool| {
        let mut settings = postfix.mailer_settings();
        let smtp = settings.smtp.as_mut().unwrap();
        smtp.security = security;
        smtp.port = port;
        smtp.ca_file = ca.then(|| postfix.ca_file());
        Dispatcher::new(engine.engine(), settings, &templates).unwrap()
    };
    engine.receive_fixture("mail/gp_form.eml").await;
    // Without our CA the server's certificate must be refused, and the mail kept for later.
    let refused = with(countersign::config::TransportSecurity::Starttls, postfix.port, false)
        .dispatch_due()
        .await
        .unwrap();
    assert_eq!((refused.sent, refused.retrying), (0, 1));
    clock.advance(chrono::Duration::minutes(1));
    let sent = with(countersign::config::TransportSecurity::Starttls, postfix.port, true)
        .dispatch_due()
        .await
        .unwrap();
    assert_eq!(sent.sent, 1);
    engine.receive_fixture("mail/forwarded.eml").await;
    let sent = with(
        countersign::config::TransportSecurity::Tls,
        postfix.tls_port.unwrap(),
        true,
    )
    .dispatch_due()
    .await
    .unwrap();
    assert_eq!(sent.sent, 1);
    assert_eq!(postfix.wait_for(2).len(), 2);
    let log = postfix.log();
    assert!(
        log.matches("TLS connection established").count() >= 2,
        "both deliveries used TLS: {log}"
    );
}

#[tokio::test]
async fn the_weekly_coverage_digest_lists_organisations_short_of_primary_users() {
    on_both_backends_clocked(|engine, clock| async move {
        let scheduler = scheduler(&engine);
        engine.receive_fixture("mail/gp_form.eml").await;
        // Monday 23 Nov 2026, 08:05: the weekly list is due.
        clock.set(at(2026, 11, 23, 8) + chrono::Duration::minutes(5));
        let ran = scheduler.run_due_jobs().await.unwrap();
        assert!(
            ran.iter()
                .any(|r| r == "coverage_digest: 1 organisation(s) with no Primary User, 0 with one (0 being replaced)"),
            "{ran:?}"
        );
        let context: String = sqlx::query_scalar("SELECT context FROM outbox WHERE template = 'coverage_digest'")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
        let context: serde_json::Value = serde_json::from_str(&context).unwrap();
        assert!(context["none"][0].as_str().unwrap().starts_with("A81001"), "{context}");
        assert!(
            context["coverage_link"]
                .as_str()
                .unwrap()
                .ends_with("/reports/coverage")
        );
        // It renders, in our words.
        let renderer = countersign::outbox::render::Renderer::load(&crate::common::root().join("templates")).unwrap();
        let mail = renderer.render("coverage_digest", &context).unwrap();
        assert!(
            mail.subject.contains("1 organisation(s) with no Primary User"),
            "{}",
            mail.subject
        );
        assert!(mail.text.contains("  - A81001"), "{}", mail.text);
        assert!(
            !mail.text.contains("Riverside"),
            "no text typed on a form: {}",
            mail.text
        );
        // Weekly: not again on Tuesday.
        clock.set(at(2026, 11, 24, 8) + chrono::Duration::minutes(5));
        let ran = scheduler.run_due_jobs().await.unwrap();
        assert!(!ran.iter().any(|r| r.starts_with("coverage_digest")), "{ran:?}");
    })
    .await;
}
