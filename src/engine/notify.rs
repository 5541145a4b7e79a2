//! The mail a change sends, composed as data: who it goes to, its template context, and
//! whether it must be held back (loop safety, unauthenticated senders). Pure; the outbox row
//! commits with the change.

use std::collections::BTreeMap;

use chrono::Local;

use crate::domain::{EmailAddress, NhsDomains, OdsCode};
use crate::mail::SenderAuth;
use crate::storage::{CaseRecord, NewMail};
use crate::workflow::WorkflowDef;

/// A message the engine queues about a case.
pub struct Notification<'a> {
    pub template: &'a str,
    pub recipient: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// Sent by the system itself (not on a person's decision).
    pub automatic: bool,
    /// The Message-ID of the practice's email, for threading.
    pub in_reply_to: Option<&'a str>,
    /// Set when the case's mail came from a machine (auto-reply, bounce, list, our own).
    pub suppress_because: Option<&'a str>,
}

/// The settings that decide whether mail may go.
pub struct MailPolicy<'a> {
    /// Our own addresses: never written to.
    pub our_addresses: &'a [String],
    pub nhs_domains: &'a NhsDomains,
}

/// Composes a templated email about `case`. Mail that would answer a machine, or that has
/// nobody to go to, is composed as suppressed (and recorded), not dropped. `sender_auth` is
/// the verdict on the email that opened the case.
pub fn compose(
    policy: &MailPolicy<'_>,
    case: &CaseRecord,
    workflow: Option<&WorkflowDef>,
    mail: &Notification<'_>,
    sender_auth: &SenderAuth,
) -> NewMail {
    let our_own = mail
        .recipient
        .is_some_and(|r| policy.our_addresses.iter().any(|o| o.eq_ignore_ascii_case(r)));
    let suppressed = match (mail.suppress_because, mail.recipient) {
        (Some(why), _) if mail.automatic => Some(format!("not answering an automatic message ({why})")),
        (_, None) => Some("there is no address to send it to".to_string()),
        _ if our_own => Some("it would go to our own address".to_string()),
        _ => None,
    };
    // Mail to the practice that nobody decided to send goes only to an NHS address whose
    // sender we authenticated: anyone can put any address in From, and an acknowledgement
    // from pcse.openexeter@nhs.net is worth forging one for. A caseworker can still write.
    let to_sender = mail.recipient.is_some() && mail.recipient == case.sender.as_deref();
    let suppressed = match suppressed {
        None if mail.automatic && to_sender => {
            let nhs = mail
                .recipient
                .and_then(EmailAddress::parse)
                .is_some_and(|a| policy.nhs_domains.contains(&a));
            if !sender_auth.passed() {
                Some(
                    "the sender was not authenticated, so nothing is sent automatically; a caseworker can still write"
                        .to_string(),
                )
            } else if !nhs {
                Some(
                    "the sender is not an NHS address, so nothing is sent automatically; a caseworker can still write"
                        .to_string(),
                )
            } else {
                None
            }
        }
        other => other,
    };
    NewMail {
        template: mail.template.to_string(),
        recipient: mail.recipient.map(str::to_string),
        context_json: context(case, workflow, mail.reason).to_string(),
        message_id: format!("<{}@countersign>", uuid::Uuid::new_v4()),
        in_reply_to: mail.in_reply_to.map(str::to_string),
        suppressed_reason: suppressed,
        automatic: mail.automatic,
    }
}

