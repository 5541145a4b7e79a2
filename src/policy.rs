//! The rules: facts about one form and its email go in, findings come out. Pure, no I/O.
//!
//! A finding is not an error. It is data with a stable code (for filters, reports and tests)
//! and a sentence a practice manager can act on (for the case page and correction emails).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::domain::{EmailAddress, NhsDomains, OdsCode, normalise_role, parse_form_date};
use crate::mail::SenderAuth;
use crate::pdf::SignatureInfo;
use crate::pdf::signature::{Integrity, TrustAnchors, TrustStatus};
use crate::registry::RegistryLookup;
use crate::signatories::{RegisterLookup, SignatoryStanding, claims_primary, standing};
use crate::workflow::{FieldKind, OrganisationKind, WorkflowDef};

/// Every finding's stable code. Renaming a variant is a breaking change for stored cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingCode {
    // Form rules.
    RequiredFieldMissing,
    OdsCodeMalformed,
    OrganisationTypeMismatch,
    EmailMalformed,
    EmailNotNhs,
    DateMalformed,
    ChoiceNotAllowed,
    SignatoryRoleNotAllowed,
    DeclarationNotTicked,
    SignatureDateInFuture,
    SignatureDateTooOld,
    SenderNotNhs,
    SenderNotSignatory,
    SenderNotAuthenticated,
    // Intake: what was (or was not) found in the email.
    NoFormFound,
    FormHasNoFields,
    FormNotRecognised,
    FormIdMissing,
    PdfUnreadable,
    PdfPasswordProtected,
    PdfTooLarge,
    MessageMalformed,
    /// The email named a case it was not allowed to change; it is a case of its own.
    RefersToCase,
    /// A bounce or delivery report that matched no case.
    DeliveryReport,
    /// A Message-ID we had already stored arrived with different bytes.
    MessageIdReused,
    /// More attachments than we read in one email.
    TooManyAttachments,
    /// The ODS code is not in the organisation registry.
    OrganisationUnknown,
    /// The organisation is closed (or dormant, or only proposed) in the registry.
    OrganisationClosed,
    /// The signatory register does not know the signatory for this organisation.
    SignatoryNotKnown,
    /// Signed as an existing Primary User or Primary Contact who is not one in our records.
    SignatoryNotPrimaryUser,
    /// A digital signature on the form does not match the file (altered, damaged or forged).
    DigitalSignatureInvalid,
    /// A digital signature verifies, but its certificate is not one we trust (self-signed,
    /// unknown issuer, expired), or it could not be checked.
    DigitalSignatureNotTrusted,
    /// The form was updated after it was digitally signed, and the update changes its fields.
    FormChangedAfterSigning,
    /// The digital signature is someone else's than the signatory the form names.
    DigitalSignerNotSignatory,
    /// A plain email a workflow took (a support request) fits none of the problems it knows,
    /// or two equally: a caseworker chooses the reply.
    ProblemNotRecognised,
    /// A notification says a user account was made by someone who is not a Primary User of
    /// the organisation in our records (the workflow's `email_checks.primary_user_field`).
    CreatorNotPrimaryUser,
    /// By the Open Exeter account register, none of the organisation's Primary Users can sign
    /// in (passwords expired, unused for 90 days, suspended): nobody there can manage accounts.
    PrimaryUsersLapsed,
}

