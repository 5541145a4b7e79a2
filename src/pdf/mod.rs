//! Reading AcroForm fields out of a PDF, safely: off the async runtime, with limits on size
//! and time, and with every failure turned into a typed error that becomes a case finding.
//!
//! lopdf does the parsing (including decryption with an empty user password, object streams
//! and incremental updates, where its cross-reference handling makes the latest object win).
//! This module walks the field tree and decodes values as the PDF specification defines them.

pub mod generate;
pub mod signature;
pub mod worker;

use std::collections::HashSet;
use std::time::Duration;

use lopdf::{Dictionary, Document, LoadOptions, Object, ObjectId};

/// Limits that keep a hostile PDF from costing more than a real form could.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ExtractLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// Fields deeper than this in the `/Kids` tree are ignored; real forms nest 2 to 4 deep.
    pub max_field_depth: usize,
    pub max_fields: usize,
    /// A compressed stream may not inflate past this (decompression bombs). It bounds lopdf's
    /// eager decoding of object streams as well as our own reads of value streams.
    pub max_decompressed_bytes: usize,
    /// All the streams we decode ourselves in one PDF may not inflate past this in total.
    pub max_total_decompressed_bytes: usize,
    /// A PDF with more objects than this is refused: a two-page form has a few hundred.
    pub max_objects: usize,
    /// How deep a field value (arrays of references to arrays...) is followed.
    pub max_value_depth: usize,
    /// How many objects the walk over fields and values may visit in all, so that breadth
    /// (an array of a thousand references to arrays of a thousand) is bounded as well as depth.
    pub max_visits: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_bytes: 20 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            max_field_depth: 32,
            max_fields: 2000,
            max_decompressed_bytes: 8 * 1024 * 1024,
            max_total_decompressed_bytes: 32 * 1024 * 1024,
            max_objects: 100_000,
            max_value_depth: 8,
            max_visits: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PdfError {
    #[error("the PDF is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the file is not a PDF (no %PDF- header)")]
    NotPdf,
    #[error("the PDF is protected by a password, so its fields cannot be read")]
    PasswordProtected,
    #[error("the PDF could not be read: {0}")]
    Malformed(String),
    #[error("reading the PDF took longer than {0:?} and was abandoned")]
    TimedOut(Duration),
    #[error("the PDF reader failed on this file ({0})")]
    ReaderCrashed(String),
    #[error("the PDF has {count} objects, more than the {limit} a form could need")]
    TooManyObjects { count: usize, limit: usize },
}

/// The AcroForm field types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PdfFieldType {
    Text,
    Button,
    Choice,
    Signature,
    Unknown,
}

/// A digital signature found in a signature field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignatureInfo {
    pub field: String,
    pub signed: bool,
    pub signer_name: Option<String>,
    /// The `/M` signing time as written (`D:20260102120000Z`).
    pub signing_time: Option<String>,
    /// What the file proves about the signature (its bytes, digest, certificate and any later
    /// changes), for a signed field; see [`signature`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<signature::SignatureCheck>,
}

/// One terminal field of the form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PdfField {
    /// The fully qualified name, parts joined with `.`.
    pub full_name: String,
    pub field_type: PdfFieldType,
    /// Text as typed; a checkbox or radio's export value (`Off` when not set); choices joined
    /// with `; `.
    pub value: Option<String>,
}

impl PdfField {
    /// The last component of the name; forms re-saved by Acrobat or LiveCycle nest their names
    /// (`form1[0].page1[0].org_name[0]`).
    pub fn short_name(&self) -> &str {
        let last = self.full_name.rsplit('.').next().unwrap_or(&self.full_name);
        // LiveCycle indexes every component: `org_name[0]`.
        match last.find('[') {
            Some(i) if last.ends_with(']') => &last[..i],
            _ => last,
        }
    }
}

/// Everything read from one PDF.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtractedForm {
    pub fields: Vec<PdfField>,
    pub signatures: Vec<SignatureInfo>,
    /// For a PDF without fields (printed, flattened, scanned): a form id printed on its first
    /// page, so the case can still be put in the right workflow for keying by hand.
    pub printed_form_id: Option<String>,
    pub page_count: usize,
    pub encrypted: bool,
}

impl ExtractedForm {
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Finds a field by full name, falling back to the last name component.
    pub fn get(&self, name: &str) -> Option<&PdfField> {
        self.fields
            .iter()
            .find(|f| f.full_name == name)
            .or_else(|| self.fields.iter().find(|f| f.short_name() == name))
    }
}

