//! A new user's first password (the `new_user` workflow's `[credential]`): made when the case
//! is provisioned, delivered as a one-time link to the user's own NHS mailbox (through a real
//! Postfix) with the username going separately to the Primary User, shown once on the link's
//! page, and found afterwards in no log line, no database column and no outbox row. On both
//! databases.

use std::sync::Arc;

use crate::common::postfix::Postfix;
use crate::common::{AUTHSERV_ID, TestApp, TestClock, on_both_backends_clocked, root};
use countersign::credentials::{CredentialKind, CredentialPolicy, weakness};
use countersign::domain::EventKind;
use countersign::engine::EngineError;
use countersign::outbox::Dispatcher;
use countersign::provision::{Provisioner, RecordedByCaseworker};
use countersign::storage::{self, Backend};
use countersign::web::AppState;
use countersign::workflow::{Actor, ActorRole, TransitionRequest};
use sqlx::Row;

const OPEN_EXETER: &str = "noreply@openexeter.nhs.uk";
const PRIMARY_USER: &str = "pat.manager@nhs.net";

fn notification(n: usize, user_email: &str) -> Vec<u8> {
    let body = format!(
        "A new user account has been created in Open Exeter.\n\nOrganisation code: A81001\nOrganisation name: Riverside Surgery\nUser ID: OE20{n:04}\nUser name: New User {n}\nUser email: {user_email}\nCreated by: {PRIMARY_USER}\n"
    );
    countersign::samples::email(
        OPEN_EXETER,
        AUTHSERV_ID,
        &format!("credential-{n}@openexeter.nhs.uk"),
        "Open Exeter: new user created",
        &body,
        None,
    )
    .expect("an email")
}

fn person(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

fn to(state: &str) -> TransitionRequest {
    TransitionRequest {
        to: state.into(),
        ..TransitionRequest::default()
    }
}

/// Pat Manager, a Primary User of A81001 in our records (who creates the accounts).
async fn the_primary_user(app: &TestApp) {
    app.register_signatory(
        "A81001",
        countersign::signatories::PRIMARY_USER,
        "Pat Manager",
        PRIMARY_USER,
    )
    .await;
}

/// The credentials issued on a case, as the case page reads them.
async fn credentials_of(app: &TestApp, reference: &str) -> Vec<storage::CredentialRecord> {
    let mut conn = app.db().pool.acquire().await.unwrap();
    let case = storage::case_by_reference(&mut conn, reference).await.unwrap().unwrap();
    storage::credentials_for_case(&mut conn, case.id).await.unwrap()
}

/// A notification taken in, checked, authorised and provisioned: the case's reference.
async fn provisioned(app: &TestApp, n: usize, user_email: &str) -> Result<String, EngineError> {
    let report = app.receive(&notification(n, user_email)).await;
    let reference = report.cases[0].reference.clone();
    let case = app.case(&reference).await;
    if case.state == "needs_review" {
        app.transition(
            &reference,
            &TransitionRequest {
                reason: Some("checked with the practice".into()),
                ..to("validated")
            },
            &person("carol"),
        )
        .await?;
    }
    app.transition(&reference, &to("authorised"), &person("alice")).await?;
    RecordedByCaseworker {
        recorded: vec![],
        note: None,
    }
    .provision(&app.engine(), &reference, &person("bob"))
    .await?;
    Ok(reference)
}

/// The two messages Postfix received, parsed: (to, subject, text).
fn delivered(postfix: &Postfix, count: usize) -> Vec<(String, String, String)> {
    postfix
        .wait_for(count)
        .iter()
        .map(|raw| {
            let message = mail_parser::MessageParser::default().parse(raw).expect("a message");
            let to = message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or_default()
                .to_string();
            (
                to,
                message.subject().unwrap_or_default().to_string(),
                message.body_text(0).unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The one-time link's path in a message's text.
fn link_path(text: &str) -> String {
    let start = text.find("/credential/").expect("a credential link");
    text[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['.', ',', ')'])
        .to_string()
}

/// Everything the database holds, as text: every column of every row of every table
/// (binary columns as hex), so that a secret anywhere in it is found.
async fn everything_stored(app: &TestApp) -> String {
    let mut conn = app.db().pool.acquire().await.unwrap();
    let mut all = String::new();
    match app.db().backend {
        Backend::Sqlite => {
            let tables: Vec<String> =
                sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
            assert!(tables.iter().any(|t| t == "credentials"), "{tables:?}");
            for table in tables {
                let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(&mut *conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
                for column in columns {
                    let values = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT quote(\"{column}\") FROM \"{table}\""
                    )))
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
                    for value in values {
                        all.push_str(&value.get::<String, _>(0));
                        all.push('\n');
                    }
                }
            }
        }
        Backend::Postgres => {
            let tables: Vec<String> = sqlx::query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
            assert!(tables.iter().any(|t| t == "credentials"), "{tables:?}");
            for table in tables {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT row_to_json(t)::text FROM \"{table}\" t"
                )))
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                for row in rows {
                    all.push_str(&row.get::<String, _>(0));
                    all.push('\n');
                }
            }
        }
    }
    all
}

async fn serve(app: &TestApp) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(app.engine(), &root().join("templates"), false, base.clone())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(countersign::web::serve_on(state, listener, stopped));
    (base, stop)
}

