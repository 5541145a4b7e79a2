//! Digitally signed forms, signed by a third-party tool (pyHanko, from PyPI) with keys and
//! certificates made on the spot by `tests/pdfsign/sign.py`: an untampered signature through a
//! chain, a self-signed certificate, an expired one, bytes changed inside the signed range, an
//! update after signing that changes a field, and one that only adds a comment. First what
//! extraction and the trust check say of each file, then what a case says, on both backends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use countersign::pdf::signature::{
    DigitalSignatureView, Integrity, SignatureCheck, TrustAnchors, TrustStatus, judge_trust,
};
use countersign::pdf::{ExtractLimits, ExtractedForm, extract};
use countersign::policy::FindingCode;

use countersign::workflow::ActorRole;

use crate::common::{AUTHSERV_ID, friday_morning, on_both_backends_with, root};
use crate::web::Browser;

/// The organisation name on the form, and the same-length text the tampered copy has instead.
const ORG_NAME: &str = "Riverside Medical Practice 0";
const TAMPERED_ORG_NAME: &str = "Riverside Medical Practise 0";
/// The signatory typed on the form: the chain's signer, "Dr Jane Signer", without the title.
const TYPED_SIGNATORY: &str = "Jane Signer";
/// What the update after signing sets the organisation's name to.
const CHANGED_ORG_NAME: &str = "Somewhere Else Entirely";

/// The signed files and the root that issued the chain.
pub(crate) struct SignedForms {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SignedForms {
    /// Fills the GP practice form (sample 0's good values) and has pyHanko sign it every way,
    /// with certificates valid (or expired) now.
    pub fn make() -> SignedForms {
        SignedForms::make_at(chrono::Utc::now())
    }

    /// [`SignedForms::make`], with certificates valid (or expired) at `at`.
    pub fn make_at(at: chrono::DateTime<chrono::Utc>) -> SignedForms {
        let workflows = crate::common::workflows();
        let workflow = workflows.get("primary_user_gp").expect("the GP workflow");
        let mut values: BTreeMap<String, String> =
            countersign::samples::good_values(workflow, 0, friday_morning().date_naive());
        assert_eq!(values.get("org_name").map(String::as_str), Some(ORG_NAME));
        // The signatory the chain's certificate names (typed without the title it carries).
        values.insert("signatory_name".into(), TYPED_SIGNATORY.into());
        let pdf = countersign::pdf::generate::filled_form(workflow, &values).expect("a form");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let form = dir.path().join("form.pdf");
        std::fs::write(&form, pdf).unwrap();
        let out = dir.path().join("signed");
        let run = Command::new("python3")
            .arg(root().join("tests/pdfsign/sign.py"))
            .arg(&form)
            .arg(&out)
            .args([ORG_NAME, TAMPERED_ORG_NAME, "org_name", CHANGED_ORG_NAME])
            .arg(at.to_rfc3339())
            .output()
            .expect("python3 runs (pip install pyhanko)");
        assert!(
            run.status.success(),
            "pyHanko signing failed (is pyhanko installed? .ci/run installs it):\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        SignedForms { _dir: dir, path: out }
    }

    pub fn pdf(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path.join(format!("{name}.pdf"))).unwrap()
    }

    pub fn trust_store(&self) -> PathBuf {
        self.path.join("root.pem")
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem_file(&self.trust_store()).expect("the test root")
    }
}

fn read(pdf: &[u8]) -> ExtractedForm {
    extract(pdf, &[], ExtractLimits::default()).expect("the signed form reads")
}

/// The one signed field's check, judged against `anchors` now.
fn checked(form: &ExtractedForm, anchors: &TrustAnchors) -> SignatureCheck {
    let signed: Vec<_> = form.signatures.iter().filter(|s| s.signed).collect();
    assert_eq!(signed.len(), 1, "{:?}", form.signatures);
    assert_eq!(signed[0].field, "signatory_signature");
    let mut check = signed[0].verification.clone().expect("the signature was checked");
    check.trust = Some(judge_trust(&check, anchors, chrono::Utc::now()));
    check
}

fn field<'f>(form: &'f ExtractedForm, name: &str) -> Option<&'f str> {
    form.get(name).and_then(|f| f.value.as_deref())
}

