//! Staff sign-in through a real OpenID Connect provider (oidc-provider from the npm registry,
//! started on loopback by `tests/oidc/provider.mjs`), on both backends: a good sign-in, and
//! the refusals: a replayed `state`, someone the provider knows but Countersign does not, and
//! ID tokens with the wrong audience, expired, or signed by a stranger's key.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use countersign::config::{OidcClaim, OidcSettings};
use countersign::web::AppState;
use countersign::workflow::ActorRole;
use reqwest::StatusCode;

use crate::common::{TestApp, on_both_backends, root};

const CLIENT_ID: &str = "countersign";
const CLIENT_SECRET: &str = "a-test-client-secret";

/// The provider, running as a child process for as long as this lives.
struct TestProvider {
    child: Child,
    issuer: String,
    http: reqwest::Client,
}

impl TestProvider {
    fn start(redirect_uri: &str) -> TestProvider {
        let script = root().join("tests/oidc/provider.mjs");
        assert!(
            root().join("tests/oidc/node_modules/oidc-provider").exists(),
            "run `npm ci --prefix tests/oidc` first (.ci/run does)"
        );
        let mut child = Command::new("node")
            .arg(&script)
            .args([CLIENT_ID, CLIENT_SECRET, redirect_uri])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the test provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the provider says where it listens");
        let issuer = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("unexpected first line from the provider: {line}"))
            .to_string();
        TestProvider {
            child,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    /// Who the next sign-in at the provider completes as.
    async fn sign_in_as(&self, sub: &str, email: &str) {
        let url = format!("{}/test/account?sub={sub}&email={email}", self.issuer);
        assert!(self.http.post(url).send().await.unwrap().status().is_success());
    }

    /// How the provider spoils its next ID tokens (`none` to stop).
    async fn tamper(&self, mode: &str) {
        let url = format!("{}/test/tamper?mode={mode}", self.issuer);
        assert!(self.http.post(url).send().await.unwrap().status().is_success());
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a browser ended up: the last answer, and the callback address it passed through.
struct Journey {
    status: StatusCode,
    location: Option<String>,
    body: String,
    callback: Option<String>,
}

/// A browser (its own cookie jar) that starts signing in at Countersign and follows every
/// redirect, across the provider and back.
async fn sign_in(base: &str, start: &str) -> (reqwest::Client, Journey) {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let journey = follow(&browser, base, format!("{base}{start}")).await;
    (browser, journey)
}

async fn follow(browser: &reqwest::Client, base: &str, mut url: String) -> Journey {
    let mut callback = None;
    for _ in 0..12 {
        if url.starts_with(&format!("{base}/sign-in/oidc/callback")) {
            callback = Some(url.clone());
        }
        let response = browser.get(&url).send().await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        // Countersign's own landing page is where the journey ends.
        let back_home = location
            .as_deref()
            .is_some_and(|l| l.starts_with('/') && !l.starts_with("//"))
            && url.starts_with(base);
        match location {
            Some(to) if status.is_redirection() && !back_home => {
                url = if to.starts_with("http") {
                    to
                } else {
                    format!("{}{to}", origin(&url))
                };
            }
            location => {
                let body = response.text().await.unwrap_or_default();
                return Journey {
                    status,
                    location,
                    body,
                    callback,
                };
            }
        }
    }
    panic!("too many redirects signing in");
}

fn origin(url: &str) -> String {
    let parsed = url::Url::parse(url).unwrap();
    format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap())
        + &parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
}

/// Serves the app on a loopback port with sign-in through `provider`; its address.
async fn serve(
    app: &TestApp,
    listener: tokio::net::TcpListener,
    base: &str,
    issuer: &str,
    match_claim: OidcClaim,
) -> tokio::sync::watch::Sender<bool> {
    let mut state = AppState::new(app.engine(), &root().join("templates"), false, base.into())
        .await
        .unwrap();
    state.oidc = Some(
        countersign::web::oidc::OidcSignIn::new(
            OidcSettings {
                issuer: issuer.into(),
                client_id: CLIENT_ID.into(),
                client_secret: Some(CLIENT_SECRET.to_string().into()),
                match_claim,
                label: "Sign in with NHS Care Identity Service".into(),
            },
            base,
        )
        .unwrap(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(countersign::web::serve_on(state, listener, stopped));
    stop
}

#[tokio::test]
async fn staff_sign_in_through_a_real_openid_connect_provider_and_bad_tokens_are_refused() {
    on_both_backends(|app| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // A second instance, that matches accounts by the provider's subject instead.
        let by_subject = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let subject_base = format!("http://{}", by_subject.local_addr().unwrap());
        let provider = TestProvider::start(&format!(
            "{base}/sign-in/oidc/callback,{subject_base}/sign-in/oidc/callback"
        ));
        let stop = serve(&app, listener, &base, &provider.issuer, OidcClaim::Email).await;
        let stop_subject = serve(&app, by_subject, &subject_base, &provider.issuer, OidcClaim::Subject).await;
        let mut conn = app.db().pool.acquire().await.unwrap();
        countersign::users::add(&mut conn, "alice@nhs.net", "Alice", ActorRole::Caseworker, app.now_ms())
            .await
            .unwrap();
        drop(conn);

        // The sign-in page offers the provider.
        let page = reqwest::get(format!("{base}/sign-in"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("Sign in with NHS Care Identity Service"), "{page}");

        // A good sign-in: through the provider and back, into the queue the page asked for.
        provider.sign_in_as("alice-cis2-uuid", "alice@nhs.net").await;
        let (browser, journey) = sign_in(&base, "/sign-in/oidc?next=/%3Fstatus%3Dall").await;
        assert_eq!(journey.status, StatusCode::SEE_OTHER, "{}", journey.body);
        assert_eq!(journey.location.as_deref(), Some("/?status=all"));
        let queue = browser.get(format!("{base}/?status=all")).send().await.unwrap();
        assert_eq!(queue.status(), StatusCode::OK);
        assert!(queue.text().await.unwrap().contains("Sign out"), "signed in");
        // Her role is her account's (a caseworker), whatever the provider says of her.
        let reports = browser.get(format!("{base}/reports")).send().await.unwrap();
        assert_eq!(reports.status(), StatusCode::FORBIDDEN);

        // The same answer from the provider, replayed: its state was taken already.
        let replayed = journey.callback.expect("the journey came back through the callback");
        let (_, replay) = sign_in(&base, replayed.strip_prefix(&base).unwrap()).await;
        assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
        assert!(replay.body.contains("expired or was used already"), "{}", replay.body);

        // Someone the provider knows, but who has no account here.
        provider.sign_in_as("bob-cis2-uuid", "bob@nhs.net").await;
        let (_, unknown) = sign_in(&base, "/sign-in/oidc").await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
        assert!(unknown.body.contains("no Countersign account"), "{}", unknown.body);

        // ID tokens Countersign must not trust, though they come from the token endpoint.
        provider.sign_in_as("alice-cis2-uuid", "alice@nhs.net").await;
        for mode in ["wrong_audience", "expired", "bad_signature"] {
            provider.tamper(mode).await;
            let (browser, refused) = sign_in(&base, "/sign-in/oidc").await;
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{mode}: {}", refused.body);
            assert!(
                refused.body.contains("could not be trusted"),
                "{mode}: {}",
                refused.body
            );
            let queue = browser.get(format!("{base}/")).send().await.unwrap();
            assert!(queue.status().is_redirection(), "{mode}: not signed in");
        }
        provider.tamper("none").await;
        let (_, again) = sign_in(&base, "/sign-in/oidc").await;
        assert_eq!(
            again.status,
            StatusCode::SEE_OTHER,
            "good tokens are accepted again: {}",
            again.body
        );

        // Matched by subject: only once an admin has matched the subject to the account.
        let (_, unmatched) = sign_in(&subject_base, "/sign-in/oidc").await;
        assert_eq!(unmatched.status, StatusCode::UNAUTHORIZED, "{}", unmatched.body);
        let mut conn = app.db().pool.acquire().await.unwrap();
        assert!(
            countersign::storage::set_oidc_subject(&mut conn, "alice@nhs.net", Some("alice-cis2-uuid"))
                .await
                .unwrap()
        );
        drop(conn);
        let (_, matched) = sign_in(&subject_base, "/sign-in/oidc").await;
        assert_eq!(matched.status, StatusCode::SEE_OTHER, "{}", matched.body);
        let _ = stop.send(true);
        let _ = stop_subject.send(true);
    })
    .await;
}

#[tokio::test]
async fn password_sign_in_can_be_switched_off() {
    on_both_backends(|app| async move {
        let mut state = AppState::new(
            app.engine(),
            &root().join("templates"),
            false,
            "http://countersign.test".into(),
        )
        .await
        .unwrap();
        state.password_sign_in = false;
        let mut browser = crate::web::Browser::with_state(state);
        let page = browser.get("/sign-in").await;
        assert!(
            !page.body.contains("type=\"password\""),
            "no password field: {}",
            page.body
        );
        let refused = browser
            .post(
                "/sign-in",
                &[
                    ("csrf", "x"),
                    ("email", "alice@nhs.net"),
                    ("password", "river otter lantern"),
                ],
            )
            .await;
        assert_eq!(
            refused.status.as_u16(),
            403,
            "a password sign-in is refused: {}",
            refused.body
        );
        assert!(refused.body.contains("switched off"), "{}", refused.body);
    })
    .await;
}
