//! Writes the blank, fillable form for a workflow from its definition, so the AcroForm field
//! names printed on every practice's copy can never drift from what the workflow reads.

use std::collections::BTreeMap;

use lopdf::content::{Content, Operation};
use lopdf::{Dictionary, Document, Object, ObjectId, Stream, StringFormat, dictionary};

use crate::workflow::{FieldDef, FieldKind, WorkflowDef};

const PAGE_WIDTH: f32 = 595.0; // A4
const PAGE_HEIGHT: f32 = 842.0;
const LEFT: f32 = 50.0;
const FIELD_LEFT: f32 = 250.0;
const FIELD_RIGHT: f32 = 545.0;
const ROW: f32 = 24.0;

/// Where completed forms are sent.
pub const SUBMISSION_ADDRESS: &str = "pcse.openexeter@nhs.net";

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("could not build the PDF for workflow `{workflow}`: {source}")]
    Pdf { workflow: String, source: std::io::Error },
    #[error("workflow `{workflow}` puts fields on page {page}; the blank form has two pages")]
    PageOutOfRange { workflow: String, page: u32 },
}

/// Makes the blank form's bytes.
pub fn blank_form(workflow: &WorkflowDef) -> Result<Vec<u8>, GenerateError> {
    build_form(workflow, &BTreeMap::new())
}

/// Makes the form filled in with `values` (by field name): what a practice's PDF viewer saves.
/// Samples and benchmarks use it; tests use forms filled by independent tools instead.
pub fn filled_form(workflow: &WorkflowDef, values: &BTreeMap<String, String>) -> Result<Vec<u8>, GenerateError> {
    build_form(workflow, values)
}

