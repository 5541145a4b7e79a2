//! Digital signatures on a form: what the file proves about who signed it, and whether it was
//! changed afterwards.
//!
//! Two halves, both pure:
//! - [`check_signature`] runs inside PDF extraction (so, in a worker process): the `/ByteRange`
//!   must cover the whole file except the `/Contents` hole, the digest of those bytes must
//!   match the CMS `messageDigest`, and the CMS signature must verify with the signer's
//!   certificate. When the signed bytes stop short of the end of the file, the form was
//!   updated after signing; the fields of the signed revision are compared with the final
//!   ones, so that a later comment passes and a changed value does not.
//! - [`judge_trust`] runs in the engine, with the configured trust store and the engine's
//!   clock: does the signer's certificate chain to a trusted root, through CA certificates,
//!   each valid now? A self-signed certificate is reported as such, never as valid.
//!
//! CMS and X.509 are parsed by RustCrypto's `cms` and `x509-cert`; signatures are checked by
//! `ring`. Revocation (CRL, OCSP) is not checked: it needs the network, and an intake that
//! must work offline cannot depend on it. Signature timestamps (RFC 3161 tokens) are not
//! checked either, so the signing time shown is the signer's own claim.

use std::collections::BTreeMap;

use base64::Engine as _;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Header, Reader, SliceReader};
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

/// A form's field values by full name.
pub type FieldValues = BTreeMap<String, String>;

/// At most this many signatures in one PDF are checked; a real form has one or two. Each
/// check may read the file's signed revision again, so a PDF of a thousand signature fields
/// must not cost a thousand parses.
pub const MAX_CHECKED_SIGNATURES: usize = 4;

/// What the signature dictionary of one signed field holds, as read from the final revision.
#[derive(Debug, Clone, Default)]
pub struct RawSignature {
    pub byte_range: Option<Vec<i64>>,
    pub contents: Option<Vec<u8>>,
    pub sub_filter: Option<String>,
}

/// Whether the signed bytes are the bytes that were signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Integrity {
    /// The byte range is sound, the digest matches and the signature verifies with the
    /// signer's certificate.
    Intact,
    /// Something does not match: the file was altered, or the signature is damaged or forged.
    Broken { reason: String },
    /// A kind of signature we do not check (reported, never taken as valid).
    Unsupported { reason: String },
}

/// One certificate the signature carries, with enough to show and to re-check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateEvidence {
    pub subject: String,
    pub common_name: Option<String>,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub sha256: String,
    /// The certificate itself, DER in base64, so the trust decision can be made (and made
    /// again) without the PDF.
    pub der_base64: String,
}

/// What the file holds after the signed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaterRevisions {
    /// Bytes after the end of the signed range.
    pub bytes_after_signing: u64,
    /// Fields whose value differs between the signed revision and the final one (or that one
    /// of them lacks): empty when only other things (a comment, a second signature) changed.
    pub changed_fields: Vec<String>,
    /// False when the signed revision could not be read, so changes cannot be ruled out.
    pub signed_revision_readable: bool,
}

/// How far the signer's certificate is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustStatus {
    /// Chains through CA certificates to the configured trust store, every link valid now.
    Trusted,
    /// The signer issued its own certificate: anyone can make one with any name in it.
    SelfSigned,
    /// The chain stops at an issuer that is not in the trust store.
    UnknownIssuer,
    /// A certificate on the chain has expired (or is not valid yet).
    Expired,
    /// A link in the chain does not verify, or an issuer is not a CA.
    InvalidChain,
    /// The signature itself did not verify, so its certificate proves nothing.
    NotChecked,
}

impl TrustStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustStatus::Trusted => "trusted",
            TrustStatus::SelfSigned => "self_signed",
            TrustStatus::UnknownIssuer => "unknown_issuer",
            TrustStatus::Expired => "expired",
            TrustStatus::InvalidChain => "invalid_chain",
            TrustStatus::NotChecked => "not_checked",
        }
    }
}

/// The trust decision, with the path it followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustVerdict {
    pub status: TrustStatus,
    /// In plain English, for the case page.
    pub detail: String,
    /// Subjects from the signer to the root, as far as the chain could be followed.
    pub path: Vec<String>,
    /// When the decision was made (certificates are judged valid or not at this time).
    pub checked_at: String,
}

/// Everything checked about one signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureCheck {
    pub sub_filter: Option<String>,
    pub byte_range: Vec<i64>,
    /// The signed bytes run to the end of the file: nothing was added after signing.
    pub covers_whole_file: bool,
    pub integrity: Integrity,
    pub digest_algorithm: Option<String>,
    pub signature_algorithm: Option<String>,
    /// The signer's certificate first, then the others the signature carries.
    pub certificates: Vec<CertificateEvidence>,
    /// The signingTime the signer's software put in the signature (a claim, not a timestamp).
    pub claimed_signing_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub later_revisions: Option<LaterRevisions>,
    /// Filled in by the engine with [`judge_trust`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustVerdict>,
}