/// The template's context. Mail quotes no free text from the form or the email: findings in
/// our own words, the ODS code only when it is well formed, and no organisation name.
fn context(case: &CaseRecord, workflow: Option<&WorkflowDef>, reason: Option<&str>) -> serde_json::Value {
    let when = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.with_timezone(&Local).format("%d/%m/%Y %H:%M").to_string())
    };
    // One entry per problem, however many fields have it: a form with twelve empty fields is
    // told once that required fields are empty, with the fields named.
    let mut findings: Vec<(crate::policy::FindingCode, Vec<&str>)> = Vec::new();
    for finding in &case.findings {
        let field = finding
            .field
            .as_deref()
            .and_then(|name| workflow.and_then(|w| w.field(name)))
            .map(|d| d.label.as_str());
        match findings.iter_mut().find(|(code, _)| *code == finding.code) {
            Some((_, fields)) => fields.extend(field.filter(|f| !fields.contains(f))),
            None => findings.push((finding.code, field.into_iter().collect())),
        }
    }
    let findings: Vec<serde_json::Value> = findings
        .into_iter()
        .map(|(code, fields)| {
            serde_json::json!({
                "code": code.as_str(),
                "field": (!fields.is_empty()).then(|| fields.join(", ")),
                "message": code.guidance(),
            })
        })
        .collect();
    let checked_ods = case
        .org_ods_code
        .as_deref()
        .and_then(OdsCode::parse)
        .map(|o| o.as_str().to_string());
    // When the signatory's role was refused: who may sign, in the workflow file's words, and
    // what to do when none of them is there.
    let refused_signatory = case
        .findings
        .iter()
        .any(|f| f.code == crate::policy::FindingCode::SignatoryRoleNotAllowed);
    let who_may_sign = workflow.filter(|_| refused_signatory).map(|w| {
        serde_json::json!({
            "roles": w.signatories.roles.iter().map(|r| r.role.as_str()).collect::<Vec<_>>(),
            "appoint_caldicott_guardian_url": w.signatories.appoint_caldicott_guardian_url,
        })
    });
    serde_json::json!({
        "reason": reason,
        "recorded": case.recorded,
        // The few fields a workflow lets its mail quote (a support reply quotes the smartcard ID
        // it was given), and only when they hold a short identifier: everything else in an
        // email or form is the sender's free text, which our mail never repeats.
        "fields": quotable_fields(workflow, case),
        "findings": findings,
        "who_may_sign": who_may_sign,
        // A case no workflow took yet (an email without a form) is named as what it is.
        "workflow": match workflow {
            Some(workflow) => serde_json::json!({
                "name": workflow.name,
                "title": workflow.title,
                "request": workflow.request_name.as_deref().unwrap_or(&workflow.title),
                "sla_working_days": workflow.sla.target_working_days,
            }),
            None => serde_json::json!({
                "name": null,
                "title": "Open Exeter access request",
                "request": "email",
                "sla_working_days": null,
            }),
        },
        "case": {
            "reference": case.reference,
            "state": case.state,
            "state_label": workflow
                .and_then(|w| w.state(&case.state))
                .map(|s| s.label.as_str())
                .unwrap_or(&case.state),
            "org_ods_code": checked_ods,
            "due_at": when(case.due_at),
            // The date a practice can expect an answer by: the SLA's due date, in words.
            "due_date": case
                .due_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.with_timezone(&Local).format("%A %-d %B %Y").to_string()),
            "updated_at": when(Some(case.updated_at)),
            "created_at": when(Some(case.created_at)),
        },
    })
}

/// The longest body a person may write in place of a template's.
const MAX_OWN_WORDS: usize = 20_000;

/// Puts a person's own words in place of the email's template body (the subject stays the
/// template's): what a caseworker edited after previewing it. Control characters other than
/// line breaks and tabs are dropped; the HTML version escapes it like any value.
pub fn replace_body(mail: &mut NewMail, text: &str) {
    let words: String = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .take(MAX_OWN_WORDS)
        .collect();
    if words.trim().is_empty() {
        return;
    }
    let mut context: serde_json::Value = serde_json::from_str(&mail.context_json).unwrap_or_default();
    if let Some(map) = context.as_object_mut() {
        map.insert(
            "body_override".into(),
            serde_json::Value::String(words.trim().to_string()),
        );
        mail.context_json = context.to_string();
    }
}

