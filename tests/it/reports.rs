//! The managers' reports through the router, on both backends: a small set of cases moved
//! through their workflow on a test clock, and every figure checked against the value worked
//! out by hand (in the comments), on the page and in the CSV export.

use axum::http::StatusCode;
use chrono::{Local, TimeZone};
use countersign::engine::Engine;
use countersign::workflow::{Actor, ActorRole, TransitionRequest};

use crate::common::{TestClock, on_both_backends_clocked};
use crate::web::Browser;

fn at(day: u32, hour: u32) -> chrono::DateTime<Local> {
    Local.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn by(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

async fn intake(engine: &Engine, n: usize) -> String {
    let workflow = engine.workflows().get("primary_user_gp").unwrap().clone();
    let email = crate::common::form_email(
        &workflow,
        n,
        &[],
        "amara@nhs.net",
        &format!("report-{n}@nhs.net"),
        "Form",
    );
    let report = engine.intake(&email, "test").await.unwrap();
    assert_eq!(report.cases[0].state, "validated", "a clean form passes its checks");
    report.cases[0].reference.clone()
}

async fn move_to(engine: &Engine, reference: &str, state: &str, actor: &str, recorded: &[(&str, &str)]) {
    let request = TransitionRequest {
        to: state.into(),
        reason: Some("report test".into()),
        recorded: recorded.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..TransitionRequest::default()
    };
    engine.transition(reference, &request, &by(actor)).await.unwrap();
}

/// Builds the data set: three cases received on Friday 20 November at 10:00, one on Monday
/// 30 November at 09:00 (still open), with the clock moved between their steps.
async fn data_set(engine: &Engine, clock: &TestClock) {
    clock.set(at(20, 10));
    let (a, b, c) = (
        intake(engine, 1).await,
        intake(engine, 2).await,
        intake(engine, 3).await,
    );
    // B: sent back at 12:00 (the SLA clock stops while the practice has it).
    clock.set(at(20, 12));
    move_to(engine, &b, "awaiting_information", "alice", &[]).await;
    // A: authorised on Monday 23rd, provisioned on Tuesday 24th at 10:00.
    clock.set(at(23, 10));
    move_to(engine, &a, "authorised", "alice", &[]).await;
    clock.set(at(24, 10));
    move_to(engine, &a, "provisioned", "bob", &[("open_exeter_user_id", "OE000001")]).await;
    // D arrives Monday 30th at 09:00 and stays open.
    clock.set(at(30, 9));
    intake(engine, 4).await;
    // B's reply is logged at 10:00, and it is rejected at 12:00.
    clock.set(at(30, 10));
    move_to(engine, &b, "needs_review", "alice", &[]).await;
    clock.set(at(30, 12));
    move_to(engine, &b, "rejected", "alice", &[]).await;
    // C waits a week and more: authorised Monday 30th at 12:00, provisioned at 13:00.
    move_to(engine, &c, "authorised", "alice", &[]).await;
    clock.set(at(30, 13));
    move_to(engine, &c, "provisioned", "bob", &[("open_exeter_user_id", "OE000003")]).await;
}

async fn csv(manager: &mut Browser, table: &str, period: &str) -> String {
    let path = format!("/reports/{table}.csv?{period}");
    let page = manager.get(&path).await;
    assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    assert_eq!(page.headers["content-type"], "text/csv; charset=utf-8");
    page.body
}

#[tokio::test]
async fn the_reports_match_figures_worked_out_by_hand() {
    crate::common::logs::install();
    on_both_backends_clocked(|engine, clock| async move {
        data_set(&engine, &clock).await;
        // What serve does when it starts: every past day from the first case's (Friday 20th)
        // to yesterday (Sunday 29th) is kept; today is not. On a first start the start-up
        // job and the night's housekeeping keep days at the same time: each day is worked out
        // once between them.
        let (startup, housekeeping) = tokio::join!(
            countersign::reports::keep_all_past_days(&engine),
            countersign::reports::keep_all_past_days(&engine)
        );
        assert_eq!(
            startup.unwrap() + housekeeping.unwrap(),
            10,
            "each past day worked out once"
        );
        assert_eq!(
            countersign::reports::keep_all_past_days(&engine).await.unwrap(),
            0,
            "kept once"
        );
        let mut manager = Browser::new(&engine).await;
        manager.sign_in_as(&engine, "manager@nhs.net", ActorRole::Manager).await;
        let period = "from=2026-11-16&to=2026-12-06";
        let page = manager.get(&format!("/reports?{period}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        // The dashboard: D is the one open case, received today and not yet due.
        assert!(
            page.body.contains(r#"<span class="figure">1</span> open cases"#),
            "{}",
            page.body
        );
        assert!(page.body.contains(r#"<span class="figure">1</span> received today"#));
        assert!(page.body.contains(r#"<span class="figure">0</span> past their SLA"#));
        // Two of three completed within the SLA: 66.7%. The period before had nothing.
        assert!(page.body.contains("66.7%"), "{}", page.body);
        assert!(
            page.body.contains("<svg class=\"chart\""),
            "charts are drawn on the server"
        );

        // SLA by workflow. Working days count only weekdays, 24 hours each:
        // A: Fri 20th 10:00 to Tue 24th 10:00 = 14 h + 24 h + 10 h = 2.0 days, within 5.
        // B: validated 2 h on Fri 20th, paused while awaiting information, then 2 h in
        //    review on Mon 30th: 0.17 days, within (rejected, so not in "to provisioned").
        // C: Fri 20th 10:00 to Mon 30th 13:00 = 14 h + 5 x 24 h + 13 h = 6.125 days: late.
        // To provisioned: [2.0, 6.125]: median (nearest rank) 2.0, 90th percentile 6.1.
        // SLA days: [0.17, 2.0, 6.125]: median 2.0, 90th percentile 6.1.
        let sla = csv(&mut manager, "sla", period).await;
        assert!(
            sla.contains(r#""primary_user_gp","5","3","2","66.7","2.0","6.1","2.0","6.1""#),
            "{sla}"
        );
        // Time in each state, for the visits that ended in the period:
        // validated: A 1.0 (Fri 14 h + Mon 10 h), B 0.083 (2 h), C 6.083 (146 h):
        // median 1.0, 90th percentile 6.1; awaiting information: B, paused or not, Fri 20th
        // 12:00 to Mon 30th 10:00 = 12 h + 120 h + 10 h = 5.9 days.
        let states = csv(&mut manager, "state_times", period).await;
        assert!(states.contains(r#""validated","3","1.0","6.1""#), "{states}");
        assert!(states.contains(r#""awaiting_information","1","5.9","5.9""#), "{states}");
        // Per week: received 3 in the week of 16th (D in the week of 30th); A completed in the
        // week of 23rd, within; B and C in the week of 30th, one of them within.
        let weeks = csv(&mut manager, "weeks", period).await;
        assert!(
            weeks.contains(r#""2026-11-16","primary_user_gp","3","0","0","0""#),
            "{weeks}"
        );
        assert!(
            weeks.contains(r#""2026-11-23","primary_user_gp","0","1","1","1""#),
            "{weeks}"
        );
        assert!(
            weeks.contains(r#""2026-11-30","primary_user_gp","1","2","2","1""#),
            "{weeks}"
        );
        // Alice: B's three moves and A's and C's authorisations (5), B's rejection completed.
        // Bob: the two provisionings, both completing.
        let people = csv(&mut manager, "caseworkers", period).await;
        assert!(people.contains(r#""alice","5","1","0""#), "{people}");
        assert!(people.contains(r#""bob","2","2","0""#), "{people}");
        // The late case, by workflow; the backlog: D, received today.
        let late = csv(&mut manager, "breaches_by_workflow", period).await;
        assert!(late.contains(r#""count""#) && late.lines().count() == 2, "{late}");
        let backlog = csv(&mut manager, "backlog", period).await;
        assert!(backlog.contains(r#""0–2 working days","1""#), "{backlog}");

        // The days that are over are kept, and a second reading of them gives the same figures.
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let kept = countersign::storage::cached_report_days(&mut conn, "2026-11-16", "2026-12-06")
            .await
            .unwrap();
        drop(conn);
        assert_eq!(
            kept.len(),
            14,
            "16 to 29 November are over; today and later are not kept"
        );
        assert_eq!(
            csv(&mut manager, "sla", period).await,
            sla,
            "kept days add up to the same figures"
        );
        // The period before: nothing received, nothing completed.
        let before = manager.get("/reports/weeks.csv?from=2026-10-26&to=2026-11-15").await;
        assert_eq!(before.body.lines().count(), 1, "only the header: {}", before.body);
        // A period that makes no sense is explained on the page, not a bare error.
        let wrong = manager.get("/reports?from=2026-12-06&to=2026-11-16").await;
        assert_eq!(wrong.status, StatusCode::OK);
        assert!(wrong.body.contains("There is a problem") && wrong.body.contains("on or after"));
        assert_eq!(manager.get("/reports/nothing.csv").await.status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn a_report_asked_for_again_within_half_a_minute_is_shared_not_worked_out_again() {
    crate::common::on_both_backends(|app| async move {
        app.receive_fixture("mail/gp_form.eml").await;
        let cache = std::sync::Arc::new(countersign::web::reports::ReportCache::default());
        let period = countersign::reports::Period::last_weeks(app.clock().now().date_naive(), 13);
        let first = cache.report_and_previous(&app, period).await.unwrap();
        let again = cache.report_and_previous(&app, period).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "shared");
        let other = countersign::reports::Period::last_weeks(app.clock().now().date_naive(), 4);
        let different = cache.report_and_previous(&app, other).await.unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first, &different), "another period is its own");
        assert_eq!(first.0, again.0);
    })
    .await;
}

/// Past its freshness, the queue as last read is shown at once while one background task reads
/// it again: no manager's page waits for the reading (it took a few hundred milliseconds at a
/// million cases, every 15 s, and every dashboard request of that moment waited for it).
#[tokio::test]
async fn a_stale_reading_of_the_queue_is_shown_at_once_while_it_is_read_again_behind() {
    crate::common::on_both_backends(|app| async move {
        app.receive_fixture("mail/gp_form.eml").await;
        let cache = std::sync::Arc::new(countersign::web::reports::ReportCache::with_now_fresh_for(
            std::time::Duration::ZERO,
        ));
        let first = cache.queue_now(&app).await.unwrap();
        assert_eq!(first.dashboard.open, 1);
        app.receive_fixture("mail/no_form.eml").await;
        let shown = cache.queue_now(&app).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&shown, &first), "the stale reading, at once");
        let mut read_again = None;
        for _ in 0..500 {
            let now = cache.queue_now(&app).await.unwrap();
            if !std::sync::Arc::ptr_eq(&now, &first) {
                read_again = Some(now);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let read_again = read_again.expect("the queue is read again in the background");
        assert_eq!(read_again.dashboard.open, 2, "and the new reading has the new case");
    })
    .await;
}

#[tokio::test]
async fn the_queue_now_is_read_once_for_everyone_who_asks_together() {
    crate::common::on_both_backends(|app| async move {
        app.receive_fixture("mail/gp_form.eml").await;
        let cache = std::sync::Arc::new(countersign::web::reports::ReportCache::default());
        // Eight managers open the dashboard at once: one reading, shared by all.
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, engine) = (cache.clone(), app.engine());
                tokio::spawn(async move { cache.queue_now(&engine).await.unwrap() })
            })
            .collect();
        let mut seen = Vec::new();
        for ask in asks {
            seen.push(ask.await.unwrap());
        }
        assert!(
            seen.iter().all(|now| std::sync::Arc::ptr_eq(now, &seen[0])),
            "one reading"
        );
        assert_eq!(seen[0].open.len(), 1);
        assert_eq!(seen[0].dashboard.open, 1);
        // A report worked out meanwhile takes its backlog from the same reading.
        let period = countersign::reports::Period::last_weeks(app.clock().now().date_naive(), 13);
        let report = cache.report_and_previous(&app, period).await.unwrap();
        let fresh = countersign::reports::report_for(&app, period).await.unwrap();
        assert_eq!(report.0, fresh);
    })
    .await;
}
