//! One test (at least) per rule and per finding: each fails if its rule is removed.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::*;
use crate::workflow::WorkflowSet;

fn workflows() -> WorkflowSet {
    crate::workflow::shipped()
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
}

fn good_gp() -> BTreeMap<String, String> {
    [
        ("form_id", "PU-GP-1"),
        ("org_name", "Riverside Surgery"),
        ("org_ods_code", "A81001"),
        ("user_first_name", "Siân"),
        ("user_last_name", "Ó Briain-Åkesson"),
        ("user_job_title", "Practice Manager"),
        ("user_email", "sian.obriain@nhs.net"),
        ("request_kind", "New"),
        ("signatory_name", "Dr Wyn ap Gruffydd"),
        ("signatory_role", "GP Partner"),
        ("signatory_email", "wyn@nhs.net"),
        ("signatory_date", "10/11/2026"),
        ("signatory_declaration", "Yes"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn good_org() -> BTreeMap<String, String> {
    let mut v = good_gp();
    v.insert("form_id".into(), "PU-ORG-1".into());
    v.insert("org_ods_code".into(), "RX1".into());
    v.insert("signatory_role".into(), "Caldicott Guardian".into());
    v
}

fn good_ap() -> BTreeMap<String, String> {
    let mut v = good_gp();
    v.remove("request_kind");
    v.insert("form_id".into(), "AP-1".into());
    v.insert("user_existing_id".into(), "OE123456".into());
    v.insert("permissions_requested".into(), "Cervical screening".into());
    v.insert("signatory_role".into(), "Lead GP".into());
    v
}

const PASS: SenderAuth = SenderAuth::Pass { method: String::new() };

fn check_with(workflow: &str, fields: &BTreeMap<String, String>, sender: &str, auth: &SenderAuth) -> Vec<Finding> {
    let set = workflows();
    let facts = Facts {
        workflow: set.get(workflow).unwrap(),
        fields,
        sender: Some(sender),
        sender_auth: auth,
        today: today(),
    };
    check(&facts, &PolicySettings::default())
}

fn codes(workflow: &str, fields: &BTreeMap<String, String>) -> Vec<FindingCode> {
    check_with(workflow, fields, "wyn@nhs.net", &PASS)
        .into_iter()
        .map(|f| f.code)
        .collect()
}

fn with(mut fields: BTreeMap<String, String>, key: &str, value: &str) -> BTreeMap<String, String> {
    fields.insert(key.into(), value.into());
    fields
}

fn without(mut fields: BTreeMap<String, String>, key: &str) -> BTreeMap<String, String> {
    fields.remove(key);
    fields
}

#[test]
fn a_correct_form_of_each_workflow_has_no_findings() {
    assert_eq!(codes("primary_user_gp", &good_gp()), vec![]);
    assert_eq!(codes("primary_user_org", &good_org()), vec![]);
    assert_eq!(codes("additional_permissions", &good_ap()), vec![]);
}

#[test]
fn a_missing_required_field_is_a_finding_naming_it() {
    let findings = check_with(
        "primary_user_gp",
        &without(good_gp(), "user_last_name"),
        "wyn@nhs.net",
        &PASS,
    );
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].code, FindingCode::RequiredFieldMissing);
    assert_eq!(findings[0].field.as_deref(), Some("user_last_name"));
    assert!(findings[0].message.contains("last name"), "{}", findings[0].message);
    // Blank is the same as missing.
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "org_name", "   ")),
        vec![FindingCode::RequiredFieldMissing]
    );
    // Optional fields may be empty.
    assert_eq!(codes("primary_user_gp", &without(good_gp(), "user_phone")), vec![]);
}

#[test]
fn a_malformed_ods_code_is_a_finding() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "org_ods_code", "A8-10")),
        vec![FindingCode::OdsCodeMalformed]
    );
}

#[test]
fn a_gp_form_for_another_kind_of_organisation_is_a_finding() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "org_ods_code", "RX1")),
        vec![FindingCode::OrganisationTypeMismatch]
    );
}