impl SignatureCheck {
    /// What is known of a signature before its bytes are looked at.
    fn of(raw: &RawSignature, integrity: Integrity) -> SignatureCheck {
        SignatureCheck {
            sub_filter: raw.sub_filter.clone(),
            byte_range: raw.byte_range.clone().unwrap_or_default(),
            covers_whole_file: false,
            integrity,
            digest_algorithm: None,
            signature_algorithm: None,
            certificates: Vec::new(),
            claimed_signing_time: None,
            later_revisions: None,
            trust: None,
        }
    }

    /// A signature left unchecked, for the reason given (never taken as valid).
    pub fn unchecked(raw: &RawSignature, reason: &str) -> SignatureCheck {
        SignatureCheck::of(raw, Integrity::Unsupported { reason: reason.into() })
    }

    /// The signer's name from their certificate.
    pub fn signer(&self) -> Option<&str> {
        self.certificates
            .first()
            .map(|c| c.common_name.as_deref().unwrap_or(&c.subject))
    }
}

/// One signed field as the case page, the API and the evidence pack show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DigitalSignatureView {
    pub field: String,
    /// The signer's name in their certificate.
    pub signer: Option<String>,
    /// The name the signing software wrote in the signature (`/Name`), as claimed.
    pub name_in_signature: Option<String>,
    /// When the signer's software says it signed (RFC 3339): a claim, not a timestamp.
    pub claimed_signing_time: Option<String>,
    /// `intact`, `broken`, `unsupported` or `not_checked`.
    pub integrity: String,
    pub integrity_detail: Option<String>,
    /// `trusted`, `self_signed`, `unknown_issuer`, `expired`, `invalid_chain` or `not_checked`.
    pub trust: String,
    pub trust_detail: Option<String>,
    /// Subjects from the signer towards the trusted root, as far as the chain was followed.
    pub chain: Vec<String>,
    /// Nothing was added to the file after it was signed.
    pub covers_whole_file: bool,
    /// Fields whose values a later revision changed.
    pub changed_after_signing: Vec<String>,
    pub issuer: Option<String>,
    pub certificate_sha256: Option<String>,
    /// RFC 3339.
    pub certificate_valid_until: Option<String>,
    pub digest_algorithm: Option<String>,
    pub signature_algorithm: Option<String>,
}

impl DigitalSignatureView {
    /// The signed fields of a form, for display; unsigned signature fields are left out.
    pub fn of_form(signatures: &[super::SignatureInfo]) -> Vec<DigitalSignatureView> {
        signatures
            .iter()
            .filter(|s| s.signed)
            .map(DigitalSignatureView::of)
            .collect()
    }

    fn of(signature: &super::SignatureInfo) -> DigitalSignatureView {
        let check = signature.verification.as_ref();
        let (integrity, integrity_detail) = match check.map(|c| &c.integrity) {
            Some(Integrity::Intact) => ("intact", None),
            Some(Integrity::Broken { reason }) => ("broken", Some(reason.clone())),
            Some(Integrity::Unsupported { reason }) => ("unsupported", Some(reason.clone())),
            None => ("not_checked", None),
        };
        let trust = check.and_then(|c| c.trust.as_ref());
        let signer_certificate = check.and_then(|c| c.certificates.first());
        DigitalSignatureView {
            field: signature.field.clone(),
            signer: check.and_then(|c| c.signer().map(str::to_string)),
            name_in_signature: signature.signer_name.clone(),
            claimed_signing_time: check.and_then(|c| c.claimed_signing_time.clone()),
            integrity: integrity.into(),
            integrity_detail,
            trust: trust.map_or(TrustStatus::NotChecked, |t| t.status).as_str().into(),
            trust_detail: trust.map(|t| t.detail.clone()),
            chain: trust.map(|t| t.path.clone()).unwrap_or_default(),
            covers_whole_file: check.is_some_and(|c| c.covers_whole_file),
            changed_after_signing: check
                .and_then(|c| c.later_revisions.as_ref())
                .map(|l| l.changed_fields.clone())
                .unwrap_or_default(),
            issuer: signer_certificate.map(|c| c.issuer.clone()),
            certificate_sha256: signer_certificate.map(|c| c.sha256.clone()),
            certificate_valid_until: signer_certificate.map(|c| c.not_after.clone()),
            digest_algorithm: check.and_then(|c| c.digest_algorithm.clone()),
            signature_algorithm: check.and_then(|c| c.signature_algorithm.clone()),
        }
    }
}

