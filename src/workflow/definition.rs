//! Workflow files (`workflows/*.toml`): their format, and the checks that stop start-up on a bad one.
//!
//! A workflow is data: how its form is recognised, its fields, who may sign it, which addresses
//! must be NHS ones, its states and transitions (and who may fire each), its timers and the
//! notification template of each transition. Everything here is validated once, at load time,
//! so the rest of the program can index into a definition without checking again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::email::{Classifier, EmailRecognition};
use super::wellknown;

/// Why a workflow file (or the set of them) cannot be used. Every variant names the file and
/// the key, so an operator can go straight to the line that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read workflow folder {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read workflow file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid workflow file: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("no workflow files (*.toml) found in {path}")]
    Empty { path: PathBuf },
}

/// Who may fire a transition. `System` is the engine itself (checks, timers, inbound mail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorRole {
    System,
    Caseworker,
    Manager,
    Admin,
}

impl ActorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorRole::System => "system",
            ActorRole::Caseworker => "caseworker",
            ActorRole::Manager => "manager",
            ActorRole::Admin => "admin",
        }
    }

    /// Whether someone in this role may do what `allowed` lists. Admins may do what managers
    /// may; managers are not caseworkers, since each workflow lists who may act.
    pub fn is_among(self, allowed: &[ActorRole]) -> bool {
        allowed.contains(&self) || (self == ActorRole::Admin && allowed.contains(&ActorRole::Manager))
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "system" => Some(ActorRole::System),
            "caseworker" => Some(ActorRole::Caseworker),
            "manager" => Some(ActorRole::Manager),
            "admin" => Some(ActorRole::Admin),
            _ => None,
        }
    }
}

/// The kind of organisation a form is for; decides which ODS code shapes fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrganisationKind {
    GpPractice,
    Other,
    /// The form names an existing user, in any kind of organisation.
    Any,
}

/// How a field's value is read and checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Text,
    OdsCode,
    Email,
    Date,
    Checkbox,
    Choice,
    Phone,
    Signature,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// The AcroForm field name: the contract with every practice's copy of the form.
    pub name: String,
    pub label: String,
    pub kind: FieldKind,
    #[serde(default)]
    pub required: bool,
    /// Other names the same field has had (older forms, hand-made copies).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The allowed values of a choice field.
    #[serde(default)]
    pub options: Vec<String>,
    /// The page (1-based) the blank form puts this field on.
    #[serde(default = "first_page")]
    pub page: u32,
    /// The heading the blank form groups this field under ("Your organisation"), as the
    /// practice thinks of its parts.
    #[serde(default)]
    pub section: Option<String>,
    /// Our mail may quote this field back (a smartcard ID in a support reply), when its value
    /// is a short identifier. No other field's text ever reaches our mail.
    #[serde(default)]
    pub quote_in_mail: bool,
}

fn first_page() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recognition {
    /// The value of the read-only `form_id` field on this workflow's blank form (a form
    /// workflow); or none, for a workflow that takes plain emails (`[recognise.email]`).
    #[serde(default)]
    pub form_id: Option<String>,
    /// When `form_id` is missing (a hand-made copy), a form that has all of these fields is
    /// taken to be this workflow's.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Breaks ties between workflows whose field sets both match; higher wins.
    #[serde(default)]
    pub priority: i32,
    /// How a plain email with no form is recognised as this workflow's (see
    /// [`super::email`]): a workflow of plain emails has this instead of `form_id`; a form
    /// workflow whose request may also come by email has both.
    #[serde(default)]
    pub email: Option<EmailRecognition>,
    /// A workflow no email opens: Countersign's own job opens its cases (`coverage_check`:
    /// the account register's organisations none of whose Primary Users can sign in).
    #[serde(default)]
    pub opened_by: Option<OpenedBy>,
}

/// Which of Countersign's own jobs opens a workflow's cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenedBy {
    /// The account lifecycle job, for an organisation none of whose Primary Users can sign in.
    CoverageCheck,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignatoryRole {
    pub role: String,
    #[serde(default)]
    pub synonyms: Vec<String>,
}

/// Who may sign a form workflow's form. A workflow that takes plain emails has none.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Signatories {
    pub role_field: String,
    pub name_field: String,
    pub email_field: String,
    pub date_field: String,
    pub declaration_field: String,
    pub roles: Vec<SignatoryRole>,
    /// A signature older than this many calendar days is stale.
    pub max_age_days: u32,
    /// Where an organisation with no one able to sign learns how to appoint a Caldicott
    /// Guardian (who may then sign); quoted in our mail when a signatory's role is refused.
    #[serde(default)]
    pub appoint_caldicott_guardian_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NhsEmailRule {
    /// Form fields that must hold an NHS address.
    #[serde(default)]
    pub fields: Vec<String>,
    /// The sender of the email must have an NHS address.
    #[serde(default)]
    pub sender: bool,
    /// The sender must be the signatory (additional permissions are asked for by email from
    /// the signatory themselves).
    #[serde(default)]
    pub sender_must_be_signatory: bool,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    pub name: String,
    pub label: String,
    #[serde(default)]
    pub initial: bool,
    #[serde(default)]
    pub terminal: bool,
    /// Counts towards the SLA clock (false for states where the ball is in the sender's court).
    #[serde(default = "yes")]
    pub sla_running: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionDef {
    pub name: String,
    pub label: String,
    pub from: Vec<String>,
    pub to: String,
    pub by: Vec<ActorRole>,
    /// The email template sent when this transition fires, if any.
    #[serde(default)]
    pub template: Option<String>,
    /// A reason must be given (rejections, requests for information).
    #[serde(default)]
    pub reason_required: bool,
    /// Values the actor must record with the transition (e.g. the Open Exeter user id).
    #[serde(default)]
    pub records: Vec<String>,
    /// Its part in the four-eyes check, when the workflow has one: the person who took an
    /// `accepts` decision (or keyed fields) may not also take an `authorises` one.
    #[serde(default)]
    pub four_eyes: Option<FourEyesPart>,
    /// Sends the reply of the case's class (see [`Classifier`]) instead of a fixed template:
    /// the reply a caseworker confirms (or rewrites) for a support email.
    #[serde(default)]
    pub template_by_class: bool,
}

/// A transition's part in the four-eyes check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FourEyesPart {
    /// The first pair of eyes (a caseworker accepting a case after review).
    Accepts,
    /// The second pair, who must be someone else.
    Authorises,
}

