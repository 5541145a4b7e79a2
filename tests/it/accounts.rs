//! The Open Exeter account register, imported from CSV on both databases: an idempotent
//! upsert that says what changed, with bad rows named by line and skipped.

use crate::common::on_both_backends;
use countersign::accounts::AccountStatus;
use countersign::storage;

const FIRST: &str = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
    OE100001,A81001,Pat Manager,pat.manager@nhs.net,Y,2026-11-20,2026-12-01,active\n\
    OE100002,A81001,Jo Nurse,jo.nurse@nhs.net,N,2026-10-01,,active\n\
    OE100003,not-a-code,Bad Code,,N,,,active\n";

const SECOND: &str = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
    OE100001,A81001,Pat Manager,pat.manager@nhs.net,Y,2026-11-20,2026-12-01,active\n\
    OE100002,A81001,Jo Nurse,jo.nurse@nhs.net,N,2026-10-01,,suspended\n\
    OE100004,A81002,Sam Reception,,N,,,\n";

#[tokio::test]
async fn importing_again_changes_only_what_changed_and_says_so() {
    on_both_backends(|app| async move {
        let engine = app.engine();
        let first = engine.import_accounts(FIRST.as_bytes(), "first.csv").await.unwrap();
        assert_eq!(first.added, vec!["OE100001", "OE100002"]);
        assert_eq!(first.bad_rows.len(), 1);
        assert_eq!(first.bad_rows[0].line, 4);
        assert!(
            first
                .report("first.csv")
                .contains("line 4: `not-a-code` is not an ODS code")
        );

        let again = engine.import_accounts(FIRST.as_bytes(), "first.csv").await.unwrap();
        assert!(again.added.is_empty() && again.changed.is_empty(), "{again:?}");
        assert_eq!(again.unchanged, 2);

        let second = engine.import_accounts(SECOND.as_bytes(), "second.csv").await.unwrap();
        assert_eq!(second.added, vec!["OE100004"]);
        assert_eq!(
            second.changed,
            vec![("OE100002".to_string(), vec!["status: active → suspended".to_string()])]
        );
        assert_eq!(second.unchanged, 1);
        assert!(
            second
                .report("second.csv")
                .contains("changed OE100002: status: active → suspended")
        );

        let mut conn = engine.db().pool.acquire().await.unwrap();
        let held = storage::list_accounts(&mut conn, Some("A81001")).await.unwrap();
        assert_eq!(held.len(), 2);
        assert!(held[0].primary_user && !held[1].primary_user);
        assert_eq!(held[1].status, AccountStatus::Suspended);
        assert_eq!(storage::list_accounts(&mut conn, None).await.unwrap().len(), 3);
    })
    .await;
}

/// Notices the register's accounts are due, as the outbox holds them: (template, recipient).
async fn notices(engine: &countersign::engine::Engine) -> Vec<(String, String)> {
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let mut found: Vec<(String, String)> = storage::list_outbox(&mut conn, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| ["password_expiring", "password_expired", "account_unused"].contains(&m.template.as_str()))
        .map(|m| (m.template, m.recipient.unwrap_or_default()))
        .collect();
    found.sort();
    found
}

fn scheduler(engine: &countersign::engine::Engine, per_run: i64) -> countersign::scheduler::Scheduler {
    let settings = countersign::config::SchedulerSettings {
        outreach_per_run: per_run,
        ..Default::default()
    };
    countersign::scheduler::Scheduler::new(engine.clone(), settings).unwrap()
}

