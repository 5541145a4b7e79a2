//! The organisation registry, on both backends: imported from the sample ODS files, it decides
//! whether a form's organisation exists, is open and is a GP practice; before any import it
//! says nothing.

use std::collections::BTreeMap;

use countersign::registry::{self, RegistryLookup};
use countersign::storage;
use countersign::workflow::{Actor, ActorRole};

use crate::common::{TestApp, on_both_backends, root};

async fn import(app: &TestApp, gp_practices: bool, organisations: bool) {
    let mut conn = app.db().pool.acquire().await.unwrap();
    if gp_practices {
        let bytes = std::fs::read(root().join("samples/ods/epraccur-sample.csv")).unwrap();
        let orgs = registry::parse_gp_practices(&bytes, "epraccur-sample.csv").unwrap();
        storage::import_registry(&mut conn, &orgs, "epraccur", app.now_ms())
            .await
            .unwrap();
    }
    if organisations {
        let bytes = std::fs::read(root().join("samples/ods/organisations-sample.csv")).unwrap();
        let orgs = registry::parse_organisations(&bytes, "organisations-sample.csv").unwrap();
        storage::import_registry(&mut conn, &orgs, "organisations", app.now_ms())
            .await
            .unwrap();
    }
}

fn codes(case: &storage::CaseRecord) -> Vec<String> {
    case.findings.iter().map(|f| f.code.as_str().to_string()).collect()
}

async fn key_code(app: &TestApp, reference: &str, code: &str) -> Vec<String> {
    let alice = Actor {
        name: "alice".into(),
        role: ActorRole::Caseworker,
    };
    let values = BTreeMap::from([("org_ods_code".to_string(), code.to_string())]);
    let case = app.key_fields(reference, None, &values, &alice).await.expect("keyed");
    codes(&case)
}

#[tokio::test]
async fn the_registry_decides_whether_an_organisation_exists_is_open_and_is_a_practice() {
    on_both_backends(|app| async move {
        // Before any import: nothing to say (the fixture's A81001 passes on its pattern).
        let mut conn = app.db().pool.acquire().await.unwrap();
        assert_eq!(
            storage::registry_lookup(&mut conn, "A81001").await.unwrap(),
            RegistryLookup::NotLoaded
        );
        drop(conn);

        // Only the organisation file: A81001 is not in it.
        import(&app, false, true).await;
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let case = app.case(&reference).await;
        assert_eq!(codes(&case), vec!["organisation_unknown"]);
        assert_eq!(case.state, "needs_review");

        // Keyed to a closed practice, a walk-in centre, and then (the practice file imported)
        // to an open practice.
        import(&app, true, false).await;
        assert_eq!(key_code(&app, &reference, "A81050").await, vec!["organisation_closed"]);
        assert_eq!(
            key_code(&app, &reference, "B82005").await,
            vec!["organisation_type_mismatch"]
        );
        let case = app.case(&reference).await;
        assert!(
            case.findings[0]
                .message
                .contains("according to the NHS organisation register"),
            "{:?}",
            case.findings
        );
        assert_eq!(key_code(&app, &reference, "A81001").await, Vec::<String>::new());

        let mut conn = app.db().pool.acquire().await.unwrap();
        assert_eq!(storage::registry_counts(&mut conn).await.unwrap(), (62, 51));
        let RegistryLookup::Known(trust) = storage::registry_lookup(&mut conn, "rx9").await.unwrap() else {
            panic!("RX9 is in the sample");
        };
        assert!(!trust.gp_practice);
        assert_eq!(trust.status, registry::OrgStatus::Closed);
    })
    .await;
}

/// Puts a table out of reach (or back): a fault only a rename can make on both backends.
async fn rename(app: &TestApp, from: &str, to: &str) {
    let mut conn = app.db().pool.acquire().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER TABLE {from} RENAME TO {to}")))
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_registry_is_read_when_a_form_is_written_and_a_write_without_it_is_tried_again() {
    on_both_backends(|app| async move {
        // The organisation file only: the fixture's A81001 is unknown to it.
        import(&app, false, true).await;
        let raw = crate::common::fixture("mail/gp_form.eml");
        // The registry's table is out of reach while the form is read (a lost connection, a
        // migration in progress): reading a form needs no database...
        rename(&app, "ods_registry", "ods_registry_away").await;
        let prepared = app.prepare(&raw).await;
        // ...and back by the time the form is written: the write asks it then, so the case is
        // judged with it, not without it.
        rename(&app, "ods_registry_away", "ods_registry").await;
        let report = app.record(&raw, prepared, "test").await.expect("recorded");
        assert_eq!(report.cases[0].finding_codes, vec!["organisation_unknown"]);

        // Out of reach when written too: the write fails (the mail source keeps the email and
        // tries again), rather than judge the form without the registry.
        let raw = crate::common::form_email(
            app.workflows().get("primary_user_gp").unwrap(),
            7,
            &[],
            "someone@nhs.net",
            "registry-away@x",
            "Form",
        );
        rename(&app, "ods_registry", "ods_registry_away").await;
        let prepared = app.prepare(&raw).await;
        assert!(app.record(&raw, prepared, "test").await.is_err());
        rename(&app, "ods_registry_away", "ods_registry").await;
        let report = app
            .intake(&raw, "test")
            .await
            .expect("taken in once the registry is back");
        assert!(!report.already_ingested);
        assert_eq!(report.cases.len(), 1);
    })
    .await;
}
