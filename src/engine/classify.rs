//! What a PDF attachment turned out to be: which workflow's form (by its `form_id`, else by
//! its fields), the fields by their canonical names, and what the rules find. No I/O: the
//! PDF was read (in a worker process) before this runs.

use std::collections::BTreeMap;

use super::Engine;
use crate::mail::ParsedEmail;
use crate::pdf::{self, ExtractedForm, PdfError};
use crate::policy::{self, Facts, Finding, FindingCode};
use crate::workflow::WorkflowDef;
use crate::workflow::email::{Classification, EmailText};

/// A plain email (no form) a workflow took by its `[recognise.email]`: the fields its text
/// gave, the class it was sorted into, and what the rules find.
#[derive(Debug)]
pub(super) struct PlainEmailAnalysis {
    pub workflow: String,
    pub fields: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
    /// How the workflow's `[classify]` sorted it, when it has one.
    pub classification: Option<Classification>,
}

/// What a new case opens with, however it came: its workflow, the fields read (from a form,
/// or from an email's text), the form's reading when there was a form, and the findings.
#[derive(Debug)]
pub(super) struct Reading {
    pub workflow: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub extraction: Option<ExtractedForm>,
    pub findings: Vec<Finding>,
}

impl From<FormAnalysis> for Reading {
    fn from(form: FormAnalysis) -> Reading {
        Reading {
            workflow: form.workflow,
            fields: form.fields,
            extraction: form.extraction,
            findings: form.findings,
        }
    }
}

/// What one PDF attachment turned out to be.
#[derive(Debug)]
pub(super) struct FormAnalysis {
    pub attachment_index: usize,
    pub workflow: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub extraction: Option<ExtractedForm>,
    pub findings: Vec<Finding>,
}

pub(super) fn finding_for_pdf_error(error: &PdfError, filename: &str) -> Finding {
    let code = match error {
        PdfError::PasswordProtected => FindingCode::PdfPasswordProtected,
        PdfError::TooLarge { .. } => FindingCode::PdfTooLarge,
        _ => FindingCode::PdfUnreadable,
    };
    Finding::new(
        code,
        format!(
            "The attachment “{filename}” could not be read: {error}. Please send the form again as a normal, unprotected PDF."
        ),
    )
}

impl Engine {
    pub(super) fn analyse_form(
        &self,
        index: usize,
        filename: &str,
        result: Result<ExtractedForm, PdfError>,
        parsed: &ParsedEmail,
    ) -> FormAnalysis {
        let mut analysis = FormAnalysis {
            attachment_index: index,
            workflow: None,
            fields: BTreeMap::new(),
            extraction: None,
            findings: vec![],
        };
        let mut extracted = match result {
            Ok(extracted) => extracted,
            Err(error) => {
                analysis.findings.push(finding_for_pdf_error(&error, filename));
                return analysis;
            }
        };
        self.judge_signature_trust(&mut extracted);
        if !extracted.has_fields() {
            // Printed, flattened or scanned: wait for a caseworker to key it in.
            analysis.workflow = extracted
                .printed_form_id
                .as_deref()
                .and_then(|id| self.workflows.by_form_id(id))
                .map(|w| w.name.clone());
            analysis.findings.push(Finding::new(
                FindingCode::FormHasNoFields,
                format!("“{filename}” has no fillable fields (it was printed, flattened or scanned), so a caseworker will key it in by hand."),
            ));
            analysis.extraction = Some(extracted);
            return analysis;
        }
        let form_id = extracted
            .get("form_id")
            .and_then(|f| f.value.clone())
            .filter(|v| !v.trim().is_empty());
        let workflow = match &form_id {
            Some(id) => self.workflows.by_form_id(id),
            None => None,
        }
        .or_else(|| self.recognise_by_fields(&extracted));
        let Some(workflow) = workflow else {
            analysis.findings.push(Finding::new(
                FindingCode::FormNotRecognised,
                format!("“{filename}” has form fields, but it is not one of our access-request forms. Please use the current form."),
            ));
            analysis.extraction = Some(extracted);
            return analysis;
        };
        analysis.fields = map_fields(workflow, &extracted);
        let facts = Facts {
            workflow,
            fields: &analysis.fields,
            sender: parsed.from_address.as_deref(),
            sender_auth: &parsed.sender_auth,
            today: self.today(),
        };
        if form_id.is_none() {
            analysis.findings.push(Finding::new(
                FindingCode::FormIdMissing,
                format!("“{filename}” does not say which form it is, so it was matched by its fields to “{}”. A caseworker will confirm.", workflow.title),
            ));
        }
        analysis.findings.extend(policy::check(&facts, &self.config.policy));
        let signatory = analysis
            .fields
            .get(&workflow.signatories.name_field)
            .map(String::as_str);
        policy::check_digital_signatures(&extracted.signatures, signatory, &mut analysis.findings);
        analysis.workflow = Some(workflow.name.clone());
        analysis.extraction = Some(extracted);
        analysis
    }

