//! Replies: whether an email that names an existing case may change it, and what each of its
//! forms does. Pure: facts in, a decision out; the engine applies it in the intake transaction.
//!
//! Anyone can put a case reference in a subject or an `In-Reply-To` header, and anyone can
//! write any `From:`. So mail is attached to a case only when it is authenticated *and* comes
//! from the case's own sender or its signatory. Anything else that names a case becomes a case
//! of its own, linked to the one it named, for a caseworker to look at; it never changes the
//! case it names.

/// Who an email is from, as far as we can prove it.
#[derive(Debug, Clone, Copy)]
pub struct ReplySender<'a> {
    pub address: Option<&'a str>,
    /// The sender's domain passed authentication (DMARC, or aligned DKIM) at our server.
    pub authenticated: bool,
}

/// The people a case already belongs to.
#[derive(Debug, Clone, Copy)]
pub struct CaseParties<'a> {
    /// The From address of the email that opened the case.
    pub sender: Option<&'a str>,
    /// The signatory's email address, as the form gave it.
    pub signatory: Option<&'a str>,
}

/// Why an email may not change the case it names; `Ok` when it may.
pub fn may_change(from: ReplySender<'_>, case: CaseParties<'_>) -> Result<(), String> {
    if !from.authenticated {
        return Err("the sender could not be authenticated".into());
    }
    let Some(address) = from.address.map(str::trim).filter(|a| !a.is_empty()) else {
        return Err("the email has no sender address".into());
    };
    let same = |known: Option<&str>| known.is_some_and(|k| k.trim().eq_ignore_ascii_case(address));
    if same(case.sender) || same(case.signatory) {
        Ok(())
    } else {
        Err(format!("{address} is neither the case's sender nor its signatory"))
    }
}

/// What one form in an attached reply does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormFate {
    /// It replaces the case's form: the checks run again, earlier decisions are void.
    Replace,
    /// The case had no form yet ("sorry, now attached"): it is classified and checked as if
    /// the form had come first.
    Classify,
    /// A different request (another workflow, or a second form): a case of its own, linked.
    Separate,
    /// The case may not take it: a case of its own, linked, with a finding saying why.
    Refused { why: String },
}

/// The case a form of `form_workflow` arrives in reply to.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTarget<'a> {
    pub workflow: Option<&'a str>,
    pub state: &'a str,
    /// The states in which the case's workflow takes a replacement form.
    pub replaceable_in: &'a [String],
}

/// One case per form: at most one form of a reply lands on the case (`already_taken` is
/// true once one has); every other form opens a case of its own.
pub fn form_fate(target: ReplyTarget<'_>, form_workflow: &str, already_taken: bool) -> FormFate {
    if already_taken {
        return FormFate::Separate;
    }
    match target.workflow {
        None => FormFate::Classify,
        Some(workflow) if workflow != form_workflow => FormFate::Separate,
        Some(_) if target.replaceable_in.iter().any(|s| s == target.state) => FormFate::Replace,
        Some(_) => FormFate::Refused {
            why: format!(
                "the case is {}, and its fields never change by mail after authorisation",
                target.state
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTIES: CaseParties<'static> = CaseParties {
        sender: Some("manager@practice.nhs.net"),
        signatory: Some("dr.lead@nhs.net"),
    };

    fn from(address: &'static str, authenticated: bool) -> ReplySender<'static> {
        ReplySender {
            address: Some(address),
            authenticated,
        }
    }

    #[test]
    fn an_authenticated_reply_from_the_sender_or_the_signatory_may_change_the_case() {
        assert_eq!(may_change(from("manager@practice.nhs.net", true), PARTIES), Ok(()));
        assert_eq!(may_change(from("Dr.Lead@NHS.net", true), PARTIES), Ok(()));
    }

    #[test]
    fn an_unauthenticated_reply_never_changes_the_case_even_from_its_sender() {
        let refused = may_change(from("manager@practice.nhs.net", false), PARTIES).unwrap_err();
        assert!(refused.contains("authenticated"), "{refused}");
    }

    #[test]
    fn another_mailbox_in_the_same_domain_is_not_the_sender() {
        let refused = may_change(from("anyone.at.all@nhs.net", true), PARTIES).unwrap_err();
        assert!(refused.contains("neither"), "{refused}");
        assert!(
            may_change(
                ReplySender {
                    address: None,
                    authenticated: true
                },
                PARTIES
            )
            .is_err()
        );
    }

    fn target(
        workflow: Option<&'static str>,
        state: &'static str,
        replaceable: &'static [String],
    ) -> ReplyTarget<'static> {
        ReplyTarget {
            workflow,
            state,
            replaceable_in: replaceable,
        }
    }

    #[test]
    fn a_form_replaces_only_before_authorisation_and_only_in_its_own_workflow() {
        let states: &'static [String] = Box::leak(
            ["received", "needs_review", "validated", "awaiting_information"]
                .map(String::from)
                .to_vec()
                .into_boxed_slice(),
        );
        for state in ["received", "needs_review", "validated", "awaiting_information"] {
            assert_eq!(
                form_fate(target(Some("gp"), state, states), "gp", false),
                FormFate::Replace
            );
        }
        for state in ["authorised", "provisioned", "closed", "rejected"] {
            assert!(matches!(
                form_fate(target(Some("gp"), state, states), "gp", false),
                FormFate::Refused { .. }
            ));
        }
        assert_eq!(
            form_fate(target(Some("gp"), "validated", states), "ap", false),
            FormFate::Separate
        );
        assert_eq!(
            form_fate(target(Some("gp"), "validated", states), "gp", true),
            FormFate::Separate
        );
    }

    #[test]
    fn a_case_without_a_form_is_classified_by_the_first_form_only() {
        assert_eq!(
            form_fate(target(None, "needs_review", &[]), "gp", false),
            FormFate::Classify
        );
        assert_eq!(
            form_fate(target(None, "needs_review", &[]), "gp", true),
            FormFate::Separate
        );
    }
}