#[test]
fn pyhanko_signatures_are_verified_through_their_chain_and_judged_for_trust() {
    let forms = SignedForms::make();
    let anchors = forms.anchors();

    // Untampered, through leaf <- EC intermediate <- root, with the root trusted.
    let form = read(&forms.pdf("chain"));
    let check = checked(&form, &anchors);
    assert_eq!(check.integrity, Integrity::Intact);
    assert!(check.covers_whole_file);
    assert_eq!(check.later_revisions, None);
    assert_eq!(check.digest_algorithm.as_deref(), Some("SHA-256"));
    assert_eq!(check.signature_algorithm.as_deref(), Some("RSA with SHA-256"));
    assert_eq!(check.signer(), Some("Dr Jane Signer"));
    assert!(check.claimed_signing_time.is_some(), "pyHanko writes a signingTime");
    let trust = check.trust.unwrap();
    assert_eq!(trust.status, TrustStatus::Trusted, "{}", trust.detail);
    assert_eq!(
        trust.path,
        [
            "Dr Jane Signer",
            "Countersign Test Issuing CA",
            "Countersign Test Root CA"
        ]
    );
    assert_eq!(field(&form, "org_name"), Some(ORG_NAME));

    // The same file with nothing trusted: intact, but its issuer is unknown.
    let untrusted = checked(&form, &TrustAnchors::default()).trust.unwrap();
    assert_eq!(untrusted.status, TrustStatus::UnknownIssuer, "{}", untrusted.detail);

    // Self-signed: intact, and reported as self-signed, never as valid.
    let check = checked(&read(&forms.pdf("self_signed")), &anchors);
    assert_eq!(check.integrity, Integrity::Intact);
    let trust = check.trust.unwrap();
    assert_eq!(trust.status, TrustStatus::SelfSigned, "{}", trust.detail);
    assert!(trust.detail.contains("Dr Self Signer"), "{}", trust.detail);

    // Issued by the trusted root, but expired a year ago.
    let check = checked(&read(&forms.pdf("expired")), &anchors);
    assert_eq!(check.integrity, Integrity::Intact);
    let trust = check.trust.unwrap();
    assert_eq!(trust.status, TrustStatus::Expired, "{}", trust.detail);
    assert!(trust.detail.contains("expired on"), "{}", trust.detail);
}

#[test]
fn a_byte_changed_inside_the_signed_range_breaks_the_digest() {
    let forms = SignedForms::make();
    let form = read(&forms.pdf("tampered"));
    // The change is real: the form now reads differently...
    assert_eq!(field(&form, "org_name"), Some(TAMPERED_ORG_NAME));
    let check = checked(&form, &forms.anchors());
    match &check.integrity {
        Integrity::Broken { reason } => assert!(reason.contains("digest does not match"), "{reason}"),
        other => panic!("a tampered form must not verify: {other:?}"),
    }
    // ...and a broken signature's certificate vouches for nothing.
    assert_eq!(check.trust.unwrap().status, TrustStatus::NotChecked);
}

#[test]
fn an_update_after_signing_that_changes_a_field_is_caught_and_a_comment_is_not() {
    let forms = SignedForms::make();
    let anchors = forms.anchors();

    let changed = read(&forms.pdf("changed_after_signing"));
    assert_eq!(
        field(&changed, "org_name"),
        Some(CHANGED_ORG_NAME),
        "the update took effect"
    );
    let check = checked(&changed, &anchors);
    // The signature still verifies: it covers the first revision, as signed.
    assert_eq!(check.integrity, Integrity::Intact);
    assert!(!check.covers_whole_file);
    let later = check.later_revisions.expect("a later revision");
    assert!(later.signed_revision_readable);
    assert!(later.bytes_after_signing > 0);
    assert_eq!(later.changed_fields, ["org_name"]);

    let annotated = read(&forms.pdf("annotated_after_signing"));
    let check = checked(&annotated, &anchors);
    assert_eq!(check.integrity, Integrity::Intact);
    assert!(!check.covers_whole_file);
    let later = check.later_revisions.expect("a later revision");
    assert!(later.signed_revision_readable);
    assert!(later.changed_fields.is_empty(), "{:?}", later.changed_fields);
}

