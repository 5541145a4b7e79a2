//! The `countersign` binary as an operator uses it, on SQLite and on PostgreSQL.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{TestDatabase, fixture, root};
use countersign::storage::Backend;

fn countersign(data_dir: &Path, database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(args)
        .current_dir(data_dir)
        .env("COUNTERSIGN_DATA_DIR", data_dir)
        .env("COUNTERSIGN_DATABASE_URL", database_url)
        .env("COUNTERSIGN_WORKFLOWS_DIR", root().join("workflows"))
        .env("COUNTERSIGN_TEMPLATES_DIR", root().join("templates"))
        .env("COUNTERSIGN_AUTHSERV_ID", crate::common::AUTHSERV_ID)
        .env("COUNTERSIGN_WEB_BIND", "127.0.0.1:0")
        .env_remove("COUNTERSIGN_CONFIG")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn is_reference(word: &str) -> bool {
    countersign::domain::CaseRef::parse(word).is_some_and(|r| r.as_str() == word)
}

#[tokio::test]
async fn ingest_list_show_and_transition_from_the_command_line() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("mail");
        std::fs::create_dir_all(&inbox).unwrap();
        for name in ["gp_form.eml", "no_form.eml"] {
            std::fs::write(inbox.join(name), fixture(&format!("mail/{name}"))).unwrap();
        }
        let out = stdout(&countersign(
            dir.path(),
            &database.url,
            &["ingest", inbox.to_str().unwrap()],
        ));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let first: Vec<&str> = lines[0].split_whitespace().collect();
        assert!(is_reference(first[0]), "{out}");
        assert_eq!(first[1], "primary_user_gp");
        let second: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &second[1..],
            &["(unclassified)", "needs_review", "no_form_found"],
            "{out}"
        );

        // Again: nothing new.
        let again = stdout(&countersign(
            dir.path(),
            &database.url,
            &["ingest", inbox.join("gp_form.eml").to_str().unwrap()],
        ));
        assert!(
            again.contains("(already ingested)") && again.starts_with(first[0]),
            "{again}"
        );

        let listed = stdout(&countersign(
            dir.path(),
            &database.url,
            &["cases", "list", "--state", "needs_review"],
        ));
        assert!(
            listed.contains(second[0]) && listed.contains("no_form_found"),
            "{listed}"
        );

        let queued = stdout(&countersign(
            dir.path(),
            &database.url,
            &["outbox", "list", "--status", "pending"],
        ));
        assert!(
            queued.contains(first[0]) && queued.contains("acknowledgement"),
            "{queued}"
        );
        let failed = stdout(&countersign(dir.path(), &database.url, &["outbox", "retry"]));
        assert!(failed.starts_with("0 failed"), "{failed}");

        let shown = stdout(&countersign(dir.path(), &database.url, &["case", "show", first[0]]));
        assert!(shown.contains("user_first_name") && shown.contains("Siân"), "{shown}");
        assert!(shown.contains("created") && shown.contains("-> received"), "{shown}");
        assert!(shown.contains("acknowledgement"), "{shown}");

        // Piped into a reader that stops early (as `| head -1` does), it stops quietly.
        let mut piped = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(["case", "show", first[0]])
            .current_dir(dir.path())
            .env("COUNTERSIGN_DATA_DIR", dir.path())
            .env("COUNTERSIGN_DATABASE_URL", &database.url)
            .env("COUNTERSIGN_WORKFLOWS_DIR", root().join("workflows"))
            .env("COUNTERSIGN_TEMPLATES_DIR", root().join("templates"))
            .env_remove("COUNTERSIGN_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(piped.stdout.take());
        let closed = piped.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&closed.stderr);
        assert!(!said.contains("panicked"), "a closed pipe is no panic: {said}");

        // `--as` names a real staff account, and acts with that account's role.
        let stranger = countersign(
            dir.path(),
            &database.url,
            &["case", "transition", first[0], "authorised", "--as", "nobody@nhs.net"],
        );
        assert!(!stranger.status.success());
        let said = String::from_utf8_lossy(&stranger.stderr);
        assert!(said.contains("no staff account"), "{said}");
        assert_eq!(said.lines().filter(|l| l.starts_with("error:")).count(), 1, "{said}");
        let first_line = said.lines().find(|l| l.starts_with("error:")).unwrap();
        let words: Vec<&str> = first_line.split(": ").collect();
        let mut unique = words.clone();
        unique.dedup();
        assert_eq!(words, unique, "no cause said twice: {first_line}");
        stdout(&countersign(
            dir.path(),
            &database.url,
            &["users", "add", "alice@nhs.net", "--role", "caseworker"],
        ));
        let refused = countersign(
            dir.path(),
            &database.url,
            &["case", "transition", first[0], "provisioned", "--as", "alice@nhs.net"],
        );
        assert!(!refused.status.success());
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(
            message.contains(first[0]) && message.contains("cannot move to provisioned"),
            "{message}"
        );

        let rejected = stdout(&countersign(
            dir.path(),
            &database.url,
            &[
                "case",
                "transition",
                second[0],
                "rejected",
                "--reason",
                "no form",
                "--as",
                "alice@nhs.net",
            ],
        ));
        assert_eq!(
            rejected.split_whitespace().collect::<Vec<_>>(),
            vec![second[0], "rejected"]
        );
        database.drop_database().await;
    }
}