/// The hidden CSRF field's value on a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    // The page escapes the token as HTML: the browser (and this) reads it back.
    page[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&#x2F;", "/")
        .replace("&#x3D;", "=")
        .replace("&#x2B;", "+")
}

#[tokio::test]
async fn a_new_users_password_goes_by_one_time_link_apart_from_the_username_and_is_kept_nowhere() {
    on_both_backends_clocked(|app: TestApp, _clock: Arc<TestClock>| async move {
        let logs = crate::common::logs::capture();

        the_primary_user(&app).await;
        let (base, _stop) = serve(&app).await;
        let reference = provisioned(&app, 1, "jane.smith@nhs.net").await.unwrap();

        // Two messages queued, never one: the link to the user, the username to the Primary User.
        let queued = app.outbox(&reference).await;
        let mut templates: Vec<(&str, Option<&str>)> = queued
            .iter()
            .map(|m| (m.template.as_str(), m.recipient.as_deref()))
            .collect();
        templates.sort();
        assert_eq!(
            templates,
            vec![
                ("credential_link", Some("jane.smith@nhs.net")),
                ("credential_username", Some(PRIMARY_USER)),
            ]
        );
        let kinds = app.event_kinds(&reference).await;
        assert!(kinds.contains(&EventKind::CredentialIssued), "{kinds:?}");

        // Sent through a real Postfix; the link's token is minted now.
        let postfix = Postfix::start();
        let mut mailer = postfix.mailer_settings();
        mailer.web_base_url = base.clone();
        let dispatcher = Dispatcher::new(app.engine(), mailer, &root().join("templates")).unwrap();
        assert_eq!(dispatcher.dispatch_due().await.unwrap().sent, 2);
        let sent = delivered(&postfix, 2);
        let (_, link_subject, link_text) = sent.iter().find(|(to, ..)| to == "jane.smith@nhs.net").unwrap();
        let (_, username_subject, username_text) = sent.iter().find(|(to, ..)| to == PRIMARY_USER).unwrap();
        let path = link_path(link_text);
        let token = path.trim_start_matches("/credential/").to_string();
        assert!(token.len() >= 40, "{token}");
        assert!(link_text.contains(&format!("{base}{path}")), "{link_text}");
        // The username is never in the same message as the password's link.
        assert!(
            !link_text.contains("OE200001") && !link_subject.contains("OE200001"),
            "{link_text}"
        );
        assert!(username_text.contains("OE200001"), "{username_text}");
        assert!(username_subject.contains("OE200001"), "{username_subject}");
        assert!(!username_text.contains("/credential/"), "{username_text}");

        // The link's page shows a button (a mail scanner's prefetch spends nothing).
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let page = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let page = page.text().await.unwrap();
        assert!(page.contains("Show my password"), "{page}");
        assert!(!page.contains("id=\"secret\""), "{page}");
        let again = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(again.status(), 200, "looking does not spend the link");
        let page = again.text().await.unwrap();

        // Pressed: the password, once.
        let shown = client
            .post(format!("{base}{path}"))
            .form(&[("csrf", csrf(&page))])
            .send()
            .await
            .unwrap();
        let status = shown.status();
        let shown = shown.text().await.unwrap();
        assert_eq!(status, 200, "{shown}");
        let at = shown.find("id=\"secret\"").expect("the password")
            + shown[shown.find("id=\"secret\"").unwrap()..].find('>').unwrap()
            + 1;
        let secret = shown[at..].split('<').next().unwrap().trim().to_string();
        let policy = CredentialPolicy {
            kind: CredentialKind::Password,
            min_length: 14,
            max_length: 14,
            lifetime_days: 30,
        };
        assert_eq!(weakness(&policy, &secret), None, "{secret}");
        assert!(!shown.contains("OE200001"), "the page shows no username");

        // Never again: not by the page, not by pressing again.
        let gone = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(gone.status(), 410);
        let gone = gone.text().await.unwrap();
        assert!(gone.contains("has been used"), "{gone}");
        let refused = client
            .post(format!("{base}{path}"))
            .form(&[("csrf", csrf(&page))])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 410);
        assert!(!refused.text().await.unwrap().contains(&secret));
        assert!(app.reveal_credential(&token).await.unwrap().is_none());
        let kinds = app.event_kinds(&reference).await;
        assert!(kinds.contains(&EventKind::CredentialShown), "{kinds:?}");

        // The caseworker sees where the link went and that it was opened: never the password.
        let mut caseworker = crate::web::Browser::new(&app.engine()).await;
        caseworker
            .sign_in_as(&app.engine(), "casey@nhs.net", ActorRole::Caseworker)
            .await;
        let case_page = caseworker.get(&format!("/cases/{reference}")).await;
        assert!(case_page.body.contains("Password issued"), "{}", case_page.body);
        assert!(case_page.body.contains("jane.smith@nhs.net"));
        assert!(case_page.body.contains("opened "), "{}", case_page.body);
        assert!(!case_page.body.contains(&secret));
        // Replacing it needs a reason, like every decision in the log.
        let refused = caseworker
            .post(
                &format!("/cases/{reference}/credential"),
                &[("csrf", case_page.csrf().as_str()), ("version", ""), ("reason", " ")],
            )
            .await;
        assert_eq!(refused.status, axum::http::StatusCode::BAD_REQUEST, "{}", refused.body);
        assert!(refused.body.contains("Say why the password is replaced"));

        // Kept nowhere: no column of any table, no outbox row, no log line holds the secret or
        // the link's token; the token only as its hash, the secret not even sealed any more.
        let stored = everything_stored(&app).await;
        let hex_secret = hex::encode(secret.as_bytes());
        for needle in [
            secret.as_str(),
            hex_secret.as_str(),
            &hex_secret.to_uppercase(),
            token.as_str(),
        ] {
            assert!(!stored.contains(needle), "the database holds {needle}");
        }
        assert!(
            stored.contains(&countersign::mail::sha256_hex(token.as_bytes())),
            "the token's hash is kept"
        );
        let credentials = credentials_of(&app, &reference).await;
        assert_eq!(credentials.len(), 1);
        assert!(
            !credentials[0].waiting && credentials[0].shown_at.is_some(),
            "{credentials:?}"
        );
        for mail in app.outbox(&reference).await {
            let row = format!("{mail:?}");
            assert!(!row.contains(&secret) && !row.contains(&token), "{row}");
        }
        let logged = logs.text();
        assert!(logged.contains("mail sent"), "the logs were captured");
        assert!(!logged.contains(&secret), "a log line holds the secret");
        assert!(!logged.contains(&token), "a log line holds the link's token");
    })
    .await;
}