impl FindingCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingCode::RequiredFieldMissing => "required_field_missing",
            FindingCode::OdsCodeMalformed => "ods_code_malformed",
            FindingCode::OrganisationTypeMismatch => "organisation_type_mismatch",
            FindingCode::EmailMalformed => "email_malformed",
            FindingCode::EmailNotNhs => "email_not_nhs",
            FindingCode::DateMalformed => "date_malformed",
            FindingCode::ChoiceNotAllowed => "choice_not_allowed",
            FindingCode::SignatoryRoleNotAllowed => "signatory_role_not_allowed",
            FindingCode::DeclarationNotTicked => "declaration_not_ticked",
            FindingCode::SignatureDateInFuture => "signature_date_in_future",
            FindingCode::SignatureDateTooOld => "signature_date_too_old",
            FindingCode::SenderNotNhs => "sender_not_nhs",
            FindingCode::SenderNotSignatory => "sender_not_signatory",
            FindingCode::SenderNotAuthenticated => "sender_not_authenticated",
            FindingCode::NoFormFound => "no_form_found",
            FindingCode::FormHasNoFields => "form_has_no_fields",
            FindingCode::FormNotRecognised => "form_not_recognised",
            FindingCode::FormIdMissing => "form_id_missing",
            FindingCode::PdfUnreadable => "pdf_unreadable",
            FindingCode::PdfPasswordProtected => "pdf_password_protected",
            FindingCode::PdfTooLarge => "pdf_too_large",
            FindingCode::MessageMalformed => "message_malformed",
            FindingCode::RefersToCase => "refers_to_case",
            FindingCode::DeliveryReport => "delivery_report",
            FindingCode::MessageIdReused => "message_id_reused",
            FindingCode::TooManyAttachments => "too_many_attachments",
            FindingCode::OrganisationUnknown => "organisation_unknown",
            FindingCode::OrganisationClosed => "organisation_closed",
            FindingCode::SignatoryNotKnown => "signatory_not_known",
            FindingCode::SignatoryNotPrimaryUser => "signatory_not_primary_user",
            FindingCode::DigitalSignatureInvalid => "digital_signature_invalid",
            FindingCode::DigitalSignatureNotTrusted => "digital_signature_not_trusted",
            FindingCode::FormChangedAfterSigning => "form_changed_after_signing",
            FindingCode::DigitalSignerNotSignatory => "digital_signer_not_signatory",
            FindingCode::ProblemNotRecognised => "problem_not_recognised",
            FindingCode::CreatorNotPrimaryUser => "creator_not_primary_user",
            FindingCode::PrimaryUsersLapsed => "primary_users_lapsed",
        }
    }
}

impl FindingCode {
    /// Every finding, in the order the rules meet them.
    pub const ALL: [FindingCode; 37] = [
        FindingCode::RequiredFieldMissing,
        FindingCode::OdsCodeMalformed,
        FindingCode::OrganisationTypeMismatch,
        FindingCode::EmailMalformed,
        FindingCode::EmailNotNhs,
        FindingCode::DateMalformed,
        FindingCode::ChoiceNotAllowed,
        FindingCode::SignatoryRoleNotAllowed,
        FindingCode::DeclarationNotTicked,
        FindingCode::SignatureDateInFuture,
        FindingCode::SignatureDateTooOld,
        FindingCode::SenderNotNhs,
        FindingCode::SenderNotSignatory,
        FindingCode::SenderNotAuthenticated,
        FindingCode::NoFormFound,
        FindingCode::FormHasNoFields,
        FindingCode::FormNotRecognised,
        FindingCode::FormIdMissing,
        FindingCode::PdfUnreadable,
        FindingCode::PdfPasswordProtected,
        FindingCode::PdfTooLarge,
        FindingCode::MessageMalformed,
        FindingCode::RefersToCase,
        FindingCode::DeliveryReport,
        FindingCode::MessageIdReused,
        FindingCode::TooManyAttachments,
        FindingCode::OrganisationUnknown,
        FindingCode::OrganisationClosed,
        FindingCode::SignatoryNotKnown,
        FindingCode::SignatoryNotPrimaryUser,
        FindingCode::DigitalSignatureInvalid,
        FindingCode::DigitalSignatureNotTrusted,
        FindingCode::FormChangedAfterSigning,
        FindingCode::DigitalSignerNotSignatory,
        FindingCode::ProblemNotRecognised,
        FindingCode::CreatorNotPrimaryUser,
        FindingCode::PrimaryUsersLapsed,
    ];

    /// The finding's code as stored, back to the finding (None for a code no rule has).
    pub fn parse(code: &str) -> Option<FindingCode> {
        Self::ALL.into_iter().find(|f| f.as_str() == code)
    }

