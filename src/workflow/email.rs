//! Workflows that take plain emails, not forms: how such an email is recognised (its sender,
//! its subject, phrases), how fields are read from its text (labelled lines or a pattern per
//! field), and how it is sorted into one of the workflow's known problems by declared phrases
//! and patterns. All of it is data in the workflow file and pure functions here: no I/O.
//!
//! Every byte of an email is the sender's. The text looked at is cut to [`MAX_TEXT_BYTES`],
//! patterns run on the `regex` crate (linear time, no backtracking), and the workflow file's
//! patterns are compiled once, when it loads, with a size limit.

use std::collections::BTreeMap;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

/// How much of an email's subject and text is looked at; the rest is kept, not searched.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// The longest value a labelled line or pattern may give a field.
pub const MAX_FIELD_CHARS: usize = 200;
/// How big a compiled pattern of a workflow file may grow.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression from a workflow file, compiled when the file loads.
#[derive(Debug, Clone)]
pub struct Pattern(Regex);

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, String> {
        RegexBuilder::new(text)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(Pattern)
            .map_err(|e| e.to_string())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Pattern::new(&text).map_err(|e| serde::de::Error::custom(format!("bad pattern `{text}`: {e}")))
    }
}

/// A phrase from a workflow file, kept in the form [`normalise`] gives text (lower case, one
/// space between words), so that each email is compared with it as it is, with no work per
/// phrase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Phrase(String);

impl Phrase {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Phrase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let phrase = normalise(&text);
        if phrase.is_empty() {
            return Err(serde::de::Error::custom("an empty phrase would match every email"));
        }
        Ok(Phrase(phrase))
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `[recognise.email]`: when a plain email (one with no form of any workflow) is this
/// workflow's. Every condition given must hold; a workflow with none takes no email.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailRecognition {
    /// The sender is one of these addresses (any case).
    #[serde(default)]
    pub from: Vec<String>,
    /// The sender's address is at one of these domains (or a subdomain of one).
    #[serde(default)]
    pub from_domains: Vec<String>,
    /// The subject matches this pattern.
    #[serde(default)]
    pub subject: Option<Pattern>,
    /// The subject or text has at least one of these phrases (any case, any spacing).
    #[serde(default)]
    pub any_phrase: Vec<Phrase>,
    /// Breaks ties between workflows that both take an email; higher wins.
    #[serde(default)]
    pub priority: i32,
    /// Fields read from the email's text.
    #[serde(default)]
    pub fields: Vec<EmailFieldRule>,
}

/// How one field is read from an email's text: the rest of the first line that starts with
/// one of `labels` (then a colon, or not), else the first capture group (or the whole match)
/// of `pattern`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailFieldRule {
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub pattern: Option<Pattern>,
}

/// What an email looks like to the recogniser: its sender, and its subject and text (each
/// cut to [`MAX_TEXT_BYTES`]), with the forms phrases and patterns are matched against made
/// once, however many workflows and classes look at it.
#[derive(Debug, Clone)]
pub struct EmailText<'a> {
    pub from: Option<&'a str>,
    pub subject: &'a str,
    pub body: &'a str,
    /// Subject and text without quoted lines, lower case, one space between words.
    normalised: String,
    /// Subject and text without quoted lines, as written (for patterns).
    unquoted: String,
}

impl<'a> EmailText<'a> {
    pub fn new(from: Option<&'a str>, subject: Option<&'a str>, body: Option<&'a str>) -> EmailText<'a> {
        let (subject, body) = (cut(subject.unwrap_or_default()), cut(body.unwrap_or_default()));
        let unquoted: String = subject
            .lines()
            .chain(body.lines())
            .filter(|l| !l.trim_start().starts_with('>'))
            .collect::<Vec<_>>()
            .join("\n");
        EmailText {
            from,
            subject,
            body,
            normalised: normalise(&unquoted),
            unquoted,
        }
    }

    /// Whether the email has `phrase` (outside quoted lines).
    fn has(&self, phrase: &Phrase) -> bool {
        self.normalised.contains(phrase.as_str())
    }
}

/// The text as the recogniser compares phrases with it: lower case, one space between words,
/// and quoted lines (`> ...`, an earlier message in the thread) left out.
pub fn normalise(text: &str) -> String {
    let text = cut(text);
    let mut out = String::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim_start().starts_with('>')) {
        for word in line.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(word.chars().flat_map(char::to_lowercase));
        }
    }
    out
}

