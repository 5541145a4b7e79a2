//! The Open Exeter account register, imported from CSV on both databases: an idempotent
//! upsert that says what changed, with bad rows named by line and skipped.

use crate::common::on_both_backends;
use countersign::accounts::AccountStatus;
use countersign::cli::accounts::import_accounts;
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
        let first = import_accounts(&engine, FIRST.as_bytes(), "first.csv").await.unwrap();
        assert_eq!(first.added, vec!["OE100001", "OE100002"]);
        assert_eq!(first.bad_rows.len(), 1);
        assert_eq!(first.bad_rows[0].line, 4);
        assert!(
            first
                .report("first.csv")
                .contains("line 4: `not-a-code` is not an ODS code")
        );

        let again = import_accounts(&engine, FIRST.as_bytes(), "first.csv").await.unwrap();
        assert!(again.added.is_empty() && again.changed.is_empty(), "{again:?}");
        assert_eq!(again.unchanged, 2);

        let second = import_accounts(&engine, SECOND.as_bytes(), "second.csv").await.unwrap();
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
