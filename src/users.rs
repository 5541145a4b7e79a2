//! Staff accounts: argon2id password hashes, password rules, lockout after repeated failures,
//! one-time set-password links, and database sessions. No default or shared credentials exist:
//! the first admin gets a set-password link from `countersign users add`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use rand::RngCore;
use sqlx::{AnyConnection, Row};

use crate::mail::sha256_hex;
use crate::storage::{QueryContext, StorageError};
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
    #[error("that account is disabled; enable it before sending it a set-password link")]
    Disabled,
}

/// A signed-in (or signing-in) member of staff.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    pub role: ActorRole,
    pub disabled: bool,
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

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, StorageError> {
    let get = |e| StorageError::Query {
        context: "decoding a user",
        source: e,
    };
    let role: String = row.try_get("role").map_err(get)?;
    Ok(User {
        id: row.try_get("id").map_err(get)?,
        email: row.try_get("email").map_err(get)?,
        display_name: row.try_get("display_name").map_err(get)?,
        role: ActorRole::parse(&role).unwrap_or(ActorRole::Caseworker),
        disabled: row.try_get::<i64, _>("disabled").map_err(get)? != 0,
    })
}

pub async fn find_by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<User>, UserError> {
    let row = sqlx::query("SELECT id, email, display_name, role, disabled FROM users WHERE email = $1")
        .bind(email.trim().to_lowercase())
        .fetch_optional(&mut *conn)
        .await
        .context("finding a user")?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<User>, UserError> {
    let rows = sqlx::query("SELECT id, email, display_name, role, disabled FROM users ORDER BY email")
        .fetch_all(&mut *conn)
        .await
        .context("listing users")?;
    Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
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
    sqlx::query("INSERT INTO users (email, display_name, role, password_hash, disabled, created_at) VALUES ($1, $2, $3, NULL, 0, $4)")
        .bind(&email)
        .bind(display_name)
        .bind(role.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await
        .context("adding a user")?;
    let user = find_by_email(conn, &email)
        .await?
        .ok_or_else(|| UserError::NotFound(email.clone()))?;
    let token = issue_password_token(conn, user.id, now).await?;
    Ok((user, token))
}

/// A fresh one-time set-password token for a user (an admin's "reset"). Earlier unused ones
/// stop working.
pub async fn issue_password_token(conn: &mut AnyConnection, user_id: i64, now: i64) -> Result<String, UserError> {
    let disabled: Option<i64> = sqlx::query_scalar("SELECT disabled FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
        .context("checking a user")?;
    match disabled {
        None => return Err(UserError::NotFound(user_id.to_string())),
        Some(d) if d != 0 => return Err(UserError::Disabled),
        Some(_) => {}
    }
    sqlx::query("UPDATE password_tokens SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("retiring old set-password links")?;
    let token = random_token();
    sqlx::query("INSERT INTO password_tokens (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(token.as_bytes()))
        .bind(user_id)
        .bind(now)
        .bind(now + PASSWORD_TOKEN_MS)
        .execute(&mut *conn)
        .await
        .context("issuing a set-password link")?;
    Ok(token)
}

/// The user a set-password token is for, if it is unused and unexpired.
pub async fn user_for_password_token(conn: &mut AnyConnection, token: &str, now: i64) -> Result<User, UserError> {
    let row = sqlx::query(
        "SELECT u.id, u.email, u.display_name, u.role, u.disabled FROM password_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > $2 AND u.disabled = 0",
    )
    .bind(sha256_hex(token.as_bytes()))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("checking a set-password link")?;
    row.as_ref().map(user_from_row).transpose()?.ok_or(UserError::BadToken)
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
    let spent = sqlx::query("UPDATE password_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL")
        .bind(now)
        .bind(sha256_hex(token.as_bytes()))
        .execute(&mut *conn)
        .await
        .context("spending a set-password link")?;
    if spent.rows_affected() != 1 {
        return Err(UserError::BadToken);
    }
    sqlx::query("UPDATE users SET password_hash = $1, failed_attempts = 0, locked_until = NULL WHERE id = $2")
        .bind(hash)
        .bind(user.id)
        .execute(&mut *conn)
        .await
        .context("setting a password")?;
    // A copied session cookie must not outlive the password it was signed in with.
    end_all_sessions(conn, user.id).await?;
    sqlx::query("DELETE FROM sign_in_throttle WHERE key LIKE $1")
        .bind(format!("account:{}%", user.email))
        .execute(&mut *conn)
        .await
        .context("clearing the sign-in throttle")?;
    Ok(user)
}

pub async fn set_disabled(conn: &mut AnyConnection, email: &str, disabled: bool) -> Result<(), UserError> {
    let done = sqlx::query("UPDATE users SET disabled = $1 WHERE email = $2")
        .bind(i64::from(disabled))
        .bind(email.trim().to_lowercase())
        .execute(&mut *conn)
        .await
        .context("disabling a user")?;
    if done.rows_affected() == 0 {
        return Err(UserError::NotFound(email.to_string()));
    }
    if disabled {
        sqlx::query("DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE email = $1)")
            .bind(email.trim().to_lowercase())
            .execute(&mut *conn)
            .await
            .context("ending a disabled user's sessions")?;
        // And no set-password link of theirs works any more.
        sqlx::query(
            "UPDATE password_tokens SET used_at = created_at WHERE used_at IS NULL AND user_id IN (SELECT id FROM users WHERE email = $1)",
        )
        .bind(email.trim().to_lowercase())
        .execute(&mut *conn)
        .await
        .context("retiring a disabled user's set-password links")?;
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
    sqlx::query(
        "INSERT INTO sign_in_throttle (key, failed, blocked_until) VALUES ($1, 0, 0) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .execute(&mut *conn)
    .await
    .context("throttling sign-in")?;
    let row = sqlx::query("SELECT failed, blocked_until FROM sign_in_throttle WHERE key = $1")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .context("throttling sign-in")?;
    let failed: i64 = row.try_get(0).context("throttling sign-in")?;
    let blocked_until: i64 = row.try_get(1).context("throttling sign-in")?;
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
    let swapped = sqlx::query(
        "UPDATE sign_in_throttle SET failed = $1, blocked_until = $2 WHERE key = $3 AND failed = $4 AND blocked_until = $5",
    )
    .bind(claimed)
    .bind(until)
    .bind(key)
    .bind(failed)
    .bind(blocked_until)
    .execute(&mut *conn)
    .await
    .context("throttling sign-in")?;
    if swapped.rows_affected() != 1 {
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

async fn clear_throttle(conn: &mut AnyConnection, key: &str) -> Result<(), UserError> {
    sqlx::query("UPDATE sign_in_throttle SET failed = 0, blocked_until = 0 WHERE key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await
        .context("clearing a sign-in throttle")?;
    Ok(())
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
    let row = sqlx::query("SELECT id, email, display_name, role, disabled, password_hash FROM users WHERE email = $1")
        .bind(&email)
        .fetch_optional(&mut *conn)
        .await
        .context("signing in")?;
    let (user, hash) = match &row {
        Some(row) => {
            let hash: Option<String> = row.try_get("password_hash").context("decoding a user")?;
            (Some(user_from_row(row)?), hash)
        }
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
                // guesser who knows one password must not reset their budget with it.
                if !claim.key.starts_with("client:") {
                    clear_throttle(conn, &claim.key).await?;
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
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("ending a user's sessions")?;
    Ok(())
}

/// Changes a user's role; their sessions end, so the new role applies from their next sign-in.
pub async fn set_role(conn: &mut AnyConnection, email: &str, role: ActorRole) -> Result<User, UserError> {
    let user = find_by_email(conn, email)
        .await?
        .ok_or_else(|| UserError::NotFound(email.to_string()))?;
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(role.as_str())
        .bind(user.id)
        .execute(&mut *conn)
        .await
        .context("changing a role")?;
    end_all_sessions(conn, user.id).await?;
    Ok(User { role, ..user })
}

/// Starts a session; returns the token for the cookie (only its hash is stored).
pub async fn start_session(conn: &mut AnyConnection, user_id: i64, now: i64) -> Result<String, UserError> {
    let token = random_token();
    sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(sha256_hex(token.as_bytes()))
        .bind(user_id)
        .bind(now)
        .bind(now + SESSION_MS)
        .execute(&mut *conn)
        .await
        .context("starting a session")?;
    Ok(token)
}

pub async fn session_user(conn: &mut AnyConnection, token: &str, now: i64) -> Result<Option<User>, UserError> {
    let row = sqlx::query(
        "SELECT u.id, u.email, u.display_name, u.role, u.disabled FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = 0",
    )
    .bind(sha256_hex(token.as_bytes()))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("reading a session")?;
    Ok(row.as_ref().map(user_from_row).transpose()?)
}

pub async fn end_session(conn: &mut AnyConnection, token: &str) -> Result<(), UserError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(sha256_hex(token.as_bytes()))
        .execute(&mut *conn)
        .await
        .context("ending a session")?;
    Ok(())
}

/// A secret shared by every instance (created on first use), e.g. the cookie key.
pub async fn shared_secret(conn: &mut AnyConnection, name: &str) -> Result<String, UserError> {
    sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(random_token() + &random_token())
        .execute(&mut *conn)
        .await
        .context("creating a secret")?;
    Ok(sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .context("reading a secret")?)
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