#[test]
fn an_organisation_form_for_a_gp_practice_is_a_finding() {
    assert_eq!(
        codes("primary_user_org", &with(good_org(), "org_ods_code", "A81001")),
        vec![FindingCode::OrganisationTypeMismatch]
    );
}

#[test]
fn additional_permissions_accept_any_kind_of_organisation() {
    assert_eq!(
        codes("additional_permissions", &with(good_ap(), "org_ods_code", "RX1")),
        vec![]
    );
}

#[test]
fn a_malformed_email_is_a_finding() {
    let findings = check_with(
        "primary_user_gp",
        &with(good_gp(), "user_email", "sian at nhs dot net"),
        "wyn@nhs.net",
        &PASS,
    );
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::EmailMalformed]
    );
    assert_eq!(findings[0].field.as_deref(), Some("user_email"));
}

#[test]
fn the_proposed_user_and_the_signatory_need_nhs_addresses() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "user_email", "sian@gmail.com")),
        vec![FindingCode::EmailNotNhs]
    );
    assert_eq!(
        codes(
            "primary_user_gp",
            &with(good_gp(), "signatory_email", "wyn@nhs.net.example.com")
        ),
        vec![FindingCode::EmailNotNhs]
    );
    assert_eq!(
        codes(
            "primary_user_org",
            &with(good_org(), "user_email", "sian@northgate.nhs.uk")
        ),
        vec![]
    );
}

#[test]
fn a_malformed_date_is_a_finding() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_date", "11/10/26")),
        vec![FindingCode::DateMalformed]
    );
}

#[test]
fn a_choice_outside_its_options_is_a_finding() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "request_kind", "Maybe")),
        vec![FindingCode::ChoiceNotAllowed]
    );
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "request_kind", "replacement")),
        vec![]
    );
}

#[test]
fn each_gp_signatory_role_may_sign_the_gp_form() {
    for role in [
        "Lead GP",
        "GP Partner",
        "Caldicott Guardian",
        "Existing Primary Contact",
        "Member of the Board of Directors",
    ] {
        assert_eq!(
            codes("primary_user_gp", &with(good_gp(), "signatory_role", role)),
            vec![],
            "{role}"
        );
    }
}

#[test]
fn each_organisation_signatory_role_may_sign_the_organisation_form() {
    for role in [
        "Caldicott Guardian",
        "Member of the Board of Directors",
        "Existing Primary User",
    ] {
        assert_eq!(
            codes("primary_user_org", &with(good_org(), "signatory_role", role)),
            vec![],
            "{role}"
        );
    }
}

#[test]
fn each_additional_permissions_role_may_ask_for_permissions() {
    for role in [
        "Lead GP",
        "GP Partner",
        "Caldicott Guardian",
        "Member of the Board of Directors",
    ] {
        assert_eq!(
            codes("additional_permissions", &with(good_ap(), "signatory_role", role)),
            vec![],
            "{role}"
        );
    }
}

#[test]
fn roles_not_on_a_forms_list_are_refused() {
    let refused = vec![FindingCode::SignatoryRoleNotAllowed];
    assert_eq!(
        codes(
            "primary_user_gp",
            &with(good_gp(), "signatory_role", "Practice Manager")
        ),
        refused
    );
    assert_eq!(
        codes("primary_user_org", &with(good_org(), "signatory_role", "Lead GP")),
        refused,
        "GP roles do not sign for other organisations"
    );
    assert_eq!(
        codes("primary_user_org", &with(good_org(), "signatory_role", "GP Partner")),
        refused
    );
    assert_eq!(
        codes(
            "additional_permissions",
            &with(good_ap(), "signatory_role", "Existing Primary Contact")
        ),
        refused,
        "a Primary Contact cannot ask for extra permissions"
    );
}