/// At most [`MAX_TEXT_BYTES`] of `text`, cut at a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl EmailRecognition {
    /// Whether this recogniser declares any condition at all.
    pub fn has_conditions(&self) -> bool {
        !self.from.is_empty() || !self.from_domains.is_empty() || self.subject.is_some() || !self.any_phrase.is_empty()
    }

    /// Whether `email` is this workflow's.
    pub fn matches(&self, email: &EmailText<'_>) -> bool {
        if !self.has_conditions() {
            return false;
        }
        let from = email.from.map(|f| f.trim().to_ascii_lowercase());
        if !self.from.is_empty()
            && !from
                .as_deref()
                .is_some_and(|f| self.from.iter().any(|a| a.eq_ignore_ascii_case(f)))
        {
            return false;
        }
        if !self.from_domains.is_empty() {
            let domain = from.as_deref().and_then(|f| f.rsplit_once('@')).map(|(_, d)| d);
            let at_domain = domain.is_some_and(|d| {
                self.from_domains.iter().any(|wanted| {
                    let wanted = wanted.trim().trim_start_matches('@').to_ascii_lowercase();
                    d == wanted || d.ends_with(&format!(".{wanted}"))
                })
            });
            if !at_domain {
                return false;
            }
        }
        if let Some(pattern) = &self.subject
            && !pattern.0.is_match(email.subject)
        {
            return false;
        }
        self.any_phrase.is_empty() || self.any_phrase.iter().any(|p| email.has(p))
    }

    /// The fields this recogniser reads from `email`'s text, by name (only those found).
    pub fn read_fields(&self, email: &EmailText<'_>) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        for rule in &self.fields {
            if let Some(value) = rule.read(email.body) {
                fields.insert(rule.name.clone(), value);
            }
        }
        fields
    }
}

impl EmailFieldRule {
    fn read(&self, body: &str) -> Option<String> {
        let labelled = body.lines().find_map(|line| {
            let line = line.trim().trim_start_matches(['*', '-', '•']).trim();
            self.labels.iter().find_map(|label| {
                let rest = strip_prefix_ignore_case(line, label.trim())?;
                // "User ID: X", "User ID - X" or "User ID X", but not "User IDs".
                let rest = match rest.chars().next() {
                    None => return None,
                    Some(c) if c.is_alphanumeric() => return None,
                    Some(_) => rest.trim_start_matches([' ', '\t', ':', '-', '=']),
                };
                Some(rest.trim().to_string())
            })
        });
        let found = labelled.filter(|v| !v.is_empty()).or_else(|| {
            let pattern = self.pattern.as_ref()?;
            let captures = pattern.0.captures(body)?;
            let value = captures.get(1).or_else(|| captures.get(0))?;
            Some(value.as_str().trim().to_string())
        })?;
        let value: String = found
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_FIELD_CHARS)
            .collect();
        (!value.is_empty()).then_some(value)
    }
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// `[classify]`: sorts a workflow's emails into the known problems it declares, by phrases
/// and patterns, and names the reply each one gets. An email that fits none, or two equally
/// well, is `unknown`: a caseworker choosing is better than a wrong reply.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Classifier {
    /// The case field that holds the answer (a choice field whose options are the classes'
    /// names and `unknown`), so that a caseworker can correct it.
    pub field: String,
    /// The answer when no class fits.
    #[serde(default = "unknown")]
    pub unknown: String,
    /// How many of a class's phrases and patterns an email must have for it to count.
    #[serde(default = "one")]
    pub min_score: usize,
    pub classes: Vec<ClassDef>,
}

