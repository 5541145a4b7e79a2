//! Issuing a workflow's credential (`[credential]`: a new user's first password) as part of
//! the change that reaches its `issue_on` state, and spending its one-time link.
//!
//! The secret is made here, checked against the ledger of every credential ever issued,
//! sealed under the outside key and dropped: the change carries only the sealed copy and its
//! fingerprint. Two messages go, never one: the link (minted when the mail is sent, so no
//! outbox row holds it) to the user's own NHS mailbox, and the username to the Primary User.

use secrecy::SecretString;
use sqlx::AnyConnection;
use std::collections::BTreeMap;

use super::notify::{self, Notification};
use super::{Engine, EngineError};
use crate::credentials::{self, MAX_TRIES};
use crate::domain::{EmailAddress, EventKind};
use crate::storage::{self, CaseChangeset, CaseEvent, CaseRecord, NewCredential, QueryContext};
use crate::workflow::{Actor, CredentialDef, TransitionRequest, WorkflowDef};

/// The key the outbox reads to know a message carries a credential's one-time link.
pub const LINK_CONTEXT_KEY: &str = "credential";

/// What a spent link shows: the secret, once.
pub struct Revealed {
    pub secret: SecretString,
    /// When the credential expires (it must be changed by then).
    pub expires_at: i64,
}

/// How a one-time link stands, without spending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// It opens its secret (once).
    Open,
    /// It never existed, was used, was replaced by a newer link, or expired.
    Spent,
}

/// A short identifier that mail may quote (a user ID): a field or a recorded value is the
/// sender's text, and only this shape of it goes into our mail.
fn plain_identifier(value: &str) -> bool {
    (1..=40).contains(&value.chars().count()) && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Engine {
    /// Adds to `change` (the move of `case` that `request` asks for) the credential its workflow issues there,
    /// if it issues one: the sealed credential, its event, and the two messages. Refuses the
    /// move when the credential could not be delivered as the workflow requires.
    pub(crate) async fn plan_credential(
        &self,
        conn: &mut AnyConnection,
        workflow: &WorkflowDef,
        case: &CaseRecord,
        request: &TransitionRequest,
        actor: &Actor,
        change: &mut CaseChangeset,
    ) -> Result<(), EngineError> {
        let Some(def) = workflow.credential.as_ref().filter(|d| d.issue_on == request.to) else {
            return Ok(());
        };
        self.issue_credential(conn, workflow, def, case, &request.recorded, actor, None, change)
            .await
    }

    /// Withdraws the password a case issued, if it is still unseen, and issues a new one the
    /// same way (its link to the user, the username to the Primary User), with `reason` in
    /// its event: for a link that expired, or one someone else may have opened. One change,
    /// against the version the caseworker saw.
    pub async fn replace_credential(
        &self,
        reference: &str,
        actor: &Actor,
        reason: &str,
        expected_version: Option<i64>,
    ) -> Result<CaseRecord, EngineError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(EngineError::ReplacementUnexplained);
        }
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let case = self.case_for_change(&mut tx, reference, expected_version).await?;
        let workflow = self.workflow_named(case.workflow.as_deref())?;
        let Some(def) = workflow.credential.as_ref() else {
            return Err(EngineError::NoCredentialToReplace {
                reference: case.reference.clone(),
                state: "no state: it issues none".into(),
            });
        };
        if case.state != def.issue_on {
            return Err(EngineError::NoCredentialToReplace {
                reference: case.reference.clone(),
                state: def.issue_on.clone(),
            });
        }
        let withdrawn = storage::withdraw_credentials(&mut tx, case.id).await?;
        let why = format!(
            "{reason} ({})",
            match withdrawn {
                0 => "the earlier password had been shown".to_string(),
                n => format!("{n} unseen password(s) withdrawn"),
            }
        );
        let mut change = super::change::changeset(&case, self.now_ms());
        self.issue_credential(&mut tx, workflow, def, &case, &[], actor, Some(&why), &mut change)
            .await?;
        let updated = self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing a replaced password")?;
        self.wakers.wake_all();
        Ok(updated)
    }

    /// Issues `def`'s credential for `case` into `change`: made, checked against the ledger,
    /// sealed; its two messages and its event (`why` says what led to it, for a replacement).
    #[allow(clippy::too_many_arguments)]
    async fn issue_credential(
        &self,
        conn: &mut AnyConnection,
        workflow: &WorkflowDef,
        def: &CredentialDef,
        case: &CaseRecord,
        recorded: &[(String, String)],
        actor: &Actor,
        why: Option<&str>,
        change: &mut CaseChangeset,
    ) -> Result<(), EngineError> {
        let undeliverable = |why: String| EngineError::CredentialUndeliverable {
            reference: case.reference.clone(),
            why,
        };
        let (user_address, username, primary_user) =
            recipients(def, case, recorded, self.mail_policy().nhs_domains).map_err(undeliverable)?;

        let policy = def.policy();
        let keys = &self.config.credential_keys;
        let mut issued = None;
        for _ in 0..MAX_TRIES {
            let Some(secret) = credentials::draw(&policy) else {
                continue;
            };
            let fingerprint = keys.fingerprints().fingerprint(&secret);
            if !storage::fingerprint_issued(&mut *conn, &fingerprint).await? {
                issued = Some((secret, fingerprint));
                break;
            }
        }
        let (secret, fingerprint) = issued.ok_or(credentials::IssueError::Exhausted(MAX_TRIES))?;
        let name = format!("cred-{}", uuid::Uuid::new_v4().simple());
        let sealed = keys.seal(&name, &secret);
        drop(secret);

        let now = self.now_ms();
        let expires_at = now + i64::from(def.lifetime_days) * 86_400_000;
        let expires_on = chrono::DateTime::from_timestamp_millis(expires_at)
            .map(|t| t.with_timezone(&chrono::Local).format("%A %-d %B %Y").to_string());
        change.issue_credentials.push(NewCredential {
            name: name.clone(),
            fingerprint,
            sealed,
            sent_to: user_address.clone(),
            expires_at,
        });
        let origin = self.origin(&mut *conn, case).await?;
        let mail = |template: &str, recipient: &str, extra: serde_json::Value| {
            let mut mail = notify::compose(
                &self.mail_policy(),
                case,
                Some(workflow),
                &Notification {
                    template,
                    recipient: Some(recipient),
                    reason: None,
                    automatic: false,
                    in_reply_to: None,
                    suppress_because: None,
                },
                &origin.sender_auth,
            );
            let mut context: serde_json::Value = serde_json::from_str(&mail.context_json).unwrap_or_default();
            context[LINK_CONTEXT_KEY] = extra;
            mail.context_json = context.to_string();
            mail
        };
        change.mail.push(mail(
            &def.link_template,
            &user_address,
            serde_json::json!({
                "name": name,
                "link_valid_hours": def.link_valid_hours,
                "lifetime_days": def.lifetime_days,
                "expires_on": expires_on,
            }),
        ));
        change.mail.push(mail(
            &def.username_template,
            &primary_user,
            serde_json::json!({
                "username": username,
                "user_address": user_address,
                "lifetime_days": def.lifetime_days,
            }),
        ));
        let data: BTreeMap<&str, &str> = [
            ("credential", name.as_str()),
            ("link_to", user_address.as_str()),
            ("username_to", primary_user.as_str()),
        ]
        .into_iter()
        .collect();
        change.events.push(CaseEvent {
            reason: Some(format!(
                "password issued: a one-time link to {user_address}, the user name to {primary_user}{}",
                why.map(|w| format!(". Replaced: {w}")).unwrap_or_default()
            )),
            data: serde_json::to_string(&data).ok(),
            ..CaseEvent::by(&actor.name, actor.role.as_str(), EventKind::CredentialIssued, now)
        });
        Ok(())
    }

    /// Whether a one-time link (by its token) still opens a secret, without spending it: the
    /// page a mail scanner's prefetch reaches shows a button, not the secret.
    pub async fn credential_link_state(&self, token: &str) -> Result<LinkState, EngineError> {
        let mut conn = self.db.pool.acquire().await.context("connecting")?;
        let open =
            storage::credential_link_open(&mut conn, &crate::mail::sha256_hex(token.as_bytes()), self.now_ms()).await?;
        Ok(if open { LinkState::Open } else { LinkState::Spent })
    }

    /// Spends a one-time link: the secret it opens, once. The sealed copy is erased and the
    /// case logs that its owner saw it, in one transaction. None when the link is spent.
    pub async fn reveal_credential(&self, token: &str) -> Result<Option<Revealed>, EngineError> {
        let now = self.now_ms();
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        let Some(spent) =
            storage::spend_credential_link(&mut tx, &crate::mail::sha256_hex(token.as_bytes()), now).await?
        else {
            return Ok(None);
        };
        let secret = self.config.credential_keys.unseal(&spent.name, &spent.sealed)?;
        let case = storage::case_by_id(&mut tx, spent.case_id)
            .await?
            .ok_or_else(|| EngineError::CaseNotFound(format!("#{}", spent.case_id)))?;
        let mut change = super::change::changeset(&case, now);
        change.events.push(CaseEvent {
            reason: Some("the new user opened their one-time link and was shown their password".into()),
            data: serde_json::to_string(&BTreeMap::from([("credential", spent.name.as_str())])).ok(),
            ..CaseEvent::by("system", "system", EventKind::CredentialShown, now)
        });
        self.apply(&mut tx, &case, change).await?;
        tx.commit().await.context("committing a spent link")?;
        Ok(Some(Revealed {
            secret,
            expires_at: spent.expires_at,
        }))
    }
}