/// Checks one signature against the whole file. `final_fields` are the form's fields as
/// read from the final revision; `read_fields` reads the fields of a prefix of the file (the
/// signed revision), or fails.
pub fn check_signature(
    file: &[u8],
    raw: &RawSignature,
    final_fields: &FieldValues,
    read_fields: &mut dyn FnMut(&[u8]) -> Option<FieldValues>,
) -> SignatureCheck {
    let mut check = SignatureCheck::of(raw, Integrity::Intact);
    let broken = |reason: &str| Integrity::Broken { reason: reason.into() };
    let (Some(range), Some(contents)) = (raw.byte_range.as_deref(), raw.contents.as_deref()) else {
        check.integrity = broken("the signature has no /ByteRange or no /Contents");
        return check;
    };
    let ranges = match signed_ranges(file, range, contents) {
        Ok(ranges) => ranges,
        Err(reason) => {
            check.integrity = Integrity::Broken { reason };
            return check;
        }
    };
    let signed_end = ranges[1].end;
    // Line ends after the last %%EOF are not a revision.
    let after = &file[signed_end..];
    check.covers_whole_file = after.iter().all(|b| b.is_ascii_whitespace() || *b == 0);
    if !check.covers_whole_file {
        let signed_revision = read_fields(&file[..signed_end]);
        check.later_revisions = Some(LaterRevisions {
            bytes_after_signing: after.len() as u64,
            signed_revision_readable: signed_revision.is_some(),
            changed_fields: signed_revision
                .map(|before| changed_fields(&before, final_fields))
                .unwrap_or_default(),
        });
    }
    match raw.sub_filter.as_deref() {
        Some("adbe.pkcs7.detached") | Some("ETSI.CAdES.detached") | None => {}
        Some(other) => {
            check.integrity = Integrity::Unsupported {
                reason: format!("signatures of type {other} are not checked"),
            };
            return check;
        }
    }
    check.integrity = match verify_cms(contents, &ranges.map(|r| &file[r]), &mut check) {
        Ok(()) => Integrity::Intact,
        Err(CmsProblem::Broken(reason)) => Integrity::Broken { reason },
        Err(CmsProblem::Unsupported(reason)) => Integrity::Unsupported { reason },
    };
    check
}

/// The two signed ranges, once the byte range is shown to be sound: it starts at the start of
/// the file, stays inside it, and leaves out exactly the `<hex>` string that is `/Contents`.
fn signed_ranges(file: &[u8], range: &[i64], contents: &[u8]) -> Result<[std::ops::Range<usize>; 2], String> {
    let [start, first_len, second_start, second_len] = range else {
        return Err(format!("the /ByteRange has {} numbers, not 4", range.len()));
    };
    let as_offset = |n: i64| usize::try_from(n).map_err(|_| "the /ByteRange has a negative number".to_string());
    let (start, first_len, second_start, second_len) = (
        as_offset(*start)?,
        as_offset(*first_len)?,
        as_offset(*second_start)?,
        as_offset(*second_len)?,
    );
    if start != 0 {
        return Err("the signed bytes do not start at the start of the file".into());
    }
    let second_end = second_start
        .checked_add(second_len)
        .filter(|end| *end <= file.len())
        .ok_or("the /ByteRange runs past the end of the file")?;
    if first_len >= second_start {
        return Err("the /ByteRange's two parts overlap".into());
    }
    let hole = &file[first_len..second_start];
    let is_hex_string = hole.len() >= 2
        && hole[0] == b'<'
        && hole[hole.len() - 1] == b'>'
        && hole[1..hole.len() - 1].iter().all(u8::is_ascii_hexdigit);
    if !is_hex_string {
        return Err("the bytes left out of the signature are not just its /Contents".into());
    }
    let hole_bytes = hex::decode(&hole[1..hole.len() - 1]).map_err(|_| "the /Contents hole is not hex".to_string())?;
    if hole_bytes != contents {
        return Err("the bytes left out of the signature are not this signature's /Contents".into());
    }
    Ok([0..first_len, second_start..second_end])
}

/// Field names whose values differ between two revisions (or appear in one only).
fn changed_fields(before: &FieldValues, after: &FieldValues) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .collect();
    names.into_iter().cloned().collect()
}

enum CmsProblem {
    Broken(String),
    Unsupported(String),
}

fn broken(reason: impl Into<String>) -> CmsProblem {
    CmsProblem::Broken(reason.into())
}