fn unknown() -> String {
    "unknown".to_string()
}

fn one() -> usize {
    1
}

/// One known problem: how it is recognised, and the reply it gets.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    pub name: String,
    pub label: String,
    /// The reply template a caseworker is offered for it.
    pub template: String,
    /// Who the reply sends the sender to (shown to the caseworker): "registration authority",
    /// "local IT", ...
    #[serde(default)]
    pub refer_to: Option<String>,
    /// Each phrase found (any case, any spacing) scores one.
    #[serde(default)]
    pub phrases: Vec<Phrase>,
    /// Each pattern that matches scores one.
    #[serde(default)]
    pub patterns: Vec<Pattern>,
}

/// What the classifier made of an email: the class (None: unknown), and what it found, for
/// the case's log to say why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    pub class: Option<String>,
    pub evidence: Vec<String>,
}

impl Classifier {
    pub fn class(&self, name: &str) -> Option<&ClassDef> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Sorts `email` into one of the classes, or none.
    pub fn classify(&self, email: &EmailText<'_>) -> Classification {
        let mut scores: Vec<(&str, usize)> = Vec::with_capacity(self.classes.len());
        let mut evidence = Vec::new();
        for class in &self.classes {
            let mut score = 0;
            for phrase in class.phrases.iter().filter(|p| email.has(p)) {
                score += 1;
                evidence.push(format!("{}: “{}”", class.name, phrase.as_str()));
            }
            for found in class.patterns.iter().filter_map(|p| p.0.find(&email.unquoted)) {
                score += 1;
                let shown: String = found.as_str().chars().take(60).collect();
                evidence.push(format!("{}: “{shown}”", class.name));
            }
            scores.push((class.name.as_str(), score));
        }
        scores.sort_by_key(|(_, score)| std::cmp::Reverse(*score));
        let class = match scores.as_slice() {
            [(best, top), rest @ ..]
                if *top >= self.min_score && rest.first().is_none_or(|(_, second)| second < top) =>
            {
                Some(best.to_string())
            }
            _ => None,
        };
        Classification { class, evidence }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email<'a>(from: &'a str, subject: &'a str, body: &'a str) -> EmailText<'a> {
        EmailText::new(Some(from), Some(subject), Some(body))
    }

    fn recogniser(toml_text: &str) -> EmailRecognition {
        toml::from_str(toml_text).expect("recogniser parses")
    }

    #[test]
    fn every_declared_condition_must_hold() {
        let r = recogniser(
            r#"
            from_domains = ["openexeter.nhs.uk"]
            subject = "(?i)^new user"
            any_phrase = ["has been created"]
            "#,
        );
        let body = "A new user account has been created.";
        assert!(r.matches(&email("noreply@openexeter.nhs.uk", "New user: X", body)));
        assert!(r.matches(&email("noreply@mail.openexeter.nhs.uk", "New user: X", body)));
        assert!(!r.matches(&email("noreply@openexeter.nhs.uk.evil.example", "New user: X", body)));
        assert!(!r.matches(&email("noreply@openexeter.nhs.uk", "Re: New user", body)));
        assert!(!r.matches(&email("noreply@openexeter.nhs.uk", "New user: X", "hello")));
        // Quoted text is an earlier message, not this one.
        assert!(!r.matches(&email("noreply@openexeter.nhs.uk", "New user: X", "> has been created")));
    }

    #[test]
    fn a_recogniser_without_conditions_takes_nothing() {
        assert!(!recogniser("").matches(&email("a@b.nhs.uk", "anything", "anything")));
    }

    #[test]
    fn exact_senders_are_compared_whole_and_without_case() {
        let r = recogniser(r#"from = ["Notify@OpenExeter.nhs.uk"]"#);
        assert!(r.matches(&email("notify@openexeter.nhs.uk", "", "")));
        assert!(!r.matches(&email("xnotify@openexeter.nhs.uk", "", "")));
    }

    #[test]
    fn fields_come_from_labelled_lines_then_patterns() {
        let r = recogniser(
            r#"
            any_phrase = ["x"]
            [[fields]]
            name = "user_id"
            labels = ["User ID"]
            [[fields]]
            name = "smartcard_id"
            pattern = "(?i)smartcard id[^0-9]*([0-9]{6,12})"
            [[fields]]
            name = "missing"
            labels = ["Nothing"]
            "#,
        );
        let body = "Dear PCSE,\n  * User IDs: wrong\nUser ID:  OE123456 \nMy smartcard ID is 123456789012.";
        let fields = r.read_fields(&email("a@b", "s", body));
        assert_eq!(fields.get("user_id").map(String::as_str), Some("OE123456"));
        assert_eq!(fields.get("smartcard_id").map(String::as_str), Some("123456789012"));
        assert!(!fields.contains_key("missing"));
    }

    #[test]
    fn a_field_value_is_cut_and_has_no_control_characters() {
        let r = recogniser("any_phrase = [\"x\"]\n[[fields]]\nname = \"n\"\nlabels = [\"Name\"]");
        let long = format!("Name: {}\u{7}", "a".repeat(500));
        let value = r.read_fields(&email("a@b", "s", &long))["n"].clone();
        assert_eq!(value.chars().count(), MAX_FIELD_CHARS);
        assert!(!value.contains('\u{7}'));
    }

    fn classifier() -> Classifier {
        toml::from_str(
            r#"
            field = "problem"
            [[classes]]
            name = "no_role"
            label = "No role"
            template = "t1"
            phrases = ["no role", "valid cervical screening role"]
            [[classes]]
            name = "passcode"
            label = "Forgotten passcode"
            template = "t2"
            phrases = ["forgotten my passcode"]
            patterns = ["(?i)forgot\\w*\\s+(my\\s+)?(smartcard\\s+)?(passcode|pin)"]
            "#,
        )
        .expect("classifier parses")
    }

    #[test]
    fn the_best_scoring_class_wins() {
        let c = classifier().classify(&email(
            "a@b",
            "CSMS",
            "It says I do not have a valid cervical screening role.",
        ));
        assert_eq!(c.class.as_deref(), Some("no_role"));
        let c = classifier().classify(&email("a@b", "help", "I forgot my smartcard PIN"));
        assert_eq!(c.class.as_deref(), Some("passcode"));
        assert!(c.evidence.iter().any(|e| e.starts_with("passcode:")));
    }

    #[test]
    fn nothing_found_or_a_tie_is_unknown() {
        assert_eq!(classifier().classify(&email("a@b", "hello", "thanks")).class, None);
        let tie = classifier().classify(&email("a@b", "", "no role, and I forgot my PIN"));
        assert_eq!(tie.class, None, "{tie:?}");
    }

    #[test]
    fn quoted_text_does_not_count() {
        let c = classifier().classify(&email("a@b", "Re: x", "> I forgot my PIN\nThanks, all sorted."));
        assert_eq!(c.class, None);
    }

    #[test]
    fn an_empty_phrase_is_refused_when_the_file_loads() {
        // Every text "contains" the empty phrase: it would take every email.
        let err = toml::from_str::<EmailRecognition>("any_phrase = [\"  \"]").unwrap_err();
        assert!(err.to_string().contains("empty phrase"), "{err}");
    }

    #[test]
    fn phrases_are_kept_normalised_and_match_across_line_breaks() {
        let r = recogniser("any_phrase = [\"Access   CHECK\"]");
        assert_eq!(r.any_phrase[0].as_str(), "access check");
        assert!(r.matches(&email("a@b", "x", "my access\n  check failed")));
    }

    #[test]
    fn a_bad_pattern_is_refused_when_the_file_loads() {
        let err = toml::from_str::<EmailRecognition>("subject = \"(unclosed\"").unwrap_err();
        assert!(err.to_string().contains("bad pattern"), "{err}");
    }

    #[test]
    fn huge_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        assert!(cut(&text).len() <= MAX_TEXT_BYTES);
        assert!(normalise(&text).chars().all(|c| c == 'é'));
    }
}
