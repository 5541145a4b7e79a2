//! The organisation registry: NHS organisations as the ODS files describe them, so that "is
//! this a GP practice", "does this organisation exist" and "is it still open" come from data,
//! not from the shape of the code. Reading the files is here (pure); storing them is in
//! `storage`, and the rules that use them are in `policy`.
//!
//! Two files are read:
//! - the GP practice file, `epraccur.csv` (no header row; column 1 the code, 2 the name,
//!   3 the national grouping (the NHS England commissioning region, `Y56`), 12 the close date
//!   as `YYYYMMDD`, 13 the status: `A` active, `C` closed, `D` dormant, `P` proposed). Every
//!   organisation in it is a GP practice.
//! - an organisation file with roles, with a header row naming its columns: `OrgId` (or
//!   `Organisation Code`), `Name`, `Status` (`Active` or `Inactive`), `Roles` (role codes,
//!   separated by spaces or `;`, e.g. `RO177 RO76`), and optionally `EndDate` (`YYYY-MM-DD`)
//!   and `Region` (the commissioning region's code, `Y56`).
//!   An organisation with role RO76 ("GP practice") is a GP practice.

use chrono::NaiveDate;

/// The ODS role of a GP practice.
pub const GP_PRACTICE_ROLE: &str = "RO76";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{file}, line {line}: {message}")]
    Row { file: String, line: u64, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// Whether an organisation is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    Active,
    Closed,
    Dormant,
    Proposed,
}

impl OrgStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgStatus::Active => "active",
            OrgStatus::Closed => "closed",
            OrgStatus::Dormant => "dormant",
            OrgStatus::Proposed => "proposed",
        }
    }

    pub fn parse(text: &str) -> Option<OrgStatus> {
        match text.trim().to_ascii_lowercase().as_str() {
            "a" | "active" => Some(OrgStatus::Active),
            "c" | "closed" | "inactive" => Some(OrgStatus::Closed),
            "d" | "dormant" => Some(OrgStatus::Dormant),
            "p" | "proposed" => Some(OrgStatus::Proposed),
            _ => None,
        }
    }
}

/// One organisation in the registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegisteredOrganisation {
    pub code: String,
    pub name: String,
    pub gp_practice: bool,
    pub roles: Vec<String>,
    pub status: OrgStatus,
    pub closed_on: Option<NaiveDate>,
    /// The NHS England commissioning region's code (`Y56`), when the file gives one.
    pub region: Option<String>,
}

impl RegisteredOrganisation {
    /// Open on `today`: active, and not past a close date.
    pub fn is_open(&self, today: NaiveDate) -> bool {
        self.status == OrgStatus::Active && self.closed_on.is_none_or(|closed| closed > today)
    }
}

/// What the registry says about one code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RegistryLookup {
    /// No registry has been imported: nothing can be said, and nothing is a finding.
    #[default]
    NotLoaded,
    /// A registry is loaded and the code is not in it.
    Unknown,
    Known(RegisteredOrganisation),
}

impl RegistryLookup {
    /// Whether the code is a GP practice, when the registry knows the code.
    pub fn is_gp_practice(&self) -> Option<bool> {
        match self {
            RegistryLookup::Known(org) => Some(org.gp_practice),
            _ => None,
        }
    }
}

/// Reads the GP practice file (`epraccur`).
pub fn parse_gp_practices(bytes: &[u8], file: &str) -> Result<Vec<RegisteredOrganisation>, RegistryError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut organisations = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index as u64 + 1;
        let record = record.map_err(|e| row(file, line, e.to_string()))?;
        let column = |n: usize| record.get(n - 1).map(str::trim).unwrap_or("");
        let code = organisation_code(column(1))
            .ok_or_else(|| row(file, line, format!("`{}` is not an ODS code", column(1))))?;
        let status = OrgStatus::parse(column(13))
            .ok_or_else(|| row(file, line, format!("status `{}` is not A, C, D or P", column(13))))?;
        organisations.push(RegisteredOrganisation {
            code,
            name: column(2).to_string(),
            gp_practice: true,
            roles: vec![GP_PRACTICE_ROLE.to_string()],
            status,
            closed_on: compact_date(column(12)).map_err(|m| row(file, line, m))?,
            region: region_code(column(3)),
        });
    }
    Ok(organisations)
}