/// What a timer does when it falls due.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerAction {
    /// Send `template` to the sender.
    RemindSender,
    /// Nudge the team that a case is waiting.
    NudgeTeam,
    /// Tell the managers.
    Escalate,
    /// Fire `transition` as the system.
    Transition,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimerDef {
    pub name: String,
    /// The timer is armed on entry to this state and cancelled on leaving it.
    pub state: String,
    pub after_working_days: u32,
    pub action: TimerAction,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub transition: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Working days from receipt to a decision.
    pub target_working_days: u32,
    /// Working days before the due time at which a case counts as at risk.
    pub at_risk_working_days: u32,
    /// Sent to the managers when a case's SLA is at risk and when it is breached.
    #[serde(default)]
    pub escalation_template: Option<String>,
}

/// `[email_checks]`: a plain email's claims checked against our records.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChecks {
    /// A field holding the email address of someone who must be a Primary User of the
    /// organisation (`org_ods_code`) in the signatory register: who made a new user's account.
    #[serde(default)]
    pub primary_user_field: Option<String>,
    /// A request by plain email to a form workflow: the sender must be a known signatory of
    /// the organisation in the signatory register, with one of the workflow's signatory roles
    /// (the email stands in for the signed form). Their name and role fill the signatory
    /// fields.
    #[serde(default)]
    pub sender_is_signatory: bool,
    /// For a form workflow's email route: the fields a request by email must give (the form's
    /// own `required` fields are the form's).
    #[serde(default)]
    pub required: Vec<String>,
}

/// What a reply may do to a case. Only an authenticated reply from the case's own sender or
/// signatory is attached to a case at all; this says when its form may replace the case's.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replies {
    /// The states in which a replacement form is taken: before authorisation. Its checks run
    /// again and earlier decisions on the old form are void. In any other state the form
    /// opens a case of its own, linked to this one.
    #[serde(default)]
    pub replace_form_in: Vec<String>,
}

/// What a case adds to our own records. When a case reaches `primary_user_on`, its proposed
/// user (`user_first_name`, `user_last_name`, `user_email` of `org_ods_code`) becomes one of
/// the organisation's Primary Users in the signatory register.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    #[serde(default)]
    pub primary_user_on: Option<String>,
    /// A case reaching this state puts the account it provisioned in the Open Exeter account
    /// register: its user ID from `account_user_id` (a recorded value, else a field), its name
    /// from the `account_name` fields, its address from `account_email`.
    #[serde(default)]
    pub account_on: Option<String>,
    #[serde(default)]
    pub account_user_id: Option<String>,
    #[serde(default)]
    pub account_name: Vec<String>,
    #[serde(default)]
    pub account_email: Option<String>,
    /// The account is one of its organisation's Primary Users.
    #[serde(default)]
    pub account_primary_user: bool,
}

/// A credential the workflow issues (`[credential]`): a new user's first password. When a
/// case reaches `issue_on`, a fresh one is made under the policy, sealed, and two messages
/// are queued, never one: a one-time link to the secret goes to the user's own NHS mailbox
/// (`send_to`, a field `[nhs_email]` checks), and the username (`username_field`) goes to the
/// Primary User who asked for the account (`username_to`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDef {
    pub kind: crate::credentials::CredentialKind,
    pub min_length: usize,
    pub max_length: usize,
    /// Days until it must be changed (Open Exeter passwords last 30).
    pub lifetime_days: u32,
    pub issue_on: String,
    pub send_to: String,
    pub link_template: String,
    /// How long the one-time link works once sent.
    #[serde(default = "default_link_valid_hours")]
    pub link_valid_hours: u32,
    pub username_field: String,
    pub username_to: String,
    pub username_template: String,
}

fn default_link_valid_hours() -> u32 {
    72
}

impl CredentialDef {
    pub fn policy(&self) -> crate::credentials::CredentialPolicy {
        crate::credentials::CredentialPolicy {
            kind: self.kind,
            min_length: self.min_length,
            max_length: self.max_length,
            lifetime_days: self.lifetime_days,
        }
    }
}

/// The characters a recorded value may have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedCharacters {
    /// Any printable text.
    #[default]
    Printable,
    /// Letters and digits only.
    Alphanumeric,
    /// Digits only.
    Digits,
}

/// A value a transition records (the Open Exeter user ID given at provisioning): what the
/// form calls it, the hint beside it, and the format it must have.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedDef {
    pub label: String,
    #[serde(default)]
    pub hint: String,
    #[serde(default = "one")]
    pub min_length: usize,
    #[serde(default = "two_hundred")]
    pub max_length: usize,
    #[serde(default)]
    pub characters: RecordedCharacters,
    /// Stored in capitals (identifiers that are shown in capitals).
    #[serde(default)]
    pub uppercase: bool,
}

fn one() -> usize {
    1
}

fn two_hundred() -> usize {
    200
}

impl RecordedDef {
    /// A value with no declaration: any printable text, named after itself.
    pub fn undeclared(name: &str) -> RecordedDef {
        let mut label = name.replace('_', " ");
        if let Some(first) = label.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        RecordedDef {
            label,
            hint: String::new(),
            min_length: 1,
            max_length: 200,
            characters: RecordedCharacters::Printable,
            uppercase: false,
        }
    }

    /// The value as it is kept (trimmed, in capitals if declared so), or None when it does
    /// not have the declared format.
    pub fn check(&self, value: &str) -> Option<String> {
        let value = value.trim();
        let value = if self.uppercase {
            value.to_uppercase()
        } else {
            value.to_string()
        };
        let length = value.chars().count();
        let characters_ok = match self.characters {
            RecordedCharacters::Printable => value.chars().all(|c| !c.is_control()),
            RecordedCharacters::Alphanumeric => value.chars().all(|c| c.is_ascii_alphanumeric()),
            RecordedCharacters::Digits => value.chars().all(|c| c.is_ascii_digit()),
        };
        (characters_ok && (self.min_length..=self.max_length).contains(&length)).then_some(value)
    }
}

