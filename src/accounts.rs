//! The Open Exeter account register (seed 000): who has an account at each organisation, who
//! of them is a Primary User, when each last changed their password and signed in. Imported
//! from Open Exeter's CSV as often as it comes: each import is an idempotent upsert that says
//! what changed, and a bad row is reported with its line and stops nothing else. Pure: the
//! rows are stored by `storage::accounts`.

use chrono::NaiveDate;

use crate::domain::{EmailAddress, OdsCode, storable_text};

/// One Open Exeter account, as the register holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OeAccount {
    pub user_id: String,
    pub ods_code: String,
    pub name: String,
    pub email: Option<String>,
    pub primary_user: bool,
    pub password_changed_on: Option<NaiveDate>,
    pub last_sign_in_on: Option<NaiveDate>,
    pub status: AccountStatus,
}

impl OeAccount {
    /// The day the password expires (30 days after it was changed), when the register knows
    /// when it was changed.
    pub fn password_expires_on(&self) -> Option<NaiveDate> {
        self.password_changed_on
            .map(|changed| changed + chrono::Duration::days(PASSWORD_LIFETIME_DAYS))
    }

    /// Days from `today` until the password expires: 0 or less once it has.
    pub fn password_days_left(&self, today: NaiveDate) -> Option<i64> {
        self.password_expires_on().map(|on| (on - today).num_days())
    }

    /// Days since the account was last used, when it has been.
    pub fn days_unused(&self, today: NaiveDate) -> Option<i64> {
        self.last_sign_in_on.map(|last| (today - last).num_days())
    }
}

/// Whether the account can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    /// Cut off after 90 days without use, or locked.
    Suspended,
    /// Closed for good (the person left).
    Disabled,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<AccountStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "active" | "enabled" | "a" => Some(AccountStatus::Active),
            "suspended" | "locked" | "lapsed" | "s" => Some(AccountStatus::Suspended),
            "disabled" | "closed" | "deleted" | "d" => Some(AccountStatus::Disabled),
            _ => None,
        }
    }
}

/// A row of the file that could not be used: its line (the header is line 1) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadRow {
    pub line: u64,
    pub message: String,
}

/// Why a file cannot be read at all (as opposed to one bad row).
#[derive(Debug, thiserror::Error)]
pub enum AccountFileError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// The accounts of a register CSV, and its bad rows. The header row names the columns, in any
/// order: `user_id`, `ods_code`, `name`, `email`, `primary_user` (Y/N, yes/no, true/false, 1/0),
/// `password_changed` and `last_sign_in` (YYYY-MM-DD or DD/MM/YYYY, empty for never),
/// `status` (active, suspended, disabled). Only `user_id`, `ods_code` and `name` are required.
/// A user ID that appears twice: the later row is a bad row.
pub fn parse_csv(bytes: &[u8], file: &str) -> Result<(Vec<OeAccount>, Vec<BadRow>), AccountFileError> {
    let mut csv = crate::domain::CsvWithHeader::read(bytes).map_err(|e| AccountFileError::File {
        file: file.into(),
        message: e.to_string(),
    })?;
    let find = |name: &str| csv.column(name);
    let required = |name: &str| {
        find(name).ok_or_else(|| AccountFileError::File {
            file: file.into(),
            message: format!("no `{name}` column in the header row"),
        })
    };
    let (id_at, code_at, name_at) = (required("user_id")?, required("ods_code")?, required("name")?);
    let email_at = find("email");
    let primary_at = find("primary_user");
    let password_at = find("password_changed");
    let sign_in_at = find("last_sign_in");
    let status_at = find("status");

    let mut accounts: Vec<OeAccount> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut bad = Vec::new();
    for (index, record) in csv.reader.records().enumerate() {
        let line = index as u64 + 2;
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                bad.push(BadRow {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let column = |at: Option<usize>| {
            at.map(|at| storable_text(record.get(at).unwrap_or("").trim()))
                .unwrap_or_default()
        };
        match account_of(
            &column(Some(id_at)),
            &column(Some(code_at)),
            &column(Some(name_at)),
            &column(email_at),
            &column(primary_at),
            &column(password_at),
            &column(sign_in_at),
            &column(status_at),
        ) {
            Ok(account) if !seen.insert(account.user_id.clone()) => bad.push(BadRow {
                line,
                message: format!("user ID {} appears earlier in the file", account.user_id),
            }),
            Ok(account) => accounts.push(account),
            Err(message) => bad.push(BadRow { line, message }),
        }
    }
    Ok((accounts, bad))
}

#[allow(clippy::too_many_arguments)]
fn account_of(
    user_id: &str,
    code: &str,
    name: &str,
    email: &str,
    primary: &str,
    password_changed: &str,
    last_sign_in: &str,
    status: &str,
) -> Result<OeAccount, String> {
    let user_id = user_id.to_uppercase();
    if user_id.is_empty() || user_id.len() > 40 || !user_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("`{user_id}` is not a user ID (letters and digits, up to 40)"));
    }
    let ods_code = OdsCode::parse(code).ok_or_else(|| format!("`{code}` is not an ODS code"))?;
    if name.is_empty() {
        return Err("a name is needed".into());
    }
    let email = (!email.is_empty()).then(|| email.to_string());
    if let Some(email) = &email
        && EmailAddress::parse(email).is_none()
    {
        return Err(format!("`{email}` is not an email address"));
    }
    let primary_user = match primary.to_ascii_lowercase().as_str() {
        "" | "n" | "no" | "false" | "0" => false,
        "y" | "yes" | "true" | "1" => true,
        other => return Err(format!("primary_user `{other}` is not Y or N")),
    };
    let date = |what: &str, text: &str| -> Result<Option<NaiveDate>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .or_else(|_| NaiveDate::parse_from_str(text, "%d/%m/%Y"))
            .map(Some)
            .map_err(|_| format!("{what} `{text}` is not a date (YYYY-MM-DD or DD/MM/YYYY)"))
    };
    let status = if status.is_empty() {
        AccountStatus::Active
    } else {
        AccountStatus::parse(status).ok_or_else(|| format!("status `{status}` is not active, suspended or disabled"))?
    };
    Ok(OeAccount {
        user_id,
        ods_code: ods_code.as_str().to_string(),
        name: name.to_string(),
        email,
        primary_user,
        password_changed_on: date("password_changed", password_changed)?,
        last_sign_in_on: date("last_sign_in", last_sign_in)?,
        status,
    })
}

