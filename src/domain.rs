//! Validated domain types: once a value is one of these, it has been checked at the edge.
//!
//! ```
//! use countersign::domain::{EmailAddress, NhsDomains, OdsCode};
//!
//! let practice = OdsCode::parse(" a81001 ").unwrap();
//! assert_eq!(practice.as_str(), "A81001");
//! assert!(practice.is_gp_practice());
//!
//! let nhs = NhsDomains::default();
//! assert!(nhs.contains(&EmailAddress::parse("jo.bloggs@nhs.net").unwrap()));
//! assert!(!nhs.contains(&EmailAddress::parse("jo@nhs.net.example.com").unwrap()));
//! ```

mod kinds;

pub use kinds::{EventKind, OutboxStatus, TimerStatus};

use std::fmt;

use chrono::{Datelike, NaiveDate};

/// An Organisation Data Service code, upper-cased and trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct OdsCode(String);

impl OdsCode {
    /// ODS codes are 3 to 6 letters and digits (trusts `RX1`, sites `RX101`, ICBs `QE1`,
    /// practices `A81001`), with at least one letter. Spaces and case are forgiven.
    pub fn parse(text: &str) -> Option<Self> {
        let code: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        let well_formed = (3..=6).contains(&code.len())
            && code.chars().all(|c| c.is_ascii_alphanumeric())
            && code.chars().any(|c| c.is_ascii_alphabetic());
        well_formed.then_some(OdsCode(code))
    }