/// How PDFs are read: in worker processes (the service), or on a thread of this process (fast
/// unit tests, fuzzing, tools).
#[derive(Clone, Debug, Default)]
pub enum PdfReader {
    #[default]
    InProcess,
    Workers(std::sync::Arc<worker::WorkerPool>),
}

impl PdfReader {
    /// Reads one PDF without blocking the async runtime.
    pub async fn extract(
        &self,
        bytes: Vec<u8>,
        known_form_ids: Vec<String>,
        limits: ExtractLimits,
    ) -> Result<ExtractedForm, PdfError> {
        match self {
            PdfReader::Workers(pool) => pool.extract(&bytes, &known_form_ids, limits).await,
            PdfReader::InProcess => tokio::task::spawn_blocking(move || extract(&bytes, &known_form_ids, limits))
                .await
                .unwrap_or_else(|e| Err(PdfError::ReaderCrashed(e.to_string()))),
        }
    }
}

/// The checks that need no parsing: size, and a `%PDF-` header in the first kilobyte.
pub fn precheck(bytes: &[u8], limits: ExtractLimits) -> Result<(), PdfError> {
    if bytes.len() > limits.max_bytes {
        return Err(PdfError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let head = &bytes[..bytes.len().min(1024)];
    if !head.windows(5).any(|w| w == b"%PDF-") {
        return Err(PdfError::NotPdf);
    }
    Ok(())
}

/// Extracts on a dedicated thread with a large stack, bounded in time. Safe to call from async
/// code through `spawn_blocking`, or directly from synchronous code.
///
/// A reader thread that overruns the timeout is left to finish on its own (threads cannot be
/// killed); its result is dropped. The limits keep that cost bounded, and the service reads
/// PDFs in worker processes ([`PdfReader::Workers`]), which are killed instead.
pub fn extract(bytes: &[u8], known_form_ids: &[String], limits: ExtractLimits) -> Result<ExtractedForm, PdfError> {
    precheck(bytes, limits)?;
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let owned = bytes.to_vec();
    let form_ids = known_form_ids.to_vec();
    std::thread::Builder::new()
        .name("pdf-extract".into())
        // Parsers recurse; a generous stack turns deep nesting into an error, not an abort.
        .stack_size(64 * 1024 * 1024)
        .spawn(move || {
            let result = std::panic::catch_unwind(|| extract_in_place(&owned, &form_ids, limits))
                .unwrap_or_else(|panic| Err(PdfError::ReaderCrashed(panic_message(&panic))));
            let _ = sender.send(result);
        })
        .map_err(|e| PdfError::ReaderCrashed(format!("could not start the reader: {e}")))?;
    match receiver.recv_timeout(limits.timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(PdfError::TimedOut(limits.timeout)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(PdfError::ReaderCrashed("the reader stopped".into()))
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unexpected failure".into())
}

/// Extraction on the calling thread, without the time limit. Benchmarks use it; everything
/// else should call [`extract`].
pub fn extract_in_place(
    bytes: &[u8],
    known_form_ids: &[String],
    limits: ExtractLimits,
) -> Result<ExtractedForm, PdfError> {
    let (mut form, raw_signatures) = read_form(bytes, known_form_ids, limits)?;
    verify_signatures(bytes, &mut form, raw_signatures, limits);
    Ok(form)
}

/// Checks the signed fields' signatures against the file (see [`signature::check_signature`]).
/// The signed revision of an updated file is read with the same limits, its own signatures
/// left alone, and each distinct revision at most once.
fn verify_signatures(
    bytes: &[u8],
    form: &mut ExtractedForm,
    raw_signatures: Vec<(usize, signature::RawSignature)>,
    limits: ExtractLimits,
) {
    let final_fields = comparable_fields(form);
    // Each signed revision is read once, however many signatures end there.
    let mut revisions: std::collections::HashMap<usize, Option<signature::FieldValues>> =
        std::collections::HashMap::new();
    let mut read_revision = |prefix: &[u8]| {
        revisions
            .entry(prefix.len())
            .or_insert_with(|| read_form(prefix, &[], limits).ok().map(|(f, _)| comparable_fields(&f)))
            .clone()
    };
    for (checked, (index, raw)) in raw_signatures.into_iter().enumerate() {
        let verification = if checked < signature::MAX_CHECKED_SIGNATURES {
            signature::check_signature(bytes, &raw, &final_fields, &mut read_revision)
        } else {
            signature::SignatureCheck::unchecked(&raw, "the form has more signatures than are checked")
        };
        if let Some(info) = form.signatures.get_mut(index) {
            info.verification = Some(verification);
        }
    }
}

/// The form's field values by name, signature fields left out: what a signature protects and
/// a later revision must not change.
fn comparable_fields(form: &ExtractedForm) -> signature::FieldValues {
    form.fields
        .iter()
        .filter(|f| f.field_type != PdfFieldType::Signature)
        .map(|f| (f.full_name.clone(), f.value.clone().unwrap_or_default()))
        .collect()
}

/// Reads the fields, and the raw signature dictionaries of the signed ones (by their index in
/// `signatures`), without checking the signatures.
fn read_form(
    bytes: &[u8],
    known_form_ids: &[String],
    limits: ExtractLimits,
) -> Result<(ExtractedForm, Vec<(usize, signature::RawSignature)>), PdfError> {
    // lopdf decodes every object and cross-reference stream while it loads, each within the
    // per-stream cap. Sharing the per-PDF budget between them bounds the total as well: a PDF
    // of many small bombs gets no more than one big one.
    let eager_streams = count_occurrences(bytes, b"/ObjStm") + count_occurrences(bytes, b"/XRef");
    let per_stream = limits
        .max_decompressed_bytes
        .min(limits.max_total_decompressed_bytes / eager_streams.max(1));
    let options = LoadOptions {
        max_decompressed_size: Some(per_stream),
        ..LoadOptions::default()
    };
    let document = Document::load_mem_with_options(bytes, options).map_err(|e| match e {
        lopdf::Error::InvalidPassword | lopdf::Error::Decryption(_) => PdfError::PasswordProtected,
        other => PdfError::Malformed(other.to_string()),
    })?;
    if document.objects.len() > limits.max_objects {
        return Err(PdfError::TooManyObjects {
            count: document.objects.len(),
            limit: limits.max_objects,
        });
    }
    let encrypted = document.trailer.get(b"Encrypt").is_ok();
    // lopdf tries the empty user password; when that fails it returns the document still
    // encrypted, with no decryption state.
    if encrypted && document.encryption_state.is_none() {
        return Err(PdfError::PasswordProtected);
    }
    let mut form = ExtractedForm {
        encrypted,
        page_count: document.get_pages().len(),
        ..ExtractedForm::default()
    };
    // lopdf repairs what it can; a "document" left with no pages is not a form anyone filled in.
    if form.page_count == 0 {
        return Err(PdfError::Malformed("no pages could be read".into()));
    }
    let mut raw_signatures = Vec::new();
    if let Some(fields) = acroform_fields(&document) {
        let mut walker = FieldWalker {
            document: &document,
            limits,
            seen: HashSet::new(),
            visits: 0,
            decompressed: 0,
            out: &mut form,
            raw_signatures: &mut raw_signatures,
        };
        for field in fields {
            walker.walk(field, None, Inherited::default(), 0);
        }
    }
    if form.fields.is_empty() && !known_form_ids.is_empty() {
        form.printed_form_id = printed_form_id(&document, known_form_ids);
    }
    Ok((form, raw_signatures))
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fn acroform_fields(document: &Document) -> Option<Vec<Object>> {
    let catalog = document.catalog().ok()?;
    let acroform = resolve(document, catalog.get(b"AcroForm").ok()?)?.as_dict().ok()?;
    let fields = resolve(document, acroform.get(b"Fields").ok()?)?.as_array().ok()?;
    Some(fields.clone())
}

fn resolve<'a>(document: &'a Document, object: &'a Object) -> Option<&'a Object> {
    document.dereference(object).ok().map(|(_, o)| o)
}

/// Attributes a field inherits from its ancestors (PDF 32000-1, 12.7.3.1).
#[derive(Debug, Clone, Default)]
struct Inherited {
    field_type: Option<Vec<u8>>,
    value: Option<Object>,
    options: Option<Object>,
}

struct FieldWalker<'d, 'o> {
    document: &'d Document,
    limits: ExtractLimits,
    /// Guards against reference cycles in `/Kids`.
    seen: HashSet<ObjectId>,
    /// Objects visited so far, against `limits.max_visits`.
    visits: usize,
    /// Bytes inflated so far from value streams, against `limits.max_total_decompressed_bytes`.
    decompressed: usize,
    out: &'o mut ExtractedForm,
    /// The signature dictionaries of signed fields, by index in `out.signatures`.
    raw_signatures: &'o mut Vec<(usize, signature::RawSignature)>,
}

impl FieldWalker<'_, '_> {
    fn walk(&mut self, node: Object, parent_name: Option<&str>, inherited: Inherited, depth: usize) {
        if depth > self.limits.max_field_depth || self.out.fields.len() >= self.limits.max_fields || !self.visit() {
            return;
        }
        if let Object::Reference(id) = node
            && !self.seen.insert(id)
        {
            return;
        }
        let Some(dict) = resolve(self.document, &node).and_then(|o| o.as_dict().ok()) else {
            return;
        };
        let partial = dict
            .get(b"T")
            .ok()
            .and_then(|t| resolve(self.document, t))
            .and_then(|t| lopdf::decode_text_string(t).ok());
        let full_name = match (parent_name, partial.as_deref()) {
            (Some(parent), Some(part)) => format!("{parent}.{part}"),
            (None, Some(part)) => part.to_string(),
            (Some(parent), None) => parent.to_string(),
            (None, None) => String::new(),
        };
        let here = Inherited {
            field_type: dict
                .get(b"FT")
                .ok()
                .and_then(|o| o.as_name().ok())
                .map(<[u8]>::to_vec)
                .or(inherited.field_type.clone()),
            value: dict.get(b"V").ok().cloned().or(inherited.value.clone()),
            options: dict.get(b"Opt").ok().cloned().or(inherited.options.clone()),
        };
        // Kids that carry a `/T` are child fields; kids without one are this field's widgets.
        let kids: Vec<Object> = dict
            .get(b"Kids")
            .ok()
            .and_then(|k| resolve(self.document, k))
            .and_then(|k| k.as_array().ok())
            .cloned()
            .unwrap_or_default();
        let child_fields: Vec<&Object> = kids
            .iter()
            .filter(|k| {
                resolve(self.document, k)
                    .and_then(|o| o.as_dict().ok())
                    .is_some_and(|d| d.has(b"T"))
            })
            .collect();
        if !child_fields.is_empty() {
            for kid in child_fields.into_iter().cloned().collect::<Vec<_>>() {
                self.walk(kid, Some(&full_name), here.clone(), depth + 1);
            }
            return;
        }
        if full_name.is_empty() {
            return;
        }
        let widgets: Vec<&Dictionary> = if kids.is_empty() {
            vec![dict]
        } else {
            kids.iter()
                .filter_map(|k| resolve(self.document, k))
                .filter_map(|o| o.as_dict().ok())
                .collect()
        };
        self.record(full_name, &here, &widgets);
    }

    fn record(&mut self, full_name: String, attrs: &Inherited, widgets: &[&Dictionary]) {
        let field_type = match attrs.field_type.as_deref() {
            Some(b"Tx") => PdfFieldType::Text,
            Some(b"Btn") => PdfFieldType::Button,
            Some(b"Ch") => PdfFieldType::Choice,
            Some(b"Sig") => PdfFieldType::Signature,
            _ => PdfFieldType::Unknown,
        };
        let value_object = attrs.value.as_ref().and_then(|v| resolve(self.document, v));
        let value = match field_type {
            PdfFieldType::Signature => {
                let signature = value_object.and_then(|v| v.as_dict().ok());
                let text = |key: &[u8]| {
                    signature
                        .and_then(|d| d.get(key).ok())
                        .and_then(|o| resolve(self.document, o))
                        .and_then(|o| lopdf::decode_text_string(o).ok())
                };
                let signed = signature.is_some_and(|d| d.has(b"Contents"));
                if let Some(dict) = signature.filter(|_| signed) {
                    self.raw_signatures
                        .push((self.out.signatures.len(), self.raw_signature(dict)));
                }
                self.out.signatures.push(SignatureInfo {
                    field: full_name.clone(),
                    signed,
                    signer_name: text(b"Name"),
                    signing_time: text(b"M"),
                    verification: None,
                });
                signature.map(|_| "signed".to_string())
            }
            PdfFieldType::Button => Some(self.button_value(value_object, attrs.options.as_ref(), widgets)),
            _ => value_object.and_then(|v| self.text_value(v, 0)),
        };
        self.out.fields.push(PdfField {
            full_name,
            field_type,
            value,
        });
    }

    /// What a signature dictionary says of the bytes it signed.
    fn raw_signature(&self, dict: &Dictionary) -> signature::RawSignature {
        let get = |key: &[u8]| dict.get(key).ok().and_then(|o| resolve(self.document, o));
        signature::RawSignature {
            byte_range: get(b"ByteRange").and_then(|o| o.as_array().ok()).map(|items| {
                items
                    .iter()
                    .take(16)
                    .map(|i| resolve(self.document, i).and_then(|i| i.as_i64().ok()).unwrap_or(-1))
                    .collect()
            }),
            contents: get(b"Contents").and_then(|o| o.as_str().ok()).map(<[u8]>::to_vec),
            sub_filter: get(b"SubFilter")
                .and_then(|o| o.as_name().ok())
                .map(|n| String::from_utf8_lossy(n).into_owned()),
        }
    }

    /// Counts one visited object; false once the walk has used its budget.
    fn visit(&mut self) -> bool {
        self.visits += 1;
        self.visits <= self.limits.max_visits
    }

    /// A text value, bounded in depth (a value array may hold itself) and in total work.
    fn text_value(&mut self, object: &Object, depth: usize) -> Option<String> {
        if depth > self.limits.max_value_depth || !self.visit() {
            return None;
        }
        match object {
            Object::String(..) => lopdf::decode_text_string(object).ok(),
            Object::Name(name) => Some(String::from_utf8_lossy(name).into_owned()),
            Object::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    let Some(item) = resolve(self.document, item) else {
                        continue;
                    };
                    if let Some(part) = self.text_value(item, depth + 1) {
                        parts.push(part);
                    }
                    if self.visits > self.limits.max_visits {
                        break;
                    }
                }
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            // Some tools write a text field's value as a stream. Every decode is capped, and so
            // is their sum; a stream that will not decode within its cap is no value.
            Object::Stream(stream) => {
                let remaining = self
                    .limits
                    .max_total_decompressed_bytes
                    .saturating_sub(self.decompressed)
                    .min(self.limits.max_decompressed_bytes);
                let content = if stream.dict.has(b"Filter") {
                    stream.decompressed_content_with_limit(remaining).ok()?
                } else if stream.content.len() <= remaining {
                    stream.content.clone()
                } else {
                    return None;
                };
                self.decompressed += content.len();
                lopdf::decode_text_string(&Object::string_literal(content)).ok()
            }
            Object::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// A checkbox or radio's value: `/V` when present, else the widget's `/AS` (some tools set
    /// only that). Where `/Opt` lists export values, the state name is an index into it.
    fn button_value(&self, value: Option<&Object>, options: Option<&Object>, widgets: &[&Dictionary]) -> String {
        let from_v = value
            .and_then(|v| v.as_name().ok())
            .map(|n| String::from_utf8_lossy(n).into_owned());
        let from_as = || {
            widgets
                .iter()
                .filter_map(|w| w.get(b"AS").ok().and_then(|a| a.as_name().ok()))
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .find(|n| n != "Off")
        };
        let state = from_v
            .filter(|v| !v.is_empty())
            .or_else(from_as)
            .unwrap_or_else(|| "Off".into());
        if let Some(Object::Array(opts)) = options.and_then(|o| resolve(self.document, o))
            && let Ok(index) = state.parse::<usize>()
            && let Some(export) = opts
                .get(index)
                .and_then(|o| resolve(self.document, o))
                .and_then(|o| lopdf::decode_text_string(o).ok())
        {
            return export;
        }
        state
    }
}

/// Looks for a known form id printed on the first page (our blank forms print it in the
/// footer), so a flattened or printed copy still finds its workflow.
fn printed_form_id(document: &Document, known_form_ids: &[String]) -> Option<String> {
    let text = document.extract_text_with_limit(&[1], 4 * 1024 * 1024).ok()?;
    let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    known_form_ids
        .iter()
        .find(|id| compact.contains(&format!("Form {id}")))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_pdf_is_refused_before_parsing() {
        assert_eq!(extract(b"hello", &[], ExtractLimits::default()), Err(PdfError::NotPdf));
    }

    #[test]
    fn an_oversized_pdf_is_refused_before_parsing() {
        let limits = ExtractLimits {
            max_bytes: 10,
            ..ExtractLimits::default()
        };
        assert!(matches!(
            extract(b"%PDF-1.7 and a lot more", &[], limits),
            Err(PdfError::TooLarge { .. })
        ));
    }

    #[test]
    fn short_names_drop_parents_and_livecycle_indexes() {
        let field = |n: &str| PdfField {
            full_name: n.into(),
            field_type: PdfFieldType::Text,
            value: None,
        };
        assert_eq!(field("form1[0].page1[0].org_name[0]").short_name(), "org_name");
        assert_eq!(field("org_name").short_name(), "org_name");
        assert_eq!(field("a.b.user_email").short_name(), "user_email");
    }
}
