//! The account lifecycle report: the Open Exeter account register by organisation and by
//! NHS England commissioning region. How many accounts each has, how many of its Primary Users
//! can sign in, whose passwords are about to expire or have, which accounts are near the
//! 90-day cut-off or suspended, and which organisations nobody can manage (every Primary User
//! lapsed) or have no Primary User at all. Pure: the rows come from storage.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;

use crate::accounts::{AccountStatus, OeAccount, UNUSED_CUTOFF_DAYS, UNUSED_WARNING_DAYS, lapsed};

/// Where an organisation stands for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// Every Primary User has lapsed: nobody can manage its accounts.
    Lapsed,
    /// The register names no Primary User for it.
    NoPrimaryUser,
    /// Only one Primary User can sign in: one absence from no cover.
    One,
    Covered,
}

impl Coverage {
    pub fn label(self) -> &'static str {
        match self {
            Coverage::Lapsed => "every Primary User lapsed",
            Coverage::NoPrimaryUser => "no Primary User",
            Coverage::One => "one Primary User",
            Coverage::Covered => "covered",
        }
    }
}

/// One organisation's figures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrganisationLifecycle {
    pub ods_code: String,
    /// From the registry, when it holds the code.
    pub name: Option<String>,
    pub region: Option<String>,
    pub accounts: usize,
    pub primary_users: usize,
    /// Primary Users who can sign in today.
    pub primary_users_active: usize,
    /// Primary Users whose password expires within the warning window.
    pub passwords_expiring: usize,
    /// Accounts (any) whose password is 30 days old or more.
    pub passwords_expired: usize,
    /// Active accounts unused for 75 days or more, short of the 90-day cut-off.
    pub nearing_cutoff: usize,
    /// Accounts suspended, or past the cut-off.
    pub suspended: usize,
    pub coverage: Coverage,
}

/// One region's figures: its organisations', added up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionLifecycle {
    /// The region's code, or None for organisations the registry gives no region.
    pub region: Option<String>,
    pub name: String,
    pub organisations: usize,
    pub lapsed: usize,
    pub no_primary_user: usize,
    pub one_primary_user: usize,
    pub accounts: usize,
    pub passwords_expiring: usize,
    pub passwords_expired: usize,
    pub nearing_cutoff: usize,
    pub suspended: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleReport {
    pub today: NaiveDate,
    /// Worst first: lapsed, then no Primary User, then one, then covered; by code within.
    pub organisations: Vec<OrganisationLifecycle>,
    /// By region code, the organisations with no region last.
    pub regions: Vec<RegionLifecycle>,
}