/// What an import changes about one account already held: `field: old → new` for each.
pub fn changes(held: &OeAccount, new: &OeAccount) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |field: &str, old: String, new: String| {
        if old != new {
            out.push(format!("{field}: {old} → {new}"));
        }
    };
    let date = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_else(|| "never".into());
    compare("ods_code", held.ods_code.clone(), new.ods_code.clone());
    compare("name", held.name.clone(), new.name.clone());
    compare(
        "email",
        held.email.clone().unwrap_or_default(),
        new.email.clone().unwrap_or_default(),
    );
    compare(
        "primary_user",
        held.primary_user.to_string(),
        new.primary_user.to_string(),
    );
    compare(
        "password_changed",
        date(held.password_changed_on),
        date(new.password_changed_on),
    );
    compare("last_sign_in", date(held.last_sign_in_on), date(new.last_sign_in_on));
    compare("status", held.status.as_str().into(), new.status.as_str().into());
    out
}

/// What an import did: counts, each changed account with what changed, and the bad rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub added: Vec<String>,
    pub changed: Vec<(String, Vec<String>)>,
    pub unchanged: usize,
    pub bad_rows: Vec<BadRow>,
}

impl ImportSummary {
    /// The summary as `accounts import` prints it.
    pub fn report(&self, file: &str) -> String {
        let mut out = format!(
            "{file}: {} added, {} changed, {} unchanged, {} bad row(s)\n",
            self.added.len(),
            self.changed.len(),
            self.unchanged,
            self.bad_rows.len()
        );
        for id in &self.added {
            out.push_str(&format!("  added {id}\n"));
        }
        for (id, what) in &self.changed {
            out.push_str(&format!("  changed {id}: {}\n", what.join("; ")));
        }
        for bad in &self.bad_rows {
            out.push_str(&format!("  line {}: {}\n", bad.line, bad.message));
        }
        out
    }
}

/// Open Exeter passwords last this many days.
pub const PASSWORD_LIFETIME_DAYS: i64 = 30;
/// Accounts unused this many days lose access.
pub const UNUSED_CUTOFF_DAYS: i64 = 90;
/// An account unused this many days is warned, once at each.
pub const UNUSED_WARNING_DAYS: [i64; 2] = [75, 85];