    /// The workflow that takes `parsed` as a plain email, with what it reads from it, when the
    /// email carries no PDF at all and is a person's message: bounces, auto-replies and
    /// unreadable mail stay unclassified for a caseworker.
    pub(super) fn analyse_plain_email(
        &self,
        parsed: &ParsedEmail,
        analyses: &[FormAnalysis],
    ) -> Option<PlainEmailAnalysis> {
        if !analyses.is_empty() || parsed.bounce.is_some() || parsed.automatic.is_some() || parsed.malformed.is_some() {
            return None;
        }
        let text = EmailText::new(
            parsed.from_address.as_deref(),
            parsed.subject.as_deref(),
            parsed.text_body.as_deref(),
        );
        let workflow = self.workflows.for_plain_email(&text)?;
        let mut fields = workflow.email_recognition()?.read_fields(&text);
        let classification = workflow.classify.as_ref().map(|classifier| {
            let found = classifier.classify(&text);
            let answer = found.class.clone().unwrap_or_else(|| classifier.unknown.clone());
            fields.insert(classifier.field.clone(), answer);
            found
        });
        let facts = Facts {
            workflow,
            fields: &fields,
            sender: parsed.from_address.as_deref(),
            sender_auth: &parsed.sender_auth,
            today: self.today(),
        };
        let class = classification.as_ref().map(|c| c.class.as_deref());
        let findings = policy::check_plain_email(&facts, &self.config.policy, class);
        Some(PlainEmailAnalysis {
            workflow: workflow.name.clone(),
            fields,
            findings,
            classification,
        })
    }

    /// Judges each intact digital signature's certificate against the trust store, now: the
    /// worker that read the PDF checked the file's bytes, but knows neither the trust store
    /// nor the engine's clock.
    fn judge_signature_trust(&self, extracted: &mut ExtractedForm) {
        let now = self.clock.now().with_timezone(&chrono::Utc);
        for check in extracted.signatures.iter_mut().filter_map(|s| s.verification.as_mut()) {
            check.trust = Some(pdf::signature::judge_trust(
                check,
                &self.config.policy.trust_anchors,
                now,
            ));
        }
    }

    /// A form without a `form_id` belongs to the workflow all of whose recognition fields it
    /// has; ties go to the higher priority.
    fn recognise_by_fields(&self, extracted: &ExtractedForm) -> Option<&WorkflowDef> {
        // Only form workflows: a workflow of plain emails lists no fields, which every form
        // would "have".
        self.workflows
            .form_workflows()
            .filter(|w| !w.recognise.fields.is_empty())
            .filter(|w| {
                w.recognise
                    .fields
                    .iter()
                    .all(|name| lookup(w, extracted, name).is_some())
            })
            .max_by_key(|w| (w.recognise.priority, w.recognise.fields.len()))
    }
}

/// "all checks passed", or the codes of what they found.
pub(super) fn checks_summary(findings: &[Finding]) -> String {
    if findings.is_empty() {
        "all checks passed".to_string()
    } else {
        let codes: Vec<&str> = findings.iter().map(|f| f.code.as_str()).collect();
        format!("checks found: {}", codes.join(", "))
    }
}

/// Finds a workflow field in an extracted form: by its name (full, then last component), then
/// by each alias.
fn lookup<'f>(workflow: &WorkflowDef, extracted: &'f ExtractedForm, name: &str) -> Option<&'f pdf::PdfField> {
    let def = workflow.field(name)?;
    std::iter::once(&def.name)
        .chain(def.aliases.iter())
        .find_map(|n| extracted.get(n))
}

/// The workflow's fields, by their canonical names, from an extracted form.
pub fn map_fields(workflow: &WorkflowDef, extracted: &ExtractedForm) -> BTreeMap<String, String> {
    workflow
        .fields
        .iter()
        .filter_map(|def| {
            // A caseworker must see what is really there: a bidi override in a name or an
            // address is shown, not obeyed.
            let value = lookup(workflow, extracted, &def.name)?.value.as_deref()?;
            Some((def.name.clone(), crate::domain::reveal_hidden_characters(value)))
        })
        .collect()
}
