//! The active staff's addresses, for the case page's "Assign to" list: read at most every
//! [`STAFF_FRESH_FOR`], and again at once after this instance changes an account.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::AnyConnection;

use super::WebError;

/// How long a read of the staff list is shown. Every case view listed the staff afresh, one
/// database round trip in fourteen, for a list that changes a few times a year. A list a few
/// seconds old is harmless: assigning checks the account is active when it is chosen.
pub const STAFF_FRESH_FOR: Duration = Duration::from_secs(10);

/// The staff list as last read, and when.
#[derive(Default)]
pub struct StaffList(Mutex<Option<(Instant, Arc<Vec<String>>)>>);

impl StaffList {
    /// The active staff's addresses, read on `conn` unless a read is fresh.
    pub async fn active_emails(&self, conn: &mut AnyConnection) -> Result<Arc<Vec<String>>, WebError> {
        if let Some(fresh) = self.fresh(Instant::now()) {
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
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), emails.clone()));
        Ok(emails)
    }

    /// The list as last read, if it was read within [`STAFF_FRESH_FOR`] of `now`.
    fn fresh(&self, now: Instant) -> Option<Arc<Vec<String>>> {
        let kept = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < STAFF_FRESH_FOR)
            .map(|(_, emails)| emails.clone())
    }

    /// Forgets the list: an account was added, enabled, disabled or changed here.
    pub fn forget(&self) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(at: Instant, emails: &[&str]) -> StaffList {
        let list = StaffList::default();
        *list.0.lock().unwrap() = Some((at, Arc::new(emails.iter().map(|e| e.to_string()).collect())));
        list
    }

    #[test]
    fn a_read_is_shown_while_fresh_and_read_again_after() {
        let read_at = Instant::now();
        let list = kept(read_at, &["a@nhs.net"]);
        assert_eq!(
            list.fresh(read_at + STAFF_FRESH_FOR - Duration::from_millis(1))
                .as_deref(),
            Some(&vec!["a@nhs.net".to_string()])
        );
        assert_eq!(list.fresh(read_at + STAFF_FRESH_FOR), None);
    }

    #[test]
    fn a_change_here_forgets_the_list_at_once() {
        let read_at = Instant::now();
        let list = kept(read_at, &["a@nhs.net"]);
        list.forget();
        assert_eq!(list.fresh(read_at), None);
    }
}