    /// GP practice codes are one letter and five digits, e.g. `A81001`.
    pub fn is_gp_practice(&self) -> bool {
        let bytes = self.0.as_bytes();
        bytes.len() == 6 && bytes[0].is_ascii_alphabetic() && bytes[1..].iter().all(u8::is_ascii_digit)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A syntactically valid email address, with its domain lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmailAddress {
    local: String,
    domain: String,
}

impl EmailAddress {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let parsed = email_address::EmailAddress::parse_with_options(
            text,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .ok()?;
        let domain = parsed.domain().trim_end_matches('.').to_ascii_lowercase();
        // A bare host (`user@localhost`) is not a mailbox a practice would have.
        if !domain.contains('.') {
            return None;
        }
        Some(EmailAddress {
            local: parsed.local_part().to_string(),
            domain,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Addresses compare case-insensitively in practice (NHSmail treats them so).
    pub fn same_mailbox(&self, other: &EmailAddress) -> bool {
        self.domain == other.domain && self.local.eq_ignore_ascii_case(&other.local)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The domains that count as NHS mail. An entry `nhs.net` matches that domain only; an entry
/// `*.nhs.uk` matches any subdomain. Labels are compared whole, so `nhs.net.example.com` and
/// `fakenhs.net` are not NHS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NhsDomains(Vec<String>);

impl NhsDomains {
    pub fn new(entries: impl IntoIterator<Item = impl Into<String>>) -> Self {
        NhsDomains(
            entries
                .into_iter()
                .map(|e| e.into().trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        )
    }

    pub fn contains(&self, address: &EmailAddress) -> bool {
        let domain = address.domain();
        self.0.iter().any(|entry| match entry.strip_prefix("*.") {
            Some(parent) => domain
                .strip_suffix(parent)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => domain == entry,
        })
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }
}

impl Default for NhsDomains {
    fn default() -> Self {
        NhsDomains::new(["nhs.net", "nhs.uk", "*.nhs.uk"])
    }
}

/// A human-friendly case reference, `CS-2026-000123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CaseRef(String);

impl CaseRef {
    pub fn new(year: i32, number: i64) -> Self {
        CaseRef(format!("CS-{year}-{number:06}"))
    }

    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_uppercase();
        let rest = text.strip_prefix("CS-")?;
        let (year, number) = rest.split_once('-')?;
        let ok = year.len() == 4
            && year.bytes().all(|b| b.is_ascii_digit())
            && number.len() >= 6
            && number.bytes().all(|b| b.is_ascii_digit());
        ok.then_some(CaseRef(text))
    }

    /// Finds a case reference in free text such as a reply's subject: `Re: [CS-2026-000123] …`.
    pub fn find_in(text: &str) -> Option<Self> {
        let upper = text.to_ascii_uppercase();
        upper.match_indices("CS-").find_map(|(i, _)| {
            let candidate: String = upper[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            CaseRef::parse(&candidate)
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a UK date as people type it on a form: `DD/MM/YYYY`, also with `-` or `.`, one-digit
/// day or month, or ISO `YYYY-MM-DD` (some PDF viewers' date pickers write that).
pub fn parse_form_date(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && text.len() == 10
    {
        return Some(date);
    }
    let parts: Vec<&str> = text.split(['/', '-', '.']).collect();
    let [day, month, year] = parts.as_slice() else {
        return None;
    };
    if year.len() != 4 || day.is_empty() || day.len() > 2 || month.is_empty() || month.len() > 2 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?)?;
    (date.year() >= 1900).then_some(date)
}

/// Normalises a role as typed: lower case, punctuation and repeated spaces folded, `&` as
/// `and`. Used to match signatory roles tolerantly without ever matching a different role.
pub fn normalise_role(text: &str) -> String {
    let replaced = text.replace('&', " and ");
    replaced
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_are_normalised_and_checked() {
        assert_eq!(OdsCode::parse(" a81001 ").map(|c| c.to_string()), Some("A81001".into()));
        assert!(OdsCode::parse("RX1").is_some());
        assert!(OdsCode::parse("AB").is_none(), "too short");
        assert!(OdsCode::parse("A810012").is_none(), "too long");
        assert!(OdsCode::parse("A8-001").is_none(), "punctuation");
        assert!(OdsCode::parse("12345").is_none(), "no letter");
    }

    #[test]
    fn gp_practice_codes_are_a_letter_and_five_digits() {
        assert!(OdsCode::parse("A81001").unwrap().is_gp_practice());
        assert!(!OdsCode::parse("RX101").unwrap().is_gp_practice());
        assert!(!OdsCode::parse("AB1001").unwrap().is_gp_practice());
    }

    #[test]
    fn nhs_domains_compare_whole_labels() {
        let nhs = NhsDomains::default();
        let is_nhs = |a: &str| nhs.contains(&EmailAddress::parse(a).unwrap());
        assert!(is_nhs("jo.bloggs@nhs.net"));
        assert!(is_nhs("jo.bloggs@NHS.NET"));
        assert!(is_nhs("jo@nhs.uk"));
        assert!(is_nhs("jo@gp-a81001.nhs.uk"));
        assert!(!is_nhs("jo@nhs.net.example.com"));
        assert!(!is_nhs("jo@fakenhs.net"));
        assert!(!is_nhs("jo@evilnhs.uk"));
        assert!(
            !is_nhs("jo@sub.nhs.net"),
            "nhs.net has no subdomain mailboxes unless configured"
        );
        assert!(!is_nhs("jo@gmail.com"));
    }

    #[test]
    fn email_addresses_need_a_dotted_domain() {
        assert!(EmailAddress::parse("a@b.com").is_some());
        assert!(EmailAddress::parse("a@localhost").is_none());
        assert!(EmailAddress::parse("not an email").is_none());
        assert!(EmailAddress::parse("").is_none());
    }

    #[test]
    fn case_refs_are_formatted_and_found_in_subjects() {
        assert_eq!(CaseRef::new(2026, 123).as_str(), "CS-2026-000123");
        assert_eq!(
            CaseRef::find_in("Re: [cs-2026-000123] your form").unwrap().as_str(),
            "CS-2026-000123"
        );
        assert!(CaseRef::find_in("Re: CS-26-1").is_none());
    }

    #[test]
    fn form_dates_are_read_day_first() {
        assert_eq!(parse_form_date("02/03/2026"), NaiveDate::from_ymd_opt(2026, 3, 2));
        assert_eq!(parse_form_date("2.3.2026"), NaiveDate::from_ymd_opt(2026, 3, 2));
        assert_eq!(parse_form_date("2026-03-02"), NaiveDate::from_ymd_opt(2026, 3, 2));
        assert_eq!(parse_form_date("31/02/2026"), None);
        assert_eq!(parse_form_date("02/03/26"), None);
        assert_eq!(parse_form_date("yesterday"), None);
    }

    #[test]
    fn roles_are_normalised_for_matching() {
        assert_eq!(normalise_role("  GP-Partner "), "gp partner");
        assert_eq!(
            normalise_role("Member of the Board of Directors."),
            "member of the board of directors"
        );
        assert_eq!(normalise_role("Caldicott  Guardian"), "caldicott guardian");
    }
}

/// Makes text safe to show: Unicode bidirectional controls (which can make `moc.evil@nhs.net`
/// display as an NHS address, or reverse a name) are replaced by a visible `[U+202E]`, and
/// other control characters except tab and newline are dropped.
pub fn reveal_hidden_characters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' => {
                out.push_str(&format!("[U+{:04X}]", c as u32));
            }
            '\t' | '\n' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Text from a message, as a text column may hold it: every database takes valid UTF-8 (the
/// parser has made it so), but PostgreSQL refuses a NUL, and no control character belongs in
/// a name, an address or a reason. Each is replaced by U+FFFD, so that the text still shows
/// something was there (an address with a NUL in it must never read as the address without).
/// A CSV file with a header row naming its columns in any order (`ODS Code`, `ods-code` and
/// `ods_code` are one name): its reader, and where each named column is.
pub struct CsvWithHeader<'b> {
    pub reader: csv::Reader<&'b [u8]>,
    headers: csv::StringRecord,
}

impl<'b> CsvWithHeader<'b> {
    /// Reads the header row (rows may have more or fewer fields than it).
    pub fn read(bytes: &'b [u8]) -> Result<CsvWithHeader<'b>, csv::Error> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
        let headers = reader.headers()?.clone();
        Ok(CsvWithHeader { reader, headers })
    }

    /// The position of the column named `name` (lower case, underscores).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| h.trim().to_ascii_lowercase().replace([' ', '-'], "_") == name)
    }
}

pub fn storable_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' && c != '\n' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// A Message-ID as stored: no control characters (a raw CR or LF could split a header we
/// write with it), no surrounding space, and at most 998 bytes (the longest header line).
pub fn clean_message_id(id: &str) -> Option<String> {
    let cleaned: String = id.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty() && cleaned.len() <= 998).then(|| cleaned.to_string())
}

#[cfg(test)]
mod hidden_character_tests {
    use super::*;

    #[test]
    fn storable_text_marks_nuls_and_control_characters_rather_than_dropping_them() {
        assert_eq!(storable_text("manager\u{0}@nhs.net"), "manager\u{FFFD}@nhs.net");
        assert_eq!(storable_text("a\rb\u{7}c\u{85}d"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}d");
        assert_eq!(
            storable_text("line one\nline\ttwo — Siân"),
            "line one\nline\ttwo — Siân"
        );
    }

    #[test]
    fn bidi_overrides_are_shown_and_control_characters_dropped() {
        assert_eq!(reveal_hidden_characters("Dr \u{202E}ylloP"), "Dr [U+202E]ylloP");
        assert_eq!(reveal_hidden_characters("a\u{0}b\r\nc\td"), "ab\nc\td");
        assert_eq!(reveal_hidden_characters("Siân Ó Briain"), "Siân Ó Briain");
    }

    #[test]
    fn message_ids_lose_their_line_breaks() {
        assert_eq!(clean_message_id("<a@b>\r\nBcc: x@y").as_deref(), Some("<a@b>Bcc: x@y"));
        assert_eq!(clean_message_id(" \r\n "), None);
        assert_eq!(clean_message_id(&"x".repeat(2000)), None);
    }
}
