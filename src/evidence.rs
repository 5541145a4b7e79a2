//! The evidence pack: one case's record as a zip that someone outside Countersign can check
//! with ordinary tools. It holds the emails exactly as they arrived and their attachments
//! (the PDF forms), the fields read from the form, the sender-authentication and
//! digital-signature verdicts (with the signer's certificates), the full hash-chained event
//! log with this case's chain checked, and `MANIFEST.sha256`, which `sha256sum -c
//! MANIFEST.sha256` verifies inside the unpacked folder.

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::storage::{self, Db, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot write the evidence pack: {0}")]
    Zip(String),
}

/// A finished pack: its file name and bytes.
pub struct EvidencePack {
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// The evidence pack of case `reference`, as of `now`; `None` when there is no such case.
pub async fn evidence_pack(db: &Db, reference: &str, now: i64) -> Result<Option<EvidencePack>, EvidenceError> {
    let mut conn = db.pool.acquire().await.map_err(|source| StorageError::Query {
        context: "connecting to make an evidence pack",
        source,
    })?;
    let Some(file) = storage::case_file(&mut conn, reference).await? else {
        return Ok(None);
    };
    let case = &file.case;
    let chain_verdict = crate::audit::verdict(case.id, file.chain.recorded_length, &file.chain.events);
    let chain = &file.chain.events;

    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut senders = Vec::new();
    for (n, message) in file.messages.iter().enumerate() {
        let n = n + 1;
        let eml = format!("messages/{n:02}-{}.eml", safe_name(&message.relation));
        let kept = message.raw.is_some();
        if let Some(raw) = &message.raw {
            entries.push((eml.clone(), raw.clone()));
        }
        let mut attachments = Vec::new();
        for attachment in &message.attachments {
            let name = format!(
                "attachments/{n:02}-{}-{}",
                attachment.id,
                safe_name(attachment.filename.as_deref().unwrap_or("attachment"))
            );
            if let Some((_, _, bytes)) = storage::case_attachment(&mut conn, case.id, attachment.id).await? {
                entries.push((name.clone(), bytes));
            }
            attachments.push(serde_json::json!({
                "file": name,
                "filename_as_sent": attachment.filename,
                "claimed_type": attachment.claimed,
                "detected_type": attachment.detected,
                "size_bytes": attachment.size,
            }));
        }
        senders.push(serde_json::json!({
            "message": n,
            "relation": message.relation,
            "file": kept.then_some(eml),
            "sha256_as_received": message.sha256,
            "bytes_kept": kept,
            "from": message.from_address,
            "subject": message.subject,
            "received_at": rfc3339(message.received_at),
            "sender_authentication": serde_json::from_str::<serde_json::Value>(&message.sender_auth_json)
                .unwrap_or(serde_json::Value::Null),
            "attachments": attachments,
        }));
    }
    let case_json = serde_json::json!({
        "reference": case.reference,
        "workflow": case.workflow,
        "state": case.state,
        "version": case.version,
        "organisation": { "ods_code": case.org_ods_code, "name": case.org_name },
        "sender": case.sender,
        "created_at": rfc3339(case.created_at),
        "updated_at": rfc3339(case.updated_at),
        "fields": case.fields,
        "findings": case.findings,
        "recorded": case.recorded,
    });
    let events: Vec<serde_json::Value> = chain
        .iter()
        .map(|stored| {
            let e = &stored.event;
            serde_json::json!({
                "seq": stored.seq,
                "hash": stored.hash,
                "at": rfc3339(e.at),
                "at_ms": e.at,
                "actor": e.actor,
                "actor_role": e.actor_role,
                "kind": e.kind.as_str(),
                "transition": e.transition,
                "from_state": e.from_state,
                "to_state": e.to_state,
                "reason": e.reason,
                "data": e.data,
            })
        })
        .collect();
    let verdicts = serde_json::json!({
        "sender_authentication": senders,
        "digital_signatures": crate::pdf::signature::DigitalSignatureView::of_form(&file.signatures),
        "event_chain": {
            "intact": chain_verdict.intact,
            "events": chain_verdict.events,
            "problems": chain_verdict.problems,
            "how_to_check": "each event's hash is SHA-256 over the JSON array [\"countersign-event-v1\", case id, seq, previous hash (\"\" for the first), at_ms, actor, actor_role, kind, transition, from_state, to_state, reason, data]",
            "case_id": case.id,
        },
    });
    entries.push(("case.json".into(), pretty(&case_json)));
    entries.push(("verdicts.json".into(), pretty(&verdicts)));
    entries.push(("events.json".into(), pretty(&events)));
    if file.signatures.iter().any(|s| s.signed) {
        // Every check made of each signature, with the certificates it carried (DER, base64),
        // so that anyone can check the signer and the chain again.
        entries.push(("signatures.json".into(), pretty(&file.signatures)));
    }
    entries.push((
        "README.txt".into(),
        readme(&case.reference, now, chain_verdict.intact).into_bytes(),
    ));

    let folder = safe_name(&case.reference);
    let bytes = zip_with_manifest(&folder, entries)?;
    Ok(Some(EvidencePack {
        file_name: format!("{folder}-evidence.zip"),
        bytes,
    }))
}

/// A zip of `entries` under `folder/`, with `folder/MANIFEST.sha256` listing each entry's
/// SHA-256 in `sha256sum`'s own format. Entries are stored, not compressed: PDFs and mail are
/// mostly compressed already, and a stored zip is simplest to check by hand.
fn zip_with_manifest(folder: &str, entries: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, EvidenceError> {
    let failed = |e: &dyn std::fmt::Display| EvidenceError::Zip(e.to_string());
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    let mut manifest = String::new();
    for (name, bytes) in &entries {
        manifest.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))));
        zip.start_file(format!("{folder}/{name}"), options)
            .map_err(|e| failed(&e))?;
        zip.write_all(bytes).map_err(|e| failed(&e))?;
    }
    zip.start_file(format!("{folder}/MANIFEST.sha256"), options)
        .map_err(|e| failed(&e))?;
    zip.write_all(manifest.as_bytes()).map_err(|e| failed(&e))?;
    Ok(zip.finish().map_err(|e| failed(&e))?.into_inner())
}