/// The codes of the findings about digital signatures.
fn signature_findings(codes: &[String]) -> Vec<String> {
    let about = [
        FindingCode::DigitalSignatureInvalid,
        FindingCode::DigitalSignatureNotTrusted,
        FindingCode::FormChangedAfterSigning,
        FindingCode::DigitalSignerNotSignatory,
    ]
    .map(FindingCode::as_str);
    codes.iter().filter(|c| about.contains(&c.as_str())).cloned().collect()
}

/// An email from the signatory with `pdf` attached.
pub(crate) fn email_with(pdf: Vec<u8>, message_id: &str) -> Vec<u8> {
    countersign::samples::email_with_form(
        "sian.obriain0@nhs.net",
        AUTHSERV_ID,
        message_id,
        "Open Exeter AP-1 form",
        Some(("signed-form.pdf", pdf)),
    )
    .expect("an email")
}

#[tokio::test]
async fn each_signed_form_becomes_a_case_whose_findings_page_api_and_evidence_show_the_verdict() {
    let forms = SignedForms::make_at(friday_morning().with_timezone(&chrono::Utc));
    let store = forms.trust_store();
    let forms = &forms;
    on_both_backends_with(
        |settings| settings.signature_trust_store = Some(store.clone()),
        |app| async move {
            let expect = [
                ("chain", vec![], "intact", "trusted"),
                ("annotated_after_signing", vec![], "intact", "trusted"),
                // Signed by a certificate that names someone other than the typed signatory.
                (
                    "self_signed",
                    vec!["digital_signer_not_signatory", "digital_signature_not_trusted"],
                    "intact",
                    "self_signed",
                ),
                (
                    "expired",
                    vec!["digital_signer_not_signatory", "digital_signature_not_trusted"],
                    "intact",
                    "expired",
                ),
                ("tampered", vec!["digital_signature_invalid"], "broken", "not_checked"),
                (
                    "changed_after_signing",
                    vec!["form_changed_after_signing"],
                    "intact",
                    "trusted",
                ),
            ];
            for (name, findings, integrity, trust) in expect {
                let report = app
                    .receive(&email_with(forms.pdf(name), &format!("{name}@signed.test")))
                    .await;
                let reference = report.cases[0].reference.clone();
                assert_eq!(signature_findings(&report.cases[0].finding_codes), findings, "{name}");

                let mut conn = app.db().pool.acquire().await.unwrap();
                let file = countersign::storage::case_file(&mut conn, &reference)
                    .await
                    .unwrap()
                    .unwrap();
                drop(conn);
                let views = DigitalSignatureView::of_form(&file.signatures);
                assert_eq!(views.len(), 1, "{name}");
                let view = &views[0];
                assert_eq!(
                    (view.integrity.as_str(), view.trust.as_str()),
                    (integrity, trust),
                    "{name}: {view:?}"
                );
                if integrity == "intact" {
                    assert!(view.signer.as_deref().unwrap().starts_with("Dr "), "{name}: {view:?}");
                    assert_eq!(view.certificate_sha256.as_ref().map(String::len), Some(64));
                }

                // The evidence pack carries the verdict and the certificates behind it.
                let pack = countersign::evidence::evidence_pack(app.db(), &reference, app.now_ms())
                    .await
                    .unwrap()
                    .unwrap();
                let mut zip = zip::ZipArchive::new(std::io::Cursor::new(pack.bytes)).unwrap();
                let mut signatures = String::new();
                std::io::Read::read_to_string(
                    &mut zip.by_name(&format!("{reference}/signatures.json")).unwrap(),
                    &mut signatures,
                )
                .unwrap();
                let signatures: Vec<countersign::pdf::SignatureInfo> = serde_json::from_str(&signatures).unwrap();
                let check = signatures[0].verification.as_ref().unwrap();
                if integrity == "intact" {
                    assert!(!check.certificates.is_empty(), "{name}");
                    assert!(check.certificates.iter().all(|c| !c.der_base64.is_empty()));
                }
                assert_eq!(check.trust.as_ref().unwrap().status.as_str(), trust, "{name}");

                // The API's case detail says the same.
                let mut browser = Browser::new(&app).await;
                let token = crate::api::token(&app, &format!("reader-{name}"), ActorRole::Caseworker, None).await;
                let detail =
                    crate::api::call(&mut browser, "GET", &format!("/api/v1/cases/{reference}"), &token, None).await;
                let detail = crate::api::json_of(&detail);
                assert_eq!(detail["digital_signatures"][0]["integrity"], integrity, "{name}");
                assert_eq!(detail["digital_signatures"][0]["trust"], trust, "{name}");
                assert_eq!(detail["digital_signatures"][0]["field"], "signatory_signature");
            }

            // The case page shows a caseworker each verdict in words.
            let mut browser = Browser::new(&app).await;
            browser.sign_in_as(&app, "cw@nhs.net", ActorRole::Caseworker).await;
            for (reference, words) in [
                (
                    "CS-2026-000001",
                    ["Dr Jane Signer", "trusted", "Countersign Test Issuing CA"],
                ),
                (
                    "CS-2026-000002",
                    ["only additions that change no field", "trusted", "Dr Jane Signer"],
                ),
                ("CS-2026-000003", ["self-signed", "Dr Self Signer", "anyone can make"]),
                ("CS-2026-000004", ["expired", "Dr Expired Signer", "expired on"]),
                (
                    "CS-2026-000005",
                    ["Matches the form", "digest does not match", "not checked"],
                ),
                (
                    "CS-2026-000006",
                    [
                        "Changed after signing",
                        "org_name changed after it was signed",
                        "Dr Jane Signer",
                    ],
                ),
            ] {
                let page = browser.get(&format!("/cases/{reference}")).await;
                assert_eq!(page.status, axum::http::StatusCode::OK);
                assert!(page.body.contains("Digital signature</h2>"), "{reference}");
                for w in words {
                    assert!(page.body.contains(w), "{reference}: {w:?} not on the page");
                }
            }

            // The changed form's case holds what the update says, and says what changed.
            let case = app.case("CS-2026-000006").await;
            assert_eq!(case.org_name.as_deref(), Some(CHANGED_ORG_NAME));
            let finding = case
                .findings
                .iter()
                .find(|f| f.code == FindingCode::FormChangedAfterSigning)
                .unwrap();
            assert!(finding.message.contains("org_name"), "{}", finding.message);
            assert_eq!(finding.field.as_deref(), Some("signatory_signature"));

            // Keying the form again (the rules run again) keeps what the file showed.
            let values: BTreeMap<String, String> = [("org_name".to_string(), ORG_NAME.to_string())].into();
            let actor = countersign::workflow::Actor {
                name: "alice".into(),
                role: countersign::workflow::ActorRole::Caseworker,
            };
            let keyed = app.key_fields(&case.reference, None, &values, &actor).await.unwrap();
            assert!(
                keyed
                    .findings
                    .iter()
                    .any(|f| f.code == FindingCode::FormChangedAfterSigning),
                "{:?}",
                keyed.findings
            );
            // Keying the expired form's signatory as its certificate names them clears the
            // name finding, and leaves the certificate's.
            let expired = app.case("CS-2026-000004").await;
            let message = &expired
                .findings
                .iter()
                .find(|f| f.code == FindingCode::DigitalSignerNotSignatory)
                .unwrap()
                .message;
            assert!(
                message.contains("Dr Expired Signer") && message.contains(TYPED_SIGNATORY),
                "{message}"
            );
            let values: BTreeMap<String, String> =
                [("signatory_name".to_string(), "Dr. Expired Signer".to_string())].into();
            let keyed = app.key_fields(&expired.reference, None, &values, &actor).await.unwrap();
            let codes: Vec<String> = keyed.findings.iter().map(|f| f.code.as_str().to_string()).collect();
            assert_eq!(signature_findings(&codes), ["digital_signature_not_trusted"]);
        },
    )
    .await;
}
