//! End-to-end in a real headless Chromium (Debian's `chromium` and `chromium-driver`), driven
//! over WebDriver: sign in, find a case in the queue, open it, see the PDF and the findings,
//! request information, a corrected form arrives, accept, authorise as a second user,
//! provision, see the timeline. Screenshots of the queue and a case page are saved under
//! `tests/output/` for a person to look at.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestClock, TestDatabase, engine_with_clock, friday_morning};
use countersign::storage::Backend;
use countersign::workflow::ActorRole;
use fantoccini::{Client, ClientBuilder, Locator};

struct Driver {
    process: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_chromedriver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let binary = binary.expect(
        "chromium-driver is needed for the browser tests: apt-get install chromium chromium-driver (.ci/run does)",
    );
    let port = free_port();
    let process = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        process,
        port,
        _profile: tempfile::tempdir().unwrap(),
    }
}

async fn open_browser(driver: &Driver) -> Client {
    // fantoccini talks to chromedriver through rustls, which needs a crypto provider chosen.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let profile = driver._profile.path().display().to_string();
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", format!("--user-data-dir={profile}"), "--window-size=1280,1000"]
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

/// Where a screenshot goes: `tests/output/<backend>-<name>`.
fn output(backend: Backend, name: &str) -> std::path::PathBuf {
    let dir = crate::common::root().join("tests/output");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", format!("{backend:?}").to_lowercase()))
}

async fn sign_in(browser: &Client, base: &str, email: &str) {
    browser.goto(&format!("{base}/sign-in")).await.unwrap();
    type_into(browser, "email", email).await;
    type_into(browser, "password", "river otter lantern").await;
    click(browser, "main form button[type=submit]").await;
    // Wait for the signed-in page itself, not any heading: the sign-in page has one too.
    wait_for(browser, "form[action='/sign-out']").await;
    let page = browser.source().await.unwrap();
    assert!(
        page.contains("Open cases") || page.contains("<h1>Dashboard</h1>"),
        "signed in as {email}"
    );
}

async fn sign_out(browser: &Client) {
    click(browser, "header form button").await;
    wait_for(browser, "#email").await;
}

/// Types `text` into the (empty) input with this id.
async fn type_into(browser: &Client, id: &str, text: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the element `css` selects.
async fn click(browser: &Client, css: &str) {
    browser.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

async fn act(browser: &Client, to: &str, fill: &[(&str, &str)]) {
    // One "choose an action" control: choosing shows that action's form alone.
    browser
        .find(Locator::Css(&format!("#action-choice option[value='{to}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for (id, text) in fill {
        let field = browser.find(Locator::Id(id)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }
    let form = browser
        .find(Locator::XPath(&format!("//form[input[@name='to' and @value='{to}']]")))
        .await
        .unwrap();
    form.find(Locator::Css("button[type=submit]:not([name=preview])"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click returns before the next page loads; the page that answers shows the new state.
    wait_for(browser, &format!("#case-state[data-state='{to}']")).await;
}

/// Fails when the page is wider than the window (it would scroll sideways).
async fn assert_fits_without_sideways_scrolling(browser: &Client, page: &str) {
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(0) <= 0,
        "{page} scrolls sideways by {overflow} px"
    );
}

/// Runs axe-core (installed by `.ci/run` under `tests/axe`, from the npm registry) in the page
/// and fails on any WCAG 2.0/2.1/2.2 A or AA violation, naming the rule and the elements.
async fn audit_accessibility(browser: &Client, page: &str) {
    let axe_path = crate::common::root().join("tests/axe/node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&axe_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. The accessibility audit needs axe-core: npm ci --prefix tests/axe (.ci/run does)",
            axe_path.display()
        )
    });
    browser.execute(&axe, vec![]).await.expect("axe-core loads in the page");
    let violations = browser
        .execute(
            "return window.axe.run(document, { runOnly: { type: 'tag', values: \
               ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] } })\
             .then(r => r.violations.map(v => `${v.id} (${v.impact}): ${v.help}: ` + \
               v.nodes.slice(0, 5).map(n => n.target.join(' ')).join(', ')));",
            vec![],
        )
        .await
        .expect("axe-core runs");
    let violations: Vec<String> = serde_json::from_value(violations).expect("a list of violations");
    assert!(
        violations.is_empty(),
        "accessibility violations on {page}:\n{}",
        violations.join("\n")
    );
}

/// Waits (up to 20 s, for a slow shared CI machine) until an element matching `css` is on the page.
async fn wait_for(browser: &Client, css: &str) {
    if let Err(error) = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
    {
        let url = browser.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        let page = browser.source().await.unwrap_or_default();
        panic!("waiting for {css} on {url}: {error}\n{page}");
    }
}

#[tokio::test]
async fn a_case_goes_from_inbox_to_provisioned_in_a_real_browser_on_sqlite() {
    case_journey(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_case_goes_from_inbox_to_provisioned_in_a_real_browser_on_postgres() {
    case_journey(Backend::Postgres).await;
}

/// The whole journey, against the web app backed by `backend`. Screenshots are named by it.
async fn case_journey(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let clock = TestClock::at(friday_morning());
    let engine = engine_with_clock(&database.url, clock.clone()).await;
    for (email, role) in [
        ("alice@nhs.net", ActorRole::Caseworker),
        ("bob@nhs.net", ActorRole::Caseworker),
        ("carol@nhs.net", ActorRole::Admin),
        ("dana@nhs.net", ActorRole::Manager),
    ] {
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let name = email.split('@').next().unwrap();
        let (_, token) = countersign::users::add(&mut conn, email, name, role, engine.now_ms())
            .await
            .unwrap();
        countersign::users::set_password_with_token(&mut conn, &token, "river otter lantern", engine.now_ms())
            .await
            .unwrap();
    }
    // A form signed by a Practice Manager: held for review.
    let wf = engine.workflows().get("primary_user_gp").unwrap().clone();
    let mut values = countersign::samples::good_values(&wf, 4, friday_morning().date_naive());
    values.insert("signatory_role".into(), "Practice Manager".into());
    let pdf = countersign::pdf::generate::filled_form(&wf, &values).unwrap();
    let sender = values["signatory_email"].clone();
    let email = countersign::samples::email_with_form(
        &sender,
        crate::common::AUTHSERV_ID,
        "e2e-1@practice.nhs.net",
        "Primary user form",
        Some(("form.pdf", pdf)),
    )
    .unwrap();
    let reference = engine.intake(&email, "test").await.unwrap().cases[0].reference.clone();
    let mut other_cases = Vec::new();
    for other in ["mail/no_form.eml", "mail/forwarded.eml"] {
        let report = engine.intake(&crate::common::fixture(other), "test").await.unwrap();
        other_cases.extend(report.cases.into_iter().map(|c| c.reference));
    }
    // A form digitally signed (by pyHanko) with a self-signed certificate: its case page says
    // so, and passes the same audit.
    let signed_forms = crate::signed_forms::SignedForms::make_at(friday_morning().with_timezone(&chrono::Utc));
    let signed = crate::signed_forms::email_with(signed_forms.pdf("self_signed"), "e2e-signed@practice.nhs.net");
    let signed_case = engine.intake(&signed, "test").await.unwrap().cases[0].reference.clone();
    other_cases.push(signed_case.clone());

    let state = countersign::web::AppState::new(
        engine.clone(),
        &crate::common::root().join("templates"),
        false,
        "http://127.0.0.1".into(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(countersign::web::serve_on(state, listener, stop_rx));
    let driver = start_chromedriver();
    let browser = open_browser(&driver).await;

    sign_in(&browser, &base, "alice@nhs.net").await;
    // The queue: find the case.
    audit_accessibility(&browser, "the queue").await;
    let queue = browser.source().await.unwrap();
    assert!(queue.contains(&reference) && queue.contains("Signatory not authorised to sign"));
    std::fs::write(output(backend, "queue-1280.png"), browser.screenshot().await.unwrap()).unwrap();
    browser.set_window_size(390, 900).await.unwrap();
    std::fs::write(output(backend, "queue-narrow.png"), browser.screenshot().await.unwrap()).unwrap();
    assert_fits_without_sideways_scrolling(&browser, "the queue at 390 px").await;
    browser.set_window_size(1280, 1000).await.unwrap();
    // Keyboard: j selects the first (most urgent) case, Enter opens it.
    let first_row = browser
        .find(Locator::Css("tr[data-case]"))
        .await
        .unwrap()
        .attr("data-case")
        .await
        .unwrap();
    assert_eq!(
        first_row.as_deref(),
        Some(reference.as_str()),
        "the most urgent case comes first"
    );
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("j")
        .await
        .unwrap();
    browser
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    browser.wait().for_element(Locator::Id("fields-h")).await.unwrap();
    assert!(browser.current_url().await.unwrap().path().ends_with(&reference));

    // The case page: the finding, and the PDF shown inline.
    audit_accessibility(&browser, "a case page with findings").await;
    let page = browser.source().await.unwrap();
    assert!(page.contains("A Practice Manager cannot sign this form"));
    let frame = browser.find(Locator::Css("iframe.pdf-frame")).await.unwrap();
    assert_eq!(
        frame.attr("src").await.unwrap().as_deref(),
        Some(format!("/cases/{reference}/form.pdf").as_str())
    );
    std::fs::write(output(backend, "case-1280.png"), browser.screenshot().await.unwrap()).unwrap();
    // At 390 px (a phone) the case page fits without sideways scrolling.
    browser.set_window_size(390, 900).await.unwrap();
    std::fs::write(output(backend, "case-narrow.png"), browser.screenshot().await.unwrap()).unwrap();
    assert_fits_without_sideways_scrolling(&browser, "the case page at 390 px").await;
    browser.set_window_size(1280, 1000).await.unwrap();

    // Request information (the reason starts from the findings, and can be edited).
    act(
        &browser,
        "awaiting_information",
        &[("reason-awaiting_information", "Please have a GP partner sign page 2.")],
    )
    .await;
    assert!(
        browser
            .source()
            .await
            .unwrap()
            .contains("Awaiting information from sender")
    );

    // The corrected form arrives, in reply to our request.
    let request_id: String =
        sqlx::query_scalar("SELECT message_id FROM outbox WHERE template = 'request_for_correction'")
            .fetch_one(&engine.db().pool)
            .await
            .unwrap();
    values.insert("signatory_role".into(), "GP Partner".into());
    let corrected = countersign::pdf::generate::filled_form(&wf, &values).unwrap();
    let reply = mail_builder::MessageBuilder::new()
        .from(("Practice", sender.as_str()))
        .to("pcse.openexeter@nhs.net")
        .subject(format!("Re: [{reference}] corrected"))
        .message_id("e2e-2@practice.nhs.net")
        .in_reply_to(request_id.trim_matches(['<', '>']))
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
    assert_eq!(
        engine.intake(&reply, "test").await.unwrap().cases[0].reference,
        reference
    );
    browser.refresh().await.unwrap();
    let page = browser.source().await.unwrap();
    assert!(
        page.contains("Needs review") && !page.contains("A Practice Manager cannot sign this form"),
        "the corrected form passed"
    );
    // The correspondence: the first email, our request as the practice read it, their reply
    // with its attachment.
    assert!(
        page.contains("Correspondence") && page.contains("Corrected form attached."),
        "the reply is readable"
    );
    assert!(
        page.contains("Please have a GP partner sign page 2."),
        "our request, as sent"
    );
    assert!(page.contains("corrected.pdf"), "the reply's attachment is listed");

    // Accept, then a second person authorises and provisions.
    act(
        &browser,
        "validated",
        &[("reason-validated", "Corrected form checked.")],
    )
    .await;
    assert!(browser.source().await.unwrap().contains("Validated"));
    sign_out(&browser).await;
    audit_accessibility(&browser, "the sign-in page").await;
    sign_in(&browser, &base, "bob@nhs.net").await;
    browser.goto(&format!("{base}/cases/{reference}")).await.unwrap();
    act(&browser, "authorised", &[]).await;
    act(
        &browser,
        "provisioned",
        &[("open_exeter_user_id-provisioned", "OE778899")],
    )
    .await;
    let page = browser.source().await.unwrap();
    assert!(page.contains("Provisioned"), "provisioned");
    audit_accessibility(&browser, "a provisioned case").await;
    let sla = browser
        .find(Locator::Id("case-sla"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sla.starts_with("SLA met closed"),
        "a closed case shows its SLA met: {sla}"
    );

    // The timeline tells the whole story.
    for step in [
        "hold for review",
        "request information",
        "reply received",
        "form resubmitted",
        "accept",
        "authorise",
        "provision",
    ] {
        assert!(page.contains(step), "timeline shows {step}");
    }
    std::fs::write(
        output(backend, "case-provisioned.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    // The evidence a caseworker checks further down: who sent it and what decided, the log's
    // chain, and the evidence pack.
    assert!(
        page.contains("Decided by: our mail server"),
        "the sender check says what decided it"
    );
    assert!(page.contains("log intact"), "the event chain's state is shown");
    assert!(page.contains("Download the evidence pack"));
    for (id, name) in [
        ("email-h", "case-sender-check.png"),
        ("timeline-h", "case-timeline.png"),
    ] {
        let section = browser
            .find(Locator::XPath(&format!("//section[h2[@id='{id}']]")))
            .await
            .unwrap();
        std::fs::write(output(backend, name), section.screenshot().await.unwrap()).unwrap();
    }
    assert!(
        std::fs::metadata(output(backend, "queue-1280.png")).unwrap().len() > 10_000,
        "a real screenshot"
    );

    // The admin's pages, an empty queue and the other cases pass the same audit.
    sign_out(&browser).await;
    sign_in(&browser, &base, "carol@nhs.net").await;
    let mut pages: Vec<(String, String)> = [
        ("/admin/users", "Users"),
        ("/admin/organisations", "Organisations"),
        ("/admin/workflows", "Workflows"),
        ("/?q=no-such-case", "Open cases"),
        ("/reports", "Dashboard"),
        ("/admin/templates", "Email templates"),
        ("/admin/signatories", "Signatory register"),
        ("/reports/coverage", "Primary User coverage"),
    ]
    .map(|(path, heading)| (path.to_string(), heading.to_string()))
    .to_vec();
    // A CSMS access-check problem by plain email: sorted, its reply proposed. (It arrives now:
    // its 2-day SLA would put it above the journey's case in the queue.)
    let support = countersign::samples::email(
        "claire.hall@nhs.net",
        crate::common::AUTHSERV_ID,
        "e2e-support@practice.nhs.net",
        "CSMS access check - no role",
        "Hello,\nThe access check says I do not have a valid cervical screening role set up on my smartcard.\nSmartcard ID: 555123456789\nClaire Hall, Practice Nurse",
        None,
    )
    .unwrap();
    let support_case = engine.intake(&support, "test").await.unwrap().cases[0]
        .reference
        .clone();
    other_cases.push(support_case.clone());
    pages.extend(other_cases.iter().map(|r| (format!("/cases/{r}"), r.clone())));
    for (path, expected) in &pages {
        browser.goto(&format!("{base}{path}")).await.unwrap();
        wait_for(&browser, "h1").await;
        let heading = browser.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
        assert!(heading.starts_with(expected.as_str()), "{path} shows {heading}");
        audit_accessibility(&browser, path).await;
    }
    // The signed form's verdict, as the caseworker sees it.
    browser.goto(&format!("{base}/cases/{signed_case}")).await.unwrap();
    wait_for(&browser, "#digital-signature").await;
    let section = browser.find(Locator::Css("#digital-signature")).await.unwrap();
    let words = section.text().await.unwrap();
    assert!(
        words.contains("self-signed") && words.contains("Dr Self Signer"),
        "{words}"
    );
    std::fs::write(
        output(backend, "case-digital-signature.png"),
        section.screenshot().await.unwrap(),
    )
    .unwrap();

    // The support case, as the caseworker who will confirm its reply sees it.
    browser.goto(&format!("{base}/cases/{support_case}")).await.unwrap();
    wait_for(&browser, "h1").await;
    let page = browser.source().await.unwrap();
    assert!(
        page.contains("Reply proposed")
            && page.contains("No CSMS role on the smartcard")
            && page.contains("555123456789"),
        "the support case shows its problem and what it read"
    );
    std::fs::write(output(backend, "case-support.png"), browser.screenshot().await.unwrap()).unwrap();

    // A manager: signing in lands on the dashboard; the reports for a period count the
    // journey's case and draw their charts; every table links its CSV, and one downloads.
    sign_out(&browser).await;
    sign_in(&browser, &base, "dana@nhs.net").await;
    assert!(
        browser.current_url().await.unwrap().path() == "/reports",
        "a manager lands on the dashboard"
    );
    browser.set_window_size(1280, 3000).await.unwrap();
    browser
        .goto(&format!("{base}/reports?from=2026-11-16&to=2026-12-06"))
        .await
        .unwrap();
    wait_for(&browser, "svg.chart").await;
    audit_accessibility(&browser, "the reports, as a manager").await;
    let csv = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const link = document.querySelector('a.csv[href^=\"/reports/sla.csv\"]');
             fetch(link.href).then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap_or_default().to_string();
    assert!(
        csv.starts_with("\"workflow\",\"target_working_days\"") && csv.contains("\"primary_user_gp\""),
        "the SLA table as CSV, downloaded with the manager's session: {csv}"
    );
    let reports = browser.source().await.unwrap();
    assert!(
        reports.contains("Headline figures") && reports.contains("primary user gp"),
        "{reports}"
    );
    let csv_links = browser.find_all(Locator::Css("a.csv")).await.unwrap();
    assert!(csv_links.len() >= 9, "every table can be exported: {}", csv_links.len());
    std::fs::write(output(backend, "reports.png"), browser.screenshot().await.unwrap()).unwrap();

    // The account lifecycle report, from a small register, as the manager reads it.
    let register = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
        OE1,A81001,Expired Primary,expired@nhs.net,Y,2026-10-01,2026-11-19,active\n\
        OE2,A81001,Quiet User,quiet@nhs.net,N,2026-11-10,2026-08-30,active\n\
        OE3,A81002,First Primary,first@nhs.net,Y,2026-11-17,2026-11-19,active\n\
        OE4,A81002,Second Primary,second@nhs.net,Y,2026-10-24,2026-11-19,active\n\
        OE5,B82001,Lone User,lone@nhs.net,N,2026-11-10,2026-11-19,suspended\n";
    engine
        .import_accounts(register.as_bytes(), "register.csv")
        .await
        .unwrap();
    browser.set_window_size(1280, 1000).await.unwrap();
    browser.goto(&format!("{base}/reports/lifecycle")).await.unwrap();
    wait_for(&browser, "h1").await;
    audit_accessibility(&browser, "the account lifecycle report").await;
    let lifecycle = browser.source().await.unwrap();
    assert!(lifecycle.contains("every Primary User lapsed") && lifecycle.contains("regions.csv"));
    std::fs::write(output(backend, "lifecycle.png"), browser.screenshot().await.unwrap()).unwrap();
    sign_out(&browser).await;

    // A new user's one-time password link, as they open it from their NHS mailbox: a button,
    // then the password, once. (The link's token is set here as the outbox sets it at send.)
    let notification = countersign::samples::email(
        "noreply@openexeter.nhs.uk",
        crate::common::AUTHSERV_ID,
        "e2e-new-user@openexeter.nhs.uk",
        "Open Exeter: new user created",
        "Organisation code: A81001\nOrganisation name: Riverside Surgery\nUser ID: OE300001\nUser name: Jo New\nUser email: jo.new@nhs.net\nCreated by: pat.manager@nhs.net\n",
        None,
    )
    .unwrap();
    crate::common::TestApp::new(engine.clone())
        .register_signatory(
            "A81001",
            countersign::signatories::PRIMARY_USER,
            "Pat Manager",
            "pat.manager@nhs.net",
        )
        .await;
    let new_user = engine.intake(&notification, "test").await.unwrap().cases[0]
        .reference
        .clone();
    for (to, who) in [("authorised", "alice"), ("provisioned", "bob")] {
        let request = countersign::workflow::TransitionRequest {
            to: to.into(),
            ..Default::default()
        };
        let actor = countersign::workflow::Actor {
            name: who.into(),
            role: ActorRole::Caseworker,
        };
        engine.transition(&new_user, &request, &actor).await.unwrap();
    }
    let token = countersign::users::random_token();
    {
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let case = countersign::storage::case_by_reference(&mut conn, &new_user)
            .await
            .unwrap()
            .unwrap();
        let name = countersign::storage::credentials_for_case(&mut conn, case.id)
            .await
            .unwrap()[0]
            .name
            .clone();
        assert!(
            countersign::storage::set_credential_link(
                &mut conn,
                &name,
                &countersign::mail::sha256_hex(token.as_bytes()),
                engine.now_ms() + 3_600_000
            )
            .await
            .unwrap()
        );
    }
    browser.set_window_size(800, 700).await.unwrap();
    browser.goto(&format!("{base}/credential/{token}")).await.unwrap();
    wait_for(&browser, "h1").await;
    audit_accessibility(&browser, "the one-time password link").await;
    std::fs::write(
        output(backend, "credential-link.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, "#secret").await;
    audit_accessibility(&browser, "the password, shown once").await;
    let shown = browser
        .find(Locator::Css("#secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown.trim().len(), 14, "{shown}");
    std::fs::write(
        output(backend, "credential-shown.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.goto(&format!("{base}/credential/{token}")).await.unwrap();
    wait_for(&browser, "h1").await;
    assert!(browser.source().await.unwrap().contains("has been used"));

    // The caseworker sees where the password went and that it was opened, never it, and can
    // replace it.
    sign_in(&browser, &base, "alice@nhs.net").await;
    browser.set_window_size(1280, 2400).await.unwrap();
    browser.goto(&format!("{base}/cases/{new_user}")).await.unwrap();
    wait_for(&browser, "#credentials").await;
    audit_accessibility(&browser, "a new user's case, its password issued").await;
    let panel = browser.find(Locator::Css("#credentials")).await.unwrap();
    let words = panel.text().await.unwrap();
    assert!(
        words.contains("jo.new@nhs.net") && words.contains("opened") && !words.contains(shown.trim()),
        "{words}"
    );
    std::fs::write(
        output(backend, "case-new-user-password.png"),
        panel.screenshot().await.unwrap(),
    )
    .unwrap();

    browser.close().await.unwrap();
    stop_tx.send(true).unwrap();
    let _ = server.await;
    engine.db().close().await;
    database.drop_database().await;
}