fn build_form(workflow: &WorkflowDef, values: &BTreeMap<String, String>) -> Result<Vec<u8>, GenerateError> {
    let mut builder = FormBuilder::new(values);
    let pages_id = builder.doc.new_object_id();
    let mut page_ids = Vec::new();
    let mut all_fields: Vec<Object> = Vec::new();

    for page_number in 1..=2u32 {
        let page_id = builder.doc.new_object_id();
        let mut text = PageText::default();
        let mut annotations: Vec<Object> = Vec::new();
        let mut y = PAGE_HEIGHT - 50.0;
        if page_number == 1 {
            text.band(PAGE_HEIGHT - 36.0, "NHS Open Exeter access request");
            y -= 14.0;
            text.line(LEFT, y, 16.0, true, &workflow.title);
            y -= 20.0;
            for line in [
                "Fill in every field marked * on screen (or print and write in CAPITALS). It must be signed"
                    .to_string(),
                "by an authorised signatory for your organisation: see page 2 for who may sign, and what".to_string(),
                format!("happens next. Email the completed PDF to {SUBMISSION_ADDRESS}."),
            ] {
                text.line(LEFT, y, 9.5, false, &line);
                y -= 12.0;
            }
            y -= 6.0;
        } else {
            y = guidance_page(workflow, &mut text, y);
        }
        let mut section: Option<&str> = None;
        for field in workflow.fields.iter().filter(|f| f.page == page_number) {
            if field.section.as_deref() != section {
                section = field.section.as_deref();
                if let Some(heading) = section {
                    y -= 6.0;
                    text.line(LEFT, y, 12.0, true, heading);
                    text.rule(LEFT, y - 4.0, FIELD_RIGHT, 0.5);
                    y -= 22.0;
                    if heading == "Authorised signatory" {
                        let roles: Vec<&str> = workflow.signatories.roles.iter().map(|r| r.role.as_str()).collect();
                        for line in wrap(&format!("Signed by one of: {}.", roles.join(", ")), 95) {
                            text.line(LEFT, y, 9.0, false, &line);
                            y -= 11.0;
                        }
                        y -= 6.0;
                    }
                }
            }
            let label = if field.required {
                format!("{} *", field.label)
            } else {
                field.label.clone()
            };
            if field.kind == FieldKind::Checkbox {
                // The box first, its words beside it across the page: never drawn over them.
                for (i, line) in wrap(&label, 85).iter().enumerate() {
                    text.line(LEFT + 20.0, y - i as f32 * 12.0, 10.0, false, line);
                }
            } else {
                let lines = wrap(&label, 38);
                for (i, line) in lines.iter().enumerate() {
                    text.line(LEFT, y - i as f32 * 11.0, 10.0, false, line);
                }
            }
            let field_ids = builder.add_field(workflow, field, page_id, y);
            annotations.extend(field_ids.widgets.into_iter().map(Object::Reference));
            all_fields.push(Object::Reference(field_ids.field));
            if let FieldKind::Choice = field.kind
                && field.name != workflow.signatories.role_field
            {
                for (i, option) in field.options.iter().enumerate() {
                    text.line(FIELD_LEFT + 18.0 + i as f32 * 100.0, y, 10.0, false, option);
                }
            }
            y -= match field.kind {
                FieldKind::Signature => ROW + 26.0,
                FieldKind::Checkbox => ROW + 4.0,
                _ => ROW,
            };
            if field.kind == FieldKind::Signature {
                // Many practices print, sign and scan: a line to sign on by hand.
                text.line(LEFT, y, 10.0, false, "Signature (if signed on paper)");
                text.rule(FIELD_LEFT, y - 4.0, FIELD_RIGHT, 0.75);
                y -= ROW + 6.0;
            }
        }
        if y < 60.0 {
            return Err(GenerateError::PageOutOfRange {
                workflow: workflow.name.clone(),
                page: page_number,
            });
        }
        // The footer carries the form id as text, so a printed or flattened copy can still be
        // recognised.
        text.line(
            LEFT,
            30.0,
            8.0,
            false,
            &format!(
                "Form {}   Page {page_number} of 2   {}",
                workflow.form_id().unwrap_or_default(),
                if page_number == 1 {
                    "Guidance notes overleaf"
                } else {
                    ""
                }
            ),
        );
        let content_id = builder.doc.add_object(Stream::new(dictionary! {}, text.encode()));
        builder.doc.objects.insert(
            page_id,
            Object::Dictionary(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "Contents" => content_id,
                "Annots" => annotations,
            }),
        );
        page_ids.push(page_id);
    }
    if let Some(page) = workflow.fields.iter().map(|f| f.page).find(|p| *p > 2) {
        return Err(GenerateError::PageOutOfRange {
            workflow: workflow.name.clone(),
            page,
        });
    }

    let fonts = builder.fonts;
    builder.doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => page_ids.iter().map(|id| Object::Reference(*id)).collect::<Vec<_>>(),
            "Count" => page_ids.len() as i64,
            "MediaBox" => vec![0.into(), 0.into(), PAGE_WIDTH.into(), PAGE_HEIGHT.into()],
            "Resources" => dictionary! { "Font" => fonts.clone() },
        }),
    );
    let acroform = builder.doc.add_object(dictionary! {
        "Fields" => all_fields,
        "DA" => Object::string_literal("/Helv 10 Tf 0 g"),
        "DR" => dictionary! { "Font" => fonts },
        // Viewers draw filled-in values themselves; tools that fill without drawing still show.
        "NeedAppearances" => true,
    });
    let info = builder.doc.add_object(dictionary! {
        "Title" => Object::string_literal(format!("Open Exeter: {} ({})", workflow.title, workflow.form_id().unwrap_or_default())),
        "Creator" => Object::string_literal("Countersign"),
    });
    let catalog = builder.doc.add_object(dictionary! {
        "Type" => "Catalog",
        "Pages" => pages_id,
        "AcroForm" => acroform,
    });
    builder.doc.trailer.set("Root", catalog);
    builder.doc.trailer.set("Info", info);
    let mut bytes = Vec::new();
    builder.doc.save_to(&mut bytes).map_err(|source| GenerateError::Pdf {
        workflow: workflow.name.clone(),
        source,
    })?;
    Ok(bytes)
}

/// Breaks `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Page 2: what a practice needs to know to get the form right first time. Returns where the
/// page's text ends.
fn guidance_page(workflow: &WorkflowDef, text: &mut PageText, mut y: f32) -> f32 {
    text.line(LEFT, y, 14.0, true, "Guidance notes");
    y -= 24.0;
    let roles: Vec<&str> = workflow.signatories.roles.iter().map(|r| r.role.as_str()).collect();
    let paragraphs: Vec<(&str, String)> = vec![
        (
            "Who may sign, and why",
            format!(
                "This request gives access to screening records for your whole organisation, so it must be signed by someone who can vouch for it: {}. The email address you send the form from should be an NHS address.",
                roles.join(", ")
            ),
        ),
        (
            "If no authorised signatory is available",
            format!(
                "Do not ask someone else to sign in their place: a form signed by anyone else is returned. Email {SUBMISSION_ADDRESS} and we will tell you what to do."
            ),
        ),
        (
            "How to send the form",
            format!(
                "Fill the form in on screen where you can, save it, and email the PDF itself to {SUBMISSION_ADDRESS}. If you print it, write in capitals, sign it, and scan every page into one PDF. Send one form per person."
            ),
        ),
        (
            "What happens next",
            format!(
                "We reply with a reference number: keep it in the subject of any email about the request. We aim to finish within {} working days. If something needs correcting we tell you exactly what; reply to that email with the corrected form. When the account is set up we email you its user ID.",
                workflow.sla.target_working_days
            ),
        ),
        (
            "Keeping the account",
            "Open Exeter passwords expire after 30 days, and accounts not used for 90 days are suspended, so the new user should sign in soon and regularly.".to_string(),
        ),
    ];
    for (heading, body) in paragraphs {
        text.line(LEFT, y, 11.0, true, heading);
        y -= 14.0;
        for line in wrap(&body, 95) {
            text.line(LEFT, y, 9.5, false, &line);
            y -= 12.0;
        }
        y -= 10.0;
    }
    y
}