#[tokio::test]
async fn lifecycle_notices_go_out_once_per_occurrence_on_working_days_within_the_rate() {
    crate::common::on_both_backends_clocked(|app, clock| async move {
        let engine = app.engine();
        // Friday 20 November 2026, 10:00 (the job runs at 09:00 on working days).
        let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE1,A81001,Expiring Primary,expiring@nhs.net,Y,2026-10-25,2026-11-19,active\n\
            OE2,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n\
            OE3,A81001,Quiet User,quiet@nhs.net,N,2026-10-01,2026-09-05,active\n\
            OE4,A81001,Fine Primary,fine@nhs.net,Y,2026-11-15,2026-11-19,active\n\
            OE5,A81001,Gone User,gone@nhs.net,N,,2026-09-05,disabled\n";
        engine
            .import_accounts(register.as_bytes(), "register.csv")
            .await
            .unwrap();

        // One notice a run at most: the rest wait.
        let ran = scheduler(&engine, 1).run_due_jobs().await.unwrap();
        assert!(
            ran.iter()
                .any(|r| r.starts_with("account_outreach: 1 notice(s) queued")),
            "{ran:?}"
        );
        assert_eq!(notices(&engine).await.len(), 1);

        // The next working day, with room: the others, and never the first again.
        clock.set(chrono::TimeZone::with_ymd_and_hms(&chrono::Local, 2026, 11, 23, 10, 0, 0).unwrap());
        let ran = scheduler(&engine, 100).run_due_jobs().await.unwrap();
        assert!(
            ran.iter()
                .any(|r| r.contains("account_outreach: 2 notice(s) queued, 1 sent before")),
            "{ran:?}"
        );
        assert_eq!(
            notices(&engine).await,
            vec![
                ("account_unused".to_string(), "quiet@nhs.net".to_string()),
                ("password_expired".to_string(), "expired@nhs.net".to_string()),
                ("password_expiring".to_string(), "expiring@nhs.net".to_string()),
            ]
        );
        // Saturday: no run at all (the schedule is Monday to Friday).
        clock.set(chrono::TimeZone::with_ymd_and_hms(&chrono::Local, 2026, 11, 28, 10, 0, 0).unwrap());
        let ran = scheduler(&engine, 100).run_due_jobs().await.unwrap();
        assert!(!ran.iter().any(|r| r.starts_with("account_outreach")), "{ran:?}");

        // A new password is a new occurrence; the same expired one is not told again.
        let changed = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE1,A81001,Expiring Primary,expiring@nhs.net,Y,2026-11-01,2026-11-30,active\n";
        engine
            .import_accounts(changed.as_bytes(), "register.csv")
            .await
            .unwrap();
        clock.set(chrono::TimeZone::with_ymd_and_hms(&chrono::Local, 2026, 11, 30, 10, 0, 0).unwrap());
        scheduler(&engine, 100).run_due_jobs().await.unwrap();
        let sent = notices(&engine).await;
        assert_eq!(
            sent.iter().filter(|(_, to)| to == "expired@nhs.net").count(),
            1,
            "{sent:?}"
        );
        assert_eq!(
            sent.iter()
                .filter(|(t, to)| t == "password_expiring" && to == "expiring@nhs.net")
                .count(),
            2,
            "{sent:?}"
        );
        // The 85-day warning for the quiet account is a second occurrence.
        assert_eq!(
            sent.iter().filter(|(t, _)| t == "account_unused").count(),
            2,
            "{sent:?}"
        );
        assert!(!sent.iter().any(|(_, to)| to == "gone@nhs.net" || to == "fine@nhs.net"));
    })
    .await;
}