#[test]
fn role_matching_forgives_case_spacing_punctuation_and_synonyms_but_not_another_role() {
    for typed in ["gp partner", "  GP-Partner ", "G.P. Partner", "GP PARTNER."] {
        assert_eq!(
            codes("primary_user_gp", &with(good_gp(), "signatory_role", typed)),
            vec![],
            "{typed}"
        );
    }
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_role", "Board Member")),
        vec![],
        "a listed synonym"
    );
    for typed in ["GP", "Partner", "Lead", "GP Partner Manager", "Guardian"] {
        assert_eq!(
            codes("primary_user_gp", &with(good_gp(), "signatory_role", typed)),
            vec![FindingCode::SignatoryRoleNotAllowed],
            "{typed}"
        );
    }
}

#[test]
fn the_refusal_names_the_roles_that_may_sign() {
    let findings = check_with(
        "primary_user_gp",
        &with(good_gp(), "signatory_role", "Practice Manager"),
        "wyn@nhs.net",
        &PASS,
    );
    assert!(
        findings[0].message.contains("Lead GP") && findings[0].message.contains("Practice Manager"),
        "{}",
        findings[0].message
    );
}

#[test]
fn the_declaration_must_be_ticked() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_declaration", "Off")),
        vec![FindingCode::DeclarationNotTicked]
    );
    assert_eq!(
        codes("primary_user_gp", &without(good_gp(), "signatory_declaration")),
        vec![FindingCode::DeclarationNotTicked]
    );
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_declaration", "On")),
        vec![],
        "any export value counts as ticked"
    );
}

#[test]
fn a_signature_dated_in_the_future_is_a_finding() {
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_date", "21/11/2026")),
        vec![FindingCode::SignatureDateInFuture]
    );
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_date", "20/11/2026")),
        vec![],
        "today is fine"
    );
}

#[test]
fn a_signature_older_than_the_workflows_limit_is_a_finding() {
    // 90 days before 20/11/2026 is 22/08/2026.
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_date", "22/08/2026")),
        vec![]
    );
    assert_eq!(
        codes("primary_user_gp", &with(good_gp(), "signatory_date", "21/08/2026")),
        vec![FindingCode::SignatureDateTooOld]
    );
}

#[test]
fn the_sender_needs_an_nhs_address() {
    let findings = check_with("primary_user_gp", &good_gp(), "practice.manager@gmail.com", &PASS);
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::SenderNotNhs]
    );
    let findings = check_with("primary_user_gp", &good_gp(), "x@nhs.net.example.com", &PASS);
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::SenderNotNhs]
    );
}

#[test]
fn additional_permissions_must_be_sent_by_the_signatory() {
    let findings = check_with("additional_permissions", &good_ap(), "someone.else@nhs.net", &PASS);
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::SenderNotSignatory]
    );
    let findings = check_with("additional_permissions", &good_ap(), "WYN@nhs.net", &PASS);
    assert_eq!(findings, vec![], "mailbox names compare without case");
    let findings = check_with("primary_user_gp", &good_gp(), "someone.else@nhs.net", &PASS);
    assert_eq!(
        findings,
        vec![],
        "primary user forms may be sent by anyone at an NHS address"
    );
}

#[test]
fn an_unauthenticated_sender_is_a_finding() {
    let fail = SenderAuth::Fail {
        reason: "DMARC result for nhs.net was fail".into(),
    };
    let findings = check_with("primary_user_gp", &good_gp(), "wyn@nhs.net", &fail);
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::SenderNotAuthenticated]
    );
    assert!(findings[0].message.contains("DMARC"));
    let missing = SenderAuth::Missing {
        reason: "no header".into(),
    };
    let findings = check_with("primary_user_gp", &good_gp(), "wyn@nhs.net", &missing);
    assert_eq!(
        findings.iter().map(|f| f.code).collect::<Vec<_>>(),
        vec![FindingCode::SenderNotAuthenticated]
    );
}