/// One workflow, as written in its file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    pub name: String,
    pub title: String,
    /// What the practice asked for, as our mail names it in a sentence ("your request for a
    /// Primary User account"); the title when not given.
    #[serde(default)]
    pub request_name: Option<String>,
    pub organisation_kind: OrganisationKind,
    /// The person who accepted or keyed a case may not also authorise it.
    #[serde(default = "yes")]
    pub four_eyes: bool,
    pub recognise: Recognition,
    pub fields: Vec<FieldDef>,
    /// Who may sign the form (form workflows only).
    #[serde(default)]
    pub signatories: Signatories,
    #[serde(default)]
    pub nhs_email: NhsEmailRule,
    /// How the workflow's emails are sorted into known problems, each with its reply.
    #[serde(default)]
    pub classify: Option<Classifier>,
    /// What a plain email is checked against in our records, beyond its fields and sender.
    #[serde(default)]
    pub email_checks: EmailChecks,
    pub sla: Sla,
    pub states: Vec<StateDef>,
    pub transitions: Vec<TransitionDef>,
    #[serde(default)]
    pub timers: Vec<TimerDef>,
    /// What mail in reply to a case may do to it.
    #[serde(default)]
    pub replies: Replies,
    /// What the case adds to our own records (the Primary Users it provisions).
    #[serde(default)]
    pub records: Records,
    /// How each value a transition records (`records`) is asked for and checked, by name.
    #[serde(default)]
    pub recorded: std::collections::BTreeMap<String, RecordedDef>,
    /// The credential a case issues, and how it is delivered.
    #[serde(default)]
    pub credential: Option<CredentialDef>,
    /// Where the file came from, for error messages.
    #[serde(skip)]
    pub source: PathBuf,
}

impl WorkflowDef {
    /// The form this workflow takes, or None for a workflow of plain emails.
    pub fn form_id(&self) -> Option<&str> {
        self.recognise.form_id.as_deref()
    }

    /// How a plain email is recognised as this workflow's, when it takes any.
    pub fn email_recognition(&self) -> Option<&EmailRecognition> {
        self.recognise.email.as_ref()
    }

