//! The evidence pack, on both backends: unpacked, `sha256sum -c MANIFEST.sha256` passes; it
//! holds the email byte for byte, the PDF, the fields, the verdicts and the chained event log;
//! a changed file fails the check; an attachment's hostile name stays inside the folder.

use std::io::Read;
use std::process::Command;

use crate::common::{fixture, on_both_backends};

/// Unpacks `zip` into `dir`; returns the folder the pack made.
fn unpack(zip: &[u8], dir: &std::path::Path) -> std::path::PathBuf {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    let mut top = None;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let path = entry.enclosed_name().expect("every entry stays inside the folder");
        top.get_or_insert_with(|| path.components().next().unwrap().as_os_str().to_owned());
        let target = dir.join(&path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    dir.join(top.expect("entries"))
}

fn sha256sum_check(folder: &std::path::Path) -> std::process::Output {
    Command::new("sha256sum")
        .args(["-c", "MANIFEST.sha256"])
        .current_dir(folder)
        .output()
        .expect("sha256sum runs")
}

#[tokio::test]
async fn the_evidence_pack_holds_the_record_and_its_manifest_verifies_with_sha256sum() {
    on_both_backends(|app| async move {
        let reference = app.receive_fixture("mail/gp_form.eml").await;
        let pack = countersign::evidence::evidence_pack(app.db(), &reference, app.now_ms())
            .await
            .unwrap()
            .expect("the case exists");
        assert_eq!(pack.file_name, format!("{reference}-evidence.zip"));
        let dir = tempfile::tempdir().unwrap();
        let folder = unpack(&pack.bytes, dir.path());
        assert!(folder.ends_with(&reference));

        let checked = sha256sum_check(&folder);
        let said = String::from_utf8_lossy(&checked.stdout).to_string();
        assert!(
            checked.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let manifest = std::fs::read_to_string(folder.join("MANIFEST.sha256")).unwrap();
        for file in [
            "case.json",
            "verdicts.json",
            "events.json",
            "README.txt",
            "messages/01-origin.eml",
        ] {
            assert!(said.contains(&format!("{file}: OK")), "{file} not checked: {said}");
            assert!(manifest.contains(&format!("  {file}\n")), "{file} not in the manifest");
        }

        // The email byte for byte; the form as sent.
        assert_eq!(
            std::fs::read(folder.join("messages/01-origin.eml")).unwrap(),
            fixture("mail/gp_form.eml")
        );
        let pdfs: Vec<_> = std::fs::read_dir(folder.join("attachments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(pdfs.len(), 1, "{pdfs:?}");
        assert!(std::fs::read(&pdfs[0]).unwrap().starts_with(b"%PDF-"));

        let json = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(folder.join(name)).unwrap()).unwrap()
        };
        let case = json("case.json");
        assert_eq!(case["reference"], reference.as_str());
        assert_eq!(case["fields"]["org_ods_code"], "A81001");
        let verdicts = json("verdicts.json");
        assert_eq!(verdicts["event_chain"]["intact"], true);
        let sender = &verdicts["sender_authentication"][0];
        assert_eq!(sender["from"], "wyn.apgruffydd@nhs.net");
        assert_eq!(sender["sender_authentication"]["verdict"], "pass", "{sender}");
        let events = json("events.json");
        let events = events.as_array().unwrap();
        assert_eq!(events.len(), app.events(&reference).await.len());
        assert_eq!(events[0]["seq"], 1);
        assert_eq!(events[0]["kind"], "created");
        assert_eq!(events[0]["hash"].as_str().map(str::len), Some(64));

        // A file changed after the pack was made fails the check, by name.
        std::fs::write(folder.join("case.json"), b"{\"state\": \"authorised\"}\n").unwrap();
        let checked = sha256sum_check(&folder);
        assert!(!checked.status.success());
        assert!(String::from_utf8_lossy(&checked.stdout).contains("case.json: FAILED"));

        assert!(
            countersign::evidence::evidence_pack(app.db(), "CS-2099-999999", app.now_ms())
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}