    /// A short name for staff, in plain English: what the queue's filter, its rows and the
    /// reports show instead of the stored code.
    pub fn label(self) -> &'static str {
        match self {
            FindingCode::RequiredFieldMissing => "A required field is empty",
            FindingCode::OdsCodeMalformed => "ODS code not valid",
            FindingCode::OrganisationTypeMismatch => "Wrong form for this kind of organisation",
            FindingCode::EmailMalformed => "Email address not valid",
            FindingCode::EmailNotNhs => "Email address not an NHS address",
            FindingCode::DateMalformed => "Date not valid",
            FindingCode::ChoiceNotAllowed => "Choice not one of the options",
            FindingCode::SignatoryRoleNotAllowed => "Signatory not authorised to sign",
            FindingCode::DeclarationNotTicked => "Declaration not ticked",
            FindingCode::SignatureDateInFuture => "Signed in the future",
            FindingCode::SignatureDateTooOld => "Signed too long ago",
            FindingCode::SenderNotNhs => "Sent from outside the NHS",
            FindingCode::SenderNotSignatory => "Not sent by the signatory",
            FindingCode::SenderNotAuthenticated => "Sender not authenticated",
            FindingCode::NoFormFound => "No form attached",
            FindingCode::FormHasNoFields => "Form has no fillable fields",
            FindingCode::FormNotRecognised => "Form not recognised",
            FindingCode::FormIdMissing => "Form has no form ID",
            FindingCode::PdfUnreadable => "PDF cannot be read",
            FindingCode::PdfPasswordProtected => "PDF is password protected",
            FindingCode::PdfTooLarge => "PDF too large",
            FindingCode::MessageMalformed => "Email cannot be read",
            FindingCode::RefersToCase => "Mentions another case",
            FindingCode::DeliveryReport => "A delivery report (bounce)",
            FindingCode::MessageIdReused => "Message-ID reused by other mail",
            FindingCode::TooManyAttachments => "Too many attachments",
            FindingCode::OrganisationUnknown => "Organisation not in the ODS register",
            FindingCode::OrganisationClosed => "Organisation closed",
            FindingCode::SignatoryNotKnown => "Signatory not known: verify them",
            FindingCode::SignatoryNotPrimaryUser => "Signatory is not a Primary User in our records",
            FindingCode::DigitalSignatureInvalid => "Digital signature does not match the form",
            FindingCode::DigitalSignatureNotTrusted => "Digital signature not from a trusted certificate",
            FindingCode::FormChangedAfterSigning => "Form changed after it was signed",
            FindingCode::DigitalSignerNotSignatory => "Digitally signed by someone other than the signatory",
            FindingCode::ProblemNotRecognised => "Problem not recognised",
            FindingCode::CreatorNotPrimaryUser => "Account made by someone not a Primary User",
            FindingCode::PrimaryUsersLapsed => "No Primary User can sign in",
        }
    }
}

/// The plain-English label of a stored finding code (the code itself if no rule has it).
pub fn finding_label(code: &str) -> String {
    FindingCode::parse(code).map_or_else(|| code.replace('_', " "), |f| f.label().to_string())
}

impl FindingCode {
    /// What the finding asks of the sender, in our own words only. Mail we send quotes this,
    /// never the finding's own message, which may repeat text from the form or the email.
    pub fn guidance(self) -> &'static str {
        match self {
            FindingCode::RequiredFieldMissing => "A required field of the form is empty. Please complete it.",
            FindingCode::OdsCodeMalformed => "The ODS code is not in the right format. Please check it.",
            FindingCode::OrganisationTypeMismatch => {
                "The ODS code does not match the kind of organisation this form is for. Please use the right form."
            }
            FindingCode::EmailMalformed => "An email address on the form is not a valid address. Please check it.",
            FindingCode::EmailNotNhs => {
                "An email address on the form is not an NHS address. Please give an NHS address."
            }
            FindingCode::DateMalformed => "A date on the form is not in the format DD/MM/YYYY. Please correct it.",
            FindingCode::ChoiceNotAllowed => {
                "A choice on the form is not one of the options offered. Please choose one of them."
            }
            FindingCode::SignatoryRoleNotAllowed => {
                "The form must be signed by an authorised signatory for your organisation. Please have one of them sign it."
            }
            FindingCode::DeclarationNotTicked => "The signatory's declaration is not ticked. Please tick it.",
            FindingCode::SignatureDateInFuture => "The date the form was signed is in the future. Please correct it.",
            FindingCode::SignatureDateTooOld => "The form was signed too long ago. Please sign and date it again.",
            FindingCode::SenderNotNhs => "Forms must be sent from an NHS email address.",
            FindingCode::SenderNotSignatory => "The form must be sent by its signatory.",
            FindingCode::SenderNotAuthenticated => {
                "We could not confirm that the email came from the address it shows."
            }
            FindingCode::NoFormFound => "No access-request form was attached. Please attach the completed PDF form.",
            FindingCode::FormHasNoFields => {
                "The form's boxes cannot be read by our system (it was printed, flattened or scanned), so we will read it by hand, which can take a little longer. Next time, please fill the form in on screen and send the PDF itself."
            }
            FindingCode::FormNotRecognised => {
                "The attachment is not one of our current forms. Please use the current form."
            }
            FindingCode::FormIdMissing => "The form does not say which form it is. Please use the current form.",
            FindingCode::PdfUnreadable => {
                "An attachment could not be read. Please send the form again as a normal PDF."
            }
            FindingCode::PdfPasswordProtected => {
                "An attachment is protected by a password. Please send the form again without a password."
            }
            FindingCode::PdfTooLarge => "An attachment is too large. Please send the form on its own.",
            FindingCode::MessageMalformed => "Your email could not be read as written. Please send it again.",
            FindingCode::RefersToCase => "Your email will be looked at by a caseworker.",
            FindingCode::DeliveryReport => "This was a delivery report.",
            FindingCode::MessageIdReused => "Your email will be looked at by a caseworker.",
            FindingCode::OrganisationUnknown => {
                "The ODS code on the form is not one we can find in the NHS organisation register. Please check it."
            }
            FindingCode::OrganisationClosed => {
                "The NHS organisation register lists this organisation as closed. Please check the ODS code."
            }
            FindingCode::SignatoryNotKnown => {
                "We need to confirm the signatory before we go on, and may contact your organisation to do so."
            }
            FindingCode::SignatoryNotPrimaryUser => {
                "The form is signed as an existing Primary User or Primary Contact, but our records do not show the signatory as one for your organisation. Please have another authorised signatory sign it."
            }
            FindingCode::TooManyAttachments => {
                "Your email had more attachments than we can take. Please send each form on its own."
            }
            FindingCode::DigitalSignatureInvalid => {
                "The digital signature on the form does not match the form as we received it. Please sign the completed form again and send it without changing it afterwards."
            }
            FindingCode::DigitalSignatureNotTrusted => {
                "We could not confirm the certificate behind the form's digital signature, so a caseworker will check the signatory another way."
            }
            FindingCode::FormChangedAfterSigning => {
                "The form was changed after it was signed. Please make any changes first, then have the signatory sign the final form."
            }
            FindingCode::DigitalSignerNotSignatory => {
                "The form's digital signature is not that of the signatory named on it. The named signatory must sign the form themselves."
            }
            FindingCode::ProblemNotRecognised => {
                "We could not tell from your email which problem you have, so one of our team will read it and reply."
            }
            FindingCode::CreatorNotPrimaryUser => {
                "The new account was set up by someone who is not a Primary User of the organisation in our records, so we will check with the organisation before authorising it."
            }
            FindingCode::PrimaryUsersLapsed => {
                "None of your organisation's Primary Users can sign in to Open Exeter at the moment, so nobody can manage your colleagues' accounts. We will help you restore access."
            }
        }
    }
}

