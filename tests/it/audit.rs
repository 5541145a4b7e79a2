//! The hash-chained event log, on both backends: an untouched log verifies; an edit, a
//! deletion, a reordering, a whole case's chain removed and an altered anchor are each found,
//! and reported where they are. The tampering is done as an attacker with the database's
//! owner rights would do it: the append-only triggers dropped first, then plain SQL.

use countersign::audit;
use countersign::storage::{self, Backend};
use countersign::workflow::{Actor, ActorRole, TransitionRequest};

use crate::common::{TestApp, on_both_backends};

fn caseworker(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: ActorRole::Caseworker,
    }
}

/// Two cases: a form taken in, validated and authorised (three events, then the
/// authorisation's), and a message with no form.
async fn two_cases(app: &TestApp) -> (String, String) {
    let form = app.receive_fixture("mail/gp_form.eml").await;
    app.transition(
        &form,
        &TransitionRequest {
            to: "authorised".into(),
            ..TransitionRequest::default()
        },
        &caseworker("bob"),
    )
    .await
    .expect("authorised");
    let other = app.receive_fixture("mail/no_form.eml").await;
    (form, other)
}

/// Drops the append-only triggers, as someone with the database owner's rights can.
async fn drop_guards(app: &TestApp) {
    let sql = match app.db().backend {
        Backend::Sqlite => {
            "DROP TRIGGER case_events_append_only_update; DROP TRIGGER case_events_append_only_delete; \
             DROP TRIGGER audit_anchors_append_only_update; DROP TRIGGER audit_anchors_append_only_delete"
        }
        Backend::Postgres => {
            "DROP TRIGGER case_events_append_only ON case_events; DROP TRIGGER audit_anchors_append_only ON audit_anchors"
        }
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&app.db().pool)
        .await
        .expect("dropping the triggers");
}

