//! The case page's repeated parts, drawn as HTML in Rust: the field table, the assignee list,
//! the actions' forms, the correspondence and the timeline.
//!
//! Drawn here rather than in `case.html.tera` for the reason the queue's rows are
//! (`web::queue`): Tera looked up every value of every loop by path, and turned every view
//! into JSON for its context first. That was half the instructions a case page cost
//! (`benches/instructions.sh`). The template keeps the page's shape and its one-off values.
//! Every value passes through [`Html::text`], which escapes it.

use super::{ActionView, FieldView, Preview, ThreadEntry, TimelineEntry};
use crate::web::view::Html;
use crate::workflow::wellknown;

/// The field table's rows: each field's label, its value (a dash when the form left it
/// empty) and what the checks found about it.
pub(super) fn field_rows(fields: &[FieldView]) -> String {
    let mut html = Html::with_capacity(fields.len() * 120);
    for field in fields {
        html.markup("<tr><th scope=\"row\">")
            .text(&field.label)
            .markup("</th><td>")
            .text(field.value.as_deref().unwrap_or("–"));
        for finding in &field.findings {
            html.markup("<div class=\"finding\">").text(finding).markup("</div>");
        }
        html.markup("</td></tr>\n");
    }
    html.into_string()
}

/// The "Assign to" list: unassigned, then every active account, the case's assignee chosen.
pub(super) fn assignee_options(staff: &[String], assignee: Option<&str>) -> String {
    let mut html = Html::with_capacity(staff.len() * 80 + 40);
    html.markup("<option value=\"\">Unassigned</option>");
    for email in staff {
        html.option(email, email, Some(email.as_str()) == assignee);
    }
    html.into_string()
}

/// The "Choose an action" list, the chosen one (reopened after a preview or a refusal)
/// selected.
pub(super) fn action_options(actions: &[ActionView], chosen: Option<&str>) -> String {
    let mut html = Html::with_capacity(actions.len() * 80 + 40);
    html.markup("<option value=\"\">Choose…</option>");
    for action in actions {
        html.option(&action.to, &action.label, chosen == Some(action.to.as_str()));
    }
    html.into_string()
}

/// What every action's form carries besides its own fields.
pub(super) struct ActionFormsFor<'a> {
    pub reference: &'a str,
    pub csrf: &'a str,
    /// The case version the page shows: the engine refuses the move if it has moved on.
    pub version: i64,
    /// The email an action would send, when the caseworker asked to see it first.
    pub preview: Option<&'a Preview>,
    /// The reason a request for information starts with.
    pub suggested_reason: &'a str,
}

