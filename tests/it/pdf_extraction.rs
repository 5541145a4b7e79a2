//! Golden-file extraction tests: forms filled in by independent tools (pdftk-java, pypdf,
//! qpdf, pyHanko; see tests/fixtures/make_fixtures.py) must read back exactly as typed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use countersign::pdf::{ExtractLimits, PdfError, extract};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdf")
}

fn form_ids() -> Vec<String> {
    ["PU-GP-1", "PU-ORG-1", "AP-1"].map(String::from).to_vec()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn assert_golden(name: &str) {
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&read(&format!("{name}.expected.json"))).expect("expected json");
    let form = extract(&read(&format!("{name}.pdf")), &form_ids(), ExtractLimits::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(form.has_fields(), "{name}: no fields found");
    for (field, value) in expected {
        let got = form.get(&field).and_then(|f| f.value.clone());
        assert_eq!(got.as_deref(), value.as_str(), "{name}: field {field}");
    }
}

macro_rules! golden {
    ($($test:ident => $file:literal),+ $(,)?) => {
        $(#[test] fn $test() { assert_golden($file); })+
    };
}

golden! {
    pdftk_filled_gp_form_reads_back_as_typed => "pdftk_gp",
    pdftk_filled_org_form_reads_back_as_typed => "pdftk_org",
    pdftk_filled_additional_permissions_form_reads_back_as_typed => "pdftk_ap",
    pypdf_filled_gp_form_reads_back_as_typed => "pypdf_gp",
    pypdf_filled_org_form_reads_back_as_typed => "pypdf_org",
    pypdf_filled_additional_permissions_form_reads_back_as_typed => "pypdf_ap",
    rc4_40_encrypted_form_with_empty_user_password_reads => "qpdf_rc4_40",
    rc4_128_encrypted_form_with_empty_user_password_reads => "qpdf_rc4_128",
    aes_128_encrypted_form_with_empty_user_password_reads => "qpdf_aes_128",
    aes_256_encrypted_form_with_empty_user_password_reads => "qpdf_aes_256",
    form_in_object_streams_reads => "qpdf_object_streams",
    form_in_encrypted_object_streams_reads => "qpdf_objstm_aes_256",
    incremental_update_latest_value_wins => "pypdf_incremental",
    nested_livecycle_names_match_by_last_component => "nested_names",
    checkbox_and_radio_set_only_by_appearance_state_read => "appearance_state_only",
    digitally_signed_form_reads => "pyhanko_signed",
}

#[test]
fn unicode_survives_both_text_encodings() {
    // Siân and Ó Briain-Åkesson fit PDFDocEncoding; Ŵ does not, so its field is UTF-16BE.
    for name in ["pdftk_gp.pdf", "pypdf_gp.pdf"] {
        let form = extract(&read(name), &form_ids(), ExtractLimits::default()).unwrap();
        assert_eq!(
            form.get("user_first_name").and_then(|f| f.value.as_deref()),
            Some("Siân"),
            "{name}"
        );
        assert_eq!(
            form.get("user_last_name").and_then(|f| f.value.as_deref()),
            Some("Ó Briain-Åkesson"),
            "{name}"
        );
        assert_eq!(
            form.get("signatory_name").and_then(|f| f.value.as_deref()),
            Some("Dr Ŵyn ap Gruffydd"),
            "{name}"
        );
    }
}

#[test]
fn nested_names_keep_their_full_name() {
    let form = extract(&read("nested_names.pdf"), &form_ids(), ExtractLimits::default()).unwrap();
    assert!(
        form.fields
            .iter()
            .any(|f| f.full_name == "form1[0].page1[0].org_name[0]"),
        "{:?}",
        form.fields.iter().map(|f| &f.full_name).collect::<Vec<_>>()
    );
}

#[test]
fn a_signed_signature_field_reports_signer_and_time() {
    let form = extract(&read("pyhanko_signed.pdf"), &form_ids(), ExtractLimits::default()).unwrap();
    let signature = form
        .signatures
        .iter()
        .find(|s| s.field == "signatory_signature")
        .expect("signature field");
    assert!(signature.signed);
    assert_eq!(signature.signer_name.as_deref(), Some("Dr Wyn ap Gruffydd"));
    assert!(
        signature.signing_time.as_deref().is_some_and(|m| m.starts_with("D:20")),
        "{:?}",
        signature.signing_time
    );
    // The committed fixture is as pyHanko wrote it: its signature still matches its bytes,
    // and an unsigned field has no check at all.
    let check = signature.verification.as_ref().expect("a signed field is checked");
    assert_eq!(check.integrity, countersign::pdf::signature::Integrity::Intact);
    assert!(check.covers_whole_file);
    assert!(!check.certificates.is_empty());
}

#[test]
fn an_unsigned_signature_field_is_present_but_not_signed() {
    let form = extract(&read("pdftk_gp.pdf"), &form_ids(), ExtractLimits::default()).unwrap();
    let signature = form
        .signatures
        .iter()
        .find(|s| s.field == "signatory_signature")
        .expect("signature field");
    assert!(!signature.signed);
    assert_eq!(signature.signer_name, None);
    assert_eq!(signature.verification, None);
}

#[test]
fn unticked_checkbox_reads_as_off() {
    let blank = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blank/PU-GP-1.pdf")).unwrap();
    let form = extract(&blank, &form_ids(), ExtractLimits::default()).unwrap();
    assert_eq!(
        form.get("signatory_declaration").and_then(|f| f.value.as_deref()),
        Some("Off")
    );
    assert_eq!(form.get("request_kind").and_then(|f| f.value.as_deref()), Some("Off"));
    assert_eq!(form.get("form_id").and_then(|f| f.value.as_deref()), Some("PU-GP-1"));
}

#[test]
fn a_flattened_form_has_no_fields_but_is_recognised_by_its_printed_id() {
    let form = extract(&read("flattened.pdf"), &form_ids(), ExtractLimits::default()).unwrap();
    assert!(!form.has_fields());
    assert_eq!(form.printed_form_id.as_deref(), Some("PU-GP-1"));
}

#[test]
fn hostile_files_give_errors_not_panics() {
    for name in [
        "hostile_truncated.pdf",
        "hostile_nested_50000.pdf",
        "hostile_nested_dicts.pdf",
        "hostile_kids_cycle.pdf",
        "hostile_not_a_pdf.pdf",
    ] {
        let result = extract(&read(name), &form_ids(), ExtractLimits::default());
        // Either a clear error, or (for a file lopdf can partly repair) a form without fields.
        match result {
            Err(e) => assert!(!e.to_string().is_empty(), "{name}"),
            Ok(form) => assert!(
                !form.has_fields() || name == "hostile_truncated.pdf",
                "{name}: {form:?}"
            ),
        }
    }
    assert_eq!(
        extract(&read("hostile_not_a_pdf.pdf"), &form_ids(), ExtractLimits::default()),
        Err(PdfError::NotPdf)
    );
}

#[test]
fn a_form_that_needs_a_user_password_is_reported_as_protected() {
    let result = extract(
        &read("hostile_user_password.pdf"),
        &form_ids(),
        ExtractLimits::default(),
    );
    assert_eq!(result, Err(PdfError::PasswordProtected));
}

/// A PDF with `count` tiny objects and a catalog, written at test time (too big to commit).
fn many_objects(count: usize) -> Vec<u8> {
    let mut pdf = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n".to_vec();
    for i in 3..count + 3 {
        pdf.extend_from_slice(format!("{i} 0 obj {i} endobj\n").as_bytes());
    }
    pdf.extend_from_slice(b"trailer\n<< /Root 1 0 R >>\n%%EOF\n");
    pdf
}

#[test]
fn millions_of_objects_are_refused_by_size_or_bounded_in_time() {
    let pdf = many_objects(2_000_000);
    let result = extract(&pdf, &form_ids(), ExtractLimits::default());
    assert!(matches!(result, Err(PdfError::TooLarge { .. })), "{result:?}");
    // Let it through the size limit: it must still come back within the time limit.
    let limits = ExtractLimits {
        max_bytes: 64 * 1024 * 1024,
        timeout: Duration::from_secs(5),
        ..ExtractLimits::default()
    };
    let result = extract(&pdf, &form_ids(), limits);
    assert!(result.as_ref().map_or(true, |f| !f.has_fields()), "{result:?}");
}

#[test]
fn a_reader_that_runs_too_long_is_abandoned() {
    let limits = ExtractLimits {
        max_bytes: 64 * 1024 * 1024,
        timeout: Duration::from_millis(1),
        ..ExtractLimits::default()
    };
    let result = extract(&many_objects(300_000), &form_ids(), limits);
    assert_eq!(result, Err(PdfError::TimedOut(Duration::from_millis(1))));
}