#[tokio::test]
async fn a_link_expires_a_resent_link_voids_the_old_one_and_a_password_needs_an_nhs_mailbox() {
    on_both_backends_clocked(|app: TestApp, clock: Arc<TestClock>| async move {
        the_primary_user(&app).await;

        // No NHS mailbox to send it to: the move is refused, nothing is issued or queued.
        let refused = provisioned(&app, 2, "jane.smith@gmail.com").await.unwrap_err();
        assert!(
            matches!(&refused, EngineError::CredentialUndeliverable { why, .. } if why.contains("not an NHS mailbox")),
            "{refused}"
        );
        let mut conn = app.db().pool.acquire().await.unwrap();
        let cases = storage::list_cases(&mut conn, None, 10).await.unwrap();
        drop(conn);
        assert_eq!(cases[0].state, "authorised");
        assert!(app.outbox(&cases[0].reference).await.is_empty());

        let reference = provisioned(&app, 3, "sam.jones@nhs.net").await.unwrap();
        let postfix = Postfix::start();
        let dispatcher =
            || Dispatcher::new(app.engine(), postfix.mailer_settings(), &root().join("templates")).unwrap();
        // The first send of the link crashes between handing it to Postfix and marking it sent.
        let sent = Arc::new(tokio::sync::Notify::new());
        let signal = sent.clone();
        let hook: countersign::outbox::AfterSendHook = Arc::new(move |_| {
            let signal = signal.clone();
            Box::pin(async move {
                signal.notify_one();
                std::future::pending::<()>().await;
            })
        });
        let doomed = dispatcher().with_after_send_hook(hook);
        let task = tokio::spawn(async move { doomed.dispatch_due().await });
        sent.notified().await;
        task.abort();
        let _ = task.await;
        let first = delivered(&postfix, 1);
        let first_token = link_path(&first[0].2).trim_start_matches("/credential/").to_string();
        assert_eq!(
            app.credential_link_state(&first_token).await.unwrap(),
            countersign::engine::credentials::LinkState::Open
        );

        // The claim lapses and another dispatcher sends it again, with a new link that voids
        // the old (and then the username).
        clock.advance(chrono::Duration::minutes(5));
        assert_eq!(dispatcher().dispatch_due().await.unwrap().sent, 2);
        let all = delivered(&postfix, 3);
        let tokens: Vec<String> = all
            .iter()
            .filter(|(to, ..)| to == "sam.jones@nhs.net")
            .map(|(.., text)| link_path(text).trim_start_matches("/credential/").to_string())
            .collect();
        assert_eq!(tokens.len(), 2);
        let second_token = tokens.iter().find(|t| **t != first_token).unwrap().clone();
        assert!(
            app.reveal_credential(&first_token).await.unwrap().is_none(),
            "the old link is void"
        );

        // 73 hours on, the newer link has expired too: the secret stays sealed, unseen.
        clock.advance(chrono::Duration::hours(73));
        assert!(app.reveal_credential(&second_token).await.unwrap().is_none());
        let credentials = credentials_of(&app, &reference).await;
        assert!(
            credentials[0].waiting && credentials[0].shown_at.is_none(),
            "{credentials:?}"
        );

        // The user asks again: a caseworker withdraws it and issues a new one, saying why.
        let casey = person("casey");
        let unexplained = app
            .replace_credential(&reference, &casey, "  ", None)
            .await
            .unwrap_err();
        assert!(
            matches!(unexplained, EngineError::ReplacementUnexplained),
            "{unexplained}"
        );
        let not_issued = app
            .replace_credential(&cases[0].reference, &casey, "asked again", None)
            .await
            .unwrap_err();
        assert!(
            matches!(not_issued, EngineError::NoCredentialToReplace { .. }),
            "{not_issued}"
        );
        app.replace_credential(&reference, &casey, "the link expired before Sam opened it", None)
            .await
            .unwrap();
        let credentials = credentials_of(&app, &reference).await;
        assert_eq!(credentials.len(), 2);
        assert!(!credentials[0].waiting, "the first is withdrawn");
        assert!(credentials[1].waiting && credentials[1].link_expires_at.is_none());
        let events = app.events(&reference).await;
        assert!(
            events.iter().any(|e| e.kind == EventKind::CredentialIssued
                && e.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("the link expired before Sam opened it")
                        && r.contains("1 unseen password(s) withdrawn"))),
            "{events:?}"
        );
        assert_eq!(dispatcher().dispatch_due().await.unwrap().sent, 2);
        let all = delivered(&postfix, 5);
        let newest = all
            .iter()
            .filter(|(to, ..)| to == "sam.jones@nhs.net")
            .map(|(.., text)| link_path(text).trim_start_matches("/credential/").to_string())
            .find(|t| !tokens.contains(t))
            .expect("a third link");
        assert!(app.reveal_credential(&second_token).await.unwrap().is_none());
        let revealed = app.reveal_credential(&newest).await.unwrap().expect("the new password");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&revealed.secret).len(), 14);
    })
    .await;
}

#[tokio::test]
async fn the_ledger_refuses_a_credential_issued_before_on_either_database() {
    on_both_backends_clocked(|app: TestApp, _clock: Arc<TestClock>| async move {
        the_primary_user(&app).await;
        let reference = provisioned(&app, 4, "ann.lee@nhs.net").await.unwrap();
        let mut conn = app.db().pool.acquire().await.unwrap();
        let case = storage::case_by_reference(&mut conn, &reference)
            .await
            .unwrap()
            .unwrap();
        let fingerprint: String = sqlx::query("SELECT fingerprint FROM credentials WHERE case_id = $1")
            .bind(case.id)
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert!(storage::fingerprint_issued(&mut conn, &fingerprint).await.unwrap());
        assert!(!storage::fingerprint_issued(&mut conn, "0000").await.unwrap());
        let again = storage::NewCredential {
            name: "cred-again".into(),
            fingerprint,
            sealed: "x".into(),
            sent_to: "someone@nhs.net".into(),
            expires_at: 0,
        };
        assert!(
            storage::insert_credentials(&mut conn, case.id, &[again], 0)
                .await
                .is_err(),
            "the same fingerprint twice is refused by the database itself"
        );
    })
    .await;
}