/// One thing wrong with a case, for a person to act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub code: FindingCode,
    /// The form field it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn new(code: FindingCode, message: impl Into<String>) -> Self {
        Finding {
            code,
            field: None,
            message: message.into(),
        }
    }

    pub fn on_field(code: FindingCode, field: &str, message: impl Into<String>) -> Self {
        Finding {
            code,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// Settings the rules need that are not part of a workflow.
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    pub nhs_domains: NhsDomains,
    /// The certificates trusted to vouch for digital signatures on forms.
    pub trust_anchors: TrustAnchors,
}

/// Everything the rules look at for one form.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub workflow: &'a WorkflowDef,
    /// Field values by the workflow's field name (aliases already resolved).
    pub fields: &'a BTreeMap<String, String>,
    /// The email's From address, as written.
    pub sender: Option<&'a str>,
    pub sender_auth: &'a SenderAuth,
    /// Today in England, for date rules.
    pub today: NaiveDate,
}

/// Runs every rule of the workflow over the facts. The order of findings is stable: required
/// fields first, then field formats, then the signatory and the sender.
pub fn check(facts: &Facts<'_>, settings: &PolicySettings) -> Vec<Finding> {
    let mut findings = Vec::new();
    check_fields(facts, settings, Route::Form, &mut findings);
    check_organisation_type(facts, &mut findings);
    check_signatory(facts, &mut findings);
    check_sender(facts, settings, Route::Form, &mut findings);
    findings
}

/// The rules for a plain email a workflow took (no form): its fields' formats and the sender,
/// as the workflow declares them, and the class it was sorted into (`class`: `Some(None)`
/// when the workflow sorts its emails and this one fitted no class).
pub fn check_plain_email(facts: &Facts<'_>, settings: &PolicySettings, class: Option<Option<&str>>) -> Vec<Finding> {
    let mut findings = Vec::new();
    check_fields(facts, settings, Route::Email, &mut findings);
    check_sender(facts, settings, Route::Email, &mut findings);
    if class == Some(None) {
        findings.push(Finding::new(
            FindingCode::ProblemNotRecognised,
            "The email fits none of the problems this workflow knows (or two of them equally), so no reply is proposed: choose the problem, or write the reply.",
        ));
    }
    findings
}

