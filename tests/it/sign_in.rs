//! Sign-in as an attacker would probe it: the same answer and the same work whether an account
//! exists, is invited, disabled or locked; an atomic count under parallel attempts; a stranger
//! cannot lock the real user out from elsewhere; and every session ends when the password,
//! the role or the account's status changes. On SQLite and on PostgreSQL.

use crate::common::on_both_backends;
use countersign::engine::Engine;
use countersign::users::{self, SignInRefusal};
use countersign::workflow::ActorRole;

const GOOD: &str = "river otter lantern";
const T0: i64 = 1_800_000_000_000;

/// An account with a password set, and one invited (no password yet).
async fn accounts(engine: &Engine) {
    let mut conn = engine.db().pool.acquire().await.unwrap();
    let (_, token) = users::add(&mut conn, "admin@nhs.net", "Admin", ActorRole::Admin, T0)
        .await
        .unwrap();
    users::set_password_with_token(&mut conn, &token, GOOD, T0)
        .await
        .unwrap();
    users::add(&mut conn, "invited@nhs.net", "Invited", ActorRole::Caseworker, T0)
        .await
        .unwrap();
}

async fn attempt(engine: &Engine, email: &str, password: &str, client: &str, at: i64) -> Result<(), SignInRefusal> {
    let mut conn = engine.db().pool.acquire().await.unwrap();
    users::authenticate(&mut conn, email, password, client, at)
        .await
        .unwrap()
        .map(|_| ())
}

#[tokio::test]
async fn unknown_invited_and_real_accounts_get_the_same_answers_for_the_same_work() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let mut answers = Vec::new();
        for email in ["admin@nhs.net", "invited@nhs.net", "nobody@nhs.net"] {
            let mut seen = Vec::new();
            // Two failures a second apart each, then one too soon: the same three answers.
            for (i, at) in [T0, T0 + 1_500, T0 + 2_000].into_iter().enumerate() {
                let before = users::argon2_checks();
                let answer = attempt(
                    &engine,
                    email,
                    "wrong password!",
                    &format!("10.0.0.{}", answers.len()),
                    at,
                )
                .await;
                assert_eq!(
                    users::argon2_checks() - before,
                    1,
                    "{email}, attempt {i}: one argon2 check"
                );
                seen.push(match answer {
                    Err(SignInRefusal::WrongCredentials) => "wrong",
                    Err(SignInRefusal::TooSoon { .. }) => "too soon",
                    Err(SignInRefusal::Locked { .. }) => "locked",
                    Ok(()) => "in",
                });
            }
            answers.push(seen);
        }
        assert_eq!(answers[0], vec!["wrong", "wrong", "too soon"]);
        assert_eq!(answers[0], answers[1], "invited looks like a real account");
        assert_eq!(answers[0], answers[2], "no account looks like a real account");
    })
    .await;
}

#[tokio::test]
async fn parallel_attempts_in_one_window_get_one_password_check() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let attempts = (0..12).map(|_| attempt(&engine, "admin@nhs.net", "wrong password!", "10.0.0.9", T0));
        let results = futures::future::join_all(attempts).await;
        let checked = results
            .iter()
            .filter(|r| matches!(r, Err(SignInRefusal::WrongCredentials)))
            .count();
        assert_eq!(checked, 1, "{results:?}");
    })
    .await;
}

#[tokio::test]
async fn a_stranger_who_locks_an_account_from_elsewhere_does_not_lock_its_owner_out() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let mut at = T0;
        let mut last = Ok(());
        for _ in 0..users::MAX_FAILED_ATTEMPTS {
            last = attempt(&engine, "admin@nhs.net", "guess guess guess", "203.0.113.7", at).await;
            at += 20_000;
        }
        assert!(matches!(last, Err(SignInRefusal::Locked { .. })), "{last:?}");
        assert!(matches!(
            attempt(&engine, "admin@nhs.net", GOOD, "203.0.113.7", at).await,
            Err(SignInRefusal::Locked { .. })
        ));
        assert_eq!(
            attempt(&engine, "admin@nhs.net", GOOD, "192.0.2.10", at).await,
            Ok(()),
            "the owner, elsewhere"
        );
    })
    .await;
}