/// Reads an organisation file with roles (a header row names the columns).
pub fn parse_organisations(bytes: &[u8], file: &str) -> Result<Vec<RegisteredOrganisation>, RegistryError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| RegistryError::File {
            file: file.into(),
            message: e.to_string(),
        })?
        .clone();
    let find = |names: &[&str]| {
        headers.iter().position(|h| {
            let h = h.trim().to_ascii_lowercase().replace([' ', '_'], "");
            names.iter().any(|n| h == *n)
        })
    };
    let missing = |what: &str| RegistryError::File {
        file: file.into(),
        message: format!("no `{what}` column in the header row"),
    };
    let code_at = find(&["orgid", "organisationcode", "odscode", "code"]).ok_or_else(|| missing("OrgId"))?;
    let name_at = find(&["name", "organisationname"]).ok_or_else(|| missing("Name"))?;
    let status_at = find(&["status"]).ok_or_else(|| missing("Status"))?;
    let roles_at = find(&["roles", "roleids", "role"]).ok_or_else(|| missing("Roles"))?;
    let end_at = find(&["enddate", "legalenddate", "closedate"]);
    let region_at = find(&["region", "nationalgrouping", "commissioningregion", "regioncode"]);
    let mut organisations = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index as u64 + 2;
        let record = record.map_err(|e| row(file, line, e.to_string()))?;
        let column = |at: usize| record.get(at).map(str::trim).unwrap_or("");
        let code = organisation_code(column(code_at))
            .ok_or_else(|| row(file, line, format!("`{}` is not an ODS code", column(code_at))))?;
        let status = OrgStatus::parse(column(status_at)).ok_or_else(|| {
            row(
                file,
                line,
                format!("status `{}` is not Active or Inactive", column(status_at)),
            )
        })?;
        let roles: Vec<String> = column(roles_at)
            .split([' ', ';', ','])
            .map(|r| r.trim().to_ascii_uppercase())
            .filter(|r| !r.is_empty())
            .collect();
        let closed_on = match end_at.map(column).filter(|d| !d.is_empty()) {
            Some(text) => Some(
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| row(file, line, format!("end date `{text}` is not YYYY-MM-DD")))?,
            ),
            None => None,
        };
        organisations.push(RegisteredOrganisation {
            code,
            name: column(name_at).to_string(),
            gp_practice: roles.iter().any(|r| r == GP_PRACTICE_ROLE),
            roles,
            status,
            closed_on,
            region: region_at.map(column).and_then(region_code),
        });
    }
    Ok(organisations)
}

fn row(file: &str, line: u64, message: String) -> RegistryError {
    RegistryError::Row {
        file: file.into(),
        line,
        message,
    }
}

/// An NHS England region code as the ODS files write it (`Y56`): a Y and two digits.
fn region_code(text: &str) -> Option<String> {
    let code = text.trim().to_ascii_uppercase();
    (code.len() == 3 && code.starts_with('Y') && code[1..].chars().all(|c| c.is_ascii_digit())).then_some(code)
}

/// A region's name, for the codes NHS England has used (the 2013 four and the 2020 seven);
/// None for one this list does not know (the code is shown instead).
pub fn region_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "Y54" => "North of England",
        "Y55" => "Midlands and East of England",
        "Y56" => "London",
        "Y57" => "South of England",
        "Y58" => "South West",
        "Y59" => "South East",
        "Y60" => "Midlands",
        "Y61" => "East of England",
        "Y62" => "North West",
        "Y63" => "North East and Yorkshire",
        _ => return None,
    })
}

/// An ODS organisation code: 3 to 10 letters and digits, upper case.
fn organisation_code(text: &str) -> Option<String> {
    let code = text.trim().to_ascii_uppercase();
    ((3..=10).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric())).then_some(code)
}