struct FieldIds {
    field: ObjectId,
    widgets: Vec<ObjectId>,
}

struct FormBuilder<'v> {
    doc: Document,
    values: &'v BTreeMap<String, String>,
    fonts: Dictionary,
    check_on: ObjectId,
    check_off: ObjectId,
}

impl<'v> FormBuilder<'v> {
    fn new(values: &'v BTreeMap<String, String>) -> Self {
        let mut doc = Document::with_version("1.7");
        let font = |doc: &mut Document, base: &str| {
            doc.add_object(dictionary! {
                "Type" => "Font", "Subtype" => "Type1", "BaseFont" => base, "Encoding" => "WinAnsiEncoding",
            })
        };
        let helvetica = font(&mut doc, "Helvetica");
        let bold = font(&mut doc, "Helvetica-Bold");
        let fonts = dictionary! { "F1" => helvetica, "F2" => bold, "Helv" => helvetica };
        let bbox = || vec![0.into(), 0.into(), 14.into(), 14.into()];
        let check_on = doc.add_object(Stream::new(
            dictionary! { "Type" => "XObject", "Subtype" => "Form", "BBox" => bbox() },
            b"0 g 1 w 0.5 0.5 13 13 re S 1.5 w 3 3 m 11 11 l S 3 11 m 11 3 l S".to_vec(),
        ));
        let check_off = doc.add_object(Stream::new(
            dictionary! { "Type" => "XObject", "Subtype" => "Form", "BBox" => bbox() },
            b"0 g 1 w 0.5 0.5 13 13 re S".to_vec(),
        ));
        FormBuilder {
            doc,
            values,
            fonts,
            check_on,
            check_off,
        }
    }

    fn widget(&self, page: ObjectId, rect: [f32; 4]) -> Dictionary {
        dictionary! {
            "Type" => "Annot",
            "Subtype" => "Widget",
            "F" => 4, // print
            "P" => page,
            "Rect" => rect.iter().map(|v| Object::Real(*v)).collect::<Vec<_>>(),
            "MK" => dictionary! { "BC" => vec![0.4.into(), 0.4.into(), 0.4.into()], "BG" => vec![1.into(), 1.into(), 1.into()] },
            "BS" => dictionary! { "W" => 1, "S" => "S" },
        }
    }

    fn toggle_appearance(&self, on_state: &str) -> Dictionary {
        let mut normal = Dictionary::new();
        normal.set(on_state.as_bytes().to_vec(), self.check_on);
        normal.set("Off", self.check_off);
        dictionary! { "N" => normal }
    }