mod oid {
    use der::asn1::ObjectIdentifier as Oid;
    pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    pub const DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    pub const SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
    pub const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA1_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
    pub const SHA256_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
    pub const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
    pub const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
    pub const SUBJECT_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.14");
    pub const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(oid: &ObjectIdentifier) -> Option<Hash> {
        match *oid {
            oid::SHA1 => Some(Hash::Sha1),
            oid::SHA256 => Some(Hash::Sha256),
            oid::SHA384 => Some(Hash::Sha384),
            oid::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "SHA-1",
            Hash::Sha256 => "SHA-256",
            Hash::Sha384 => "SHA-384",
            Hash::Sha512 => "SHA-512",
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        let algorithm = match self {
            Hash::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &ring::digest::SHA256,
            Hash::Sha384 => &ring::digest::SHA384,
            Hash::Sha512 => &ring::digest::SHA512,
        };
        let mut context = ring::digest::Context::new(algorithm);
        for part in parts {
            context.update(part);
        }
        context.finish().as_ref().to_vec()
    }
}

/// Parses the CMS SignedData in `contents` and checks it over the signed bytes, filling in the
/// algorithms, certificates and claimed signing time as it goes.
fn verify_cms(contents: &[u8], signed: &[&[u8]; 2], check: &mut SignatureCheck) -> Result<(), CmsProblem> {
    // /Contents is padded with zeros after the DER; decode just the one value at its start.
    let content_info = SliceReader::new(contents)
        .and_then(|mut reader| ContentInfo::decode(&mut reader))
        .map_err(|e| broken(format!("the signature is not a readable CMS structure ({e})")))?;
    if content_info.content_type != oid::SIGNED_DATA {
        return Err(broken("the signature is not CMS SignedData"));
    }
    let signed_data: SignedData = content_info
        .content
        .decode_as()
        .map_err(|e| broken(format!("the CMS SignedData cannot be read ({e})")))?;
    let certificates: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            cms::cert::CertificateChoices::Certificate(c) => Some(c.clone()),
            cms::cert::CertificateChoices::Other(_) => None,
        })
        .collect();
    let signer_infos: Vec<&SignerInfo> = signed_data.signer_infos.0.iter().collect();
    let [signer_info] = signer_infos.as_slice() else {
        return Err(broken(format!(
            "the signature has {} signers, not one",
            signer_infos.len()
        )));
    };
    let signer_index = certificates
        .iter()
        .position(|c| identifies(&signer_info.sid, c))
        .ok_or_else(|| broken("the signer's certificate is not in the signature"))?;
    // The signer first, then the rest in the order given.
    let mut ordered: Vec<&Certificate> = vec![&certificates[signer_index]];
    ordered.extend(
        certificates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != signer_index)
            .map(|(_, c)| c),
    );
    check.certificates = ordered.iter().map(|c| evidence(c)).collect();
    let signer = &certificates[signer_index];

    let digest = Hash::from_oid(&signer_info.digest_alg.oid).ok_or_else(|| {
        CmsProblem::Unsupported(format!(
            "digest algorithm {} is not supported",
            signer_info.digest_alg.oid
        ))
    })?;
    check.digest_algorithm = Some(digest.name().into());
    let content_digest = digest.digest(signed);
    let message = match &signer_info.signed_attrs {
        Some(attributes) => {
            let attribute = |wanted: ObjectIdentifier| {
                attributes
                    .iter()
                    .find(|a| a.oid == wanted)
                    .and_then(|a| a.values.iter().next())
            };
            let claimed = attribute(oid::MESSAGE_DIGEST)
                .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
                .ok_or_else(|| broken("the signature has no messageDigest attribute"))?;
            if claimed.as_bytes() != content_digest.as_slice() {
                return Err(broken(
                    "the file's digest does not match the signed digest: the signed bytes were changed",
                ));
            }
            let content_type = attribute(oid::CONTENT_TYPE).and_then(|v| v.decode_as::<ObjectIdentifier>().ok());
            if content_type != Some(oid::DATA) {
                return Err(broken("the signed content type is not data"));
            }
            check.claimed_signing_time = attribute(oid::SIGNING_TIME)
                .and_then(|v| v.to_der().ok())
                .and_then(|der| x509_cert::time::Time::from_der(&der).ok())
                .map(|t| rfc3339(t.to_unix_duration()));
            // What was signed is the DER of the attributes as a SET, exactly as they were
            // encoded: decoding sorts a SET OF, so re-encoding could differ from the original.
            raw_signed_attributes(contents).ok_or_else(|| broken("the signed attributes cannot be read"))?
        }
        // Without signed attributes the signature is over the content itself.
        None => signed.concat(),
    };
    let algorithm = signature_algorithm(
        &signer_info.signature_algorithm.oid,
        digest,
        &signer.tbs_certificate.subject_public_key_info,
    )
    .map_err(CmsProblem::Unsupported)?;
    check.signature_algorithm = Some(algorithm.name.into());
    let public_key = signer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    ring::signature::UnparsedPublicKey::new(algorithm.ring, public_key)
        .verify(&message, signer_info.signature.as_bytes())
        .map_err(|_| broken("the signature does not verify with the signer's certificate"))
}