/// `YYYYMMDD`, or empty.
fn compact_date(text: &str) -> Result<Option<NaiveDate>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(text, "%Y%m%d")
        .map(Some)
        .map_err(|_| format!("date `{text}` is not YYYYMMDD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gp_practice_file_is_read_by_column_and_every_row_is_a_practice() {
        let file = b"A81001,THE DENSHAM SURGERY,Y54,Q74,THE HEALTH CENTRE,LAWSON STREET,STOCKTON-ON-TEES,CLEVELAND,,TS18 1HU,19740401,,A,B,00K,20130401,,01642 672351,,,,0,,4,,4,\n\
A81999,CLOSED SURGERY,Y54,Q74,,,,,,TS1 1AA,19740401,20200331,C,B,00K,20130401,20200331,,,,,0,,4,,4,\n";
        let orgs = parse_gp_practices(file, "epraccur.csv").unwrap();
        assert_eq!(orgs.len(), 2);
        assert_eq!(orgs[0].code, "A81001");
        assert_eq!(orgs[0].name, "THE DENSHAM SURGERY");
        assert!(orgs[0].gp_practice);
        assert_eq!(orgs[0].status, OrgStatus::Active);
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert!(orgs[0].is_open(today));
        assert_eq!(orgs[1].status, OrgStatus::Closed);
        assert_eq!(orgs[1].closed_on, NaiveDate::from_ymd_opt(2020, 3, 31));
        assert!(!orgs[1].is_open(today));
    }

    #[test]
    fn the_organisation_file_says_gp_practice_by_role() {
        let file = b"OrgId,Name,Status,Roles,EndDate\n\
RX1,NOTTINGHAM UNIVERSITY HOSPITALS NHS TRUST,Active,RO197 RO57,\n\
B82005,A PRACTICE WITH AN ODD CODE,Active,RO177;RO76,\n\
Y02520,A CLOSED HUB,Inactive,RO177,2024-03-31\n";
        let orgs = parse_organisations(file, "orgs.csv").unwrap();
        assert_eq!(orgs.len(), 3);
        assert!(!orgs[0].gp_practice);
        assert_eq!(orgs[0].roles, vec!["RO197", "RO57"]);
        assert!(orgs[1].gp_practice);
        assert_eq!(orgs[2].status, OrgStatus::Closed);
        assert_eq!(orgs[2].closed_on, NaiveDate::from_ymd_opt(2024, 3, 31));
    }

    #[test]
    fn the_commissioning_region_is_read_when_a_file_gives_one() {
        let file = b"OrgId,Name,Status,Roles,Region\n\
RX1,A TRUST,Active,RO197,y56\n\
RX2,A TRUST WITH NO REGION,Active,RO197,\n\
RX3,A TRUST WITH A STRANGE ONE,Active,RO197,Q74\n";
        let orgs = parse_organisations(file, "orgs.csv").unwrap();
        let regions: Vec<Option<&str>> = orgs.iter().map(|o| o.region.as_deref()).collect();
        assert_eq!(regions, vec![Some("Y56"), None, None]);
        assert_eq!(region_name("Y56"), Some("London"));
        assert_eq!(region_name("Y63"), Some("North East and Yorkshire"));
        assert_eq!(region_name("Y99"), None);
        let practices = parse_gp_practices(b"A81001,RIVERSIDE,Y62,Q84,,,,,,,19740401,,A,B\n", "epraccur.csv").unwrap();
        assert_eq!(practices[0].region.as_deref(), Some("Y62"));
    }

    #[test]
    fn a_bad_row_is_refused_with_its_line() {
        let bad = b"OrgId,Name,Status,Roles\nRX1,TRUST,Active,RO197\n<script>,X,Active,RO1\n";
        let error = parse_organisations(bad, "orgs.csv").unwrap_err().to_string();
        assert!(error.contains("orgs.csv, line 3"), "{error}");
        let bad = b"Name,Status\nX,Active\n";
        assert!(
            parse_organisations(bad, "orgs.csv")
                .unwrap_err()
                .to_string()
                .contains("OrgId")
        );
        let bad = b"A81001,SURGERY,,,,,,,,,,,Q\n";
        assert!(
            parse_gp_practices(bad, "epraccur.csv")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }

    #[test]
    fn a_close_date_in_the_future_is_still_open() {
        let org = RegisteredOrganisation {
            code: "A81001".into(),
            name: "X".into(),
            gp_practice: true,
            roles: vec![],
            status: OrgStatus::Active,
            closed_on: NaiveDate::from_ymd_opt(2027, 1, 1),
            region: None,
        };
        assert!(org.is_open(NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()));
        assert!(!org.is_open(NaiveDate::from_ymd_opt(2027, 1, 2).unwrap()));
    }
}