    /// The template a transition sends for a case with `fields`: its own, or (for
    /// `template_by_class`) the reply of the class the case's class field names, if it names
    /// one.
    pub fn template_for<'a>(
        &'a self,
        transition: &'a TransitionDef,
        fields: &BTreeMap<String, String>,
    ) -> Option<&'a str> {
        if !transition.template_by_class {
            return transition.template.as_deref();
        }
        let classify = self.classify.as_ref()?;
        let class = fields.get(&classify.field)?;
        classify.class(class).map(|c| c.template.as_str())
    }

    /// Whether a plain email must give `field`: a workflow of plain emails says so on the field;
    /// a form workflow's email route in `email_checks.required` (the form's own required
    /// fields, such as its declaration, are the form's).
    pub fn required_by_email(&self, field: &FieldDef) -> bool {
        match self.form_id() {
            Some(_) => self.email_checks.required.contains(&field.name),
            None => field.required,
        }
    }

    /// How the recorded value `name` is asked for and checked.
    pub fn recorded_def(&self, name: &str) -> RecordedDef {
        self.recorded
            .get(name)
            .cloned()
            .unwrap_or_else(|| RecordedDef::undeclared(name))
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn state(&self, name: &str) -> Option<&StateDef> {
        self.states.iter().find(|s| s.name == name)
    }

    pub fn initial_state(&self) -> &StateDef {
        // Validation guarantees exactly one initial state.
        self.states.iter().find(|s| s.initial).unwrap_or(&self.states[0])
    }

    pub fn transition(&self, name: &str) -> Option<&TransitionDef> {
        self.transitions.iter().find(|t| t.name == name)
    }

    pub fn transitions_from<'a, 's>(&'a self, state: &'s str) -> impl Iterator<Item = &'a TransitionDef> + use<'a, 's> {
        self.transitions
            .iter()
            .filter(move |t| t.from.iter().any(|f| f == state))
    }

    /// Parses and validates one workflow from TOML text. `templates` lists the email template
    /// names that exist, so a transition cannot name one that would fail at send time.
    pub fn parse(path: &Path, text: &str, templates: &BTreeSet<String>) -> Result<Self, DefinitionError> {
        let mut def: WorkflowDef = toml::from_str(text).map_err(|e| DefinitionError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        def.source = path.to_path_buf();
        def.validate(templates)?;
        Ok(def)
    }

    fn invalid(&self, key: &str, message: String) -> DefinitionError {
        DefinitionError::Invalid {
            path: self.source.clone(),
            key: key.to_string(),
            message,
        }
    }

    /// A form workflow: its form names itself by a `form_id` field, and says who signed it.
    fn validate_form_workflow(
        &self,
        known_field: &dyn Fn(&str, &str) -> Result<(), DefinitionError>,
    ) -> Result<(), DefinitionError> {
        known_field("recognise", "form_id")?;
        for (i, name) in self.recognise.fields.iter().enumerate() {
            known_field(&format!("recognise.fields[{i}]"), name)?;
        }
        let s = &self.signatories;
        known_field("signatories.role_field", &s.role_field)?;
        known_field("signatories.name_field", &s.name_field)?;
        known_field("signatories.email_field", &s.email_field)?;
        known_field("signatories.date_field", &s.date_field)?;
        known_field("signatories.declaration_field", &s.declaration_field)?;
        if s.roles.is_empty() {
            return Err(self.invalid("signatories.roles", "at least one signatory role is needed".into()));
        }
        Ok(())
    }

    /// What every workflow that takes plain emails declares soundly: how it knows them, the
    /// fields it reads, the checks against our records, and the fields a request by email must
    /// give.
    fn validate_email_route(
        &self,
        email: &EmailRecognition,
        known_field: &dyn Fn(&str, &str) -> Result<(), DefinitionError>,
    ) -> Result<(), DefinitionError> {
        if !email.has_conditions() {
            return Err(self.invalid(
                "recognise.email",
                "name at least one of `from`, `from_domains`, `subject` or `any_phrase`, or the workflow takes no email".into(),
            ));
        }
        if let Some(field) = &self.email_checks.primary_user_field {
            known_field("email_checks.primary_user_field", field)?;
            known_field("email_checks.primary_user_field", "org_ods_code")?;
        }
        if self.email_checks.sender_is_signatory {
            known_field("email_checks.sender_is_signatory", "org_ods_code")?;
        }
        for (i, name) in self.email_checks.required.iter().enumerate() {
            known_field(&format!("email_checks.required[{i}]"), name)?;
        }
        for (i, rule) in email.fields.iter().enumerate() {
            known_field(&format!("recognise.email.fields[{i}].name"), &rule.name)?;
            if rule.labels.is_empty() && rule.pattern.is_none() {
                return Err(self.invalid(
                    &format!("recognise.email.fields[{i}]"),
                    "give `labels`, a `pattern`, or both".into(),
                ));
            }
        }
        Ok(())
    }

    /// A workflow of plain emails: it says how it knows its emails and reads its fields from
    /// their text; it has no form and no signatories.
    fn validate_email_workflow(
        &self,
        email: &EmailRecognition,
        known_field: &dyn Fn(&str, &str) -> Result<(), DefinitionError>,
    ) -> Result<(), DefinitionError> {
        if !self.recognise.fields.is_empty() || !self.signatories.roles.is_empty() {
            return Err(self.invalid(
                "recognise",
                "a workflow of plain emails has no form: no `recognise.fields` and no `[signatories]`".into(),
            ));
        }
        if self.email_checks.sender_is_signatory {
            return Err(self.invalid(
                "email_checks.sender_is_signatory",
                "only a form workflow has signatories to check the sender against".into(),
            ));
        }
        self.validate_email_route(email, known_field)
    }

    /// `[classify]`, wherever it stands: a choice field offering every class and the unknown
    /// answer, each class named once, recognisable, and with a reply that exists.
    fn validate_classifier(
        &self,
        classify: &Classifier,
        known_field: &dyn Fn(&str, &str) -> Result<(), DefinitionError>,
        templates: &BTreeSet<String>,
    ) -> Result<(), DefinitionError> {
        known_field("classify.field", &classify.field)?;
        let choices = self
            .field(&classify.field)
            .map(|f| f.options.clone())
            .unwrap_or_default();
        let mut names = BTreeSet::new();
        for (i, class) in classify.classes.iter().enumerate() {
            if !names.insert(class.name.as_str()) || class.name == classify.unknown {
                return Err(self.invalid(
                    &format!("classify.classes[{i}].name"),
                    format!("class `{}` is declared twice (or is the unknown answer)", class.name),
                ));
            }
            if !templates.contains(&class.template) {
                return Err(self.invalid(
                    &format!("classify.classes[{i}].template"),
                    format!(
                        "unknown template `{}` (no templates/email/{}.txt.tera)",
                        class.template, class.template
                    ),
                ));
            }
            if class.phrases.is_empty() && class.patterns.is_empty() {
                return Err(self.invalid(
                    &format!("classify.classes[{i}]"),
                    "a class needs at least one phrase or pattern".into(),
                ));
            }
        }
        let wanted: BTreeSet<&str> = names.iter().copied().chain([classify.unknown.as_str()]).collect();
        let offered: BTreeSet<&str> = choices.iter().map(String::as_str).collect();
        if wanted != offered {
            return Err(self.invalid(
                "classify.field",
                format!(
                    "field `{}` must be a choice whose options are the classes and `{}`",
                    classify.field, classify.unknown
                ),
            ));
        }
        Ok(())
    }

    fn validate(&self, templates: &BTreeSet<String>) -> Result<(), DefinitionError> {
        let invalid = |key: &str, message: String| self.invalid(key, message);
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                "name",
                format!("`{}` must be lower-case letters, digits and underscores", self.name),
            ));
        }

        let mut field_names = BTreeSet::new();
        for (i, field) in self.fields.iter().enumerate() {
            if !field_names.insert(field.name.as_str()) {
                return Err(invalid(
                    &format!("fields[{i}].name"),
                    format!("field `{}` is declared twice", field.name),
                ));
            }
            if field.kind == FieldKind::Choice && field.options.is_empty() {
                return Err(invalid(
                    &format!("fields[{i}].options"),
                    format!("choice field `{}` lists no options", field.name),
                ));
            }
            if field.page == 0 {
                return Err(invalid(
                    &format!("fields[{i}].page"),
                    "pages are numbered from 1".into(),
                ));
            }
        }
        let known_field = |key: &str, name: &str| {
            if field_names.contains(name) {
                Ok(())
            } else {
                Err(invalid(key, format!("unknown field `{name}`")))
            }
        };
        if let Some(classify) = &self.classify {
            self.validate_classifier(classify, &known_field, templates)?;
        }
        if self.recognise.opened_by.is_some()
            && (self.recognise.form_id.is_some()
                || self.recognise.email.is_some()
                || !self.recognise.fields.is_empty()
                || !self.signatories.roles.is_empty())
        {
            return Err(invalid(
                "recognise.opened_by",
                "a workflow Countersign opens itself takes no form and no email (anyone could send one)".into(),
            ));
        }
        match (&self.recognise.form_id, &self.recognise.email) {
            _ if self.recognise.opened_by.is_some() => {}
            (Some(_), None) => self.validate_form_workflow(&known_field)?,
            (None, Some(email)) => self.validate_email_workflow(email, &known_field)?,
            // A form workflow that also takes its request by plain email (additional
            // permissions, seed 001): both routes give the same case.
            (Some(_), Some(email)) => {
                self.validate_form_workflow(&known_field)?;
                self.validate_email_route(email, &known_field)?;
            }
            (None, None) => {
                return Err(invalid(
                    "recognise",
                    "give `form_id` (a form workflow), `[recognise.email]` (a workflow of plain emails), or both"
                        .into(),
                ));
            }
        }
        for (i, name) in self.nhs_email.fields.iter().enumerate() {
            known_field(&format!("nhs_email.fields[{i}]"), name)?;
        }

        let mut state_names = BTreeSet::new();
        for (i, state) in self.states.iter().enumerate() {
            if !state_names.insert(state.name.as_str()) {
                return Err(invalid(
                    &format!("states[{i}].name"),
                    format!("state `{}` is declared twice", state.name),
                ));
            }
        }
        let initial: Vec<_> = self.states.iter().filter(|s| s.initial).collect();
        if initial.len() != 1 {
            return Err(invalid(
                "states",
                format!("exactly one state must be `initial`, found {}", initial.len()),
            ));
        }
        let known_state = |key: &str, name: &str| {
            if state_names.contains(name) {
                Ok(())
            } else {
                Err(invalid(key, format!("unknown state `{name}`")))
            }
        };
        let known_template = |key: &str, name: &str| {
            if templates.contains(name) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("unknown template `{name}` (no templates/email/{name}.txt.tera)"),
                ))
            }
        };

        let mut transition_names = BTreeSet::new();
        for (i, t) in self.transitions.iter().enumerate() {
            if !transition_names.insert(t.name.as_str()) {
                return Err(invalid(
                    &format!("transitions[{i}].name"),
                    format!("transition `{}` is declared twice", t.name),
                ));
            }
            if t.from.is_empty() {
                return Err(invalid(
                    &format!("transitions[{i}].from"),
                    "a transition needs at least one source state".into(),
                ));
            }
            for (j, from) in t.from.iter().enumerate() {
                known_state(&format!("transitions[{i}].from[{j}]"), from)?;
                if self.state(from).is_some_and(|s| s.terminal) && t.to == *from {
                    return Err(invalid(
                        &format!("transitions[{i}]"),
                        "a terminal state cannot loop to itself".into(),
                    ));
                }
            }
            known_state(&format!("transitions[{i}].to"), &t.to)?;
            if t.by.is_empty() {
                return Err(invalid(
                    &format!("transitions[{i}].by"),
                    "name at least one role that may fire it".into(),
                ));
            }
            if let Some(template) = &t.template {
                known_template(&format!("transitions[{i}].template"), template)?;
            }
            if t.template_by_class && (self.classify.is_none() || t.template.is_some()) {
                return Err(invalid(
                    &format!("transitions[{i}].template_by_class"),
                    "sending the class's reply needs a `[classify]` section, and no `template` beside it".into(),
                ));
            }
        }
        // Two transitions between the same pair of states would make `case transition REF TO`
        // ambiguous for the same actor.
        let mut seen_pairs = BTreeMap::new();
        for t in &self.transitions {
            for from in &t.from {
                for role in &t.by {
                    if let Some(other) = seen_pairs.insert((from.as_str(), t.to.as_str(), *role), t.name.as_str()) {
                        return Err(invalid(
                            "transitions",
                            format!(
                                "`{}` and `{other}` both take {} from `{from}` to `{}`",
                                t.name,
                                role.as_str(),
                                t.to
                            ),
                        ));
                    }
                }
            }
        }

        for (i, timer) in self.timers.iter().enumerate() {
            known_state(&format!("timers[{i}].state"), &timer.state)?;
            if let Some(template) = &timer.template {
                known_template(&format!("timers[{i}].template"), template)?;
            }
            match timer.action {
                TimerAction::Transition => {
                    let Some(name) = &timer.transition else {
                        return Err(invalid(
                            &format!("timers[{i}].transition"),
                            "a `transition` timer must name its transition".into(),
                        ));
                    };
                    let Some(t) = self.transition(name) else {
                        return Err(invalid(
                            &format!("timers[{i}].transition"),
                            format!("unknown transition `{name}`"),
                        ));
                    };
                    if !t.by.contains(&ActorRole::System) || !t.from.contains(&timer.state) {
                        return Err(invalid(
                            &format!("timers[{i}].transition"),
                            format!("`{name}` must be fireable by system from `{}`", timer.state),
                        ));
                    }
                }
                TimerAction::RemindSender | TimerAction::Escalate | TimerAction::NudgeTeam => {
                    if timer.template.is_none() {
                        return Err(invalid(
                            &format!("timers[{i}].template"),
                            "this timer sends mail, so it needs a template".into(),
                        ));
                    }
                }
            }
        }

        // The engine relies on these names: it validates automatically, holds for review, and
        // waits for the sender.
        let required_states = if self.form_id().is_some() {
            wellknown::REQUIRED_STATES
        } else if self.recognise.opened_by.is_some() {
            wellknown::REQUIRED_OPENED_STATES
        } else {
            wellknown::REQUIRED_EMAIL_STATES
        };
        for required in required_states {
            if !state_names.contains(required) {
                return Err(invalid("states", format!("the engine needs a `{required}` state")));
            }
        }
        if self.four_eyes
            && !self
                .transitions
                .iter()
                .any(|t| t.four_eyes == Some(FourEyesPart::Authorises))
        {
            return Err(invalid(
                "four_eyes",
                "a four-eyes workflow must mark the transition that needs the second pair of eyes (`four_eyes = \"authorises\"`)".into(),
            ));
        }
        // A replacement form is checked again: a case with findings goes to needs_review, a clean
        // one in needs_review to validated, so the system needs those moves from each state.
        if let Some(state) = &self.records.primary_user_on
            && !state_names.contains(state.as_str())
        {
            return Err(invalid("records.primary_user_on", format!("unknown state `{state}`")));
        }
        if let Some(state) = &self.records.account_on {
            if !state_names.contains(state.as_str()) {
                return Err(invalid("records.account_on", format!("unknown state `{state}`")));
            }
            if self.records.account_user_id.is_none() {
                return Err(invalid(
                    "records.account_user_id",
                    "name the field or recorded value that holds the account's user ID".into(),
                ));
            }
        }
        if let Some(credential) = &self.credential {
            credential
                .policy()
                .validate()
                .map_err(|e| invalid("credential", e.to_string()))?;
            known_state("credential.issue_on", &credential.issue_on)?;
            known_field("credential.send_to", &credential.send_to)?;
            known_field("credential.username_to", &credential.username_to)?;
            if self.field(&credential.username_field).is_none()
                && !self
                    .transitions
                    .iter()
                    .any(|t| t.records.contains(&credential.username_field))
            {
                return Err(invalid(
                    "credential.username_field",
                    format!(
                        "`{}` is neither a field nor a recorded value",
                        credential.username_field
                    ),
                ));
            }
            if !self.nhs_email.fields.contains(&credential.send_to) {
                return Err(invalid(
                    "credential.send_to",
                    format!(
                        "the secret goes only to an NHS mailbox: list `{}` in `[nhs_email] fields`",
                        credential.send_to
                    ),
                ));
            }
            if credential.send_to == credential.username_to {
                return Err(invalid(
                    "credential.username_to",
                    "the username and the secret must never go to the same place".into(),
                ));
            }
            known_template("credential.link_template", &credential.link_template)?;
            known_template("credential.username_template", &credential.username_template)?;
            if !(1..=24 * 14).contains(&credential.link_valid_hours) {
                return Err(invalid(
                    "credential.link_valid_hours",
                    "a one-time link lasts 1 hour to 14 days".into(),
                ));
            }
        }
        for (j, state) in self.replies.replace_form_in.iter().enumerate() {
            let key = format!("replies.replace_form_in[{j}]");
            if !state_names.contains(state.as_str()) {
                return Err(invalid(&key, format!("unknown state `{state}`")));
            }
            if self.state(state).is_some_and(|s| s.terminal) || state == wellknown::AUTHORISED {
                return Err(invalid(
                    &key,
                    format!("`{state}` is past authorisation; a form there must never change by mail"),
                ));
            }
            let system_can = |from: &str, to: &str| {
                self.transitions
                    .iter()
                    .any(|t| t.to == to && t.from.iter().any(|f| f == from) && t.by.contains(&ActorRole::System))
            };
            let needed = if state == wellknown::NEEDS_REVIEW {
                system_can(wellknown::NEEDS_REVIEW, wellknown::VALIDATED)
                    .then_some(())
                    .ok_or("needs_review to validated")
            } else {
                system_can(state, wellknown::NEEDS_REVIEW)
                    .then_some(())
                    .ok_or("this state to needs_review")
            };
            if let Err(missing) = needed {
                return Err(invalid(
                    &key,
                    format!("a replacement form in `{state}` needs a system transition from {missing}"),
                ));
            }
        }
        if let Some(template) = &self.sla.escalation_template {
            known_template("sla.escalation_template", template)?;
        }
        if self.sla.at_risk_working_days > self.sla.target_working_days {
            return Err(invalid(
                "sla.at_risk_working_days",
                "must not exceed sla.target_working_days".into(),
            ));
        }
        for (name, def) in &self.recorded {
            if def.min_length == 0 || def.min_length > def.max_length {
                return Err(invalid(
                    &format!("recorded.{name}"),
                    "needs 1 <= min_length <= max_length".into(),
                ));
            }
            if !self.transitions.iter().any(|t| t.records.contains(name)) {
                return Err(invalid(
                    &format!("recorded.{name}"),
                    "no transition records it (`records`)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A state's name in words, capitalised: `awaiting_information` → "Awaiting information".
pub fn state_in_words(state: &str) -> String {
    let words = state.replace('_', " ");
    let mut letters = words.chars();
    letters
        .next()
        .map(|first| first.to_uppercase().chain(letters).collect())
        .unwrap_or_default()
}

/// All loaded workflows, by name.
#[derive(Debug, Clone, Default)]
pub struct WorkflowSet {
    workflows: BTreeMap<String, WorkflowDef>,
    /// Every workflow's final states, sorted: worked out once as each workflow is added (the
    /// queue and the case page ask several times a view).
    terminal: Vec<String>,
    /// Every other state, sorted.
    open: Vec<String>,
}

impl WorkflowSet {
    /// Loads every `*.toml` in `dir`, checking template names against `templates_dir/email`.
    pub fn load(dir: &Path, templates_dir: &Path) -> Result<Self, DefinitionError> {
        let templates = email_template_names(&templates_dir.join("email"))?;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| DefinitionError::ReadDir {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(DefinitionError::Empty {
                path: dir.to_path_buf(),
            });
        }
        let mut set = WorkflowSet::default();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| DefinitionError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let def = WorkflowDef::parse(&path, &text, &templates)?;
            set.insert(def)?;
        }
        Ok(set)
    }

    pub fn insert(&mut self, def: WorkflowDef) -> Result<(), DefinitionError> {
        if let Some(form_id) = def.form_id()
            && let Some(other) = self.workflows.values().find(|w| w.form_id() == Some(form_id))
        {
            return Err(DefinitionError::Invalid {
                path: def.source.clone(),
                key: "recognise.form_id".into(),
                message: format!("`{form_id}` is already the form id of workflow `{}`", other.name),
            });
        }
        if self.workflows.contains_key(&def.name) {
            return Err(DefinitionError::Invalid {
                path: def.source.clone(),
                key: "name".into(),
                message: format!("workflow `{}` is defined twice", def.name),
            });
        }
        self.workflows.insert(def.name.clone(), def);
        self.terminal = self.worked_out_terminal_states();
        self.open = self.worked_out_open_states();
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&WorkflowDef> {
        self.workflows.get(name)
    }

    /// A state as the case's workflow names it to people ("Reply proposed"), or, for a case
    /// no workflow took or a state its workflow no longer has, its name in words.
    pub fn state_label(&self, workflow: Option<&str>, state: &str) -> String {
        workflow
            .and_then(|w| self.get(w))
            .and_then(|w| w.state(state))
            .map(|s| s.label.clone())
            .unwrap_or_else(|| state_in_words(state))
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkflowDef> {
        self.workflows.values()
    }

    /// The names of every workflow's final states (where no case is open any more).
    pub fn terminal_states(&self) -> &[String] {
        &self.terminal
    }

    /// The names of the states a case is still open in: every state no workflow calls final
    /// (where an unclassified case waits among them).
    pub fn open_states(&self) -> &[String] {
        &self.open
    }

    fn worked_out_terminal_states(&self) -> Vec<String> {
        let mut states: Vec<String> = self
            .workflows
            .values()
            .flat_map(|w| w.states.iter().filter(|s| s.terminal).map(|s| s.name.clone()))
            .collect();
        states.sort();
        states.dedup();
        states
    }

    /// Every state not among `self.terminal` (worked out first).
    fn worked_out_open_states(&self) -> Vec<String> {
        let mut states: Vec<String> = self
            .workflows
            .values()
            .flat_map(|w| w.states.iter().map(|s| s.name.clone()))
            .filter(|s| !self.terminal.contains(s))
            .collect();
        states.sort();
        states.dedup();
        states
    }

    pub fn by_form_id(&self, form_id: &str) -> Option<&WorkflowDef> {
        let wanted = form_id.trim();
        self.workflows
            .values()
            .find(|w| w.form_id().is_some_and(|id| id.eq_ignore_ascii_case(wanted)))
    }

    /// The workflows that take forms.
    pub fn form_workflows(&self) -> impl Iterator<Item = &WorkflowDef> {
        self.workflows.values().filter(|w| w.form_id().is_some())
    }

    /// The workflow that takes a plain email (one with no form): the highest priority of
    /// those whose `[recognise.email]` it fits.
    pub fn for_plain_email(&self, email: &super::email::EmailText<'_>) -> Option<&WorkflowDef> {
        self.workflows
            .values()
            .filter_map(|w| {
                w.email_recognition()
                    .filter(|r| r.matches(email))
                    .map(|r| (w, r.priority))
            })
            .max_by_key(|(_, priority)| *priority)
            .map(|(w, _)| w)
    }
}

/// The names of the email templates present: `NAME` for each `NAME.txt.tera`.
pub fn email_template_names(dir: &Path) -> Result<BTreeSet<String>, DefinitionError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DefinitionError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".txt.tera"))
                .map(str::to_string)
        })
        .collect())
}

