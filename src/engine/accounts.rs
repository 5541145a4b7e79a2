//! The Open Exeter account register, fed from its CSV: what is new or changed is upserted in
//! one transaction, and the summary says what changed.

use super::{Engine, EngineError};
use crate::accounts::{ImportSummary, OeAccount, changes, parse_csv};
use crate::storage::{self, QueryContext};

impl Engine {
    /// Reads a register CSV and upserts what is new or changed, in one transaction: importing the
    /// same file twice changes nothing the second time.
    pub async fn import_accounts(&self, bytes: &[u8], file: &str) -> Result<ImportSummary, EngineError> {
        let (accounts, bad_rows) = parse_csv(bytes, file)?;
        let mut tx = self.db().begin_write().await.context("starting the import")?;
        let ids: Vec<&str> = accounts.iter().map(|a| a.user_id.as_str()).collect();
        let held = storage::accounts_by_ids(&mut tx, &ids).await?;
        let mut summary = ImportSummary {
            bad_rows,
            ..ImportSummary::default()
        };
        let mut to_write: Vec<OeAccount> = Vec::new();
        for account in accounts {
            match held.get(&account.user_id) {
                None => {
                    summary.added.push(account.user_id.clone());
                    to_write.push(account);
                }
                Some(before) => {
                    let what = changes(before, &account);
                    if what.is_empty() {
                        summary.unchanged += 1;
                    } else {
                        summary.changed.push((account.user_id.clone(), what));
                        to_write.push(account);
                    }
                }
            }
        }
        storage::upsert_accounts(&mut tx, &to_write, "import", self.now_ms()).await?;
        tx.commit().await.context("committing the import")?;
        Ok(summary)
    }
}