/// The report on `today`, from the register's accounts (disabled ones left out: the person
/// left) and the registry's names and regions by code.
pub fn lifecycle_report(
    accounts: &[OeAccount],
    registry: &HashMap<String, (String, Option<String>)>,
    today: NaiveDate,
    password_warning_days: i64,
) -> LifecycleReport {
    let mut by_code: BTreeMap<&str, Vec<&OeAccount>> = BTreeMap::new();
    for account in accounts.iter().filter(|a| a.status != AccountStatus::Disabled) {
        by_code.entry(&account.ods_code).or_default().push(account);
    }
    let mut organisations: Vec<OrganisationLifecycle> = by_code
        .into_iter()
        .map(|(code, accounts)| {
            let days_left = |a: &OeAccount| a.password_days_left(today);
            let unused = |a: &OeAccount| a.days_unused(today);
            let count = |keep: &dyn Fn(&&&OeAccount) -> bool| accounts.iter().filter(keep).count();
            let primary_users = count(&|a| a.primary_user);
            let primary_users_active = count(&|a| a.primary_user && lapsed(a, today).is_none());
            let coverage = match (primary_users, primary_users_active) {
                (0, _) => Coverage::NoPrimaryUser,
                (_, 0) => Coverage::Lapsed,
                (_, 1) => Coverage::One,
                _ => Coverage::Covered,
            };
            let (name, region) = registry
                .get(code)
                .map(|(name, region)| (Some(name.clone()), region.clone()))
                .unwrap_or_default();
            OrganisationLifecycle {
                ods_code: code.to_string(),
                name,
                region,
                accounts: accounts.len(),
                primary_users,
                primary_users_active,
                passwords_expiring: count(&|a| {
                    a.primary_user && days_left(a).is_some_and(|d| d > 0 && d <= password_warning_days)
                }),
                passwords_expired: count(&|a| days_left(a).is_some_and(|d| d <= 0)),
                nearing_cutoff: count(&|a| {
                    a.status == AccountStatus::Active
                        && unused(a).is_some_and(|d| d >= UNUSED_WARNING_DAYS[0] && d < UNUSED_CUTOFF_DAYS)
                }),
                suspended: count(&|a| {
                    a.status == AccountStatus::Suspended || unused(a).is_some_and(|d| d >= UNUSED_CUTOFF_DAYS)
                }),
                coverage,
            }
        })
        .collect();
    organisations.sort_by(|a, b| (a.coverage, &a.ods_code).cmp(&(b.coverage, &b.ods_code)));

    let mut regions: BTreeMap<Option<String>, RegionLifecycle> = BTreeMap::new();
    for org in &organisations {
        let region = regions.entry(org.region.clone()).or_insert_with(|| RegionLifecycle {
            region: org.region.clone(),
            name: match &org.region {
                Some(code) => crate::registry::region_name(code).unwrap_or(code).to_string(),
                None => "No region in the registry".into(),
            },
            organisations: 0,
            lapsed: 0,
            no_primary_user: 0,
            one_primary_user: 0,
            accounts: 0,
            passwords_expiring: 0,
            passwords_expired: 0,
            nearing_cutoff: 0,
            suspended: 0,
        });
        region.organisations += 1;
        region.lapsed += usize::from(org.coverage == Coverage::Lapsed);
        region.no_primary_user += usize::from(org.coverage == Coverage::NoPrimaryUser);
        region.one_primary_user += usize::from(org.coverage == Coverage::One);
        region.accounts += org.accounts;
        region.passwords_expiring += org.passwords_expiring;
        region.passwords_expired += org.passwords_expired;
        region.nearing_cutoff += org.nearing_cutoff;
        region.suspended += org.suspended;
    }
    // BTreeMap puts None first; the organisations with no region go last.
    let mut regions: Vec<RegionLifecycle> = regions.into_values().collect();
    let no_region_first = usize::from(regions.first().is_some_and(|r| r.region.is_none()));
    regions.rotate_left(no_region_first);
    LifecycleReport {
        today,
        organisations,
        regions,
    }
}