#[cfg(test)]
mod recorded_tests {
    use super::*;

    #[test]
    fn a_recorded_value_is_checked_against_its_declared_format() {
        let def = crate::workflow::shipped()
            .get("primary_user_gp")
            .unwrap()
            .recorded_def("open_exeter_user_id");
        assert_eq!(def.label, "Open Exeter user ID");
        assert_eq!(def.check("  oe123456 ").as_deref(), Some("OE123456"));
        for wrong in ["hello world", "", "OE1", "OE12345678901234567890", "OE-123456"] {
            assert_eq!(def.check(wrong), None, "{wrong:?}");
        }
        assert_eq!(
            RecordedDef::undeclared("open_exeter_user_id").label,
            "Open exeter user id"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows").join(name)).unwrap()
    }

    fn templates() -> BTreeSet<String> {
        email_template_names(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/email")).unwrap()
    }

    /// Parses the shipped GP workflow with one edit, and returns the error text.
    fn error_after(from: &str, to: &str) -> String {
        let text = shipped("primary_user_gp.toml");
        assert!(text.contains(from), "the edit `{from}` does not apply");
        let edited = text.replacen(from, to, 1);
        WorkflowDef::parse(Path::new("workflows/broken.toml"), &edited, &templates())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_shipped_workflows_are_valid() {
        for name in [
            "primary_user_gp.toml",
            "primary_user_org.toml",
            "additional_permissions.toml",
            "support.toml",
            "new_user.toml",
        ] {
            WorkflowDef::parse(Path::new(name), &shipped(name), &templates()).unwrap();
        }
    }

    /// The final and open states are worked out as each workflow is added: a state final in
    /// one workflow is final for the set, and the rest are open, each named once.
    #[test]
    fn final_and_open_states_follow_each_workflow_added() {
        let mut set = WorkflowSet::default();
        assert!(set.terminal_states().is_empty() && set.open_states().is_empty());
        let parse = |name: &str| WorkflowDef::parse(Path::new(name), &shipped(name), &templates()).unwrap();
        let gp = parse("primary_user_gp.toml");
        let gp_final: BTreeSet<String> = gp
            .states
            .iter()
            .filter(|s| s.terminal)
            .map(|s| s.name.clone())
            .collect();
        set.insert(gp).unwrap();
        assert_eq!(set.terminal_states().iter().cloned().collect::<BTreeSet<_>>(), gp_final);
        assert!(set.open_states().iter().all(|s| !gp_final.contains(s)));
        let support = parse("support.toml");
        let support_states: Vec<String> = support.states.iter().map(|s| s.name.clone()).collect();
        set.insert(support).unwrap();
        for state in &support_states {
            assert!(
                set.terminal_states().contains(state) || set.open_states().contains(state),
                "{state} is in neither list"
            );
        }
        let mut sorted = set.open_states().to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, set.open_states(), "sorted, each once");
    }

    /// Parses a shipped workflow with one edit, and returns the error text.
    fn error_in(file: &str, from: &str, to: &str) -> String {
        let text = shipped(file);
        assert!(text.contains(from), "the edit `{from}` does not apply to {file}");
        WorkflowDef::parse(Path::new(file), &text.replacen(from, to, 1), &templates())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_workflow_of_plain_emails_is_refused_when_it_could_never_work() {
        // A misspelt key in the recogniser is refused, not ignored.
        let err = error_in("support.toml", "any_phrase = [\n", "unused = [\n");
        assert!(err.contains("unknown field `unused`"), "{err}");
        // A class the problem field does not offer.
        let err = error_in(
            "support.toml",
            "\"url_unreachable\", \"passcode_error\",",
            "\"passcode_error\",",
        );
        assert!(err.contains("classify.field"), "{err}");
        // A class whose reply does not exist.
        let err = error_in(
            "support.toml",
            "template = \"support_no_role\"",
            "template = \"no_such_reply\"",
        );
        assert!(
            err.contains("classify.classes[") && err.contains("no_such_reply"),
            "{err}"
        );
        // Sending the class's reply with no classes to choose from.
        let err = error_in(
            "new_user.toml",
            "name = \"provision\"",
            "name = \"provision\"\ntemplate_by_class = true",
        );
        assert!(err.contains("template_by_class"), "{err}");
        // A check against our records naming a field the workflow does not have.
        let err = error_in(
            "new_user.toml",
            "primary_user_field = \"created_by\"",
            "primary_user_field = \"made_by\"",
        );
        assert!(
            err.contains("email_checks.primary_user_field") && err.contains("made_by"),
            "{err}"
        );
        // A field read from the email with no way to find it.
        let err = error_in("new_user.toml", "labels = [\"User ID\"]", "labels = []");
        assert!(err.contains("recognise.email.fields["), "{err}");
        // A pattern that is not one.
        let err = error_in("new_user.toml", "subject = \"(?i)", "subject = \"((?i)");
        assert!(err.contains("bad pattern"), "{err}");
    }

    #[test]
    fn a_credential_goes_only_to_an_nhs_mailbox_apart_from_its_username_under_a_sound_policy() {
        // The secret's mailbox must be one `[nhs_email]` checks.
        let err = error_in("new_user.toml", "send_to = \"user_email\"", "send_to = \"created_by\"");
        assert!(err.contains("credential.send_to") && err.contains("nhs_email"), "{err}");
        // The username may not go where the secret goes.
        let err = error_in(
            "new_user.toml",
            "username_to = \"created_by\"",
            "username_to = \"user_email\"",
        );
        assert!(err.contains("credential.username_to"), "{err}");
        // A passcode of 4 digits, a credential that never expires, an unknown state.
        let err = error_in(
            "new_user.toml",
            "kind = \"password\"\nmin_length = 14",
            "kind = \"passcode\"\nmin_length = 4",
        );
        assert!(err.contains("credential") && err.contains("6 to 8 digits"), "{err}");
        let err = error_in("new_user.toml", "lifetime_days = 30", "lifetime_days = 0");
        assert!(err.contains("must expire"), "{err}");
        let err = error_in("new_user.toml", "issue_on = \"provisioned\"", "issue_on = \"issued\"");
        assert!(err.contains("credential.issue_on"), "{err}");
        let err = error_in(
            "new_user.toml",
            "username_field = \"new_user_id\"",
            "username_field = \"login\"",
        );
        assert!(err.contains("credential.username_field"), "{err}");
        let err = error_in(
            "new_user.toml",
            "link_template = \"credential_link\"",
            "link_template = \"credential_lnk\"",
        );
        assert!(err.contains("unknown template"), "{err}");
        let err = error_in("new_user.toml", "link_valid_hours = 72", "link_valid_hours = 0");
        assert!(err.contains("link_valid_hours"), "{err}");
    }

    #[test]
    fn a_state_is_named_as_its_workflow_names_it() {
        let set = WorkflowSet::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"),
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        )
        .unwrap();
        assert_eq!(
            set.state_label(Some("support"), "validated"),
            "Reply proposed: confirm it"
        );
        assert_eq!(set.state_label(None, "needs_review"), "Needs review");
        assert_eq!(set.state_label(Some("support"), "gone_state"), "Gone state");
    }

    #[test]
    fn a_workflow_countersign_opens_itself_takes_no_form_and_no_email() {
        let err = error_in(
            "coverage.toml",
            "opened_by = \"coverage_check\"",
            "opened_by = \"coverage_check\"\nform_id = \"PCSE-OE-COV\"",
        );
        assert!(
            err.contains("recognise.opened_by") && err.contains("no form and no email"),
            "{err}"
        );
        let err = error_in(
            "coverage.toml",
            "opened_by = \"coverage_check\"",
            "opened_by = \"coverage_check\"\n[recognise.email]\nfrom = [\"pcse.openexeter@nhs.net\"]",
        );
        assert!(err.contains("recognise.opened_by"), "{err}");
        // Opened, then held for a caseworker: both states are needed.
        let err = error_in("coverage.toml", "name = \"needs_review\"", "name = \"held\"");
        assert!(err.contains("needs_review"), "{err}");
    }

    #[test]
    fn an_account_record_needs_a_user_id_and_a_real_state() {
        let err = error_in("new_user.toml", "account_user_id = \"new_user_id\"\n", "");
        assert!(err.contains("records.account_user_id"), "{err}");
        let err = error_in(
            "new_user.toml",
            "account_on = \"provisioned\"",
            "account_on = \"issued\"",
        );
        assert!(err.contains("records.account_on") && err.contains("issued"), "{err}");
    }

    #[test]
    fn an_unknown_state_names_the_file_and_key() {
        let err = error_after("to = \"authorised\"", "to = \"authorized\"");
        assert!(
            err.contains("workflows/broken.toml") && err.contains("transitions[") && err.contains("authorized"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_source_state_is_refused() {
        let err = error_after("from = [\"authorised\"]", "from = [\"approved\"]");
        assert!(err.contains(".from[0]") && err.contains("approved"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let err = error_after("role_field = \"signatory_role\"", "role_field = \"signatory_position\"");
        assert!(
            err.contains("signatories.role_field") && err.contains("signatory_position"),
            "{err}"
        );
        let err = error_after(
            "fields = [\"user_email\", \"signatory_email\"]",
            "fields = [\"user_mail\"]",
        );
        assert!(err.contains("nhs_email.fields[0]"), "{err}");
    }

    #[test]
    fn an_unknown_role_is_refused() {
        let err = error_after("by = [\"system\"]", "by = [\"robot\"]");
        assert!(err.contains("workflows/broken.toml") && err.contains("robot"), "{err}");
    }

    #[test]
    fn an_unknown_template_is_refused() {
        let err = error_after("template = \"rejection\"", "template = \"rejection_letter\"");
        assert!(
            err.contains("transitions[") && err.contains(".template") && err.contains("rejection_letter"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = error_after("four_eyes = true", "four_eyes = true\nfour_eye = false");
        assert!(err.contains("four_eye"), "{err}");
    }

    #[test]
    fn a_four_eyes_workflow_must_mark_its_second_pair_of_eyes() {
        let err = error_after("four_eyes = \"authorises\"\n", "");
        assert!(err.contains("four_eyes") && err.contains("authorises"), "{err}");
        let err = error_after("four_eyes = \"accepts\"", "four_eyes = \"glances\"");
        assert!(err.contains("glances"), "{err}");
    }

    #[test]
    fn exactly_one_initial_state_is_needed() {
        let err = error_after("initial = true", "initial = false");
        assert!(err.contains("initial"), "{err}");
    }

    #[test]
    fn a_timer_must_fire_a_system_transition_from_its_state() {
        let err = error_after("transition = \"auto_close\"", "transition = \"reject\"");
        assert!(err.contains("timers[") && err.contains("reject"), "{err}");
    }

    #[test]
    fn a_loaded_set_refuses_a_second_workflow_with_the_same_form_id() {
        let mut set = WorkflowSet::default();
        let gp = WorkflowDef::parse(Path::new("a.toml"), &shipped("primary_user_gp.toml"), &templates()).unwrap();
        let mut copy = gp.clone();
        copy.name = "copy".into();
        set.insert(gp).unwrap();
        assert!(set.insert(copy).unwrap_err().to_string().contains("PU-GP-1"));
    }

    #[test]
    fn a_folder_with_a_bad_file_stops_loading_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), shipped("primary_user_gp.toml")).unwrap();
        std::fs::write(dir.path().join("bad.toml"), "name = 3").unwrap();
        let err = WorkflowSet::load(dir.path(), &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
