//! The signatory register, pure: who is known to sign for an organisation, the CSV it is
//! imported from, and what the register says about the signatory a form names. A typed name
//! proves nothing by itself: a signatory the register does not know is a finding a caseworker
//! resolves by verifying them (how is recorded), and one who signs as an existing Primary
//! User or Primary Contact must really be one in our own records.

/// The register's role for a Primary User we provisioned.
pub const PRIMARY_USER: &str = "Primary User";
/// The register's role for a Primary Contact.
pub const PRIMARY_CONTACT: &str = "Primary Contact";

#[derive(Debug, thiserror::Error)]
pub enum SignatoryError {
    #[error("{file}, line {line}: {message}")]
    Row { file: String, line: u64, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// One known signatory of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KnownSignatory {
    pub ods_code: String,
    pub role: String,
    pub name: String,
    pub email: Option<String>,
    /// `import`, `admin`, `verified` (by a caseworker, with how) or `provisioned`.
    pub source: String,
}

impl KnownSignatory {
    fn is_primary(&self) -> bool {
        self.role.eq_ignore_ascii_case(PRIMARY_USER) || self.role.eq_ignore_ascii_case(PRIMARY_CONTACT)
    }

    /// The same person: the same email address, or (with no address to compare) the same name.
    fn is(&self, name: Option<&str>, email: Option<&str>) -> bool {
        match (self.email.as_deref(), email) {
            (Some(known), Some(given)) => known.trim().eq_ignore_ascii_case(given.trim()),
            _ => name.is_some_and(|n| same_name(&self.name, n)),
        }
    }
}

/// Names compared without case, punctuation or extra spaces ("Dr. A  Okafor" is "dr a okafor").
fn same_name(a: &str, b: &str) -> bool {
    let fold = |s: &str| {
        s.chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let (a, b) = (fold(a), fold(b));
    !a.is_empty() && a == b
}

/// What the register holds for the form's organisation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterLookup {
    /// The register holds anyone at all: until it does, "not known" is not a finding (a new
    /// deployment would flag every form), but a claimed Primary User is still checked.
    pub in_use: bool,
    pub of_organisation: Vec<KnownSignatory>,
}

/// What the register says about the signatory a form names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatoryStanding {
    Known,
    /// Signed as an existing Primary User or Primary Contact, but our records hold no such
    /// person for the organisation.
    NotAPrimaryUser,
    NotKnown,
    /// Nothing to say (no register yet, or nothing to look up).
    Unchecked,
}

/// Looks up the signatory: `claims_primary` when the (canonical) role signed as is an
/// existing Primary User or Primary Contact.
pub fn standing(
    lookup: &RegisterLookup,
    name: Option<&str>,
    email: Option<&str>,
    claims_primary: bool,
) -> SignatoryStanding {
    if name.is_none() && email.is_none() {
        return SignatoryStanding::Unchecked;
    }
    if claims_primary {
        return if lookup
            .of_organisation
            .iter()
            .any(|s| s.is_primary() && s.is(name, email))
        {
            SignatoryStanding::Known
        } else {
            SignatoryStanding::NotAPrimaryUser
        };
    }
    if !lookup.in_use {
        return SignatoryStanding::Unchecked;
    }
    if lookup.of_organisation.iter().any(|s| s.is(name, email)) {
        SignatoryStanding::Known
    } else {
        SignatoryStanding::NotKnown
    }
}

/// Whether a workflow's canonical signatory role is "an existing Primary User (or Contact)".
pub fn claims_primary(role: &str) -> bool {
    let role = role.to_ascii_lowercase();
    role.contains("primary user") || role.contains("primary contact")
}