/// A notice an account is due, by the register, on `today`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    /// The template it is sent with.
    pub template: &'static str,
    pub user_id: String,
    pub ods_code: String,
    pub recipient: String,
    /// Says which occurrence this is: a notice is sent once per key, ever.
    pub key: String,
    /// For the template: days until the password expires (negative: since it did), or days
    /// since the account was last used.
    pub days: i64,
}

/// Every notice due on `today`, in a stable order (organisation, user, kind):
/// - a Primary User whose password expires within `password_warning_days`, or has expired,
///   gets the guidance on resetting it (keyed by the date it was last changed, so a new
///   password starts a new occurrence);
/// - an active account unused for 75 and again for 85 days gets a warning before the 90-day
///   cut-off (keyed by its last sign-in and the threshold).
///
/// Accounts without an email address, or disabled, get nothing.
pub fn notices_due(accounts: &[OeAccount], today: NaiveDate, password_warning_days: i64) -> Vec<Notice> {
    let mut due = Vec::new();
    for a in accounts.iter().filter(|a| a.status != AccountStatus::Disabled) {
        let Some(recipient) = a.email.clone() else {
            continue;
        };
        let notice = |template: &'static str, key: String, days: i64| Notice {
            template,
            user_id: a.user_id.clone(),
            ods_code: a.ods_code.clone(),
            recipient: recipient.clone(),
            key,
            days,
        };
        if a.primary_user
            && let (Some(changed), Some(left)) = (a.password_changed_on, a.password_days_left(today))
        {
            if left <= 0 {
                due.push(notice(
                    "password_expired",
                    format!("password_expired:{}:{changed}", a.user_id),
                    left,
                ));
            } else if left <= password_warning_days {
                due.push(notice(
                    "password_expiring",
                    format!("password_expiring:{}:{changed}", a.user_id),
                    left,
                ));
            }
        }
        if a.status == AccountStatus::Active
            && let Some(last) = a.last_sign_in_on
        {
            let unused = (today - last).num_days();
            // The highest threshold passed: one warning at 75, another at 85, none after the
            // cut-off (Open Exeter has suspended it by then).
            if let Some(threshold) = UNUSED_WARNING_DAYS
                .iter()
                .rev()
                .find(|&&t| unused >= t && unused < UNUSED_CUTOFF_DAYS)
            {
                due.push(notice(
                    "account_unused",
                    format!("unused:{}:{last}:{threshold}", a.user_id),
                    unused,
                ));
            }
        }
    }
    due
}

/// Why a Primary User cannot sign in to Open Exeter, by the register, on `today`: suspended
/// or disabled, cut off after 90 days unused, or a password 30 days old. None while they can.
pub fn lapsed(account: &OeAccount, today: NaiveDate) -> Option<String> {
    match account.status {
        AccountStatus::Suspended => return Some("suspended".into()),
        AccountStatus::Disabled => return Some("disabled".into()),
        AccountStatus::Active => {}
    }
    if let Some(last) = account.last_sign_in_on
        && account.days_unused(today).is_some_and(|d| d >= UNUSED_CUTOFF_DAYS)
    {
        return Some(format!("unused since {last}"));
    }
    account
        .password_expires_on()
        .filter(|on| *on <= today)
        .map(|on| format!("password expired {on}"))
}

/// An organisation none of whose Primary Users can sign in: nobody there can manage its
/// colleagues' accounts, and PCSE must restore access before its staff are locked out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CoverageGap {
    pub ods_code: String,
    /// Each Primary User and why they cannot sign in, by user ID.
    pub primary_users: Vec<(String, String)>,
    /// An address to write to: a Primary User's own (they can still read their mail).
    pub contact: Option<String>,
    /// The occurrence: the same gap (the same people, lapsed for the same reasons) has the
    /// same key, so it opens one case however often the job runs; a new lapse is a new one.
    pub key: String,
}