/// A plain email's word checked against our records: the organisation it names (known and
/// open, when a registry is imported), and the person its workflow says must be one of the
/// organisation's Primary Users (`email_checks.primary_user_field`, by email address).
pub fn check_plain_email_against_records(
    workflow: &WorkflowDef,
    fields: &BTreeMap<String, String>,
    sender: Option<&str>,
    registry: &RegistryLookup,
    register: &RegisterLookup,
    today: NaiveDate,
    findings: &mut Vec<Finding>,
) {
    check_against_registry(workflow, fields, registry, today, findings);
    if workflow.email_checks.sender_is_signatory {
        check_sender_is_signatory(workflow, fields, sender, register, findings);
    }
    let Some(field) = workflow.email_checks.primary_user_field.as_deref() else {
        return;
    };
    let text = |name: &str| fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (Some(creator), Some(code)) = (text(field), text("org_ods_code")) else {
        // A missing value is the required-field rule's finding.
        return;
    };
    let label = workflow.field(field).map(|f| f.label.as_str()).unwrap_or(field);
    if standing(register, None, Some(creator), true) != SignatoryStanding::Known {
        findings.push(Finding::on_field(
            FindingCode::CreatorNotPrimaryUser,
            field,
            format!("{label} {creator} is not a Primary User of {code} in our records: check with the organisation before authorising."),
        ));
    }
}

/// The register's entry for the sender of a request by email, among the organisation's
/// signatories: by address, the only proof an email has.
pub fn sender_in_register<'r>(
    sender: Option<&str>,
    register: &'r RegisterLookup,
) -> Option<&'r crate::signatories::KnownSignatory> {
    let sender = sender.map(str::trim).filter(|s| !s.is_empty())?;
    register.of_organisation.iter().find(|s| {
        s.email
            .as_deref()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(sender))
    })
}

/// A request by plain email stands in for a signed form only from a known signatory of the
/// organisation, with a role the workflow allows (seed 001: "sent ... by one of the following
/// authorised signatories").
fn check_sender_is_signatory(
    workflow: &WorkflowDef,
    fields: &BTreeMap<String, String>,
    sender: Option<&str>,
    register: &RegisterLookup,
    findings: &mut Vec<Finding>,
) {
    let Some(code) = fields.get("org_ods_code").map(|c| c.trim()).filter(|c| !c.is_empty()) else {
        return;
    };
    let who = sender.unwrap_or("an unknown sender");
    match sender_in_register(sender, register) {
        None => findings.push(Finding::new(
            FindingCode::SignatoryNotKnown,
            format!("{who} is not a known signatory of {code} in our records, and a request by email needs one: verify them, or ask for the signed form."),
        )),
        Some(known) if match_signatory_role(workflow, &known.role).is_none() => {
            let allowed: Vec<&str> = workflow.signatories.roles.iter().map(|r| r.role.as_str()).collect();
            findings.push(Finding::new(
                FindingCode::SignatoryRoleNotAllowed,
                format!(
                    "{who} is known to us as {} of {code}, who cannot ask for this. It must come from one of: {}.",
                    known.role,
                    allowed.join(", ")
                ),
            ));
        }
        Some(_) => {}
    }
}

fn value<'a>(facts: &'a Facts<'_>, name: &str) -> Option<&'a str> {
    facts.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A checkbox's value is its export value when ticked; `Off` (or nothing) when not.
pub fn checkbox_is_ticked(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !v.is_empty() && !["off", "no", "false", "0", "unchecked"].contains(&v.to_ascii_lowercase().as_str())
    })
}

/// How a case's request arrived: on a form, or in a plain email's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Form,
    Email,
}