/// Reads a register CSV: a header row naming `ods_code`, `role`, `name` and optionally
/// `email`, in any order.
pub fn parse_csv(bytes: &[u8], file: &str) -> Result<Vec<KnownSignatory>, SignatoryError> {
    let mut csv = crate::domain::CsvWithHeader::read(bytes).map_err(|e| SignatoryError::File {
        file: file.into(),
        message: e.to_string(),
    })?;
    let find = |name: &str| csv.column(name);
    let missing = |what: &str| SignatoryError::File {
        file: file.into(),
        message: format!("no `{what}` column in the header row"),
    };
    let (code_at, role_at, name_at) = (
        find("ods_code").ok_or_else(|| missing("ods_code"))?,
        find("role").ok_or_else(|| missing("role"))?,
        find("name").ok_or_else(|| missing("name"))?,
    );
    let email_at = find("email");
    let mut signatories = Vec::new();
    for (index, record) in csv.reader.records().enumerate() {
        let line = index as u64 + 2;
        let bad = |message: String| SignatoryError::Row {
            file: file.into(),
            line,
            message,
        };
        let record = record.map_err(|e| bad(e.to_string()))?;
        let column = |at: usize| crate::domain::storable_text(record.get(at).unwrap_or("").trim());
        let code = crate::domain::OdsCode::parse(&column(code_at))
            .ok_or_else(|| bad(format!("`{}` is not an ODS code", column(code_at))))?;
        let (role, name) = (column(role_at), column(name_at));
        if role.is_empty() || name.is_empty() {
            return Err(bad("a role and a name are needed".into()));
        }
        let email = email_at.map(column).filter(|e| !e.is_empty());
        if let Some(email) = &email
            && crate::domain::EmailAddress::parse(email).is_none()
        {
            return Err(bad(format!("`{email}` is not an email address")));
        }
        signatories.push(KnownSignatory {
            ods_code: code.as_str().to_string(),
            role,
            name,
            email,
            source: "import".into(),
        });
    }
    Ok(signatories)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(role: &str, name: &str, email: Option<&str>) -> KnownSignatory {
        KnownSignatory {
            ods_code: "A81001".into(),
            role: role.into(),
            name: name.into(),
            email: email.map(str::to_string),
            source: "import".into(),
        }
    }

    fn lookup(entries: Vec<KnownSignatory>) -> RegisterLookup {
        RegisterLookup {
            in_use: true,
            of_organisation: entries,
        }
    }

    #[test]
    fn a_signatory_is_known_by_email_or_without_one_by_name() {
        let register = lookup(vec![known("GP Partner", "Dr Wyn ap Gruffydd", Some("wyn@nhs.net"))]);
        assert_eq!(
            standing(&register, Some("Someone"), Some("WYN@nhs.net"), false),
            SignatoryStanding::Known
        );
        assert_eq!(
            standing(&register, Some("Dr. Wyn  ap Gruffydd"), None, false),
            SignatoryStanding::Known
        );
        // The right name with someone else's address is not the same person.
        assert_eq!(
            standing(&register, Some("Dr Wyn ap Gruffydd"), Some("mallory@nhs.net"), false),
            SignatoryStanding::NotKnown
        );
        assert_eq!(
            standing(&register, Some("Dr Other"), None, false),
            SignatoryStanding::NotKnown
        );
    }

    #[test]
    fn an_empty_register_flags_nobody_but_a_claimed_primary_user_is_always_checked() {
        let empty = RegisterLookup::default();
        assert_eq!(
            standing(&empty, Some("Dr A"), Some("a@nhs.net"), false),
            SignatoryStanding::Unchecked
        );
        assert_eq!(
            standing(&empty, Some("Jo Bloggs"), Some("jo@nhs.net"), true),
            SignatoryStanding::NotAPrimaryUser
        );
        let register = lookup(vec![
            known("Caldicott Guardian", "Jo Bloggs", Some("jo@nhs.net")),
            known(PRIMARY_USER, "Sam Smith", Some("sam@nhs.net")),
        ]);
        // A Caldicott Guardian is not a Primary User.
        assert_eq!(
            standing(&register, Some("Jo Bloggs"), Some("jo@nhs.net"), true),
            SignatoryStanding::NotAPrimaryUser
        );
        assert_eq!(
            standing(&register, Some("Sam Smith"), Some("sam@nhs.net"), true),
            SignatoryStanding::Known
        );
    }

    #[test]
    fn existing_primary_roles_are_recognised() {
        assert!(claims_primary("Existing Primary Contact"));
        assert!(claims_primary("Existing Primary User"));
        assert!(!claims_primary("Caldicott Guardian"));
    }

    #[test]
    fn the_csv_is_read_by_its_header_and_a_bad_row_names_its_line() {
        let file = b"name,role,ods_code,email\nDr Jo Bloggs,Caldicott Guardian,a81001,jo@nhs.net\nAmara Okafor,Lead GP,A81002,\n";
        let read = parse_csv(file, "cg.csv").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].ods_code, "A81001");
        assert_eq!(read[1].email, None);
        let bad = b"ods_code,role,name,email\nA81001,Lead GP,Dr X,not-an-address\n";
        assert!(
            parse_csv(bad, "cg.csv")
                .unwrap_err()
                .to_string()
                .contains("cg.csv, line 2")
        );
        assert!(
            parse_csv(b"role,name\n", "cg.csv")
                .unwrap_err()
                .to_string()
                .contains("ods_code")
        );
    }
}
