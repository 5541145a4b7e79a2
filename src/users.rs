//! Staff accounts: argon2id password hashes, password rules, lockout after repeated failures,
//! one-time set-password links, and database sessions. No default or shared credentials exist:
//! the first admin gets a set-password link from `countersign users add`. The queries are in
//! [`crate::storage`]; this module holds the rules.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use rand::RngCore;
use sqlx::AnyConnection;

use crate::mail::sha256_hex;
pub use crate::storage::User;
use crate::storage::{self, StorageError};
use crate::workflow::ActorRole;

/// Failed sign-ins before an account locks.
pub const MAX_FAILED_ATTEMPTS: i64 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT_MS: i64 = 15 * 60 * 1000;

/// How long the next sign-in must wait after `failed` failures in a row, before the lockout:
/// one second, doubling each time (1, 2, 4, 8 s). Too short for a person to notice much; long
/// enough to make guessing at machine speed pointless.
pub fn backoff_ms(failed: i64) -> i64 {
    1000 << (failed - 1).clamp(0, 10)
}

/// Sessions last a working day.
pub const SESSION_MS: i64 = 10 * 60 * 60 * 1000;
/// Set-password links expire after a day.
pub const PASSWORD_TOKEN_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} is not a valid email address")]
    BadEmail(String),
    #[error("a user {0} already exists")]
    Exists(String),
    #[error("no user {0}")]
    NotFound(String),
    #[error("{0}")]
    WeakPassword(String),
    #[error("that link has expired or has already been used; ask an admin for a new one")]
    BadToken,
    #[error("could not hash the password: {0}")]
    Hash(String),
    #[error("staff accounts need an NHS address ({0} is not one); set staff_any_domain to allow others")]
    NotNhs(String),
    #[error("that account is disabled; enable it before sending it a set-password link")]
    Disabled,
}

/// Why a sign-in was refused. The same message is shown for an unknown address and a wrong
/// password, so the form does not reveal who has an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInRefusal {
    WrongCredentials,
    /// Too soon after a failed attempt (the back-off): the password was not checked.
    TooSoon {
        until: i64,
    },
    Locked {
        until: i64,
    },
}

/// A random, URL-safe token of 32 bytes.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The set-password link for a token, at the web app's address.
pub fn password_link(base_url: &str, token: &str) -> String {
    format!("{}/set-password/{token}", base_url.trim_end_matches('/'))
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Hash(e.to_string()))?;
    // Argon2::default() is argon2id with the RFC 9106 second recommended parameters.
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