#[tokio::test]
async fn a_lifecycle_notice_reaches_the_primary_user_through_the_real_smtp_server() {
    crate::common::on_both_backends_clocked(|app, _clock| async move {
        let engine = app.engine();
        let postfix = crate::common::postfix::Postfix::start();
        let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE2,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n";
        engine
            .import_accounts(register.as_bytes(), "register.csv")
            .await
            .unwrap();
        scheduler(&engine, 100).run_due_jobs().await.unwrap();
        let dispatcher = countersign::outbox::Dispatcher::new(
            engine.clone(),
            postfix.mailer_settings(),
            &crate::common::root().join("templates"),
        )
        .unwrap();
        assert_eq!(dispatcher.dispatch_due().await.unwrap().sent, 1);
        let delivered = postfix.wait_for(1);
        let message = mail_parser::MessageParser::default().parse(&delivered[0]).unwrap();
        assert!(
            message.subject().unwrap().contains("has expired"),
            "{:?}",
            message.subject()
        );
        let text = message.body_text(0).unwrap();
        assert!(text.contains("OE2") && text.contains("expired 20 days ago"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn an_organisation_none_of_whose_primary_users_can_sign_in_gets_one_coverage_case_per_occurrence() {
    crate::common::on_both_backends_clocked(|app, clock| async move {
        let engine = app.engine();
        // Friday 20 November 2026: A81001's two Primary Users cannot sign in (a password 30
        // days old, a suspended account); A81002 still has one who can.
        let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE1,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n\
            OE2,A81001,Suspended Primary,suspended@nhs.net,Y,2026-11-10,2026-11-19,suspended\n\
            OE3,A81001,Ordinary User,ordinary@nhs.net,N,2026-11-10,2026-11-19,active\n\
            OE4,A81002,Lapsed Primary,lapsed@nhs.net,Y,2026-10-01,2026-11-19,active\n\
            OE5,A81002,Fine Primary,fine@nhs.net,Y,2026-11-15,2026-11-19,active\n";
        engine
            .import_accounts(register.as_bytes(), "register.csv")
            .await
            .unwrap();
        let ran = scheduler(&engine, 100).run_due_jobs().await.unwrap();
        assert!(
            ran.iter().any(|r| r.contains("1 coverage case(s) opened (CS-2026-")),
            "{ran:?}"
        );
        let coverage_cases = |engine: countersign::engine::Engine| async move {
            let mut conn = engine.db().pool.acquire().await.unwrap();
            let mut cases = storage::list_cases(&mut conn, None, 50).await.unwrap();
            cases.retain(|c| c.workflow.as_deref() == Some("coverage"));
            cases
        };
        let cases = coverage_cases(engine.clone()).await;
        assert_eq!(cases.len(), 1, "{cases:?}");
        let case = &cases[0];
        assert_eq!(case.state, "needs_review");
        assert_eq!(case.org_ods_code.as_deref(), Some("A81001"));
        assert_eq!(
            case.fields.get("primary_users").map(String::as_str),
            Some("OE1 (password expired 2026-10-31); OE2 (suspended)")
        );
        assert_eq!(
            case.findings[0].code,
            countersign::policy::FindingCode::PrimaryUsersLapsed
        );
        assert_eq!(case.sender.as_deref(), Some("expired@nhs.net"));
        let timers = app.timers(&case.reference).await;
        assert!(timers.iter().any(|t| t.name == "nudge_team"), "{timers:?}");

        // The next working day the same gap opens nothing more.
        clock.set(chrono::TimeZone::with_ymd_and_hms(&chrono::Local, 2026, 11, 23, 10, 0, 0).unwrap());
        let ran = scheduler(&engine, 100).run_due_jobs().await.unwrap();
        assert!(ran.iter().any(|r| r.contains("0 coverage case(s) opened")), "{ran:?}");
        assert_eq!(coverage_cases(engine.clone()).await.len(), 1);

        // A caseworker sends the reset guidance, through the real Postfix, to a Primary User.
        app.transition(
            &case.reference,
            &countersign::workflow::TransitionRequest {
                to: "awaiting_information".into(),
                ..Default::default()
            },
            &countersign::workflow::Actor {
                name: "casey".into(),
                role: countersign::workflow::ActorRole::Caseworker,
            },
        )
        .await
        .unwrap();
        let postfix = crate::common::postfix::Postfix::start();
        let dispatcher = countersign::outbox::Dispatcher::new(
            engine.clone(),
            postfix.mailer_settings(),
            &crate::common::root().join("templates"),
        )
        .unwrap();
        // (With the two Primary Users' own password notices from the job.)
        assert_eq!(dispatcher.dispatch_due().await.unwrap().sent, 3);
        let guidance: Vec<String> = postfix
            .wait_for(3)
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .filter(|m| m.contains(&case.reference))
            .collect();
        assert_eq!(guidance.len(), 1, "{guidance:?}");
        assert!(guidance[0].contains("To: expired@nhs.net"), "{}", guidance[0]);
        assert!(
            guidance[0].contains("A81001 can sign in to Open Exeter"),
            "{}",
            guidance[0]
        );

        // Someone else lapses too: a new occurrence, a new case.
        let changed = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE5,A81002,Fine Primary,fine@nhs.net,Y,2026-11-15,2026-11-19,disabled\n";
        engine
            .import_accounts(changed.as_bytes(), "register.csv")
            .await
            .unwrap();
        clock.set(chrono::TimeZone::with_ymd_and_hms(&chrono::Local, 2026, 11, 24, 10, 0, 0).unwrap());
        scheduler(&engine, 100).run_due_jobs().await.unwrap();
        let cases = coverage_cases(engine.clone()).await;
        assert_eq!(cases.len(), 2, "{cases:?}");
        assert!(cases.iter().any(|c| c.org_ods_code.as_deref() == Some("A81002")));

        // No email opens one, whatever it says.
        let forged = countersign::samples::email(
            "pcse.openexeter@nhs.net",
            crate::common::AUTHSERV_ID,
            "forged-coverage@x",
            "No Primary User of A81003 can sign in to Open Exeter",
            "By the Open Exeter account register, none of the Primary Users of organisation A81003 can sign in",
            None,
        )
        .unwrap();
        let report = app.receive(&forged).await;
        assert_ne!(report.cases[0].workflow.as_deref(), Some("coverage"));
        assert_eq!(coverage_cases(engine.clone()).await.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn managers_see_account_lifecycle_by_region_and_organisation_and_download_it() {
    on_both_backends(|app| async move {
        let engine = app.engine();
        // The registry sample's practices are in Y54 (North of England).
        {
            let mut conn = engine.db().pool.acquire().await.unwrap();
            let bytes = std::fs::read(crate::common::root().join("samples/ods/epraccur-sample.csv")).unwrap();
            let orgs = countersign::registry::parse_gp_practices(&bytes, "epraccur-sample.csv").unwrap();
            assert_eq!(orgs[1].region.as_deref(), Some("Y54"));
            storage::import_registry(&mut conn, &orgs, "epraccur", engine.now_ms())
                .await
                .unwrap();
        }
        // Friday 20 November 2026: A81001 has nobody who can sign in; A81002 has two who can;
        // Z99999 is not in the registry.
        let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE1,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n\
            OE2,A81001,Quiet User,quiet@nhs.net,N,2026-11-10,2026-08-30,active\n\
            OE3,A81002,First Primary,first@nhs.net,Y,2026-11-17,2026-11-19,active\n\
            OE4,A81002,Second Primary,second@nhs.net,Y,2026-10-24,2026-11-19,active\n\
            OE5,Z99999,Lone User,lone@nhs.net,N,2026-11-10,2026-11-19,suspended\n";
        engine.import_accounts(register.as_bytes(), "register.csv").await.unwrap();

        let mut manager = crate::web::Browser::new(&engine).await;
        manager
            .sign_in_as(&engine, "manager@nhs.net", countersign::workflow::ActorRole::Manager)
            .await;
        let page = manager.get("/reports/lifecycle").await;
        assert_eq!(page.status, axum::http::StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("North of England"), "{}", page.body);
        assert!(page.body.contains("every Primary User lapsed"));
        let lapsed_at = page.body.find(">A81001<").unwrap();
        let covered_at = page.body.find(">A81002<").unwrap();
        assert!(lapsed_at < covered_at, "the organisations nobody can manage come first");

        let regions = manager.get("/reports/lifecycle/regions.csv").await;
        assert_eq!(regions.headers["content-type"], "text/csv; charset=utf-8");
        let lines: Vec<String> = regions.body.lines().map(|l| l.replace('"', "")).collect();
        assert_eq!(
            lines,
            vec![
                "region,name,organisations,every_primary_user_lapsed,no_primary_user,one_primary_user,accounts,passwords_expiring,passwords_expired,nearing_cutoff,suspended",
                "Y54,North of England,2,1,0,0,4,1,1,1,0",
                ",No region in the registry,1,0,1,0,1,0,0,0,1",
            ],
            "{}",
            regions.body
        );
        let organisations = manager.get("/reports/lifecycle/organisations.csv").await;
        assert!(
            organisations
                .body
                .replace('"', "")
                .contains("A81002,RIVERSIDE MEDICAL PRACTICE 2,Y54,covered,2,2,2,1,0,0,0"),
            "{}",
            organisations.body
        );
        assert_eq!(
            manager.get("/reports/lifecycle/people.csv").await.status,
            axum::http::StatusCode::NOT_FOUND
        );

        // The same figures through the API.
        let api = manager.get("/api/v1/reports/lifecycle").await;
        assert_eq!(api.status, axum::http::StatusCode::OK, "{}", api.body);
        let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
        assert_eq!(json["today"], "2026-11-20");
        assert_eq!(json["regions"][0]["region"], "Y54");
        assert_eq!(json["regions"][0]["lapsed"], 1);
        assert_eq!(json["organisations"][0]["ods_code"], "A81001");
        assert_eq!(json["organisations"][0]["coverage"], "lapsed");

        // Caseworkers do not see it.
        let mut caseworker = crate::web::Browser::new(&engine).await;
        caseworker
            .sign_in_as(&engine, "casey@nhs.net", countersign::workflow::ActorRole::Caseworker)
            .await;
        assert_eq!(
            caseworker.get("/reports/lifecycle").await.status,
            axum::http::StatusCode::FORBIDDEN
        );
        assert_eq!(
            caseworker.get("/api/v1/reports/lifecycle").await.status,
            axum::http::StatusCode::FORBIDDEN
        );
    })
    .await;
}

/// The web app's state, as `serve` builds it, on `engine`.
async fn web_state(engine: &countersign::engine::Engine) -> countersign::web::AppState {
    countersign::web::AppState::new(
        engine.clone(),
        &crate::common::root().join("templates"),
        false,
        "http://countersign.test".into(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn managers_opening_the_lifecycle_report_together_share_one_reading_of_the_register() {
    on_both_backends(|app| async move {
        let engine = app.engine();
        let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE1,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n";
        engine
            .import_accounts(register.as_bytes(), "register.csv")
            .await
            .unwrap();
        let state = web_state(&engine).await;
        let first = state.reports.lifecycle(&engine, 5).await.unwrap();
        assert_eq!(first.organisations.len(), 1);
        // A change within the half-minute is not read again: the same report is shared.
        let more = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
            OE2,A81002,Fine Primary,fine@nhs.net,Y,2026-11-15,2026-11-19,active\n";
        engine.import_accounts(more.as_bytes(), "register.csv").await.unwrap();
        let second = state.reports.lifecycle(&engine, 5).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        // A fresh reading sees it.
        let fresh = web_state(&engine).await;
        assert_eq!(
            fresh.reports.lifecycle(&engine, 5).await.unwrap().organisations.len(),
            2
        );
    })
    .await;
}