/// One form per action the caseworker may take: its reason, the values it records, and for
/// an action that sends an email, a preview button (and the previewed email, editable).
pub(super) fn action_forms(actions: &[ActionView], page: &ActionFormsFor<'_>) -> String {
    let mut html = Html::with_capacity(actions.len() * 900);
    for action in actions {
        let to = action.to.as_str();
        html.markup("<form method=\"post\" action=\"/cases/")
            .text(page.reference)
            .markup("/transition\" class=\"action-form\" data-action=\"")
            .text(to)
            .markup("\">\n<input type=\"hidden\" name=\"csrf\" value=\"")
            .text(page.csrf)
            .markup("\"><input type=\"hidden\" name=\"to\" value=\"")
            .text(to)
            .markup("\"><input type=\"hidden\" name=\"version\" value=\"")
            .number(page.version)
            .markup("\">\n<h3 class=\"action-title\">")
            .text(&action.label)
            .markup("</h3>\n");
        let preview = page.preview.filter(|p| p.to == to);
        if let Some(preview) = preview {
            previewed_mail(&mut html, to, preview);
        }
        if action.reason_required {
            html.markup("<label for=\"reason-")
                .text(to)
                .markup("\">Reason for “")
                .text(&action.label)
                .markup("”</label>");
            if action.sends_mail {
                html.markup("<p class=\"hint\" id=\"reason-")
                    .text(to)
                    .markup("-hint\">The practice reads this in the email.</p>");
            }
            html.markup("<textarea id=\"reason-")
                .text(to)
                .markup("\" name=\"reason\" required");
            if action.sends_mail {
                html.markup(" aria-describedby=\"reason-").text(to).markup("-hint\"");
            }
            html.markup(">");
            match preview {
                Some(preview) => html.text(&preview.reason),
                None if to == wellknown::AWAITING_INFORMATION => html.text(page.suggested_reason),
                None => &mut html,
            };
            html.markup("</textarea>\n");
        }
        if to == wellknown::DUPLICATE {
            html.markup(
                "<label for=\"duplicate-of\">Reference of the case this duplicates</label><input id=\"duplicate-of\" name=\"duplicate_of\" type=\"text\" required placeholder=\"CS-2026-000123\">\n",
            );
        }
        for record in &action.records {
            // Each action's form asks for its own copy of a value: the ids name both.
            let id = format!("{}-{to}", record.name);
            html.markup("<label for=\"")
                .text(&id)
                .markup("\">")
                .text(&record.label)
                .markup("</label>");
            let has_hint = !record.hint.is_empty();
            if has_hint {
                html.markup("<p class=\"hint\" id=\"")
                    .text(&id)
                    .markup("-hint\">")
                    .text(&record.hint)
                    .markup("</p>");
            }
            html.markup("<input id=\"")
                .text(&id)
                .markup("\" name=\"")
                .text(&record.name)
                .markup("\" type=\"text\" required maxlength=\"")
                .number(i64::try_from(record.max_length).unwrap_or(i64::MAX))
                .markup("\" autocomplete=\"off\" spellcheck=\"false\"");
            if has_hint {
                html.markup(" aria-describedby=\"").text(&id).markup("-hint\"");
            }
            html.markup(">\n");
        }
        if action.sends_mail {
            html.markup(
                "<button type=\"submit\" name=\"preview\" value=\"1\" class=\"secondary\">Preview the email</button>\n",
            );
        }
        html.markup("<button type=\"submit\"")
            .markup_if(to == wellknown::REJECTED, " class=\"warning\"")
            .markup(">")
            .text(&action.label)
            .markup_if(action.sends_mail, " and send the email")
            .markup("</button>\n</form>\n");
    }
    html.into_string()
}

/// The email an action would send, before it goes: the first one's words editable (what the
/// template wrote kept beside them, so unchanged words send the template), any others shown.
fn previewed_mail(html: &mut Html, to: &str, preview: &Preview) {
    html.markup("<div class=\"preview-panel\" id=\"preview\" role=\"status\"><h4>The email, before it goes</h4>\n");
    for (n, mail) in preview.mail.iter().enumerate() {
        html.markup("<p><strong>To:</strong> ")
            .text(mail.recipient.as_deref().unwrap_or("(no address)"))
            .markup("<br><strong>Subject:</strong> ")
            .text(&mail.subject)
            .markup("</p>\n");
        if n == 0 {
            html.markup("<label for=\"mail-text-")
                .text(to)
                .markup("\">The email's words (edit them if you need to)</label><textarea id=\"mail-text-")
                .text(to)
                .markup("\" name=\"mail_text\" rows=\"12\" class=\"mail-text\">")
                .text(&mail.text)
                .markup("</textarea><input type=\"hidden\" name=\"previewed_text\" value=\"")
                .text(mail.template_text.as_deref().unwrap_or(""))
                .markup("\">\n");
        } else {
            html.markup("<pre class=\"cs-email-body\">")
                .text(&mail.text)
                .markup("</pre>\n");
        }
        if let Some(why) = &mail.held_back {
            html.markup("<p class=\"warning-panel\">It would be held back: ")
                .text(why)
                .markup("</p>\n");
        }
    }
    if preview.mail.is_empty() {
        html.markup("<p>This action sends no email.</p>\n");
    }
    html.markup("<p>Change the words or the reason and preview again, or send it. Words you change are sent as you wrote them.</p></div>\n");
}