/// A CSV column: its header, and its cell for a row.
type Column<T> = (&'static str, fn(&T) -> String);

const ORGANISATION_COLUMNS: &[Column<OrganisationLifecycle>] = &[
    ("ods_code", |o| o.ods_code.clone()),
    ("name", |o| o.name.clone().unwrap_or_default()),
    ("region", |o| o.region.clone().unwrap_or_default()),
    ("coverage", |o| o.coverage.label().to_string()),
    ("accounts", |o| o.accounts.to_string()),
    ("primary_users", |o| o.primary_users.to_string()),
    ("primary_users_active", |o| o.primary_users_active.to_string()),
    ("passwords_expiring", |o| o.passwords_expiring.to_string()),
    ("passwords_expired", |o| o.passwords_expired.to_string()),
    ("nearing_cutoff", |o| o.nearing_cutoff.to_string()),
    ("suspended", |o| o.suspended.to_string()),
];

const REGION_COLUMNS: &[Column<RegionLifecycle>] = &[
    ("region", |r| r.region.clone().unwrap_or_default()),
    ("name", |r| r.name.clone()),
    ("organisations", |r| r.organisations.to_string()),
    ("every_primary_user_lapsed", |r| r.lapsed.to_string()),
    ("no_primary_user", |r| r.no_primary_user.to_string()),
    ("one_primary_user", |r| r.one_primary_user.to_string()),
    ("accounts", |r| r.accounts.to_string()),
    ("passwords_expiring", |r| r.passwords_expiring.to_string()),
    ("passwords_expired", |r| r.passwords_expired.to_string()),
    ("nearing_cutoff", |r| r.nearing_cutoff.to_string()),
    ("suspended", |r| r.suspended.to_string()),
];

fn table<T>(columns: &[Column<T>], rows: &[T]) -> Vec<Vec<String>> {
    std::iter::once(columns.iter().map(|(header, _)| header.to_string()).collect())
        .chain(
            rows.iter()
                .map(|row| columns.iter().map(|(_, cell)| cell(row)).collect()),
        )
        .collect()
}

/// The report's two tables as CSV rows, header first: `organisations` or `regions`.
pub fn csv_rows(report: &LifecycleReport, table_name: &str) -> Option<Vec<Vec<String>>> {
    match table_name {
        "organisations" => Some(table(ORGANISATION_COLUMNS, &report.organisations)),
        "regions" => Some(table(REGION_COLUMNS, &report.regions)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, ods: &str, primary: bool, changed: &str, last: &str, status: AccountStatus) -> OeAccount {
        let date = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        OeAccount {
            user_id: id.into(),
            ods_code: ods.into(),
            name: id.into(),
            email: None,
            primary_user: primary,
            password_changed_on: date(changed),
            last_sign_in_on: date(last),
            status,
        }
    }

    /// Figures worked out by hand, for Thursday 3 December 2026 with a 5-day warning.
    #[test]
    fn the_lifecycle_report_matches_figures_worked_out_by_hand() {
        use AccountStatus::*;
        let today = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let accounts = vec![
            // A81001 (London): two Primary Users, one expiring in 2 days, one expired.
            account("P1", "A81001", true, "2026-11-05", "2026-12-01", Active),
            account("P2", "A81001", true, "2026-11-01", "2026-12-01", Active),
            account("U1", "A81001", false, "2026-11-20", "2026-09-10", Active), // 84 days unused
            account("U2", "A81001", false, "2026-11-20", "2026-08-01", Active), // past the cut-off
            // A81002 (London): its only Primary User suspended.
            account("P3", "A81002", true, "2026-11-20", "2026-12-01", Suspended),
            // B82001 (North West): no Primary User; a disabled account is left out.
            account("U3", "B82001", false, "2026-11-20", "2026-12-01", Active),
            account("P4", "B82001", true, "2026-11-20", "2026-12-01", Disabled),
            // C83001 (not in the registry): two who can sign in.
            account("P5", "C83001", true, "2026-11-20", "2026-12-01", Active),
            account("P6", "C83001", true, "2026-11-25", "2026-12-02", Active),
        ];
        let registry: HashMap<String, (String, Option<String>)> = [
            ("A81001", "Riverside", Some("Y56")),
            ("A81002", "Hillside", Some("Y56")),
            ("B82001", "Lakeside", Some("Y62")),
        ]
        .into_iter()
        .map(|(c, n, r)| (c.to_string(), (n.to_string(), r.map(str::to_string))))
        .collect();
        let report = lifecycle_report(&accounts, &registry, today, 5);
        let order: Vec<(&str, Coverage)> = report
            .organisations
            .iter()
            .map(|o| (o.ods_code.as_str(), o.coverage))
            .collect();
        assert_eq!(
            order,
            vec![
                ("A81002", Coverage::Lapsed),
                ("B82001", Coverage::NoPrimaryUser),
                ("A81001", Coverage::One),
                ("C83001", Coverage::Covered),
            ]
        );
        let a = &report.organisations[2];
        assert_eq!(
            (a.accounts, a.primary_users, a.primary_users_active),
            (4, 2, 1),
            "{a:?}"
        );
        assert_eq!(
            (a.passwords_expiring, a.passwords_expired, a.nearing_cutoff, a.suspended),
            (1, 1, 1, 1)
        );
        assert_eq!(a.name.as_deref(), Some("Riverside"));
        assert_eq!(report.organisations[0].suspended, 1);
        assert_eq!(report.organisations[1].accounts, 1, "the disabled account is left out");

        let regions: Vec<String> = report
            .regions
            .iter()
            .map(|r| {
                format!(
                    "{:?} {} {} lapsed {} none {} accounts {}",
                    r.region, r.name, r.organisations, r.lapsed, r.no_primary_user, r.accounts
                )
            })
            .collect();
        assert_eq!(
            regions,
            vec![
                "Some(\"Y56\") London 2 lapsed 1 none 0 accounts 5",
                "Some(\"Y62\") North West 1 lapsed 0 none 1 accounts 1",
                "None No region in the registry 1 lapsed 0 none 0 accounts 2",
            ]
        );
        let csv = csv_rows(&report, "regions").unwrap();
        assert_eq!(csv[1][..4], ["Y56", "London", "2", "1"]);
        let csv = csv_rows(&report, "organisations").unwrap();
        assert_eq!(csv.len(), 5);
        assert_eq!(csv[1][..4], ["A81002", "Hillside", "Y56", "every Primary User lapsed"]);
        assert!(csv_rows(&report, "people").is_none());
    }
}