/// The signed attributes' bytes as they appear in the first SignerInfo, retagged as a SET.
fn raw_signed_attributes(contents: &[u8]) -> Option<Vec<u8>> {
    let mut r = SliceReader::new(contents).ok()?;
    let enter = |r: &mut SliceReader<'_>| Header::decode(r).ok();
    let skip = |r: &mut SliceReader<'_>| r.tlv_bytes().ok().map(|_| ());
    enter(&mut r)?; // ContentInfo
    skip(&mut r)?; // contentType
    enter(&mut r)?; // [0] EXPLICIT
    enter(&mut r)?; // SignedData
    skip(&mut r)?; // version
    skip(&mut r)?; // digestAlgorithms
    skip(&mut r)?; // encapContentInfo
    while matches!(r.peek_byte(), Some(0xA0) | Some(0xA1)) {
        skip(&mut r)?; // certificates, crls
    }
    enter(&mut r)?; // signerInfos
    enter(&mut r)?; // the first SignerInfo
    skip(&mut r)?; // version
    skip(&mut r)?; // sid
    skip(&mut r)?; // digestAlgorithm
    if r.peek_byte() != Some(0xA0) {
        return None;
    }
    let mut bytes = r.tlv_bytes().ok()?.to_vec();
    bytes[0] = 0x31;
    Some(bytes)
}

/// Whether `certificate` is the one a SignerInfo names.
fn identifies(sid: &SignerIdentifier, certificate: &Certificate) -> bool {
    let tbs = &certificate.tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => id.issuer == tbs.issuer && id.serial_number == tbs.serial_number,
        SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == oid::SUBJECT_KEY_IDENTIFIER)
            .and_then(|e| x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|own| own == *ski),
    }
}

struct Algorithm {
    name: &'static str,
    ring: &'static dyn ring::signature::VerificationAlgorithm,
}

/// The ring algorithm for a signature algorithm OID with a key. Bare `rsaEncryption` and
/// `id-ecPublicKey` take their hash from the digest algorithm.
fn signature_algorithm(
    algorithm: &ObjectIdentifier,
    digest: Hash,
    key: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<Algorithm, String> {
    use ring::signature as rs;
    let hash = match *algorithm {
        oid::SHA1_RSA => Hash::Sha1,
        oid::SHA256_RSA | oid::ECDSA_SHA256 => Hash::Sha256,
        oid::SHA384_RSA | oid::ECDSA_SHA384 => Hash::Sha384,
        oid::SHA512_RSA => Hash::Sha512,
        oid::RSA | oid::EC_PUBLIC_KEY | oid::ED25519 => digest,
        other => return Err(format!("signature algorithm {other} is not supported")),
    };
    let found = |name, ring| Ok(Algorithm { name, ring });
    match key.algorithm.oid {
        oid::RSA => match hash {
            Hash::Sha1 => found("RSA with SHA-1", &rs::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY),
            Hash::Sha256 => found("RSA with SHA-256", &rs::RSA_PKCS1_2048_8192_SHA256),
            Hash::Sha384 => found("RSA with SHA-384", &rs::RSA_PKCS1_2048_8192_SHA384),
            Hash::Sha512 => found("RSA with SHA-512", &rs::RSA_PKCS1_2048_8192_SHA512),
        },
        oid::EC_PUBLIC_KEY => {
            let curve = key
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match (curve, hash) {
                (Some(oid::P256), Hash::Sha256) => found("ECDSA P-256 with SHA-256", &rs::ECDSA_P256_SHA256_ASN1),
                (Some(oid::P256), Hash::Sha384) => found("ECDSA P-256 with SHA-384", &rs::ECDSA_P256_SHA384_ASN1),
                (Some(oid::P384), Hash::Sha256) => found("ECDSA P-384 with SHA-256", &rs::ECDSA_P384_SHA256_ASN1),
                (Some(oid::P384), Hash::Sha384) => found("ECDSA P-384 with SHA-384", &rs::ECDSA_P384_SHA384_ASN1),
                _ => Err("this elliptic curve and hash are not supported".into()),
            }
        }
        oid::ED25519 => found("Ed25519", &rs::ED25519),
        other => Err(format!("public keys of type {other} are not supported")),
    }
}

/// Checks that `issuer` signed `subject`.
fn issued_by(subject: &Certificate, issuer: &Certificate) -> bool {
    if subject.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Ok(tbs) = subject.tbs_certificate.to_der() else {
        return false;
    };
    let key = &issuer.tbs_certificate.subject_public_key_info;
    // The certificate's own algorithm names its hash; the digest argument is only a fallback.
    let Ok(algorithm) = signature_algorithm(&subject.signature_algorithm.oid, Hash::Sha256, key) else {
        return false;
    };
    let Some(signature) = subject.signature.as_bytes() else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(algorithm.ring, key.subject_public_key.raw_bytes())
        .verify(&tbs, signature)
        .is_ok()
}

fn is_ca(certificate: &Certificate) -> bool {
    certificate
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid::BASIC_CONSTRAINTS)
        .and_then(|e| x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|bc| bc.ca)
}