fn check_fields(facts: &Facts<'_>, settings: &PolicySettings, route: Route, findings: &mut Vec<Finding>) {
    for field in &facts.workflow.fields {
        let given = value(facts, &field.name);
        if field.kind == FieldKind::Checkbox {
            // A checkbox's presence is its tick; the declaration rule speaks for it.
            continue;
        }
        let Some(text) = given else {
            let required = match route {
                Route::Form => field.required,
                Route::Email => facts.workflow.required_by_email(field),
            };
            if required && field.kind != FieldKind::Signature {
                let message = match route {
                    Route::Form => format!("“{}” is empty. Please fill it in and send the form again.", field.label),
                    Route::Email => format!(
                        "The email does not give “{0}”. Please send it again with a line “{0}: …”.",
                        field.label
                    ),
                };
                findings.push(Finding::on_field(
                    FindingCode::RequiredFieldMissing,
                    &field.name,
                    message,
                ));
            }
            continue;
        };
        match field.kind {
            FieldKind::OdsCode if OdsCode::parse(text).is_none() => findings.push(Finding::on_field(
                FindingCode::OdsCodeMalformed,
                &field.name,
                format!("“{text}” is not an ODS code. An ODS code is 3 to 6 letters and numbers, for example A81001 for a GP practice."),
            )),
            FieldKind::Email => match EmailAddress::parse(text) {
                None => findings.push(Finding::on_field(
                    FindingCode::EmailMalformed,
                    &field.name,
                    format!("“{text}” in “{}” is not an email address.", field.label),
                )),
                Some(address) => {
                    if facts.workflow.nhs_email.fields.contains(&field.name) && !settings.nhs_domains.contains(&address) {
                        findings.push(Finding::on_field(
                            FindingCode::EmailNotNhs,
                            &field.name,
                            format!("“{}” must be an NHS email address (such as name@nhs.net), not {address}.", field.label),
                        ));
                    }
                }
            },
            FieldKind::Date if parse_form_date(text).is_none() => findings.push(Finding::on_field(
                FindingCode::DateMalformed,
                &field.name,
                format!("“{text}” in “{}” is not a date. Please write it as DD/MM/YYYY.", field.label),
            )),
            // The signatory role has its own, more helpful, rule.
            FieldKind::Choice if field.name != facts.workflow.signatories.role_field => {
                let wanted = normalise_role(text);
                if !field.options.iter().any(|o| normalise_role(o) == wanted) {
                    findings.push(Finding::on_field(
                        FindingCode::ChoiceNotAllowed,
                        &field.name,
                        format!("“{text}” is not one of the choices for “{}”: {}.", field.label, field.options.join(", ")),
                    ));
                }
            }
            _ => {}
        }
    }
}

fn check_organisation_type(facts: &Facts<'_>, findings: &mut Vec<Finding>) {
    let Some(code) = value(facts, "org_ods_code").and_then(OdsCode::parse) else {
        return;
    };
    findings.extend(type_mismatch(
        facts.workflow.organisation_kind,
        &code,
        code.is_gp_practice(),
        false,
    ));
}

/// The finding when a form is for the wrong kind of organisation: `is_gp` from the
/// registry when it knows the code, otherwise from the code's pattern.
fn type_mismatch(kind: OrganisationKind, code: &OdsCode, is_gp: bool, by_registry: bool) -> Option<Finding> {
    let how = if by_registry {
        "according to the NHS organisation register"
    } else {
        "a letter and five digits"
    };
    let message = match (kind, is_gp) {
        (OrganisationKind::GpPractice, false) => format!(
            "{code} is not a GP practice ({how}), but this is the GP practice form. Other organisations should use the form for other organisations."
        ),
        (OrganisationKind::Other, true) => format!(
            "{code} is a GP practice ({how}), but this is the form for other organisations. GP practices should use the GP practice form."
        ),
        _ => return None,
    };
    Some(Finding::on_field(
        FindingCode::OrganisationTypeMismatch,
        "org_ods_code",
        message,
    ))
}

/// The registry's word on the form's organisation, added to the findings `check` made: a code
/// the registry does not hold, or an organisation it lists as closed, is a finding; and where
/// it knows the code, whether the organisation is a GP practice comes from it rather than
/// from the code's pattern. A registry never imported says nothing.
pub fn check_against_registry(
    workflow: &WorkflowDef,
    fields: &BTreeMap<String, String>,
    lookup: &RegistryLookup,
    today: NaiveDate,
    findings: &mut Vec<Finding>,
) {
    let Some(code) = fields.get("org_ods_code").and_then(|c| OdsCode::parse(c)) else {
        return;
    };
    match lookup {
        RegistryLookup::NotLoaded => {}
        RegistryLookup::Unknown => findings.push(Finding::on_field(
            FindingCode::OrganisationUnknown,
            "org_ods_code",
            format!("{code} is not in the NHS organisation register (ODS): check the code with the sender."),
        )),
        RegistryLookup::Known(org) => {
            if !org.is_open(today) {
                let since = org
                    .closed_on
                    .map(|d| format!(" since {}", d.format("%-d %B %Y")))
                    .unwrap_or_default();
                findings.push(Finding::on_field(
                    FindingCode::OrganisationClosed,
                    "org_ods_code",
                    format!(
                        "{code} is {}{since} in the NHS organisation register.",
                        org.status.as_str()
                    ),
                ));
            }
            findings.retain(|f| f.code != FindingCode::OrganisationTypeMismatch);
            findings.extend(type_mismatch(workflow.organisation_kind, &code, org.gp_practice, true));
        }
    }
}