/// The organisations in the register whose every Primary User has lapsed (at least one
/// Primary User, and none who can sign in), by ODS code.
pub fn coverage_gaps(accounts: &[OeAccount], today: NaiveDate) -> Vec<CoverageGap> {
    let mut by_organisation: std::collections::BTreeMap<&str, Vec<&OeAccount>> = Default::default();
    for account in accounts.iter().filter(|a| a.primary_user) {
        by_organisation.entry(&account.ods_code).or_default().push(account);
    }
    by_organisation
        .into_iter()
        .filter_map(|(ods_code, primary_users)| {
            let mut lapsed: Vec<(String, String)> = primary_users
                .iter()
                .map(|a| lapsed(a, today).map(|why| (a.user_id.clone(), why)))
                .collect::<Option<_>>()?;
            lapsed.sort();
            let fingerprint: String = lapsed.iter().map(|(id, why)| format!("{id}={why};")).collect();
            let key = format!(
                "coverage:{ods_code}:{}",
                &crate::mail::sha256_hex(fingerprint.as_bytes())[..16]
            );
            let contact = primary_users
                .iter()
                .filter(|a| a.status != AccountStatus::Disabled)
                .find_map(|a| a.email.clone());
            Some(CoverageGap {
                ods_code: ods_code.to_string(),
                primary_users: lapsed,
                contact,
                key,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary_user(id: &str, ods: &str, changed: &str, last: &str, status: AccountStatus) -> OeAccount {
        let date = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        OeAccount {
            user_id: id.into(),
            ods_code: ods.into(),
            name: id.into(),
            email: Some(format!("{}@nhs.net", id.to_lowercase())),
            primary_user: true,
            password_changed_on: date(changed),
            last_sign_in_on: date(last),
            status,
        }
    }

    #[test]
    fn an_organisation_is_a_gap_only_when_every_primary_user_has_lapsed() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let accounts = vec![
            // A81001: one expired password, one suspended: nobody can sign in.
            primary_user("OE1", "A81001", "2026-10-01", "2026-11-30", AccountStatus::Active),
            primary_user("OE2", "A81001", "2026-11-20", "2026-12-01", AccountStatus::Suspended),
            // A81002: one lapsed, one fine: covered.
            primary_user("OE3", "A81002", "2026-10-01", "2026-11-30", AccountStatus::Active),
            primary_user("OE4", "A81002", "2026-11-20", "2026-12-01", AccountStatus::Active),
            // A81003: unused for 90 days.
            primary_user("OE5", "A81003", "2026-11-20", "2026-09-04", AccountStatus::Active),
            // A81004: a password changed 29 days ago still works.
            primary_user("OE6", "A81004", "2026-11-04", "2026-12-01", AccountStatus::Active),
            // An ordinary user, lapsed, is not a Primary User.
            OeAccount {
                primary_user: false,
                ..primary_user("OE7", "A81005", "2026-01-01", "2026-01-01", AccountStatus::Suspended)
            },
        ];
        let gaps = coverage_gaps(&accounts, today);
        let codes: Vec<&str> = gaps.iter().map(|g| g.ods_code.as_str()).collect();
        assert_eq!(codes, vec!["A81001", "A81003"]);
        assert_eq!(
            gaps[0].primary_users,
            vec![
                ("OE1".to_string(), "password expired 2026-10-31".to_string()),
                ("OE2".to_string(), "suspended".to_string()),
            ]
        );
        assert_eq!(gaps[1].primary_users[0].1, "unused since 2026-09-04");
        assert_eq!(gaps[0].contact.as_deref(), Some("oe1@nhs.net"));

        // The same gap a day later is the same occurrence; a new lapse is a new one.
        let tomorrow = today.succ_opt().unwrap();
        assert_eq!(coverage_gaps(&accounts, tomorrow)[0].key, gaps[0].key);
        let mut changed = accounts.clone();
        changed[1].status = AccountStatus::Disabled;
        assert_ne!(coverage_gaps(&changed, today)[0].key, gaps[0].key);
        // One password changed: covered again.
        changed[0].password_changed_on = Some(today);
        assert!(coverage_gaps(&changed, today).iter().all(|g| g.ods_code != "A81001"));
    }

    const FILE: &str = "user_id,ods_code,name,email,primary_user,password_changed,last_sign_in,status\n\
        OE100001,A81001,Pat Manager,pat.manager@nhs.net,Y,2026-11-20,2026-12-01,active\n\
        oe100002,A81001,Jo Nurse,,N,01/10/2026,,\n\
        OE100003,NOT A CODE,Bad Code,,N,,,active\n\
        OE100004,A81002,Bad Date,,N,2026-13-01,,active\n\
        OE100001,A81001,Twice,,N,,,active\n\
        OE100005,A81002,Bad Status,,N,,,frozen\n";

    #[test]
    fn good_rows_are_read_and_each_bad_row_is_named_by_its_line() {
        let (accounts, bad) = parse_csv(FILE.as_bytes(), "accounts.csv").unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts[0].user_id, "OE100001");
        assert!(accounts[0].primary_user);
        assert_eq!(accounts[0].password_changed_on, NaiveDate::from_ymd_opt(2026, 11, 20));
        assert_eq!(accounts[1].user_id, "OE100002", "user IDs are kept in capitals");
        assert_eq!(accounts[1].password_changed_on, NaiveDate::from_ymd_opt(2026, 10, 1));
        assert_eq!(accounts[1].status, AccountStatus::Active);
        let lines: Vec<u64> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        assert!(bad[0].message.contains("ODS code"));
        assert!(bad[1].message.contains("password_changed"));
        assert!(bad[2].message.contains("appears earlier"));
        assert!(bad[3].message.contains("frozen"));
    }

    fn held(primary: bool, password: &str, sign_in: &str) -> OeAccount {
        OeAccount {
            user_id: "OE1".into(),
            ods_code: "A81001".into(),
            name: "Pat".into(),
            email: Some("pat@nhs.net".into()),
            primary_user: primary,
            password_changed_on: NaiveDate::parse_from_str(password, "%Y-%m-%d").ok(),
            last_sign_in_on: NaiveDate::parse_from_str(sign_in, "%Y-%m-%d").ok(),
            status: AccountStatus::Active,
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_primary_users_password_is_warned_before_and_after_it_expires() {
        let pat = held(true, "2026-11-01", "2026-12-01");
        // Expires 1 December: 5 days before is the first warning.
        assert!(notices_due(std::slice::from_ref(&pat), day("2026-11-25"), 5).is_empty());
        let due = notices_due(std::slice::from_ref(&pat), day("2026-11-26"), 5);
        assert_eq!(due[0].template, "password_expiring");
        assert_eq!(
            (due[0].days, due[0].key.as_str()),
            (5, "password_expiring:OE1:2026-11-01")
        );
        let due = notices_due(std::slice::from_ref(&pat), day("2026-12-03"), 5);
        assert_eq!((due[0].template, due[0].days), ("password_expired", -2));
        // Not a Primary User: Open Exeter's own reminders are enough.
        assert!(notices_due(&[held(false, "2026-11-01", "2026-12-01")], day("2026-12-03"), 5).is_empty());
    }

    #[test]
    fn an_unused_account_is_warned_at_75_and_85_days_and_not_after_the_cut_off() {
        let quiet = held(false, "", "2026-09-01");
        let on = |d: &str| notices_due(std::slice::from_ref(&quiet), day(d), 5);
        assert!(on("2026-11-14").is_empty(), "74 days");
        assert_eq!(on("2026-11-15")[0].key, "unused:OE1:2026-09-01:75");
        assert_eq!(
            on("2026-11-24")[0].key,
            "unused:OE1:2026-09-01:75",
            "the same occurrence until 85"
        );
        assert_eq!(on("2026-11-25")[0].key, "unused:OE1:2026-09-01:85");
        assert!(on("2026-11-30").is_empty(), "90 days: cut off already");
        let mut disabled = quiet.clone();
        disabled.status = AccountStatus::Disabled;
        assert!(notices_due(&[disabled], day("2026-11-15"), 5).is_empty());
        let mut no_address = quiet;
        no_address.email = None;
        assert!(notices_due(&[no_address], day("2026-11-15"), 5).is_empty());
    }

    #[test]
    fn a_file_without_its_required_columns_is_refused_whole() {
        let err = parse_csv(b"ods_code,name\nA81001,X\n", "x.csv").unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");
    }

    #[test]
    fn changes_name_each_field_with_its_old_and_new_value() {
        let (accounts, _) = parse_csv(FILE.as_bytes(), "a.csv").unwrap();
        let mut newer = accounts[0].clone();
        newer.last_sign_in_on = None;
        newer.status = AccountStatus::Suspended;
        assert_eq!(
            changes(&accounts[0], &newer),
            vec!["last_sign_in: 2026-12-01 → never", "status: active → suspended"]
        );
        assert!(changes(&accounts[0], &accounts[0]).is_empty());
    }
}