async fn tamper(app: &TestApp, sql: &str, case_id: i64) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(case_id)
        .execute(&app.db().pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn findings(app: &TestApp) -> Vec<(String, String)> {
    let report = audit::verify(app.db()).await.expect("verify runs");
    report.findings.into_iter().map(|f| (f.place, f.problem)).collect()
}

#[tokio::test]
async fn an_untouched_log_verifies_and_its_events_are_chained() {
    on_both_backends(|app| async move {
        let (form, other) = two_cases(&app).await;
        let anchor = audit::write_anchor(app.db(), app.now_ms()).await.unwrap();
        let report = audit::verify(app.db()).await.unwrap();
        assert!(report.intact(), "{:?}", report.findings);
        assert_eq!(report.cases, 2);
        let expected_events = app.events(&form).await.len() + app.events(&other).await.len();
        assert_eq!(report.events, expected_events as u64);
        assert_eq!(report.anchors, 1);
        assert_eq!(report.latest_anchor.as_deref(), Some(anchor.hash.as_str()));
        assert!(
            anchor
                .heads_json
                .contains(&format!("\"case_id\":{}", app.case(&form).await.id))
        );

        // The form's events are numbered 1, 2, … and each links to the one before.
        let case = app.case(&form).await;
        let mut conn = app.db().pool.acquire().await.unwrap();
        let chain = storage::chain_of(&mut conn, case.id).await.unwrap();
        assert!(chain.len() >= 3, "{chain:?}");
        let mut prev = String::new();
        for (index, stored) in chain.iter().enumerate() {
            assert_eq!(stored.seq, Some(index as i64 + 1));
            let hash = audit::chain::event_hash(case.id, index as i64 + 1, &prev, &stored.event);
            assert_eq!(stored.hash.as_deref(), Some(hash.as_str()));
            prev = hash;
        }

        // The append-only guard still stands in the way of an ordinary UPDATE or DELETE.
        let edit = sqlx::query("UPDATE case_events SET reason = 'x' WHERE case_id = $1")
            .bind(case.id)
            .execute(&app.db().pool)
            .await;
        assert!(edit.is_err(), "the trigger refuses edits");
        let delete = sqlx::query("DELETE FROM case_events WHERE case_id = $1")
            .bind(case.id)
            .execute(&app.db().pool)
            .await;
        assert!(delete.is_err(), "the trigger refuses deletions");
    })
    .await;
}

#[tokio::test]
async fn an_edited_event_is_found_where_it_is() {
    on_both_backends(|app| async move {
        let (form, _) = two_cases(&app).await;
        let case_id = app.case(&form).await.id;
        drop_guards(&app).await;
        tamper(
            &app,
            "UPDATE case_events SET actor = 'someone else' WHERE case_id = $1 AND seq = 2",
            case_id,
        )
        .await;
        assert_eq!(
            findings(&app).await,
            vec![(
                form.clone(),
                "event #2 was altered: its contents do not match its hash".into()
            )]
        );
    })
    .await;
}

#[tokio::test]
async fn a_deleted_event_is_found_where_it_was() {
    on_both_backends(|app| async move {
        let (form, _) = two_cases(&app).await;
        let case_id = app.case(&form).await.id;
        drop_guards(&app).await;
        tamper(&app, "DELETE FROM case_events WHERE case_id = $1 AND seq = 2", case_id).await;
        assert_eq!(
            findings(&app).await,
            vec![(form.clone(), "event #2 is missing: deleted".into())]
        );
        // The last one too (#3): the case row still says how long its chain was.
        assert_eq!(
            app.events(&form).await.len(),
            2,
            "three events (created, validated, authorised), one gone"
        );
        tamper(&app, "DELETE FROM case_events WHERE case_id = $1 AND seq = 3", case_id).await;
        assert_eq!(
            findings(&app).await,
            vec![(form.clone(), "events #2 to #3 are missing: deleted".into())]
        );
    })
    .await;
}

#[tokio::test]
async fn a_reordered_log_is_found_where_it_is() {
    on_both_backends(|app| async move {
        let (form, _) = two_cases(&app).await;
        let case_id = app.case(&form).await.id;
        let mut conn = app.db().pool.acquire().await.unwrap();
        let chain = storage::chain_of(&mut conn, case_id).await.unwrap();
        drop(conn);
        drop_guards(&app).await;
        // Swap rows 2 and 3 whole (everything but the row id), so that reading the log in
        // the order it was written shows #3 before #2.
        tamper(&app, "UPDATE case_events SET seq = -seq WHERE case_id = $1", case_id).await;
        for (row, from) in [(&chain[1], &chain[2]), (&chain[2], &chain[1])] {
            sqlx::query(
                "UPDATE case_events SET seq = $1, hash = $2, at = $3, actor = $4, actor_role = $5, kind = $6, \
                 transition = $7, from_state = $8, to_state = $9, reason = $10, data = $11 WHERE id = $12",
            )
            .bind(from.seq)
            .bind(from.hash.as_deref())
            .bind(from.event.at)
            .bind(&from.event.actor)
            .bind(&from.event.actor_role)
            .bind(from.event.kind.as_str())
            .bind(&from.event.transition)
            .bind(&from.event.from_state)
            .bind(&from.event.to_state)
            .bind(&from.event.reason)
            .bind(&from.event.data)
            .bind(row.id)
            .execute(&app.db().pool)
            .await
            .unwrap();
        }
        tamper(
            &app,
            "UPDATE case_events SET seq = -seq WHERE case_id = $1 AND seq < 0",
            case_id,
        )
        .await;
        assert_eq!(
            findings(&app).await,
            vec![(
                form.clone(),
                "event #2 is out of order: it is stored after event #3".into()
            )]
        );
    })
    .await;
}

#[tokio::test]
async fn a_whole_chain_removed_after_an_anchor_is_found_by_the_anchor() {
    on_both_backends(|app| async move {
        let (_, other) = two_cases(&app).await;
        let case = app.case(&other).await;
        let anchor = audit::write_anchor(app.db(), app.now_ms()).await.unwrap();
        drop_guards(&app).await;
        // Every event of the case gone, and the case row made to agree.
        tamper(&app, "DELETE FROM case_events WHERE case_id = $1", case.id).await;
        tamper(&app, "UPDATE cases SET chain_seq = 0 WHERE id = $1", case.id).await;
        let found = findings(&app).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, other);
        assert!(
            found[0]
                .1
                .contains(&format!("vouched for by anchor #{}, is gone: deleted", anchor.id)),
            "{found:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_altered_or_removed_anchor_is_found() {
    on_both_backends(|app| async move {
        two_cases(&app).await;
        let first = audit::write_anchor(app.db(), app.now_ms()).await.unwrap();
        let second = audit::write_anchor(app.db(), app.now_ms() + 1).await.unwrap();
        assert_eq!(second.prev_hash.as_deref(), Some(first.hash.as_str()));
        drop_guards(&app).await;
        tamper(&app, "UPDATE audit_anchors SET heads = '[]' WHERE id = $1", first.id).await;
        assert_eq!(
            findings(&app).await,
            vec![(
                format!("anchor #{}", first.id),
                "was altered: its contents do not match its hash".into()
            )]
        );
        tamper(&app, "DELETE FROM audit_anchors WHERE id = $1", first.id).await;
        assert_eq!(
            findings(&app).await,
            vec![(
                format!("anchor #{}", second.id),
                "does not follow the anchor before it: an anchor was deleted or replaced".into()
            )]
        );
    })
    .await;
}

#[tokio::test]
async fn events_written_before_the_chain_are_sealed_at_start_up() {
    on_both_backends(|app| async move {
        let (form, _) = two_cases(&app).await;
        let case_id = app.case(&form).await.id;
        drop_guards(&app).await;
        // As the migration leaves a log written before the chain: numbered, not hashed.
        tamper(&app, "UPDATE case_events SET hash = NULL WHERE case_id = $1", case_id).await;
        let found = findings(&app).await;
        assert!(found.iter().any(|(_, p)| p.contains("never sealed")), "{found:?}");
        let sealed = audit::seal_unsealed(app.db()).await.unwrap();
        assert_eq!(sealed as usize, app.events(&form).await.len());
        assert_eq!(findings(&app).await, vec![]);
        // New events follow the sealed ones.
        app.transition(
            &form,
            &TransitionRequest {
                to: "withdrawn".into(),
                reason: Some("the practice withdrew it".into()),
                ..TransitionRequest::default()
            },
            &caseworker("bob"),
        )
        .await
        .expect("withdrawn");
        assert_eq!(findings(&app).await, vec![]);
    })
    .await;
}

#[tokio::test]
async fn an_anchor_is_written_on_a_connection_that_is_closed_after() {
    // The first anchor of a large database binds every chain's head (about 100 MB at a million
    // cases); a PostgreSQL connection keeps the buffers it grew, so the connection it was
    // written on must not go back to the pool to sit idle with them.
    on_both_backends(|app| async move {
        two_cases(&app).await;
        let pool = &app.db().pool;
        let held: Vec<_> = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
        drop(held);
        let before = pool.size();
        assert!(before >= 3, "{before}");
        let first = audit::write_anchor(app.db(), app.now_ms()).await.unwrap();
        let mut waited = 0;
        while pool.size() >= before && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            waited += 1;
        }
        assert_eq!(pool.size(), before - 1, "the anchor's connection is closed");
        // The next anchor starts from when the last was written (read alone, not with every
        // anchor's heads) and chains to it.
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            storage::last_anchor(&mut conn).await.unwrap(),
            Some(storage::LastAnchor {
                at: first.at,
                hash: first.hash.clone()
            })
        );
        drop(conn);
        let second = audit::write_anchor(app.db(), app.now_ms() + 1).await.unwrap();
        assert_eq!(second.prev_hash.as_deref(), Some(first.hash.as_str()));
        assert_eq!(second.since, (first.at - audit::ANCHOR_OVERLAP_MS).max(0));
    })
    .await;
}