#[test]
fn finding_codes_are_stable_strings() {
    assert_eq!(
        FindingCode::SignatoryRoleNotAllowed.as_str(),
        "signatory_role_not_allowed"
    );
    let json = serde_json::to_string(&Finding::new(FindingCode::NoFormFound, "x")).unwrap();
    assert!(json.contains("\"no_form_found\""), "{json}");
}

#[test]
fn every_finding_has_a_plain_label_and_its_code_reads_back() {
    for finding in FindingCode::ALL {
        assert_eq!(FindingCode::parse(finding.as_str()), Some(finding));
        assert!(!finding.label().contains('_'), "{:?}", finding);
    }
    assert_eq!(
        finding_label("signatory_role_not_allowed"),
        "Signatory not authorised to sign"
    );
    assert_eq!(finding_label("some_future_code"), "some future code");
}

mod registry {
    use super::*;
    use crate::registry::{OrgStatus, RegisteredOrganisation, RegistryLookup};

    fn known(code: &str, gp_practice: bool, status: OrgStatus) -> RegistryLookup {
        RegistryLookup::Known(RegisteredOrganisation {
            code: code.into(),
            name: "X".into(),
            gp_practice,
            roles: vec![],
            status,
            closed_on: None,
            region: None,
        })
    }

    fn after_registry(workflow: &str, fields: &BTreeMap<String, String>, lookup: &RegistryLookup) -> Vec<FindingCode> {
        let mut findings = check_with(workflow, fields, "wyn@nhs.net", &PASS);
        let set = workflows();
        check_against_registry(set.get(workflow).unwrap(), fields, lookup, today(), &mut findings);
        findings.into_iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_registry_never_imported_says_nothing() {
        assert_eq!(
            after_registry("primary_user_gp", &good_gp(), &RegistryLookup::NotLoaded),
            vec![]
        );
    }

    #[test]
    fn a_code_the_registry_does_not_hold_is_a_finding() {
        assert_eq!(
            after_registry("primary_user_gp", &good_gp(), &RegistryLookup::Unknown),
            vec![FindingCode::OrganisationUnknown]
        );
    }

    #[test]
    fn a_closed_organisation_is_a_finding() {
        assert_eq!(
            after_registry("primary_user_gp", &good_gp(), &known("A81001", true, OrgStatus::Closed)),
            vec![FindingCode::OrganisationClosed]
        );
        assert_eq!(
            after_registry("primary_user_gp", &good_gp(), &known("A81001", true, OrgStatus::Active)),
            vec![]
        );
    }

    #[test]
    fn the_registry_not_the_pattern_says_what_a_known_code_is() {
        // A practice-shaped code the registry says is no practice: the GP form is wrong for it.
        let walk_in = with(good_gp(), "org_ods_code", "B82005");
        assert_eq!(
            codes("primary_user_gp", &walk_in),
            vec![],
            "the pattern alone finds nothing"
        );
        assert_eq!(
            after_registry("primary_user_gp", &walk_in, &known("B82005", false, OrgStatus::Active)),
            vec![FindingCode::OrganisationTypeMismatch]
        );
        // ... and the organisation form is right for it, though the pattern says otherwise.
        let org_form = with(good_org(), "org_ods_code", "B82005");
        assert_eq!(
            codes("primary_user_org", &org_form),
            vec![FindingCode::OrganisationTypeMismatch]
        );
        assert_eq!(
            after_registry(
                "primary_user_org",
                &org_form,
                &known("B82005", false, OrgStatus::Active)
            ),
            vec![]
        );
    }
}

mod digital_signatures {
    use crate::pdf::SignatureInfo;
    use crate::pdf::signature::{CertificateEvidence, Integrity, SignatureCheck, TrustStatus, TrustVerdict};
    use crate::policy::{FindingCode, check_digital_signatures};