/// The correspondence's items, oldest first: who each message was from or to, when, what
/// kind, its text (as received, escaped), and its attachments to download.
pub(super) fn thread_items(thread: &[ThreadEntry]) -> String {
    if thread.is_empty() {
        return "<li class=\"muted\">No mail yet.</li>".to_string();
    }
    let mut html = Html::with_capacity(thread.iter().map(|m| m.text.len() + 600).sum());
    for message in thread {
        let received = message.direction == "in";
        let from_or_to = if received { "From " } else { "To " };
        html.markup("<li class=\"thread-")
            .markup(if received { "in" } else { "out" })
            .markup("\"><article aria-label=\"")
            .markup(from_or_to)
            .text(&message.who)
            .markup(", ")
            .text(&message.when)
            .markup("\">\n<p class=\"thread-head\"><strong>")
            .markup(from_or_to)
            .text(&message.who)
            .markup("</strong> <span class=\"muted\">")
            .text(&message.when)
            .markup(" · ")
            .text(&message.kind);
        if !message.status.is_empty() {
            html.markup(" · ").text(&message.status);
        }
        html.markup("</span></p>\n<p class=\"thread-subject\">")
            .text(&message.subject)
            .markup("</p>\n<pre class=\"cs-email-body\">")
            .text(&message.text)
            .markup("</pre>\n");
        if !message.attachments.is_empty() {
            html.markup("<ul class=\"thread-attachments\">");
            for attachment in &message.attachments {
                html.markup("<li><a href=\"")
                    .text(&attachment.href)
                    .markup("\" download>")
                    .text(&attachment.name)
                    .markup("</a> <span class=\"muted\">")
                    .number(attachment.size)
                    .markup(" bytes</span></li>");
            }
            html.markup("</ul>\n");
        }
        html.markup("</article></li>\n");
    }
    html.into_string()
}

/// The timeline's items: when, what happened, who did it, and what it changed.
pub(super) fn timeline_items(timeline: &[TimelineEntry]) -> String {
    let mut html = Html::with_capacity(timeline.len() * 160);
    for entry in timeline {
        html.markup("<li><strong>")
            .text(entry.when.as_deref().unwrap_or(""))
            .markup("</strong> ")
            .text(&entry.kind)
            .markup(" ");
        if !entry.who.is_empty() {
            html.markup("<span class=\"muted\">").text(&entry.who).markup("</span>");
        }
        html.markup(" ").text(&entry.text).markup("</li>\n");
    }
    html.into_string()
}

#[cfg(test)]
mod tests {
    use super::super::{PreviewedMail, RecordView, ThreadAttachment};
    use super::*;

    fn action(to: &str, label: &str, reason_required: bool, sends_mail: bool) -> ActionView {
        ActionView {
            to: to.into(),
            label: label.into(),
            reason_required,
            sends_mail,
            records: vec![],
        }
    }