/// The signatory register's word on the form's signatory: one who signs as an existing
/// Primary User or Primary Contact must be one in our records for the organisation; any
/// other must be known to the register (once it holds anyone). A role the workflow does not
/// allow is `check`'s finding already, and is not looked up.
pub fn check_against_register(
    workflow: &WorkflowDef,
    fields: &BTreeMap<String, String>,
    lookup: &RegisterLookup,
    findings: &mut Vec<Finding>,
) {
    let s = &workflow.signatories;
    let text = |field: &str| fields.get(field).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (Some(code), Some(role)) = (
        text("org_ods_code").and_then(OdsCode::parse),
        text(&s.role_field).and_then(|r| match_signatory_role(workflow, r)),
    ) else {
        return;
    };
    let name = text(&s.name_field);
    let email = text(&s.email_field);
    let who = name.or(email).unwrap_or("the signatory");
    match standing(lookup, name, email, claims_primary(role)) {
        SignatoryStanding::Known | SignatoryStanding::Unchecked => {}
        SignatoryStanding::NotAPrimaryUser => findings.push(Finding::on_field(
            FindingCode::SignatoryNotPrimaryUser,
            &s.role_field,
            format!("{who} signed as {role} of {code}, but our records hold no such Primary User or Primary Contact for it."),
        )),
        SignatoryStanding::NotKnown => findings.push(Finding::on_field(
            FindingCode::SignatoryNotKnown,
            &s.name_field,
            format!("{who} ({role}) is not a known signatory of {code}: verify them (for example by phoning the organisation) and record how on the case."),
        )),
    }
}

/// The findings a form's digital signatures call for, once [`crate::pdf::signature`] has
/// checked them against the file and the trust store: `signatory` is the name typed as the
/// form's signatory, which an intact signature's certificate must name too. An unsigned
/// signature field (the signature is optional) calls for none.
pub fn check_digital_signatures(signatures: &[SignatureInfo], signatory: Option<&str>, findings: &mut Vec<Finding>) {
    for signature in signatures.iter().filter(|s| s.signed) {
        let field = signature.field.as_str();
        let Some(check) = &signature.verification else {
            findings.push(Finding::on_field(
                FindingCode::DigitalSignatureNotTrusted,
                field,
                "The form carries a digital signature that was not checked.",
            ));
            continue;
        };
        match &check.integrity {
            Integrity::Broken { reason } => findings.push(Finding::on_field(
                FindingCode::DigitalSignatureInvalid,
                field,
                format!("The digital signature does not match the form: {reason}."),
            )),
            Integrity::Unsupported { reason } => findings.push(Finding::on_field(
                FindingCode::DigitalSignatureNotTrusted,
                field,
                format!("The digital signature could not be checked: {reason}."),
            )),
            Integrity::Intact => {
                if let (Some(signer), Some(typed)) = (check.signer(), signatory.filter(|t| !t.trim().is_empty()))
                    && !same_person(signer, typed)
                {
                    findings.push(Finding::on_field(
                        FindingCode::DigitalSignerNotSignatory,
                        field,
                        format!(
                            "The form is digitally signed by {signer}, but names {} as its signatory.",
                            typed.trim()
                        ),
                    ));
                }
                match &check.trust {
                    Some(trust) if trust.status == TrustStatus::Trusted => {}
                    Some(trust) => findings.push(Finding::on_field(
                        FindingCode::DigitalSignatureNotTrusted,
                        field,
                        format!("The digital signature is intact, but {}.", trust.detail),
                    )),
                    None => findings.push(Finding::on_field(
                        FindingCode::DigitalSignatureNotTrusted,
                        field,
                        "The digital signature is intact, but its certificate was not checked against the trust store.",
                    )),
                }
            }
        }
        if let Some(later) = &check.later_revisions {
            if !later.signed_revision_readable {
                findings.push(Finding::on_field(
                    FindingCode::FormChangedAfterSigning,
                    field,
                    format!(
                        "{} bytes were added after the form was signed, and the signed version cannot be read to compare.",
                        later.bytes_after_signing
                    ),
                ));
            } else if !later.changed_fields.is_empty() {
                findings.push(Finding::on_field(
                    FindingCode::FormChangedAfterSigning,
                    field,
                    format!(
                        "The form was changed after it was signed: {} now differ from what the signatory signed.",
                        later.changed_fields.join(", ")
                    ),
                ));
            }
        }
    }
}

/// Whether a certificate's name and a typed name are the same person's: compared without
/// case, punctuation or titles ("Dr. Jane  Signer" is "jane signer"), word for word.
fn same_person(a: &str, b: &str) -> bool {
    const TITLES: [&str; 10] = [
        "dr",
        "mr",
        "mrs",
        "ms",
        "miss",
        "mx",
        "prof",
        "professor",
        "sir",
        "dame",
    ];
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .filter(|w| !TITLES.contains(&w.as_str()))
            .collect()
    };
    let (a, b) = (words(a), words(b));
    !a.is_empty() && a == b
}