    fn add_field(&mut self, workflow: &WorkflowDef, field: &FieldDef, page: ObjectId, y: f32) -> FieldIds {
        let name = Object::String(field.name.as_bytes().to_vec(), StringFormat::Literal);
        let tooltip = Object::string_literal(field.label.clone());
        let text_rect = [FIELD_LEFT, y - 5.0, FIELD_RIGHT, y + 13.0];
        match field.kind {
            FieldKind::Checkbox => {
                let mut widget = self.widget(page, [LEFT, y - 3.0, LEFT + 14.0, y + 11.0]);
                widget.extend(&dictionary! {
                    "FT" => "Btn", "T" => name, "TU" => tooltip, "AP" => self.toggle_appearance("Yes"),
                });
                let state = if self.values.get(&field.name).is_some_and(|v| v == "Yes") {
                    "Yes"
                } else {
                    "Off"
                };
                widget.set("V", Object::Name(state.into()));
                widget.set("AS", Object::Name(state.into()));
                let id = self.doc.add_object(widget);
                FieldIds {
                    field: id,
                    widgets: vec![id],
                }
            }
            FieldKind::Choice if field.name != workflow.signatories.role_field => {
                // A radio group: one parent field, a widget per option, each option's export
                // value its appearance state name.
                let parent = self.doc.new_object_id();
                let chosen = self.values.get(&field.name).cloned().unwrap_or_else(|| "Off".into());
                let mut widgets = Vec::new();
                for (i, option) in field.options.iter().enumerate() {
                    let x = FIELD_LEFT + i as f32 * 100.0;
                    let mut widget = self.widget(page, [x, y - 3.0, x + 14.0, y + 11.0]);
                    widget.extend(&dictionary! {
                        "Parent" => parent, "AS" => Object::Name(if *option == chosen { option.as_bytes().to_vec() } else { b"Off".to_vec() }),
                        "AP" => self.toggle_appearance(option),
                    });
                    widgets.push(self.doc.add_object(widget));
                }
                self.doc.objects.insert(
                    parent,
                    Object::Dictionary(dictionary! {
                        "FT" => "Btn", "T" => name, "TU" => tooltip, "V" => Object::Name(chosen.as_bytes().to_vec()),
                        "Ff" => (1 << 15) | (1 << 14), // radio, no toggle to off
                        "Kids" => widgets.iter().map(|w| Object::Reference(*w)).collect::<Vec<_>>(),
                    }),
                );
                FieldIds { field: parent, widgets }
            }
            FieldKind::Choice => {
                // The signatory role: an editable combo box, so a role can also be typed.
                let mut widget = self.widget(page, text_rect);
                widget.extend(&dictionary! {
                    "FT" => "Ch", "T" => name, "TU" => tooltip,
                    "Ff" => (1 << 17) | (1 << 18), // combo, edit
                    "Opt" => field.options.iter().map(|o| Object::string_literal(o.clone())).collect::<Vec<_>>(),
                    "DA" => Object::string_literal("/Helv 10 Tf 0 g"),
                });
                if let Some(value) = self.values.get(&field.name) {
                    widget.set("V", lopdf::text_string(value));
                }
                let id = self.doc.add_object(widget);
                FieldIds {
                    field: id,
                    widgets: vec![id],
                }
            }
            FieldKind::Signature => {
                let widget_rect = [FIELD_LEFT, y - 40.0, FIELD_RIGHT, y + 13.0];
                let mut widget = self.widget(page, widget_rect);
                widget.extend(&dictionary! { "FT" => "Sig", "T" => name, "TU" => tooltip });
                let id = self.doc.add_object(widget);
                FieldIds {
                    field: id,
                    widgets: vec![id],
                }
            }
            FieldKind::Text | FieldKind::OdsCode | FieldKind::Email | FieldKind::Date | FieldKind::Phone => {
                let mut widget = self.widget(page, text_rect);
                widget.extend(&dictionary! {
                    "FT" => "Tx", "T" => name, "TU" => tooltip, "DA" => Object::string_literal("/Helv 10 Tf 0 g"),
                });
                if field.name == "form_id" {
                    widget.set("Ff", 1); // read-only
                    widget.set("V", Object::string_literal(workflow.form_id().unwrap_or_default()));
                }
                if let Some(value) = self.values.get(&field.name).filter(|_| field.name != "form_id") {
                    widget.set("V", lopdf::text_string(value));
                }
                if field.kind == FieldKind::OdsCode {
                    widget.set("MaxLen", 6);
                }
                let id = self.doc.add_object(widget);
                FieldIds {
                    field: id,
                    widgets: vec![id],
                }
            }
        }
    }
}

/// Text drawn on a page, with the standard 14 fonts (WinAnsi, so ASCII labels only).
#[derive(Default)]
struct PageText {
    operations: Vec<Operation>,
}

impl PageText {
    /// A straight line from (`x1`, `y`) to (`x2`, `y`).
    fn rule(&mut self, x1: f32, y: f32, x2: f32, width: f32) {
        self.operations.extend([
            Operation::new("w", vec![width.into()]),
            Operation::new("m", vec![x1.into(), y.into()]),
            Operation::new("l", vec![x2.into(), y.into()]),
            Operation::new("S", vec![]),
        ]);
    }