#[test]
fn workflows_check_passes_on_the_shipped_files_and_names_a_bad_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let out = stdout(&countersign(dir.path(), &url, &["workflows", "check"]));
    assert_eq!(out.lines().filter(|l| l.starts_with("ok")).count(), 6, "{out}");

    let broken = dir.path().join("workflows");
    std::fs::create_dir_all(&broken).unwrap();
    let text = std::fs::read_to_string(root().join("workflows/primary_user_org.toml")).unwrap();
    std::fs::write(
        broken.join("primary_user_org.toml"),
        text.replacen("to = \"authorised\"", "to = \"approved\"", 1),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["workflows", "check"])
        .env("COUNTERSIGN_WORKFLOWS_DIR", &broken)
        .env("COUNTERSIGN_TEMPLATES_DIR", root().join("templates"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("primary_user_org.toml") && err.contains("transitions[") && err.contains("approved"),
        "{err}"
    );
}

#[test]
fn workflows_show_prints_states_and_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let out = stdout(&countersign(
        dir.path(),
        &url,
        &["workflows", "show", "additional_permissions"],
    ));
    assert!(
        out.contains("authorised") && out.contains("provision") && out.contains("remind_sender"),
        "{out}"
    );
}

#[test]
fn forms_generate_writes_a_blank_form_per_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let target = dir.path().join("forms");
    stdout(&countersign(
        dir.path(),
        &url,
        &["forms", "generate", target.to_str().unwrap()],
    ));
    // Each form is also drawn to PNG by an independent renderer (poppler's pdftoppm, which
    // `.ci/run` installs), for a person to look at: tests/output/form-<id>-<page>.png.
    let output = root().join("tests/output");
    std::fs::create_dir_all(&output).unwrap();
    for id in ["PU-GP-1", "PU-ORG-1", "AP-1"] {
        let pdf = target.join(format!("{id}.pdf"));
        let bytes = std::fs::read(&pdf).unwrap();
        let form = countersign::pdf::extract(&bytes, &[], Default::default()).unwrap();
        assert_eq!(form.get("form_id").and_then(|f| f.value.as_deref()), Some(id));
        let rendered = Command::new("pdftoppm")
            .args(["-png", "-r", "80"])
            .arg(&pdf)
            .arg(output.join(format!("form-{id}")))
            .output()
            .expect("pdftoppm (poppler-utils) renders the form");
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        for page in 1..=2 {
            let png = output.join(format!("form-{id}-{page}.png"));
            let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
            assert!(
                size > 5_000,
                "{}: a real page, not a blank one ({size} bytes)",
                png.display()
            );
        }
    }
}