/// Matches a typed role against the workflow's roles and their synonyms, tolerant of case,
/// spacing and punctuation. Returns the canonical role.
pub fn match_signatory_role<'w>(workflow: &'w WorkflowDef, typed: &str) -> Option<&'w str> {
    // Compared without spaces too, so "G.P. Partner" and "GP Partner" are the same role.
    let compact = |text: &str| normalise_role(text).replace(' ', "");
    let wanted = compact(typed);
    if wanted.is_empty() {
        return None;
    }
    workflow
        .signatories
        .roles
        .iter()
        .find(|r| compact(&r.role) == wanted || r.synonyms.iter().any(|s| compact(s) == wanted))
        .map(|r| r.role.as_str())
}

fn check_signatory(facts: &Facts<'_>, findings: &mut Vec<Finding>) {
    let s = &facts.workflow.signatories;
    if let Some(role) = value(facts, &s.role_field)
        && match_signatory_role(facts.workflow, role).is_none()
    {
        let allowed: Vec<&str> = s.roles.iter().map(|r| r.role.as_str()).collect();
        findings.push(Finding::on_field(
            FindingCode::SignatoryRoleNotAllowed,
            &s.role_field,
            format!(
                "A {role} cannot sign this form. It must be signed by one of: {}.",
                allowed.join(", ")
            ),
        ));
    }
    if !checkbox_is_ticked(facts.fields.get(&s.declaration_field).map(String::as_str)) {
        findings.push(Finding::on_field(
            FindingCode::DeclarationNotTicked,
            &s.declaration_field,
            "The signatory has not ticked the declaration that they are an authorised signatory. Please tick it and send the form again.",
        ));
    }
    if let Some(date) = value(facts, &s.date_field).and_then(parse_form_date) {
        if date > facts.today {
            findings.push(Finding::on_field(
                FindingCode::SignatureDateInFuture,
                &s.date_field,
                format!(
                    "The form is dated {}, which is in the future. Please date it the day it is signed.",
                    date.format("%d/%m/%Y")
                ),
            ));
        } else if (facts.today - date).num_days() > i64::from(s.max_age_days) {
            findings.push(Finding::on_field(
                FindingCode::SignatureDateTooOld,
                &s.date_field,
                format!(
                    "The form was signed on {}, more than {} days ago. Please have it signed again.",
                    date.format("%d/%m/%Y"),
                    s.max_age_days
                ),
            ));
        }
    }
}

fn check_sender(facts: &Facts<'_>, settings: &PolicySettings, route: Route, findings: &mut Vec<Finding>) {
    let rule = &facts.workflow.nhs_email;
    let sender = facts.sender.and_then(EmailAddress::parse);
    if rule.sender {
        match &sender {
            Some(address) if settings.nhs_domains.contains(address) => {}
            Some(address) => findings.push(Finding::new(
                FindingCode::SenderNotNhs,
                format!("The form was emailed from {address}. It must be sent from an NHS email address (such as name@nhs.net)."),
            )),
            None => findings.push(Finding::new(
                FindingCode::SenderNotNhs,
                "The email has no readable sender address, so we cannot tell that it came from an NHS address.",
            )),
        }
    }
    // By email the sender is the signatory: the register is asked who they are instead
    // (`email_checks.sender_is_signatory`).
    if rule.sender_must_be_signatory && route == Route::Form {
        let signatory = value(facts, &facts.workflow.signatories.email_field).and_then(EmailAddress::parse);
        let same = matches!((&sender, &signatory), (Some(a), Some(b)) if a.same_mailbox(b));
        if !same {
            findings.push(Finding::new(
                FindingCode::SenderNotSignatory,
                "This request must be emailed by the signatory themselves, from the address given as the signatory's email.",
            ));
        }
    }
    if let SenderAuth::Temporary { reason } = facts.sender_auth {
        findings.push(Finding::new(
            FindingCode::SenderNotAuthenticated,
            format!("We have not been able to confirm yet that the email really came from the sender's organisation ({reason})."),
        ));
    }
    if let SenderAuth::Fail { reason } | SenderAuth::Missing { reason } = facts.sender_auth {
        findings.push(Finding::new(
            FindingCode::SenderNotAuthenticated,
            format!("We could not confirm that the email really came from the sender's organisation ({reason}). Please send it again from your NHS mailbox."),
        ));
    }
}

#[cfg(test)]
mod tests;