#[tokio::test]
async fn one_client_guessing_across_many_accounts_is_locked_out() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let mut last = Ok(());
        for i in 0..users::MAX_FAILED_PER_CLIENT {
            last = attempt(
                &engine,
                &format!("person{i}@nhs.net"),
                "guess guess guess",
                "203.0.113.8",
                T0 + i,
            )
            .await;
        }
        assert!(matches!(last, Err(SignInRefusal::Locked { .. })), "{last:?}");
        assert!(matches!(
            attempt(&engine, "admin@nhs.net", GOOD, "203.0.113.8", T0 + 100).await,
            Err(SignInRefusal::Locked { .. })
        ));
    })
    .await;
}

/// Colleagues signing in from one address (an office, a load balancer in front of two
/// instances) never lock it: each success takes back its own claim on the address's count.
/// Failures still count, and a guesser who knows one password cannot reset their budget with
/// it: successes between failures leave the failures counted.
#[tokio::test]
async fn sign_ins_from_one_address_never_lock_it_but_failures_between_them_still_count() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let office = "198.51.100.7";
        for i in 0..users::MAX_FAILED_PER_CLIENT * 2 {
            let answer = attempt(&engine, "admin@nhs.net", GOOD, office, T0 + i).await;
            assert_eq!(answer, Ok(()), "sign-in {i} from the office");
        }
        // A guesser at another address: one short of the limit, a success, then one failure
        // more is the limit.
        let guesser = "203.0.113.9";
        let mut at = T0;
        for i in 0..users::MAX_FAILED_PER_CLIENT - 1 {
            at += 1;
            let answer = attempt(&engine, &format!("person{i}@nhs.net"), "guess guess guess", guesser, at).await;
            assert_eq!(answer, Err(SignInRefusal::WrongCredentials), "guess {i}");
        }
        at += 1;
        assert_eq!(attempt(&engine, "admin@nhs.net", GOOD, guesser, at).await, Ok(()));
        at += 1;
        let last = attempt(&engine, "someone@nhs.net", "guess guess guess", guesser, at).await;
        assert!(matches!(last, Err(SignInRefusal::Locked { .. })), "{last:?}");
        assert!(matches!(
            attempt(&engine, "admin@nhs.net", GOOD, guesser, at + 1).await,
            Err(SignInRefusal::Locked { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn a_new_password_a_role_change_and_disabling_each_end_every_session() {
    on_both_backends(|engine| async move {
        accounts(&engine).await;
        let mut conn = engine.db().pool.acquire().await.unwrap();
        let admin = users::find_by_email(&mut conn, "admin@nhs.net").await.unwrap().unwrap();
        let alive = |token: String| {
            let pool = engine.db().pool.clone();
            async move {
                let mut conn = pool.acquire().await.unwrap();
                users::session_user(&mut conn, &token, T0 + 1).await.unwrap().is_some()
            }
        };

        let copied = users::start_session(&mut conn, admin.id, T0).await.unwrap();
        let link = users::issue_password_token(&mut conn, admin.id, T0).await.unwrap();
        users::set_password_with_token(&mut conn, &link, "another fine password", T0)
            .await
            .unwrap();
        assert!(!alive(copied).await, "a copied cookie dies with the old password");

        let session = users::start_session(&mut conn, admin.id, T0).await.unwrap();
        users::set_role(&mut conn, "admin@nhs.net", ActorRole::Manager)
            .await
            .unwrap();
        assert!(!alive(session).await, "a role change ends sessions");

        let session = users::start_session(&mut conn, admin.id, T0).await.unwrap();
        let pending_link = users::issue_password_token(&mut conn, admin.id, T0).await.unwrap();
        users::set_disabled(&mut conn, "admin@nhs.net", true).await.unwrap();
        assert!(!alive(session).await);
        assert!(
            matches!(
                users::issue_password_token(&mut conn, admin.id, T0).await,
                Err(users::UserError::Disabled)
            ),
            "disabled accounts get no set-password links"
        );
        assert!(
            users::user_for_password_token(&mut conn, &pending_link, T0)
                .await
                .is_err(),
            "and an earlier link stops working"
        );
    })
    .await;
}