/// Where the credential's two messages go, and the username: the user's own NHS mailbox, the
/// user ID (a recorded value, else a field), and the Primary User's address. Each must be
/// there, and well formed, or nothing is issued.
fn recipients(
    def: &CredentialDef,
    case: &CaseRecord,
    recorded: &[(String, String)],
    nhs_domains: &crate::domain::NhsDomains,
) -> Result<(String, String, String), String> {
    let field = |name: &str| case.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let user = field(&def.send_to)
        .and_then(EmailAddress::parse)
        .ok_or_else(|| format!("the case has no address for the new user in `{}`", def.send_to))?;
    if !nhs_domains.contains(&user) {
        return Err(format!(
            "{user} is not an NHS mailbox, and the password goes only to one"
        ));
    }
    let username = recorded
        .iter()
        .rev()
        .find(|(name, _)| *name == def.username_field)
        .map(|(_, v)| v.trim())
        .or_else(|| case.recorded.get(&def.username_field).map(|v| v.trim()))
        .or_else(|| field(&def.username_field))
        .filter(|v| plain_identifier(v))
        .ok_or_else(|| format!("the case has no plain user name in `{}`", def.username_field))?;
    let primary_user = field(&def.username_to)
        .and_then(EmailAddress::parse)
        .ok_or_else(|| format!("the case has no address in `{}` for the user name", def.username_to))?;
    if primary_user.same_mailbox(&user) {
        return Err("the user name and the password would go to the same mailbox".into());
    }
    Ok((user.to_string(), username.to_string(), primary_user.to_string()))
}