#[test]
fn serve_once_ingests_the_drop_folder_and_moves_what_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let inbox = dir.path().join("inbox");
    stdout(&countersign(
        dir.path(),
        &url,
        &["samples", inbox.to_str().unwrap(), "--count", "4"],
    ));
    std::fs::write(inbox.join("garbage.eml"), fixture("mail/garbage.eml")).unwrap();
    std::fs::create_dir_all(inbox.join("new")).unwrap();
    std::fs::write(
        inbox.join("new").join("1700000000.M1.host"),
        fixture("mail/forwarded.eml"),
    )
    .unwrap();

    let out = stdout(&countersign(dir.path(), &url, &["serve", "--once"]));
    assert_eq!(
        out.lines()
            .filter(|l| l.split_whitespace().next().is_some_and(is_reference))
            .count(),
        6,
        "{out}"
    );
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert!(left.is_empty(), "every file was taken: {left:?}");
    assert_eq!(std::fs::read_dir(inbox.join("processed")).unwrap().count(), 6);

    // Without an SMTP server the acknowledgements are written to the mail folder.
    let sent: Vec<_> = std::fs::read_dir(dir.path().join("sent-mail"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!sent.is_empty(), "acknowledgements written as .eml files");
    let first = std::fs::read_to_string(sent[0].path()).unwrap();
    assert!(
        first.contains("Auto-Submitted: auto-replied") && first.contains("[CS-"),
        "{first}"
    );

    // A second run finds nothing new.
    let out = stdout(&countersign(dir.path(), &url, &["serve", "--once"]));
    assert_eq!(out.lines().count(), 0, "{out}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .args(["serve", "--interval", "1"])
        .current_dir(dir.path())
        .env("COUNTERSIGN_DATA_DIR", dir.path())
        .env("COUNTERSIGN_DATABASE_URL", &url)
        .env("COUNTERSIGN_WORKFLOWS_DIR", root().join("workflows"))
        .env("COUNTERSIGN_TEMPLATES_DIR", root().join("templates"))
        .env("COUNTERSIGN_WEB_BIND", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The drop folder and the web app both say they are up; wait for both. The reader stays
    // open until the process exits, so its last words do not hit a closed pipe.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !(seen.contains("watching") && seen.contains("web app on")) {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "serve stopped early: {seen}");
        seen.push_str(&line);
    }
    assert!(
        seen.contains("No staff accounts yet") && seen.contains("countersign users add"),
        "a fresh installation says how to create the first admin: {seen}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exited with {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn json_logs_carry_the_message_and_case_and_never_a_token() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("form.eml"), fixture("mail/gp_form.eml")).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .args(args)
            .current_dir(dir.path())
            .env("COUNTERSIGN_DATA_DIR", dir.path())
            .env("COUNTERSIGN_DATABASE_URL", &database.url)
            .env("COUNTERSIGN_WORKFLOWS_DIR", root().join("workflows"))
            .env("COUNTERSIGN_TEMPLATES_DIR", root().join("templates"))
            .env("COUNTERSIGN_AUTHSERV_ID", crate::common::AUTHSERV_ID)
            .env("COUNTERSIGN_LOG", "info")
            .env("COUNTERSIGN_LOG_FORMAT", "json")
            .env_remove("COUNTERSIGN_CONFIG")
            .output()
            .expect("the binary runs")
    };
    let ingested = run(&["ingest", "form.eml"]);
    assert!(
        ingested.status.success(),
        "{}",
        String::from_utf8_lossy(&ingested.stderr)
    );
    let logs = String::from_utf8_lossy(&ingested.stderr).into_owned();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let recorded = lines
        .iter()
        .find(|l| l["fields"]["message"] == "case recorded")
        .unwrap_or_else(|| panic!("no 'case recorded' line: {logs}"));
    assert!(
        is_reference(recorded["fields"]["reference"].as_str().unwrap()),
        "{recorded}"
    );
    assert!(recorded["fields"]["raw_message_id"].as_i64().is_some(), "{recorded}");
    assert_eq!(recorded["span"]["source"], "file:form.eml", "{recorded}");

    // A token made and used: it is printed once, on standard output, and logged nowhere.
    let made = run(&["tokens", "create", "--name", "reporting", "--role", "manager"]);
    let token = stdout(&made).trim().to_string();
    assert!(token.starts_with("cs_") && token.len() > 40, "{token}");
    assert!(!String::from_utf8_lossy(&made.stderr).contains(&token));
    let listed = stdout(&run(&["tokens", "list"]));
    assert!(
        listed.contains("reporting") && listed.contains("manager") && !listed.contains(&token),
        "{listed}"
    );
    stdout(&run(&["tokens", "revoke", "reporting"]));
    assert!(stdout(&run(&["tokens", "list"])).contains("revoked"));
    let again = run(&["tokens", "revoke", "reporting"]);
    assert!(!again.status.success(), "revoking twice says so");
    database.drop_database().await;
}

#[tokio::test]
async fn the_organisation_registry_is_imported_and_shown_from_the_command_line() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let database = TestDatabase::create(backend).await;
        let dir = tempfile::tempdir().unwrap();
        let samples = root().join("samples/ods");
        let gp = samples.join("epraccur-sample.csv");
        let orgs = samples.join("organisations-sample.csv");
        let said = stdout(&countersign(
            dir.path(),
            &database.url,
            &[
                "organisations",
                "import",
                "--gp-practices",
                gp.to_str().unwrap(),
                "--organisations",
                orgs.to_str().unwrap(),
            ],
        ));
        assert!(said.contains("epraccur: 51 organisation(s)"), "{said}");
        assert!(
            said.contains("the registry holds 62 organisation(s), 51 of them GP practices"),
            "{said}"
        );
        let said = stdout(&countersign(
            dir.path(),
            &database.url,
            &["organisations", "show", "A81050"],
        ));
        assert!(said.contains("GP practice, closed (closed 2025-03-31)"), "{said}");
        let said = stdout(&countersign(
            dir.path(),
            &database.url,
            &["organisations", "show", "ZZZ99"],
        ));
        assert!(said.contains("not in the registry"), "{said}");
        // A file with a bad row imports nothing, and says where.
        let bad = dir.path().join("bad.csv");
        std::fs::write(
            &bad,
            "OrgId,Name,Status,Roles\nRX1,TRUST,Active,RO197\nRX2,TRUST,Sometimes,RO197\n",
        )
        .unwrap();
        let output = countersign(
            dir.path(),
            &database.url,
            &["organisations", "import", "--organisations", bad.to_str().unwrap()],
        );
        assert!(!output.status.success());
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("line 3"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        database.drop_database().await;
    }
}