/// The case's fields its workflow marks `quote_in_mail`, when each is a short identifier
/// (letters, digits, spaces and hyphens, at most 40): nothing else of what a sender wrote.
fn quotable_fields<'c>(workflow: Option<&WorkflowDef>, case: &'c CaseRecord) -> BTreeMap<&'c str, &'c str> {
    let plain = |v: &str| {
        (1..=40).contains(&v.chars().count()) && v.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-')
    };
    let Some(workflow) = workflow else {
        return BTreeMap::new();
    };
    case.fields
        .iter()
        .filter(|(name, value)| workflow.field(name).is_some_and(|f| f.quote_in_mail) && plain(value))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

/// A template's context for a made-up case of `workflow` received `now`: what the admins'
/// template previews render (two findings, an Open Exeter user ID, the SLA date).
pub fn preview_context(workflow: &WorkflowDef, now: chrono::DateTime<Local>, due_at: i64) -> serde_json::Value {
    let finding = |code: crate::policy::FindingCode, field: &str| crate::policy::Finding {
        code,
        field: workflow.field(field).map(|_| field.to_string()),
        message: String::new(),
    };
    let case = CaseRecord {
        id: 0,
        reference: format!("CS-{}-000123", chrono::Datelike::year(&now)),
        workflow: Some(workflow.name.clone()),
        state: crate::workflow::wellknown::NEEDS_REVIEW.into(),
        version: 1,
        fields: Default::default(),
        findings: vec![
            finding(crate::policy::FindingCode::SignatoryRoleNotAllowed, "signatory_role"),
            finding(crate::policy::FindingCode::RequiredFieldMissing, "user_email"),
        ],
        org_ods_code: Some("A81001".into()),
        org_name: Some("Riverside Surgery".into()),
        sender: Some("practice.manager@nhs.net".into()),
        origin_message_id: 0,
        form_attachment_id: None,
        duplicate_of: None,
        related_case_id: None,
        assignee_id: None,
        recorded: [("open_exeter_user_id".to_string(), "OE123456".to_string())].into(),
        created_at: now.timestamp_millis(),
        updated_at: now.timestamp_millis(),
        due_at: Some(due_at),
        sla_paused_at: None,
    };
    let mut value = context(
        &case,
        Some(workflow),
        Some("(the reason the caseworker gives appears here)"),
    );
    // The digest's figures, for its preview.
    if let Some(map) = value.as_object_mut() {
        for (key, figure) in [
            ("open_total", serde_json::json!(42)),
            ("breached", serde_json::json!(3)),
            ("at_risk", serde_json::json!(5)),
            ("paused", serde_json::json!(7)),
            ("week_from", serde_json::json!("16 November")),
            ("week_to", serde_json::json!("22 November")),
            ("received", serde_json::json!(61)),
            ("completed", serde_json::json!(58)),
            ("percent_within_sla", serde_json::json!("93%")),
            ("reports_link", serde_json::json!("https://countersign.example/reports")),
            // The account lifecycle notices'.
            ("user_id", serde_json::json!("OE123456")),
            ("ods_code", serde_json::json!("A81001")),
            ("days", serde_json::json!(3)),
            ("days_ago", serde_json::json!(4)),
            // A new user's password: its one-time link and, separately, the user name.
            (
                super::credentials::LINK_CONTEXT_KEY,
                serde_json::json!({
                    "link": "https://countersign.example/credential/(a link that works once)",
                    "link_expires": "09:00 on Friday 4 December 2026",
                    "lifetime_days": 30,
                    "expires_on": "Sunday 3 January 2027",
                    "username": "OE123456",
                    "user_address": "new.user@nhs.net",
                }),
            ),
        ] {
            map.insert(key.to_string(), figure);
        }
    }
    value
}

/// What the case page puts in the reason box of a request for information: the mail lists
/// the findings itself, so the reason starts as a sentence that introduces them, never as a
/// copy of them (a practice was once told every problem twice).
pub const SUGGESTED_CORRECTION_REASON: &str = "We have checked your form and it needs correcting before we can go on.";

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk-through found "Thank you for your primary user request: gp practice" and
    /// "your additional permissions for an existing user": mail names the request in words,
    /// and says when to expect an answer.
    #[test]
    fn an_acknowledgement_names_the_request_in_words_and_says_when_to_expect_an_answer() {
        let renderer =
            crate::outbox::render::Renderer::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"))
                .unwrap();
        let mut case = super::super::change::tests_support::case();
        case.due_at = Some(
            chrono::TimeZone::with_ymd_and_hms(&Local, 2026, 11, 27, 10, 0, 0)
                .unwrap()
                .timestamp_millis(),
        );
        for (name, says) in [
            (
                "primary_user_gp",
                "your request for a Primary User account for a GP practice",
            ),
            (
                "additional_permissions",
                "your request for additional permissions for an existing Open Exeter user",
            ),
        ] {
            let workflow = crate::workflow::shipped().get(name).unwrap().clone();
            let mail = renderer
                .render("acknowledgement", &context(&case, Some(&workflow), None))
                .unwrap();
            assert!(mail.text.contains(says), "{name}: {}", mail.text);
            let days = workflow.sla.target_working_days;
            assert!(
                mail.text
                    .contains(&format!("within {days} working days, by Friday 27 November 2026")),
                "{}",
                mail.text
            );
            assert!(
                !mail.text.to_lowercase().contains("request: gp practice"),
                "{}",
                mail.text
            );
        }
    }

    /// A caseworker's own words replace the template's body (not its subject), control
    /// characters dropped; blank words change nothing.
    #[test]
    fn own_words_replace_the_body_but_not_the_subject() {
        let renderer =
            crate::outbox::render::Renderer::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"))
                .unwrap();
        let case = super::super::change::tests_support::case();
        let mut mail = NewMail {
            template: "request_for_correction".into(),
            recipient: Some("gp@nhs.net".into()),
            context_json: context(&case, Some(&workflow()), Some("r")).to_string(),
            message_id: "<m@x>".into(),
            in_reply_to: None,
            automatic: false,
            suppressed_reason: None,
        };
        replace_body(&mut mail, "   ");
        assert!(
            !mail.context_json.contains("body_override"),
            "blank words change nothing"
        );
        replace_body(&mut mail, "Dear Dr Jones,\nPlease sign page 1.\u{0007}");
        let context: serde_json::Value = serde_json::from_str(&mail.context_json).unwrap();
        let rendered = renderer.render("request_for_correction", &context).unwrap();
        assert_eq!(rendered.text, "Dear Dr Jones,\nPlease sign page 1.\n");
        assert!(rendered.subject.contains("[CS-2026-000007]"), "{}", rendered.subject);
        assert!(rendered.html.contains("Please sign page 1."));
    }

    #[test]
    fn a_refused_signatory_is_told_who_may_sign_and_how_to_appoint_a_caldicott_guardian() {
        let renderer =
            crate::outbox::render::Renderer::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"))
                .unwrap();
        let mut case = super::super::change::tests_support::case();
        let workflow = workflow();
        let plain = context(&case, Some(&workflow), Some("r"));
        assert!(plain["who_may_sign"].is_null(), "only when a signatory was refused");
        case.findings = vec![crate::policy::Finding::new(
            crate::policy::FindingCode::SignatoryRoleNotAllowed,
            "Practice Nurse may not sign",
        )];
        let refused = context(&case, Some(&workflow), Some("r"));
        let roles = refused["who_may_sign"]["roles"].as_array().unwrap();
        assert!(roles.iter().any(|r| r == "Caldicott Guardian"), "{roles:?}");
        for template in ["rejection", "request_for_correction"] {
            let text = renderer.render(template, &refused).unwrap().text;
            assert!(
                text.contains("Who may sign this form: Lead GP, GP Partner"),
                "{template}: {text}"
            );
            assert!(text.contains("appoint a Caldicott Guardian"), "{template}: {text}");
            assert!(
                text.contains("https://www.gov.uk/government/groups/uk-caldicott-guardian-council"),
                "{template}: {text}"
            );
            assert!(!text.contains("Practice Nurse"), "our words only: {text}");
        }
    }

    #[test]
    fn a_request_for_correction_names_each_problem_once_with_its_fields() {
        let mut case = super::super::change::tests_support::case();
        let missing = |field: &str| crate::policy::Finding {
            code: crate::policy::FindingCode::RequiredFieldMissing,
            field: Some(field.into()),
            message: format!("{field} is empty"),
        };
        case.findings = vec![missing("org_ods_code"), missing("org_name"), missing("org_ods_code")];
        let context = context(&case, Some(&workflow()), Some(SUGGESTED_CORRECTION_REASON));
        let findings = context["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        let guidance = crate::policy::FindingCode::RequiredFieldMissing.guidance();
        assert_eq!(findings[0]["message"], guidance);
        assert_eq!(
            findings[0]["field"].as_str().unwrap().matches(',').count(),
            1,
            "two fields, each once"
        );
        assert!(
            !context["reason"].as_str().unwrap().contains(guidance),
            "the reason does not repeat it"
        );
    }

    fn workflow() -> WorkflowDef {
        crate::workflow::shipped().get("primary_user_gp").unwrap().clone()
    }

    #[test]
    fn automatic_mail_to_an_unauthenticated_or_non_nhs_sender_is_held_back() {
        let domains = NhsDomains::new(["nhs.net"]);
        let ours = vec!["pcse.openexeter@nhs.net".to_string()];
        let policy = MailPolicy {
            our_addresses: &ours,
            nhs_domains: &domains,
        };
        let pass = SenderAuth::Pass { method: "dkim".into() };
        let unknown = SenderAuth::Missing { reason: "none".into() };
        let mut case = super::super::change::tests_support::case();
        let notice = |recipient: Option<&'static str>, automatic: bool| Notification {
            template: "acknowledgement",
            recipient,
            reason: None,
            automatic,
            in_reply_to: None,
            suppress_because: None,
        };
        let wf = workflow();
        case.sender = Some("gp@nhs.net".into());
        assert_eq!(
            compose(&policy, &case, Some(&wf), &notice(Some("gp@nhs.net"), true), &pass).suppressed_reason,
            None
        );
        assert!(
            compose(&policy, &case, Some(&wf), &notice(Some("gp@nhs.net"), true), &unknown)
                .suppressed_reason
                .is_some()
        );
        // A person's decision is theirs to send.
        assert_eq!(
            compose(&policy, &case, Some(&wf), &notice(Some("gp@nhs.net"), false), &unknown).suppressed_reason,
            None
        );
        case.sender = Some("gp@example.com".into());
        assert!(
            compose(&policy, &case, Some(&wf), &notice(Some("gp@example.com"), true), &pass)
                .suppressed_reason
                .is_some()
        );
        assert!(
            compose(&policy, &case, Some(&wf), &notice(None, false), &pass)
                .suppressed_reason
                .is_some()
        );
        assert!(
            compose(
                &policy,
                &case,
                Some(&wf),
                &notice(Some("PCSE.openexeter@nhs.net"), false),
                &pass
            )
            .suppressed_reason
            .is_some()
        );
    }
}