    fn signed_by(name: &str, integrity: Integrity, trust: TrustStatus, changed: &[&str]) -> SignatureInfo {
        SignatureInfo {
            field: "signatory_signature".into(),
            signed: true,
            signer_name: None,
            signing_time: None,
            verification: Some(SignatureCheck {
                sub_filter: None,
                byte_range: vec![],
                covers_whole_file: changed.is_empty(),
                integrity,
                digest_algorithm: None,
                signature_algorithm: None,
                certificates: vec![CertificateEvidence {
                    subject: format!("CN={name}"),
                    common_name: Some(name.into()),
                    issuer: String::new(),
                    serial: String::new(),
                    not_before: String::new(),
                    not_after: String::new(),
                    sha256: String::new(),
                    der_base64: String::new(),
                }],
                claimed_signing_time: None,
                later_revisions: (!changed.is_empty()).then(|| crate::pdf::signature::LaterRevisions {
                    bytes_after_signing: 10,
                    changed_fields: changed.iter().map(|c| c.to_string()).collect(),
                    signed_revision_readable: true,
                }),
                trust: Some(TrustVerdict {
                    status: trust,
                    detail: "why".into(),
                    path: vec![],
                    checked_at: String::new(),
                }),
            }),
        }
    }

    fn codes(signatures: &[SignatureInfo], typed: Option<&str>) -> Vec<FindingCode> {
        let mut findings = Vec::new();
        check_digital_signatures(signatures, typed, &mut findings);
        findings.into_iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_trusted_intact_signature_by_the_named_signatory_is_no_finding() {
        let good = signed_by("Dr Jane Signer", Integrity::Intact, TrustStatus::Trusted, &[]);
        assert!(codes(std::slice::from_ref(&good), Some("jane  signer")).is_empty());
        assert!(codes(std::slice::from_ref(&good), Some("Dr. Jane Signer")).is_empty());
        assert!(codes(&[good], None).is_empty(), "no typed name, nothing to compare");
    }

    #[test]
    fn each_problem_has_its_finding() {
        let broken = Integrity::Broken {
            reason: "digest".into(),
        };
        assert_eq!(
            codes(&[signed_by("A B", broken, TrustStatus::NotChecked, &[])], Some("A B")),
            [FindingCode::DigitalSignatureInvalid]
        );
        for status in [
            TrustStatus::SelfSigned,
            TrustStatus::Expired,
            TrustStatus::UnknownIssuer,
            TrustStatus::InvalidChain,
        ] {
            assert_eq!(
                codes(&[signed_by("A B", Integrity::Intact, status, &[])], Some("A B")),
                [FindingCode::DigitalSignatureNotTrusted],
                "{status:?}"
            );
        }
        let unsupported = Integrity::Unsupported { reason: "x".into() };
        assert_eq!(
            codes(
                &[signed_by("A B", unsupported, TrustStatus::NotChecked, &[])],
                Some("A B")
            ),
            [FindingCode::DigitalSignatureNotTrusted]
        );
        assert_eq!(
            codes(
                &[signed_by("A B", Integrity::Intact, TrustStatus::Trusted, &["org_name"])],
                Some("A B")
            ),
            [FindingCode::FormChangedAfterSigning]
        );
        assert_eq!(
            codes(
                &[signed_by("Dr Bob Other", Integrity::Intact, TrustStatus::Trusted, &[])],
                Some("Jane Signer")
            ),
            [FindingCode::DigitalSignerNotSignatory]
        );
        // A name that only shares words is someone else.
        assert_eq!(
            codes(
                &[signed_by(
                    "Jane Signer-Smith",
                    Integrity::Intact,
                    TrustStatus::Trusted,
                    &[]
                )],
                Some("Jane Signer")
            ),
            [FindingCode::DigitalSignerNotSignatory]
        );
    }

    #[test]
    fn an_unsigned_field_is_no_finding() {
        let mut unsigned = signed_by("A B", Integrity::Intact, TrustStatus::Trusted, &[]);
        unsigned.signed = false;
        unsigned.verification = None;
        assert!(codes(&[unsigned], Some("Someone")).is_empty());
    }
}
