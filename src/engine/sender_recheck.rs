//! Checking a sender again: an email whose DKIM key could not be fetched when it came (a DNS
//! failure) was stored as "temporary", never as a pass. Until a day has passed it is checked
//! again every ten minutes; once decided, the verdict is stored, each of its cases logs the
//! recheck, and the rules run again over a case still waiting for review.

use super::intake::SENDER_RECHECK_AFTER_MS;
use super::{Engine, EngineError};
use crate::dkim::{SenderVerdict, decide};
use crate::domain::EventKind;
use crate::mail::{self, SenderAuth};
use crate::storage::{self, CaseEvent, QueryContext};
use crate::workflow::Actor;

/// How long a sender stays "temporary" before the check gives up (not a pass).
const GIVE_UP_AFTER_MS: i64 = 24 * 60 * 60 * 1000;

/// Messages checked again per round.
const PER_ROUND: i64 = 50;

impl Engine {
    /// Checks again every sender whose check is due; returns how many were decided.
    pub async fn recheck_senders(&self) -> Result<usize, EngineError> {
        let now = self.now_ms();
        let due = {
            let mut conn = self.db().pool.acquire().await.context("connecting")?;
            storage::senders_due_for_recheck(&mut conn, now, PER_ROUND).await?
        };
        let mut decided = 0;
        for message in due {
            let verdict = match &message.raw {
                Some(raw) => {
                    let parsed = mail::parse(raw, &self.config.mail);
                    let own = self
                        .config
                        .sender_checker
                        .check(raw, parsed.from_domain.as_deref(), parsed.exchange_internal)
                        .await;
                    decide(&parsed.sender_auth, own, parsed.malformed.is_some())
                }
                None => SenderVerdict {
                    auth: SenderAuth::Missing {
                        reason: "the email is no longer kept, so its sender cannot be checked again".into(),
                    },
                    decided_by: "none".into(),
                    own_check: Default::default(),
                },
            };
            let verdict = match verdict.auth {
                SenderAuth::Temporary { .. } if now - message.received_at < GIVE_UP_AFTER_MS => {
                    let mut conn = self.db().pool.acquire().await.context("connecting")?;
                    storage::set_sender_verdict(
                        &mut conn,
                        message.id,
                        &verdict.to_json(),
                        Some(now + SENDER_RECHECK_AFTER_MS),
                    )
                    .await?;
                    continue;
                }
                SenderAuth::Temporary { reason } => SenderVerdict {
                    auth: SenderAuth::Missing {
                        reason: format!("{reason}, but it still could not be a day later"),
                    },
                    ..verdict
                },
                _ => verdict,
            };
            self.record_recheck(message.id, &verdict).await?;
            decided += 1;
        }
        Ok(decided)
    }

    /// Stores a decided verdict and, in the same transaction, tells each case of the message.
    async fn record_recheck(&self, raw_message_id: i64, verdict: &SenderVerdict) -> Result<(), EngineError> {
        let mut tx = self.db().begin_write().await.context("starting a transaction")?;
        storage::set_sender_verdict(&mut tx, raw_message_id, &verdict.to_json(), None).await?;
        let summary = match &verdict.auth {
            SenderAuth::Pass { method } => format!("the sender is confirmed now ({method})"),
            SenderAuth::Fail { reason } | SenderAuth::Missing { reason } | SenderAuth::Temporary { reason } => {
                format!("the sender could not be confirmed: {reason}")
            }
        };
        for case in storage::cases_for_message(&mut tx, raw_message_id).await? {
            if case.origin_message_id != raw_message_id {
                continue;
            }
            // A case still waiting for review has its rules run again on the new verdict;
            // one that has moved on keeps its decisions, and the log says what was found.
            let known = self.known(&mut tx, &case, &case.fields).await?;
            let mut change = self.recheck_rules(&case, &Actor::system(), &known);
            change.events.insert(
                0,
                CaseEvent {
                    reason: Some(summary.clone()),
                    data: Some(verdict.to_json()),
                    ..CaseEvent::system(EventKind::SenderRechecked, self.now_ms())
                },
            );
            self.apply(&mut tx, &case, change).await?;
        }
        tx.commit().await.context("committing a sender recheck")?;
        Ok(())
    }
}