    /// A blue band across the top of the page with white words in it, as NHS forms have.
    fn band(&mut self, y: f32, words: &str) {
        self.operations.extend([
            Operation::new("rg", vec![0.0.into(), 0.369.into(), 0.722.into()]),
            Operation::new("re", vec![0.0.into(), y.into(), PAGE_WIDTH.into(), 36.0.into()]),
            Operation::new("f", vec![]),
            Operation::new("rg", vec![1.0.into(), 1.0.into(), 1.0.into()]),
        ]);
        self.line(LEFT, y + 13.0, 12.0, true, words);
        self.operations
            .push(Operation::new("rg", vec![0.0.into(), 0.0.into(), 0.0.into()]));
    }

    fn line(&mut self, x: f32, y: f32, size: f32, bold: bool, text: &str) {
        let ascii: String = text.chars().map(|c| if c.is_ascii() { c } else { '?' }).collect();
        self.operations.extend([
            Operation::new("BT", vec![]),
            Operation::new("Tf", vec![if bold { "F2" } else { "F1" }.into(), size.into()]),
            Operation::new("Td", vec![x.into(), y.into()]),
            Operation::new("Tj", vec![Object::string_literal(ascii)]),
            Operation::new("ET", vec![]),
        ]);
    }

    fn encode(self) -> Vec<u8> {
        Content {
            operations: self.operations,
        }
        .encode()
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::pdf::{ExtractLimits, extract};

    use crate::workflow::shipped as workflows;

    #[test]
    fn the_blank_form_has_exactly_the_workflows_field_names() {
        for workflow in workflows().form_workflows() {
            let bytes = blank_form(workflow).unwrap();
            let form = extract(&bytes, &[], ExtractLimits::default()).unwrap();
            let mut found: Vec<&str> = form.fields.iter().map(|f| f.full_name.as_str()).collect();
            let mut declared: Vec<&str> = workflow.fields.iter().map(|f| f.name.as_str()).collect();
            found.sort();
            declared.sort();
            assert_eq!(found, declared, "{}", workflow.name);
            assert_eq!(form.get("form_id").and_then(|f| f.value.as_deref()), workflow.form_id());
            assert_eq!(form.page_count, 2);
        }
    }

    /// The public form asks for the signature at the bottom of page 1: every field is on page
    /// 1, the signatory's last, and page 2 is the guidance. The declaration's box is drawn
    /// beside its words, never over them.
    #[test]
    fn the_signatory_block_ends_page_one_and_its_declaration_box_stands_clear_of_its_words() {
        for workflow in workflows().form_workflows() {
            assert!(workflow.fields.iter().all(|f| f.page == 1), "{}", workflow.name);
            let first_signatory = workflow
                .fields
                .iter()
                .position(|f| f.name.starts_with("signatory_"))
                .unwrap();
            assert!(
                workflow.fields[first_signatory..]
                    .iter()
                    .all(|f| f.name.starts_with("signatory_")),
                "{}: the signatory block comes last",
                workflow.name
            );
            let doc = Document::load_mem(&blank_form(workflow).unwrap()).unwrap();
            let pages = doc.get_pages();
            let page_one = pages[&1];
            let page_two = pages[&2];
            let annotations = |page| {
                doc.get_dictionary(page)
                    .unwrap()
                    .get(b"Annots")
                    .map(|a| a.as_array().unwrap().len())
                    .unwrap_or(0)
            };
            assert!(
                annotations(page_one) > 10 && annotations(page_two) == 0,
                "{}",
                workflow.name
            );
            let declaration = doc
                .objects
                .values()
                .filter_map(|o| o.as_dict().ok())
                .find(|d| {
                    d.get(b"T")
                        .and_then(|t| t.as_str())
                        .is_ok_and(|t| t == b"signatory_declaration")
                })
                .unwrap();
            let rect: Vec<f32> = declaration
                .get(b"Rect")
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_float().unwrap())
                .collect();
            // Its words start at LEFT + 20; the box ends before them.
            assert!(rect[2] < LEFT + 20.0, "{}: {rect:?}", workflow.name);
        }
    }

    #[test]
    fn long_labels_wrap_at_spaces() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("", 10), Vec::<String>::new());
    }

    #[test]
    fn a_filled_form_reads_back_its_values() {
        let set = workflows();
        let workflow = set.get("primary_user_gp").unwrap();
        let values: BTreeMap<String, String> = [
            ("user_first_name", "Siân"),
            ("request_kind", "Replacement"),
            ("signatory_declaration", "Yes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let form = extract(&filled_form(workflow, &values).unwrap(), &[], ExtractLimits::default()).unwrap();
        for (k, v) in &values {
            assert_eq!(form.get(k).and_then(|f| f.value.as_deref()), Some(v.as_str()), "{k}");
        }
    }
}