thread_local! {
    /// How many argon2 checks this thread has made: sign-in must make exactly one per attempt,
    /// whoever the address belongs to (the tests count them, per thread so that parallel
    /// tests do not add to each other's count).
    static ARGON2_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub fn argon2_checks() -> u64 {
    ARGON2_CHECKS.with(|c| c.get())
}

fn verify_password(password: &str, hash: &str) -> bool {
    ARGON2_CHECKS.with(|c| c.set(c.get() + 1));
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// Passwords people choose under pressure; refused outright.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1234",
    "password12345",
    "password1",
    "password123",
    "123456789012",
    "qwertyuiopas",
    "letmein12345",
    "welcome12345",
    "nhspassword1",
    "changeme1234",
    "openexeter12",
    "iloveyou1234",
    "administrator",
    "passw0rdpassw0rd",
    "123456123456",
    "summer2026!!",
    "winter2026!!",
];

/// The password rules: at least 12 characters, not a well-known password, not the user's own
/// address or name, and not one character repeated.
pub fn check_password_rules(password: &str, email: &str) -> Result<(), UserError> {
    let lower = password.to_lowercase();
    let local = email.split('@').next().unwrap_or_default().to_lowercase();
    if password.chars().count() < 12 {
        return Err(UserError::WeakPassword(
            "Use at least 12 characters. A few unrelated words make a good password.".into(),
        ));
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err(UserError::WeakPassword(
            "That password is too well known. Choose another.".into(),
        ));
    }
    // Checked for address parts long enough to be a real clue.
    if local.len() >= 3 && (lower.contains(&local) || local.contains(&lower)) {
        return Err(UserError::WeakPassword(
            "Do not use your email address in your password.".into(),
        ));
    }
    let first = lower.chars().next().unwrap_or_default();
    if lower.chars().all(|c| c == first) {
        return Err(UserError::WeakPassword("Do not repeat one character.".into()));
    }
    Ok(())
}

pub async fn find_by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<User>, UserError> {
    Ok(storage::user_by_email(conn, &email.trim().to_lowercase()).await?)
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<User>, UserError> {
    Ok(storage::list_users(conn).await?)
}

/// Creates a user with no password, and returns a one-time set-password token.
pub async fn add(
    conn: &mut AnyConnection,
    email: &str,
    display_name: &str,
    role: ActorRole,
    now: i64,
) -> Result<(User, String), UserError> {
    let email = email.trim().to_lowercase();
    if crate::domain::EmailAddress::parse(&email).is_none() {
        return Err(UserError::BadEmail(email));
    }
    if find_by_email(conn, &email).await?.is_some() {
        return Err(UserError::Exists(email));
    }
    storage::insert_user(conn, &email, display_name, role, now).await?;
    let user = find_by_email(conn, &email)
        .await?
        .ok_or_else(|| UserError::NotFound(email.clone()))?;
    let token = issue_password_token(conn, user.id, now).await?;
    Ok((user, token))
}

/// A fresh one-time set-password token for a user (an admin's "reset"). Earlier unused ones
/// stop working.
pub async fn issue_password_token(conn: &mut AnyConnection, user_id: i64, now: i64) -> Result<String, UserError> {
    match storage::user_disabled(conn, user_id).await? {
        None => return Err(UserError::NotFound(user_id.to_string())),
        Some(true) => return Err(UserError::Disabled),
        Some(false) => {}
    }
    let token = random_token();
    storage::replace_password_token(
        conn,
        user_id,
        &sha256_hex(token.as_bytes()),
        now,
        now + PASSWORD_TOKEN_MS,
    )
    .await?;
    Ok(token)
}

/// The user a set-password token is for, if it is unused and unexpired.
pub async fn user_for_password_token(conn: &mut AnyConnection, token: &str, now: i64) -> Result<User, UserError> {
    storage::user_for_password_token_hash(conn, &sha256_hex(token.as_bytes()), now)
        .await?
        .ok_or(UserError::BadToken)
}

/// Sets a password through a one-time token, which is then spent.
pub async fn set_password_with_token(
    conn: &mut AnyConnection,
    token: &str,
    password: &str,
    now: i64,
) -> Result<User, UserError> {
    let user = user_for_password_token(conn, token, now).await?;
    check_password_rules(password, &user.email)?;
    let hash = hash_password(password)?;
    if !storage::spend_password_token(conn, &sha256_hex(token.as_bytes()), now).await? {
        return Err(UserError::BadToken);
    }
    storage::set_password_hash(conn, user.id, &hash).await?;
    // A copied session cookie must not outlive the password it was signed in with.
    end_all_sessions(conn, user.id).await?;
    storage::clear_account_throttles(conn, &user.email).await?;
    Ok(user)
}

/// Disables (or enables) an account. A disabled account's sessions end, and no set-password
/// link of theirs works any more.
pub async fn set_disabled(conn: &mut AnyConnection, email: &str, disabled: bool) -> Result<(), UserError> {
    if !storage::set_user_disabled(conn, &email.trim().to_lowercase(), disabled).await? {
        return Err(UserError::NotFound(email.to_string()));
    }
    Ok(())
}

/// Failed sign-ins from one client address, on any accounts, before it is locked out.
pub const MAX_FAILED_PER_CLIENT: i64 = 20;
/// Failed sign-ins on one account from anywhere before it is locked for everyone: high enough
/// that one stranger (held to [`MAX_FAILED_PER_CLIENT`]) cannot reach it, low enough to stop a
/// spread-out guessing attack.
pub const MAX_FAILED_PER_ACCOUNT: i64 = 50;

/// A real argon2id hash of a random password, made once: checking against it costs what a real
/// check costs, for an address with no account or an account with no password yet.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// One throttle key's state.
struct Throttle {
    key: String,
    limit: i64,
    failed: i64,
    blocked_until: i64,
}

/// Claims one attempt on a throttle key, atomically: compare-and-swap on the row, so that of
/// many parallel attempts in one back-off window exactly one gets to check a password. The
/// claim counts as a failure until a success clears it. `Err(until)` when the key is waiting.
async fn claim_attempt(
    conn: &mut AnyConnection,
    key: &str,
    limit: i64,
    back_off: bool,
    now: i64,
) -> Result<Result<Throttle, SignInRefusal>, UserError> {
    let (failed, blocked_until) = storage::throttle_state(conn, key).await?;
    if blocked_until > now {
        return Ok(Err(if failed >= limit {
            SignInRefusal::Locked { until: blocked_until }
        } else {
            SignInRefusal::TooSoon { until: blocked_until }
        }));
    }
    // A lockout that has run out starts the count again.
    let failed_before = if failed >= limit { 0 } else { failed };
    let claimed = failed_before + 1;
    let until = if claimed >= limit {
        now + LOCKOUT_MS
    } else if back_off {
        now + backoff_ms(claimed)
    } else {
        0
    };
    let swapped = storage::swap_throttle(conn, key, (failed, blocked_until), (claimed, until)).await?;
    if !swapped {
        // Another attempt claimed this window first.
        return Ok(Err(SignInRefusal::TooSoon {
            until: now + backoff_ms(1),
        }));
    }
    Ok(Ok(Throttle {
        key: key.to_string(),
        limit,
        failed: claimed,
        blocked_until: until,
    }))
}

/// Checks a password for `email` from `client` (its network address). Every attempt is
/// throttled on three keys: the account from this client, the client on any account, and the
/// account from anywhere ([`MAX_FAILED_ATTEMPTS`], [`MAX_FAILED_PER_CLIENT`],
/// [`MAX_FAILED_PER_ACCOUNT`]); each failure makes the next attempt on a key wait
/// ([`backoff_ms`]) until the key locks. Whether the account exists, is invited (no password
/// yet), is disabled or is locked, the attempt costs one argon2 check and gets the same answer
/// for the same throttle state, so the form reveals nothing about who has an account.
pub async fn authenticate(
    conn: &mut AnyConnection,
    email: &str,
    password: &str,
    client: &str,
    now: i64,
) -> Result<Result<User, SignInRefusal>, UserError> {
    let email = email.trim().to_lowercase();
    // Only the account-from-this-client key backs off between attempts; the wider keys only
    // count, and lock at their limits.
    let keys = [
        (format!("account:{email}|client:{client}"), MAX_FAILED_ATTEMPTS, true),
        (format!("client:{client}"), MAX_FAILED_PER_CLIENT, false),
        (format!("account:{email}"), MAX_FAILED_PER_ACCOUNT, false),
    ];
    let mut claims = Vec::with_capacity(keys.len());
    let mut refused = None;
    for (key, limit, back_off) in &keys {
        match claim_attempt(conn, key, *limit, *back_off, now).await? {
            Ok(claim) => claims.push(claim),
            Err(refusal) => {
                refused = Some(refusal);
                break;
            }
        }
    }
    let (user, hash) = match storage::user_with_password_hash(conn, &email).await? {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    // Exactly one argon2 check for every attempt, refused or not, with or without an account.
    let good = verify_password(password, hash.as_deref().unwrap_or(dummy_hash())) && hash.is_some();
    if let Some(refusal) = refused {
        // Claims taken on the earlier keys stand: they were attempts too.
        return Ok(Err(refusal));
    }
    match user {
        Some(user) if good && !user.disabled => {
            for claim in &claims {
                // The client's count across accounts is not cleared by one success: a
                // guesser who knows one password must not reset their budget with it. The
                // success takes back only its own claim: kept, every sign-in counted as a
                // failure, and twenty people signing in from one office's address (or through
                // one load balancer) locked the next one out for a quarter of an hour.
                if claim.key.starts_with("client:") {
                    storage::release_throttle_claim(conn, &claim.key, claim.blocked_until).await?;
                } else {
                    storage::clear_throttle(conn, &claim.key).await?;
                }
            }
            Ok(Ok(user))
        }
        _ => {
            let locked = claims
                .iter()
                .filter(|c| c.failed >= c.limit)
                .map(|c| c.blocked_until)
                .max();
            Ok(Err(match locked {
                Some(until) => SignInRefusal::Locked { until },
                None => SignInRefusal::WrongCredentials,
            }))
        }
    }
}

/// Ends every session of a user: after a new password, a disable, a role change.
pub async fn end_all_sessions(conn: &mut AnyConnection, user_id: i64) -> Result<(), UserError> {
    Ok(storage::delete_user_sessions(conn, user_id).await?)
}

/// Whether `email` may be a staff account: an NHS address, unless the deployment allows any.
pub fn check_staff_address(
    email: &str,
    nhs_domains: &crate::domain::NhsDomains,
    any_domain: bool,
) -> Result<(), UserError> {
    let email = email.trim().to_lowercase();
    let address = crate::domain::EmailAddress::parse(&email).ok_or_else(|| UserError::BadEmail(email.clone()))?;
    if any_domain || nhs_domains.contains(&address) {
        Ok(())
    } else {
        Err(UserError::NotNhs(email))
    }
}

/// Lifts a lockout from failed sign-ins (an admin's "unlock").
pub async fn unlock(conn: &mut AnyConnection, email: &str) -> Result<(), UserError> {
    let user = find_by_email(conn, email)
        .await?
        .ok_or_else(|| UserError::NotFound(email.to_string()))?;
    Ok(storage::clear_account_throttles(conn, &user.email).await?)
}

/// Changes a user's role; their sessions end, so the new role applies from their next sign-in.
pub async fn set_role(conn: &mut AnyConnection, email: &str, role: ActorRole) -> Result<User, UserError> {
    let user = find_by_email(conn, email)
        .await?
        .ok_or_else(|| UserError::NotFound(email.to_string()))?;
    storage::set_user_role(conn, user.id, role).await?;
    end_all_sessions(conn, user.id).await?;
    Ok(User { role, ..user })
}

/// Starts a session; returns the token for the cookie (only its hash is stored).
pub async fn start_session(conn: &mut AnyConnection, user_id: i64, now: i64) -> Result<String, UserError> {
    let token = random_token();
    storage::insert_session(conn, &sha256_hex(token.as_bytes()), user_id, now, now + SESSION_MS).await?;
    Ok(token)
}

pub async fn session_user(conn: &mut AnyConnection, token: &str, now: i64) -> Result<Option<User>, UserError> {
    Ok(storage::session_user_by_hash(conn, &sha256_hex(token.as_bytes()), now).await?)
}

pub async fn end_session(conn: &mut AnyConnection, token: &str) -> Result<(), UserError> {
    Ok(storage::delete_session(conn, &sha256_hex(token.as_bytes())).await?)
}

/// A secret shared by every instance (created on first use), e.g. the cookie key.
pub async fn shared_secret(conn: &mut AnyConnection, name: &str) -> Result<String, UserError> {
    Ok(storage::shared_secret(conn, name, &(random_token() + &random_token())).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_with_argon2id_and_verified() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("Correct horse battery", &hash));
        assert_ne!(hash, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn password_rules_refuse_the_obvious() {
        assert!(check_password_rules("short", "a@nhs.net").is_err());
        assert!(
            check_password_rules("password1234", "jo@nhs.net").is_err(),
            "well known"
        );
        assert!(
            check_password_rules("kettle meadow 42", "a@nhs.net").is_ok(),
            "a one-letter address part is no clue"
        );
        assert!(check_password_rules("password123", "a@nhs.net").is_err());
        assert!(check_password_rules("Password", "a@nhs.net").is_err());
        assert!(check_password_rules("aaaaaaaaaaaaaaa", "x@nhs.net").is_err());
        assert!(check_password_rules("jo.bloggs.rocks!", "jo.bloggs@nhs.net").is_err());
        assert!(check_password_rules("river otter lantern", "jo.bloggs@nhs.net").is_ok());
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(a.len() >= 43);
    }
}