    fn page<'a>(preview: Option<&'a Preview>) -> ActionFormsFor<'a> {
        ActionFormsFor {
            reference: "CS-2026-000001",
            csrf: "token&1",
            version: 7,
            preview,
            suggested_reason: "Please correct the form.",
        }
    }

    #[test]
    fn field_rows_escape_what_the_form_said_and_show_a_dash_for_an_empty_field() {
        let rows = field_rows(&[
            FieldView {
                label: "Organisation name".into(),
                value: Some("<script>alert(1)</script> & Co".into()),
                findings: vec!["Not on the register <b>".into()],
            },
            FieldView {
                label: "ODS code".into(),
                value: None,
                findings: vec![],
            },
        ]);
        assert_eq!(
            rows,
            "<tr><th scope=\"row\">Organisation name</th><td>&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co\
             <div class=\"finding\">Not on the register &lt;b&gt;</div></td></tr>\n\
             <tr><th scope=\"row\">ODS code</th><td>–</td></tr>\n"
        );
    }

    #[test]
    fn the_assignee_list_selects_only_the_cases_assignee() {
        let staff = vec!["a@nhs.net".to_string(), "b@nhs.net".to_string()];
        let html = assignee_options(&staff, Some("b@nhs.net"));
        assert_eq!(
            html,
            "<option value=\"\">Unassigned</option><option value=\"a@nhs.net\">a@nhs.net</option>\
             <option value=\"b@nhs.net\" selected>b@nhs.net</option>"
        );
        assert!(!assignee_options(&staff, None).contains("selected"));
    }

    #[test]
    fn the_action_list_selects_the_action_chosen_again() {
        let actions = [
            action("authorised", "Authorise", false, true),
            action("rejected", "Reject", true, true),
        ];
        let html = action_options(&actions, Some("rejected"));
        assert!(html.starts_with("<option value=\"\">Choose…</option>"));
        assert!(html.contains("<option value=\"rejected\" selected>Reject</option>"));
        assert!(html.contains("<option value=\"authorised\">Authorise</option>"));
        assert_eq!(action_options(&actions, None).matches("selected").count(), 0);
    }

    #[test]
    fn each_action_form_carries_the_case_version_and_asks_for_what_its_action_needs() {
        let mut record = action("provisioned", "Mark provisioned", false, false);
        record.records.push(RecordView {
            name: "open_exeter_user_id".into(),
            label: "Open Exeter user ID".into(),
            hint: "As Open Exeter shows it".into(),
            max_length: 32,
        });
        let actions = [
            action("awaiting_information", "Ask for information", true, true),
            action(wellknown::DUPLICATE, "Mark as duplicate", true, false),
            action(wellknown::REJECTED, "Reject <now>", true, false),
            record,
        ];
        let html = action_forms(&actions, &page(None));
        assert_eq!(
            html.matches("<form method=\"post\" action=\"/cases/CS-2026-000001/transition\"")
                .count(),
            4
        );
        assert_eq!(html.matches("name=\"version\" value=\"7\"").count(), 4);
        assert_eq!(html.matches("name=\"csrf\" value=\"token&amp;1\"").count(), 4);
        // A request for information starts with the suggested reason; the sender reads it.
        assert!(html.contains(
            "<p class=\"hint\" id=\"reason-awaiting_information-hint\">The practice reads this in the email.</p>\
             <textarea id=\"reason-awaiting_information\" name=\"reason\" required aria-describedby=\"reason-awaiting_information-hint\">Please correct the form.</textarea>"
        ));
        assert!(html.contains("<textarea id=\"reason-duplicate\" name=\"reason\" required></textarea>"));
        assert_eq!(html.matches("name=\"duplicate_of\"").count(), 1);
        // Rejecting is drawn as a warning, its label escaped.
        assert!(html.contains("<button type=\"submit\" class=\"warning\">Reject &lt;now&gt;</button>"));
        assert_eq!(html.matches("class=\"warning\"").count(), 1);
        // Only an action that sends mail can be previewed, and says that it sends it.
        assert_eq!(html.matches("name=\"preview\" value=\"1\"").count(), 1);
        assert!(html.contains(">Ask for information and send the email</button>"));
        assert!(html.contains(">Mark provisioned</button>"));
        // A recorded value is asked for with its hint, tied to the input.
        assert!(html.contains(
            "<input id=\"open_exeter_user_id-provisioned\" name=\"open_exeter_user_id\" type=\"text\" required maxlength=\"32\" \
             autocomplete=\"off\" spellcheck=\"false\" aria-describedby=\"open_exeter_user_id-provisioned-hint\">"
        ));
        assert!(!html.contains("id=\"preview\""));
    }

    #[test]
    fn a_preview_opens_in_its_own_actions_form_with_the_first_emails_words_editable() {
        let actions = [
            action("awaiting_information", "Ask for information", true, true),
            action("authorised", "Authorise", false, true),
        ];
        let preview = Preview {
            to: "awaiting_information".into(),
            reason: "The signature is missing".into(),
            mail: vec![
                PreviewedMail {
                    recipient: Some("gp@nhs.net".into()),
                    subject: "Your form".into(),
                    text: "Edited </textarea><script>".into(),
                    template_text: Some("As the template wrote it".into()),
                    held_back: None,
                },
                PreviewedMail {
                    recipient: None,
                    subject: "Copy".into(),
                    text: "Second".into(),
                    template_text: None,
                    held_back: Some("the address bounced".into()),
                },
            ],
        };
        let html = action_forms(&actions, &page(Some(&preview)));
        assert_eq!(html.matches("id=\"preview\"").count(), 1);
        let (asked, authorise) = html.split_at(html.find("data-action=\"authorised\"").expect("two forms"));
        assert!(asked.contains("id=\"preview\""));
        assert!(!authorise.contains("preview-panel"));
        // The caseworker's words, escaped, in the one editable box; the template's beside them.
        assert!(asked.contains(
            "<textarea id=\"mail-text-awaiting_information\" name=\"mail_text\" rows=\"12\" class=\"mail-text\">Edited &lt;/textarea&gt;&lt;script&gt;</textarea>"
        ));
        assert!(asked.contains("name=\"previewed_text\" value=\"As the template wrote it\""));
        assert_eq!(asked.matches("name=\"mail_text\"").count(), 1);
        assert!(asked.contains("<strong>To:</strong> (no address)"));
        assert!(asked.contains("<pre class=\"cs-email-body\">Second</pre>"));
        assert!(asked.contains("It would be held back: the address bounced"));
        // The reason typed before the preview is kept, not the suggested one.
        assert!(
            asked.contains("aria-describedby=\"reason-awaiting_information-hint\">The signature is missing</textarea>")
        );

        let silent = Preview {
            to: "authorised".into(),
            reason: String::new(),
            mail: vec![],
        };
        let html = action_forms(&actions, &page(Some(&silent)));
        assert!(html.contains("<p>This action sends no email.</p>"));
    }

    #[test]
    fn the_thread_says_who_each_message_was_from_or_to_and_escapes_what_they_wrote() {
        assert_eq!(thread_items(&[]), "<li class=\"muted\">No mail yet.</li>");
        let entry = |direction: &'static str, status: &str| ThreadEntry {
            at: 0,
            when: "01/12/2026 09:00".into(),
            direction,
            who: "gp@nhs.net".into(),
            subject: "Re: <form>".into(),
            kind: "a reply".into(),
            text: "<img src=x onerror=alert(1)>".into(),
            status: status.into(),
            attachments: vec![],
        };
        let mut received = entry("in", "");
        received.attachments.push(ThreadAttachment {
            name: "form \"v2\".pdf".into(),
            href: "/cases/CS-2026-000001/attachments/3".into(),
            size: 4_600,
        });
        let html = thread_items(&[received, entry("out", "held back: bounced")]);
        assert!(html.contains(
            "<li class=\"thread-in\"><article aria-label=\"From gp@nhs.net, 01/12/2026 09:00\">\n\
             <p class=\"thread-head\"><strong>From gp@nhs.net</strong> <span class=\"muted\">01/12/2026 09:00 · a reply</span></p>"
        ));
        assert!(html.contains("<strong>To gp@nhs.net</strong> <span class=\"muted\">01/12/2026 09:00 · a reply · held back: bounced</span>"));
        assert!(html.contains("<pre class=\"cs-email-body\">&lt;img src=x onerror=alert(1)&gt;</pre>"));
        assert!(html.contains("<p class=\"thread-subject\">Re: &lt;form&gt;</p>"));
        assert!(!html.contains("<img"));
        assert!(html.contains(
            "<li><a href=\"/cases/CS-2026-000001/attachments/3\" download>form &quot;v2&quot;.pdf</a> <span class=\"muted\">4600 bytes</span></li>"
        ));
        assert_eq!(html.matches("thread-attachments").count(), 1);
    }

    #[test]
    fn the_timeline_names_who_acted_only_when_someone_did() {
        let html = timeline_items(&[
            TimelineEntry {
                at: 1,
                when: Some("01/12/2026 09:00".into()),
                kind: "authorise".into(),
                who: "cw@nhs.net".into(),
                text: "validated → authorised".into(),
            },
            TimelineEntry {
                at: 2,
                when: None,
                kind: "timer".into(),
                who: String::new(),
                text: "chase <due>".into(),
            },
        ]);
        assert_eq!(
            html,
            "<li><strong>01/12/2026 09:00</strong> authorise <span class=\"muted\">cw@nhs.net</span> validated → authorised</li>\n\
             <li><strong></strong> timer  chase &lt;due&gt;</li>\n"
        );
    }
}
