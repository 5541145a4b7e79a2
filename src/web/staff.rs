//! The active staff's addresses, for the case page's "Assign to" list: read at most every
//! [`STAFF_FRESH_FOR`], and again at once after this instance changes an account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::AnyConnection;

use super::WebError;
use super::kept::Kept;

/// How long a read of the staff list is shown. Every case view listed the staff afresh, one
/// database round trip in fourteen, for a list that changes a few times a year. A list a few
/// seconds old is harmless: assigning checks the account is active when it is chosen.
pub const STAFF_FRESH_FOR: Duration = Duration::from_secs(10);

/// The staff list as last read, and when.
#[derive(Default)]
pub struct StaffList(Kept<Arc<Vec<String>>>);

impl StaffList {
    /// The active staff's addresses, read on `conn` unless a read is fresh.
    pub async fn active_emails(&self, conn: &mut AnyConnection) -> Result<Arc<Vec<String>>, WebError> {
        if let Some(fresh) = self.0.fresh(Instant::now(), STAFF_FRESH_FOR) {
            return Ok(fresh);
        }
        let emails: Arc<Vec<String>> = Arc::new(
            crate::users::list(conn)
                .await?
                .into_iter()
                .filter(|u| !u.disabled)
                .map(|u| u.email)
                .collect(),
        );
        self.0.keep(emails.clone());
        Ok(emails)
    }

    /// Forgets the list: an account was added, enabled or disabled here.
    pub fn forget(&self) {
        self.0.forget();
    }
}