/// A file name made only of letters, digits, `.`, `-` and `_` (an attachment's name is the
/// sender's: it must not climb out of the folder, or mean anything to a shell).
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() { "file".into() } else { cleaned }
}

fn pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    text
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn readme(reference: &str, now: i64, intact: bool) -> String {
    format!(
        "Evidence pack for case {reference}, made by Countersign at {}.\n\n\
         Check it: unpack the zip, go into the folder, and run\n\n    sha256sum -c MANIFEST.sha256\n\n\
         Every file must say OK.\n\n\
         messages/     every email filed on the case, byte for byte as it arrived (unless retention\n              has cleared it: verdicts.json then gives the SHA-256 it had)\n\
         attachments/  their attachments (the PDF forms), as sent\n\
         case.json     the case now: fields read from the form, findings, recorded values\n\
         verdicts.json who sent each email (sender authentication, with its evidence), and whether\n              this case's event chain is intact\n\
         events.json   the case's full event log, each event with its place in the chain and hash\n\n\
         The event chain was {} when the pack was made.\n",
        rfc3339(now).unwrap_or_default(),
        if intact {
            "intact"
        } else {
            "NOT intact (see verdicts.json)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn attachment_names_cannot_leave_the_folder() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("..."), "file");
        assert_eq!(safe_name("form (1).pdf"), "form__1_.pdf");
        assert_eq!(safe_name("$(rm -rf ~).pdf"), "__rm_-rf___.pdf");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name(&"a".repeat(500)).len(), 80);
    }
}
