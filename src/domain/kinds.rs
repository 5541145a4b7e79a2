//! The fixed vocabularies the database stores as words: what happened to a case (its event
//! kinds), and where an outbound mail or a timer stands. Each word is written here once; code
//! names the variant, so a typo is a compile error rather than an event no screen recognises.

use std::fmt;

/// Declares an enum stored as a lower-case word, with its word, its parser and serde in one
/// list, so the word and the variant cannot drift apart.
macro_rules! stored_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word stored in the database and shown in the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            /// The variant a stored word names, if any.
            pub fn parse(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // `pad`, not `write_str`, so `{:<10}` in a table lines up.
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::parse(&word).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!("unknown ", stringify!($name), " {:?}"), word))
                })
            }
        }
    };
}

stored_words! {
    /// What happened to a case, as its event log records it.
    EventKind {
        /// The case was opened from a message.
        Created = "created",
        /// A case with no form was given a workflow by the form that came later.
        Classified = "classified",
        /// A workflow transition moved the case from one state to another.
        Transition = "transition",
        /// A caseworker asked the sender for the form.
        FormRequested = "form_requested",
        /// A caseworker put the case into another workflow.
        WorkflowChanged = "workflow_changed",
        /// A caseworker keyed or corrected the form's fields.
        FieldKeyed = "field_keyed",
        /// A member of staff took the case.
        Claimed = "claimed",
        /// The case was given to a member of staff, or to no one.
        Assigned = "assigned",
        /// A mail system reported that our mail about the case was not delivered.
        DeliveryReportReceived = "delivery_report_received",
        /// The sender replied.
        ReplyReceived = "reply_received",
        /// An automatic reply (out of office, and the like) arrived.
        AutoReplyReceived = "auto_reply_received",
        /// The same form arrived again.
        DuplicateReceived = "duplicate_received",
        /// A corrected form arrived in reply.
        FormResubmitted = "form_resubmitted",
        /// Decisions on the old form no longer count, since the form changed.
        DecisionsVoided = "decisions_voided",
        /// A timer reminded the sender.
        ReminderSent = "reminder_sent",
        /// A timer nudged the team.
        TeamNudged = "team_nudged",
        /// A timer escalated the case to the managers.
        Escalated = "escalated",
        /// The case's SLA timer says it is at risk (managers are told).
        SlaAtRisk = "sla_at_risk",
        /// The case's SLA timer says it has breached (managers are told).
        SlaBreached = "sla_breached",
        /// The sender, not checkable when the email came (a DNS failure), was checked again.
        SenderRechecked = "sender_rechecked",
        /// A caseworker verified the form's signatory (how is the reason); they joined the
        /// signatory register.
        SignatoryVerified = "signatory_verified",
        /// A credential (a new user's first password) was issued: its link and the username
        /// were queued to their two recipients. The event names neither secret nor link.
        CredentialIssued = "credential_issued",
        /// The credential's owner opened their one-time link and was shown it.
        CredentialShown = "credential_shown",
    }
}

stored_words! {
    /// Where a piece of outbound mail stands.
    OutboxStatus {
        /// Waiting to be sent or retried (a dispatcher sending it holds a claim on it).
        Pending = "pending",
        /// Handed to the mail server.
        Sent = "sent",
        /// Given up on after its retries; an operator may requeue it.
        Failed = "failed",
        /// Not sent, on purpose (a loop, a rate limit); the reason is kept beside it.
        Suppressed = "suppressed",
    }
}

stored_words! {
    /// Where a durable timer stands.
    TimerStatus {
        /// Armed, waiting for its time.
        Pending = "pending",
        /// Fired.
        Fired = "fired",
        /// Disarmed, because the case moved on.
        Cancelled = "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_its_variant() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(*kind));
        }
        for status in OutboxStatus::ALL {
            assert_eq!(OutboxStatus::parse(status.as_str()), Some(*status));
        }
        for status in TimerStatus::ALL {
            assert_eq!(TimerStatus::parse(status.as_str()), Some(*status));
        }
        assert_eq!(EventKind::parse("Transition"), None);
    }

    #[test]
    fn serde_uses_the_stored_word() {
        assert_eq!(
            serde_json::to_string(&EventKind::FieldKeyed).unwrap(),
            "\"field_keyed\""
        );
        let status: OutboxStatus = serde_json::from_str("\"sent\"").unwrap();
        assert_eq!(status, OutboxStatus::Sent);
        assert!(serde_json::from_str::<TimerStatus>("\"asleep\"").is_err());
        assert_eq!(format!("[{:<6}]", TimerStatus::Fired), "[fired ]");
    }
}