fn evidence(certificate: &Certificate) -> CertificateEvidence {
    let tbs = &certificate.tbs_certificate;
    let der = certificate.to_der().unwrap_or_default();
    CertificateEvidence {
        subject: tbs.subject.to_string(),
        common_name: common_name(&tbs.subject),
        issuer: tbs.issuer.to_string(),
        serial: hex::encode(tbs.serial_number.as_bytes()),
        not_before: rfc3339(tbs.validity.not_before.to_unix_duration()),
        not_after: rfc3339(tbs.validity.not_after.to_unix_duration()),
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &der)),
        der_base64: base64::engine::general_purpose::STANDARD.encode(&der),
    }
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == oid::COMMON_NAME)
        .find_map(|atv| {
            atv.value
                .decode_as::<der::asn1::Utf8StringRef<'_>>()
                .map(|s| s.to_string())
                .or_else(|_| {
                    atv.value
                        .decode_as::<der::asn1::PrintableStringRef<'_>>()
                        .map(|s| s.to_string())
                })
                .ok()
        })
}

fn rfc3339(since_epoch: std::time::Duration) -> String {
    i64::try_from(since_epoch.as_secs())
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The certificates a deployment trusts to vouch for signers: its roots (and any
/// intermediates it chooses to pin), from a PEM file.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: std::sync::Arc<Vec<Certificate>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("cannot read the trust store {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the trust store {path} holds a certificate that cannot be read: {reason}")]
    Parse { path: String, reason: String },
}

impl TrustAnchors {
    /// Reads every certificate in a PEM file.
    pub fn from_pem_file(path: &std::path::Path) -> Result<TrustAnchors, TrustStoreError> {
        let text = std::fs::read(path).map_err(|source| TrustStoreError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&text).map_err(|reason| TrustStoreError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn from_pem(pem: &[u8]) -> Result<TrustAnchors, String> {
        let anchors = Certificate::load_pem_chain(pem).map_err(|e| e.to_string())?;
        Ok(TrustAnchors {
            anchors: std::sync::Arc::new(anchors),
        })
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// The longest chain followed from a signer to a root.
const MAX_CHAIN: usize = 8;

/// Decides how far a checked signature's certificate is trusted, at `now`.
pub fn judge_trust(check: &SignatureCheck, anchors: &TrustAnchors, now: chrono::DateTime<chrono::Utc>) -> TrustVerdict {
    let checked_at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let verdict = |status, detail: String, path| TrustVerdict {
        status,
        detail,
        path,
        checked_at: checked_at.clone(),
    };
    if check.integrity != Integrity::Intact {
        return verdict(
            TrustStatus::NotChecked,
            "the signature itself did not verify, so its certificate proves nothing".into(),
            vec![],
        );
    }
    let carried: Vec<Certificate> = check
        .certificates
        .iter()
        .filter_map(|c| base64::engine::general_purpose::STANDARD.decode(&c.der_base64).ok())
        .filter_map(|der| Certificate::from_der(&der).ok())
        .collect();
    let Some(signer) = carried.first() else {
        return verdict(
            TrustStatus::InvalidChain,
            "the signature carries no certificate".into(),
            vec![],
        );
    };
    let at = std::time::Duration::from_secs(u64::try_from(now.timestamp()).unwrap_or(0));
    let subject = |c: &Certificate| {
        common_name(&c.tbs_certificate.subject).unwrap_or_else(|| c.tbs_certificate.subject.to_string())
    };
    let mut path = vec![subject(signer)];
    let mut current = signer;
    for _ in 0..MAX_CHAIN {
        let validity = &current.tbs_certificate.validity;
        if at < validity.not_before.to_unix_duration() {
            return verdict(
                TrustStatus::Expired,
                format!(
                    "the certificate of {} is not valid until {}",
                    subject(current),
                    rfc3339(validity.not_before.to_unix_duration())
                ),
                path,
            );
        }
        if at > validity.not_after.to_unix_duration() {
            return verdict(
                TrustStatus::Expired,
                format!(
                    "the certificate of {} expired on {}",
                    subject(current),
                    rfc3339(validity.not_after.to_unix_duration())
                ),
                path,
            );
        }
        // A trusted certificate ends the chain, whether it is the root or one pinned below it.
        if anchors.anchors.iter().any(|a| a == current) {
            return verdict(
                TrustStatus::Trusted,
                format!("chains to the trusted {}", subject(current)),
                path,
            );
        }
        if let Some(anchor) = anchors.anchors.iter().find(|a| issued_by(current, a)) {
            path.push(subject(anchor));
            return verdict(
                TrustStatus::Trusted,
                format!("chains to the trusted {}", subject(anchor)),
                path,
            );
        }
        if current.tbs_certificate.issuer == current.tbs_certificate.subject {
            return if !std::ptr::eq(current, signer) {
                verdict(
                    TrustStatus::UnknownIssuer,
                    format!(
                        "the chain ends at {}, a root that is not in the trust store",
                        subject(current)
                    ),
                    path,
                )
            } else if issued_by(current, current) {
                verdict(
                    TrustStatus::SelfSigned,
                    format!(
                        "{} signed with a self-signed certificate, which anyone can make with any name in it",
                        subject(current)
                    ),
                    path,
                )
            } else {
                verdict(
                    TrustStatus::InvalidChain,
                    "a self-issued certificate does not verify".into(),
                    path,
                )
            };
        }
        let issuer = carried
            .iter()
            .find(|c| !std::ptr::eq(*c, current) && c.tbs_certificate.subject == current.tbs_certificate.issuer);
        let Some(issuer) = issuer else {
            return verdict(
                TrustStatus::UnknownIssuer,
                format!(
                    "the issuer of {} ({}) is not in the trust store",
                    subject(current),
                    current.tbs_certificate.issuer
                ),
                path,
            );
        };
        if !issued_by(current, issuer) {
            return verdict(
                TrustStatus::InvalidChain,
                format!(
                    "the certificate of {} does not verify with its issuer's key",
                    subject(current)
                ),
                path,
            );
        }
        if !is_ca(issuer) {
            return verdict(
                TrustStatus::InvalidChain,
                format!(
                    "{} issued a certificate but is not a certificate authority",
                    subject(issuer)
                ),
                path,
            );
        }
        path.push(subject(issuer));
        current = issuer;
    }
    verdict(TrustStatus::InvalidChain, "the chain is too long".into(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with_hole(contents_hex: &str) -> (Vec<u8>, Vec<i64>) {
        let head = b"%PDF-1.7 signed part /Contents ";
        let tail = b" /rest of the file %%EOF\n";
        let mut file = head.to_vec();
        file.extend_from_slice(format!("<{contents_hex}>").as_bytes());
        file.extend_from_slice(tail);
        let hole_start = head.len() as i64;
        let hole_end = hole_start + contents_hex.len() as i64 + 2;
        (
            file.clone(),
            vec![0, hole_start, hole_end, file.len() as i64 - hole_end],
        )
    }

    #[test]
    fn a_byte_range_that_leaves_out_exactly_the_contents_is_sound() {
        let (file, range) = file_with_hole("3082ABCD0000");
        let ranges = signed_ranges(&file, &range, &hex::decode("3082ABCD0000").unwrap()).unwrap();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[1].end, file.len());
    }

    #[test]
    fn a_byte_range_that_skips_more_than_the_contents_is_refused() {
        let (file, mut range) = file_with_hole("3082ABCD");
        // Widen the hole by one byte into the signed text: an attacker's unsigned byte.
        range[1] -= 1;
        let err = signed_ranges(&file, &range, &hex::decode("3082ABCD").unwrap()).unwrap_err();
        assert!(err.contains("not just its /Contents"), "{err}");
    }

    #[test]
    fn a_byte_range_must_start_at_zero_and_stay_in_the_file() {
        let (file, range) = file_with_hole("00");
        let contents = [0u8];
        let mut moved = range.clone();
        moved[0] = 1;
        assert!(
            signed_ranges(&file, &moved, &contents)
                .unwrap_err()
                .contains("start of the file")
        );
        let mut long = range.clone();
        long[3] += 10;
        assert!(
            signed_ranges(&file, &long, &contents)
                .unwrap_err()
                .contains("past the end")
        );
        assert!(
            signed_ranges(&file, &range[..3], &contents)
                .unwrap_err()
                .contains("not 4")
        );
        let mut negative = range;
        negative[3] = -5;
        assert!(
            signed_ranges(&file, &negative, &contents)
                .unwrap_err()
                .contains("negative")
        );
    }

    #[test]
    fn the_hole_must_hold_this_signatures_contents() {
        let (file, range) = file_with_hole("AABB");
        assert!(
            signed_ranges(&file, &range, &[0xAA, 0xBC])
                .unwrap_err()
                .contains("not this signature's")
        );
    }

    #[test]
    fn changed_fields_lists_edits_additions_and_removals() {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let before: BTreeMap<String, String> = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let after: BTreeMap<String, String> = map(&[("a", "1"), ("b", "20"), ("d", "4")]);
        assert_eq!(changed_fields(&before, &after), vec!["b", "c", "d"]);
        assert!(changed_fields(&before, &before).is_empty());
    }

    #[test]
    fn a_signature_without_a_byte_range_is_broken() {
        let raw = RawSignature {
            contents: Some(vec![0x30]),
            ..RawSignature::default()
        };
        let check = check_signature(b"%PDF-1.7", &raw, &BTreeMap::new(), &mut |_| None);
        assert!(matches!(check.integrity, Integrity::Broken { .. }));
    }

    #[test]
    fn garbage_in_the_contents_is_broken_not_a_panic() {
        let (file, range) = file_with_hole("3082FFFF0102");
        let raw = RawSignature {
            byte_range: Some(range),
            contents: Some(hex::decode("3082FFFF0102").unwrap()),
            sub_filter: Some("adbe.pkcs7.detached".into()),
        };
        let check = check_signature(&file, &raw, &BTreeMap::new(), &mut |_| None);
        match check.integrity {
            Integrity::Broken { reason } => assert!(reason.contains("CMS"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_sub_filter_is_unsupported_not_valid() {
        let (file, range) = file_with_hole("00");
        let raw = RawSignature {
            byte_range: Some(range),
            contents: Some(vec![0]),
            sub_filter: Some("adbe.x509.rsa_sha1".into()),
        };
        let check = check_signature(&file, &raw, &BTreeMap::new(), &mut |_| None);
        assert!(matches!(check.integrity, Integrity::Unsupported { .. }));
    }

    #[test]
    fn bytes_after_the_signed_range_are_compared_field_by_field() {
        let (mut file, range) = file_with_hole("00");
        file.extend_from_slice(b"1 0 obj <</V (changed)>> endobj %%EOF\n");
        let raw = RawSignature {
            byte_range: Some(range),
            contents: Some(vec![0]),
            sub_filter: None,
        };
        let after: BTreeMap<String, String> = [("org_name".to_string(), "changed".to_string())].into();
        let mut seen_len = 0;
        let check = check_signature(&file, &raw, &after, &mut |prefix| {
            seen_len = prefix.len();
            Some([("org_name".to_string(), "original".to_string())].into())
        });
        let later = check.later_revisions.unwrap();
        assert_eq!(later.changed_fields, vec!["org_name"]);
        assert!(later.signed_revision_readable);
        assert!(!check.covers_whole_file);
        assert_eq!(seen_len as u64 + later.bytes_after_signing, file.len() as u64);
    }

    #[test]
    fn a_signature_that_did_not_verify_is_not_judged_for_trust() {
        let check = SignatureCheck {
            sub_filter: None,
            byte_range: vec![],
            covers_whole_file: true,
            integrity: Integrity::Broken { reason: "x".into() },
            digest_algorithm: None,
            signature_algorithm: None,
            certificates: vec![],
            claimed_signing_time: None,
            later_revisions: None,
            trust: None,
        };
        let verdict = judge_trust(&check, &TrustAnchors::default(), chrono::Utc::now());
        assert_eq!(verdict.status, TrustStatus::NotChecked);
    }
}

#[cfg(test)]
mod signer_identifier {
    use super::*;

    /// The signer's certificate of the committed pyHanko-signed fixture.
    fn fixture_signer() -> Certificate {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pdf/pyhanko_signed.pdf");
        let form =
            crate::pdf::extract(&std::fs::read(path).unwrap(), &[], crate::pdf::ExtractLimits::default()).unwrap();
        let check = form.signatures.iter().find_map(|s| s.verification.clone()).unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&check.certificates[0].der_base64)
            .unwrap();
        Certificate::from_der(&der).unwrap()
    }

    #[test]
    fn a_subject_key_identifier_names_only_the_certificate_whose_whole_identifier_it_is() {
        use x509_cert::ext::pkix::SubjectKeyIdentifier;
        let mut certificate = fixture_signer();
        let own = SubjectKeyIdentifier(der::asn1::OctetString::new([7u8; 20].as_slice()).unwrap());
        certificate
            .tbs_certificate
            .extensions
            .get_or_insert_with(Vec::new)
            .push(x509_cert::ext::Extension {
                extn_id: oid::SUBJECT_KEY_IDENTIFIER,
                critical: false,
                extn_value: der::asn1::OctetString::new(own.to_der().unwrap()).unwrap(),
            });
        assert!(identifies(&SignerIdentifier::SubjectKeyIdentifier(own), &certificate));
        // Only its last bytes: another key's identifier, however it ends.
        let partial = SubjectKeyIdentifier(der::asn1::OctetString::new([7u8; 4].as_slice()).unwrap());
        assert!(!identifies(
            &SignerIdentifier::SubjectKeyIdentifier(partial),
            &certificate
        ));
    }
}
