//! Sample emails with filled-in forms, for trying Countersign out (`countersign samples`) and
//! for the benchmarks' corpora. Tests use forms filled in by independent tools instead.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use mail_builder::MessageBuilder;

use crate::workflow::{WorkflowDef, WorkflowSet};

/// The values of a correct form for `workflow`, signed on `signed`.
pub fn good_values(workflow: &WorkflowDef, n: usize, signed: NaiveDate) -> BTreeMap<String, String> {
    let gp = workflow.organisation_kind == crate::workflow::OrganisationKind::GpPractice
        || workflow.name == "additional_permissions";
    let ods = if gp {
        format!("A{:05}", 81000 + n % 1000)
    } else {
        format!("RX{}", n % 10)
    };
    let role = workflow
        .signatories
        .roles
        .first()
        .map(|r| r.role.clone())
        .unwrap_or_default();
    let mut v = BTreeMap::new();
    for (k, val) in [
        ("org_name", format!("Riverside Medical Practice {n}")),
        ("org_ods_code", ods),
        ("user_title", "Ms".into()),
        ("user_first_name", "Siân".into()),
        ("user_last_name", "Ó Briain-Åkesson".into()),
        ("user_job_title", "Practice Manager".into()),
        ("user_email", format!("sian.obriain{n}@nhs.net")),
        ("user_phone", "01234 567890".into()),
        ("request_kind", "New".into()),
        ("user_existing_id", format!("OE{:06}", n)),
        ("permissions_requested", "Cervical screening: view results".into()),
        ("signatory_name", "Dr Amara Okafor".into()),
        ("signatory_role", role),
        ("signatory_email", format!("amara.okafor{n}@nhs.net")),
        ("signatory_phone", "01234 567891".into()),
        ("signatory_date", signed.format("%d/%m/%Y").to_string()),
        ("signatory_declaration", "Yes".into()),
    ] {
        if workflow.field(k).is_some() {
            v.insert(k.to_string(), val);
        }
    }
    v
}

/// An email as a practice would send it: a short note and the PDF attached, with the
/// `Authentication-Results` our receiving server would add for an authenticated sender.
pub fn email_with_form(
    from: &str,
    authserv_id: &str,
    message_id: &str,
    subject: &str,
    pdf: Option<(&str, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let attachment = pdf.map(|(name, bytes)| ("application/pdf", name, bytes));
    let body = "Please find our completed form attached.\n\nKind regards";
    email(from, authserv_id, message_id, subject, body, attachment)
}

/// A person's email to the intake address with `body` as its text and perhaps one attachment
/// (content type, file name, bytes), authenticated by `authserv_id`'s header.
pub fn email(
    from: &str,
    authserv_id: &str,
    message_id: &str,
    subject: &str,
    body: &str,
    attachment: Option<(&str, &str, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let domain = from.rsplit('@').next().unwrap_or("nhs.net").to_string();
    let mut builder = MessageBuilder::new()
        .from(("Practice Manager", from))
        .to(("PCSE Open Exeter", "pcse.openexeter@nhs.net"))
        .subject(subject)
        .message_id(message_id)
        .header(
            "Authentication-Results",
            mail_builder::headers::raw::Raw::new(format!(
                "{authserv_id}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"
            )),
        )
        .text_body(body.to_string());
    if let Some((content_type, name, bytes)) = attachment {
        builder = builder.attachment(content_type.to_string(), name.to_string(), bytes);
    }
    builder.write_to_vec().context("building a sample email")
}

/// `count` sample emails: mostly good forms of each workflow, with some that a caseworker
/// has to look at (wrong signatory, non-NHS sender, no attachment).
pub fn sample_emails(
    workflows: &WorkflowSet,
    count: usize,
    today: NaiveDate,
    authserv_id: &str,
) -> Result<Vec<Vec<u8>>> {
    let all: Vec<&WorkflowDef> = workflows.form_workflows().collect();
    let mut emails = Vec::with_capacity(count);
    for n in 0..count {
        let workflow = all[n % all.len()];
        let mut values = good_values(workflow, n, today);
        let mut from = values
            .get("signatory_email")
            .cloned()
            .unwrap_or_else(|| format!("manager{n}@nhs.net"));
        match n % 6 {
            4 => {
                values.insert("signatory_role".into(), "Practice Manager".into());
            }
            5 => from = format!("manager{n}@gmail.com"),
            _ => {}
        }
        let message_id = format!("sample-{n}-{}@practice.nhs.net", uuid::Uuid::new_v4());
        let subject = format!("Open Exeter {} form", workflow.form_id().unwrap_or_default());
        let email = if n % 6 == 3 && n > 0 {
            email_with_form(
                &from,
                authserv_id,
                &message_id,
                "Open Exeter access (form to follow)",
                None,
            )?
        } else {
            let pdf = crate::pdf::generate::filled_form(workflow, &values)?;
            email_with_form(
                &from,
                authserv_id,
                &message_id,
                &subject,
                Some(("open-exeter-form.pdf", pdf)),
            )?
        };
        emails.push(email);
    }
    Ok(emails)
}
