//! The credentials ledger (`credentials`): every credential ever issued, as its keyed
//! fingerprint; its sealed secret until its owner opens the one-time link; the link's token as
//! a hash. No column ever holds a secret or a link token in clear.

use sqlx::{AnyConnection, Row};

use super::{QueryContext, StorageError};

/// Which row a link's token (by hash, `$1`) opens at `$2`: its secret still sealed, not yet
/// shown, the link not expired. The one definition of a working link.
macro_rules! open_link {
    () => {
        "WHERE link_token_hash = $1 AND sealed IS NOT NULL AND shown_at IS NULL AND link_expires_at > $2"
    };
}

/// A credential a change issues (written with the change, in its transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// Random: names it in its outbox row and binds its sealed secret to this row.
    pub name: String,
    pub fingerprint: String,
    /// The secret sealed under the outside key (see `credentials::CredentialKeys::seal`).
    pub sealed: String,
    /// The NHS mailbox its one-time link goes to.
    pub sent_to: String,
    /// When the credential itself expires (it must be changed by then).
    pub expires_at: i64,
}

/// A credential as the case page shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialRecord {
    pub name: String,
    pub sent_to: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// When the link was sent (its token minted), and until when it works.
    pub link_expires_at: Option<i64>,
    /// When its owner opened the link and saw it.
    pub shown_at: Option<i64>,
    /// The sealed secret is still held (neither shown nor withdrawn).
    pub waiting: bool,
}

/// A credential whose one-time link was just spent: its sealed secret (now erased from the
/// row), for the page to open and show once.
#[derive(Debug, Clone)]
pub struct SpentLink {
    pub name: String,
    pub case_id: i64,
    pub sealed: String,
    pub expires_at: i64,
}

/// Whether a credential with this fingerprint was ever issued, to anyone.
pub async fn fingerprint_issued(conn: &mut AnyConnection, fingerprint: &str) -> Result<bool, StorageError> {
    let found = sqlx::query("SELECT 1 FROM credentials WHERE fingerprint = $1")
        .bind(fingerprint)
        .fetch_optional(&mut *conn)
        .await
        .context("checking the credentials ledger")?;
    Ok(found.is_some())
}

/// Records credentials a change issues on `case_id` (inside its transaction). A fingerprint
/// already in the ledger fails the whole change: the unique column is the last word on
/// "never issued twice", whatever raced.
pub async fn insert_credentials(
    conn: &mut AnyConnection,
    case_id: i64,
    credentials: &[NewCredential],
    now: i64,
) -> Result<(), StorageError> {
    for credential in credentials {
        sqlx::query(
            "INSERT INTO credentials (name, case_id, fingerprint, sealed, sent_to, issued_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&credential.name)
        .bind(case_id)
        .bind(&credential.fingerprint)
        .bind(&credential.sealed)
        .bind(&credential.sent_to)
        .bind(now)
        .bind(credential.expires_at)
        .execute(&mut *conn)
        .await
        .context("recording an issued credential")?;
    }
    Ok(())
}

/// Gives the credential `name` a new one-time link (the hash of its token), working until
/// `link_expires_at`; any earlier link stops working. False when its secret is gone (shown
/// already, or withdrawn): then there is nothing to link to.
pub async fn set_credential_link(
    conn: &mut AnyConnection,
    name: &str,
    token_hash: &str,
    link_expires_at: i64,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE credentials SET link_token_hash = $1, link_expires_at = $2
         WHERE name = $3 AND sealed IS NOT NULL AND shown_at IS NULL",
    )
    .bind(token_hash)
    .bind(link_expires_at)
    .bind(name)
    .execute(&mut *conn)
    .await
    .context("giving a credential its link")?;
    Ok(done.rows_affected() == 1)
}

/// Whether a link's token (by hash) still opens a secret at `now`.
pub async fn credential_link_open(conn: &mut AnyConnection, token_hash: &str, now: i64) -> Result<bool, StorageError> {
    let found = sqlx::query(concat!("SELECT 1 FROM credentials ", open_link!()))
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up a credential link")?;
    Ok(found.is_some())
}

/// Spends a link: returns its credential's sealed secret and erases it from the row, marking
/// it shown at `now`. None when the token is unknown, spent or expired. Run it in the
/// transaction that also records the event: of two clicks, exactly one gets the secret.
pub async fn spend_credential_link(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: i64,
) -> Result<Option<SpentLink>, StorageError> {
    let row = sqlx::query(concat!(
        "SELECT name, case_id, sealed, expires_at FROM credentials ",
        open_link!()
    ))
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .context("looking up a credential link")?;
    let Some(row) = row else { return Ok(None) };
    let spent = SpentLink {
        name: row.try_get(0).context("reading a credential")?,
        case_id: row.try_get(1).context("reading a credential")?,
        sealed: row.try_get(2).context("reading a credential")?,
        expires_at: row.try_get(3).context("reading a credential")?,
    };
    let erased = sqlx::query(
        "UPDATE credentials SET sealed = NULL, shown_at = $1 WHERE name = $2 AND sealed IS NOT NULL AND shown_at IS NULL",
    )
    .bind(now)
    .bind(&spent.name)
    .execute(&mut *conn)
    .await
    .context("spending a credential link")?;
    Ok((erased.rows_affected() == 1).then_some(spent))
}

/// Withdraws a case's credentials that are still waiting to be seen: their sealed secrets are
/// erased and their links stop working (a link mail still in the outbox then fails to send,
/// saying so). How many were withdrawn.
pub async fn withdraw_credentials(conn: &mut AnyConnection, case_id: i64) -> Result<u64, StorageError> {
    let done = sqlx::query(
        "UPDATE credentials SET sealed = NULL, link_token_hash = NULL WHERE case_id = $1 AND sealed IS NOT NULL",
    )
    .bind(case_id)
    .execute(&mut *conn)
    .await
    .context("withdrawing a case's credentials")?;
    Ok(done.rows_affected())
}

/// The credentials issued on a case, oldest first.
pub async fn credentials_for_case(
    conn: &mut AnyConnection,
    case_id: i64,
) -> Result<Vec<CredentialRecord>, StorageError> {
    let rows = sqlx::query(super::queries::CREDENTIALS_OF_CASE)
        .bind(case_id)
        .fetch_all(&mut *conn)
        .await
        .context("listing a case's credentials")?;
    rows.iter()
        .map(|r| {
            Ok(CredentialRecord {
                name: r.try_get(0)?,
                sent_to: r.try_get(1)?,
                issued_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                link_expires_at: r.try_get(4)?,
                shown_at: r.try_get(5)?,
                waiting: r.try_get::<i64, _>(6)? != 0,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .context("reading a case's credentials")
}
