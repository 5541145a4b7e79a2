//! Settings, in three layers: built-in defaults (a SQLite file and a drop folder under
//! `./data`, so nothing needs configuring) < an optional TOML file < `COUNTERSIGN_*`
//! environment variables. Secrets (the database password) never appear in logs: the `Debug`
//! form redacts them.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use secrecy::SecretString;
use serde::Deserialize;

use crate::domain::NhsDomains;
use crate::pdf::ExtractLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error(
        "authserv_id is still the default ({DEFAULT_AUTHSERV_ID}) while reading a real mailbox: set it (COUNTERSIGN_AUTHSERV_ID) to the id your receiving mail server writes in Authentication-Results, or anyone can forge a pass; if that really is its id, set allow_default_authserv_id (COUNTERSIGN_ALLOW_DEFAULT_AUTHSERV_ID=true)"
    )]
    DefaultAuthservId,
}

/// The largest message taken from a mailbox or the drop folder.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 50 * 1024 * 1024;

/// The authserv-id shipped as the default: fine for the local drop folder, where there is no
/// receiving server, and unsafe for a real mailbox, where a sender could write it themselves.
pub const DEFAULT_AUTHSERV_ID: &str = "mx.countersign.local";

#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub data_dir: PathBuf,
    pub workflows_dir: PathBuf,
    pub templates_dir: PathBuf,
    /// GOV.UK-format bank holidays; the shipped copy when unset.
    pub bank_holidays_file: Option<PathBuf>,
    /// Where `.eml` files are dropped when no IMAP server is configured.
    pub drop_folder: PathBuf,
    pub nhs_domains: NhsDomains,
    /// The authserv-id our receiving mail server writes in `Authentication-Results`.
    pub authserv_id: String,
    /// Read a real mailbox even though `authserv_id` is still the shipped default.
    pub allow_default_authserv_id: bool,
    /// Our own DKIM, ARC and Exchange-internal check of each email's sender.
    pub sender_check: crate::dkim::SenderCheckSettings,
    /// A PEM file of the certificates trusted to vouch for digital signatures on forms (for
    /// example the NHS or a qualified trust service's root). Unset, no signature is trusted:
    /// each is checked and shown, and a caseworker confirms the signatory another way.
    pub signature_trust_store: Option<PathBuf>,
    /// The 32-byte key issued credentials are fingerprinted and sealed under, kept apart from
    /// the database (and backed up apart from it); `credential.key` in the data directory
    /// when unset, made on first start.
    pub credential_key_file: Option<PathBuf>,
    pub max_pdf_bytes: usize,
    pub pdf_timeout: Duration,
    /// The mailbox to take mail from; when unset, the drop folder is used.
    pub imap: Option<ImapSettings>,
    /// Outbound mail.
    pub mailer: MailerSettings,
    /// Timers' recipients and the scheduled jobs.
    pub scheduler: SchedulerSettings,
    /// Where the web app listens.
    pub web_bind: String,
    /// The web app's address as users reach it, for links in mail and set-password links.
    pub web_base_url: String,
    /// Mark cookies `Secure`: set it when the app is served over HTTPS.
    pub web_secure_cookies: bool,
    /// Allow staff accounts outside the NHS domains (off: PCSE staff have NHS addresses).
    pub staff_any_domain: bool,
    /// `/readyz` fails when a mail source has not polled successfully for longer than this.
    pub ready_max_poll_age_secs: u64,
    /// Staff sign-in through an OpenID Connect provider (NHS CIS2 or another), when set.
    pub oidc: Option<OidcSettings>,
    /// Sign-in with a password (for small deployments); switch it off where everyone signs
    /// in through the provider.
    pub password_sign_in: bool,
}

/// An OpenID Connect provider staff sign in through.
#[derive(Clone)]
pub struct OidcSettings {
    /// The issuer, exactly as the provider's discovery document names it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    /// Which claim finds the staff account: `email` (the account's address) or `sub` (the
    /// subject an admin matched to the account).
    pub match_claim: OidcClaim,
    /// The sign-in button's words.
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OidcClaim {
    Email,
    Subject,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "(set)"))
            .field("match_claim", &self.match_claim)
            .finish()
    }
}

/// How outbound mail is sent.
#[derive(Debug, Clone)]
pub struct MailerSettings {
    /// The SMTP server; when unset, mail is written as `.eml` files to `mail_folder` instead.
    pub smtp: Option<SmtpSettings>,
    pub mail_folder: PathBuf,
    /// Our address: the From of everything we send, and never answered automatically.
    pub from_address: String,
    pub from_name: String,
    /// Automatic messages to one recipient per hour, at most; more wait for the next hour.
    pub per_recipient_per_hour: i64,
    /// Attempts before a message is marked failed.
    pub max_attempts: i64,
    /// The web app's public address, for the one-time credential links minted at send time.
    pub web_base_url: String,
}

/// Where the mail timers and jobs send goes, and when the scheduled jobs run.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Where nudges about unpicked cases go.
    pub team_address: Option<String>,
    /// Where escalations and the daily digest go.
    pub managers_address: Option<String>,
    /// cron expressions (seconds first), in local time.
    pub digest_schedule: String,
    pub housekeeping_schedule: String,
    /// The weekly list of organisations short of Primary Users.
    pub coverage_digest_schedule: String,
    /// Account lifecycle notices from the Open Exeter account register (working days).
    pub outreach_schedule: String,
    /// A Primary User is told this many days before their password expires.
    pub password_warning_days: i64,
    /// At most this many notices are queued a run; the rest wait for the next.
    pub outreach_per_run: i64,
    /// Raw message bytes are cleared this many days after receipt, once their cases are
    /// closed; the case record and the form stay.
    pub raw_retention_days: i64,
    /// The web app's public address, for the digest's link to the reports.
    pub web_base_url: String,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            team_address: None,
            managers_address: None,
            digest_schedule: "0 0 8 * * Mon-Fri".into(),
            housekeeping_schedule: "0 30 2 * * *".into(),
            coverage_digest_schedule: "0 0 8 * * Mon".into(),
            outreach_schedule: "0 0 9 * * Mon-Fri".into(),
            password_warning_days: 5,
            outreach_per_run: 200,
            raw_retention_days: 730,
            web_base_url: "http://127.0.0.1:8080".into(),
        }
    }
}

impl Default for MailerSettings {
    fn default() -> Self {
        MailerSettings {
            smtp: None,
            mail_folder: PathBuf::from("data").join("sent-mail"),
            from_address: "pcse.openexeter@nhs.net".into(),
            from_name: "PCSE Open Exeter".into(),
            per_recipient_per_hour: 5,
            max_attempts: 10,
            web_base_url: "http://127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: TransportSecurity,
    /// Credentials, when the server wants them.
    pub user: Option<String>,
    pub password: Option<SecretString>,
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// How a connection to a mail server (IMAP in, SMTP out) is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportSecurity {
    /// Implicit TLS (port 993).
    Tls,
    /// Plain connection upgraded with STARTTLS (port 143).
    Starttls,
    /// No encryption: refused except to a loopback address.
    Plain,
}

impl std::str::FromStr for TransportSecurity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tls" => Ok(TransportSecurity::Tls),
            "starttls" => Ok(TransportSecurity::Starttls),
            "plain" => Ok(TransportSecurity::Plain),
            other => Err(format!("`{other}` is not tls, starttls or plain")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: SecretString,
    pub security: TransportSecurity,
    /// Extra CA certificates (PEM) to trust besides the system's, e.g. a private CA.
    pub ca_file: Option<PathBuf>,
    pub mailbox: String,
    pub processed_folder: String,
    pub quarantine_folder: String,
    /// How long to wait between polls when the server has no IDLE (and the longest IDLE).
    pub poll_interval: Duration,
    pub use_idle: bool,
    /// Larger messages go to quarantine unread.
    pub max_message_bytes: usize,
    /// After this many failed attempts a message goes to quarantine.
    pub max_attempts: i64,
}

impl ImapSettings {
    /// The key the mailbox's position and lease are stored under.
    pub fn mailbox_key(&self) -> String {
        format!("imap://{}@{}:{}/{}", self.user, self.host, self.port, self.mailbox)
    }

    fn defaults(host: String, user: String, password: SecretString) -> Self {
        ImapSettings {
            host,
            port: 993,
            user,
            password,
            security: TransportSecurity::Tls,
            ca_file: None,
            mailbox: "INBOX".into(),
            processed_folder: "Processed".into(),
            quarantine_folder: "Quarantine".into(),
            poll_interval: Duration::from_secs(30),
            use_idle: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_attempts: 5,
        }
    }
}

impl Settings {
    /// Refuses to read a real mailbox while the authserv-id is the shipped default, unless told
    /// to: with the default, a `Authentication-Results` header a sender wrote could pass.
    pub fn check_mailbox_authserv_id(&self) -> Result<(), ConfigError> {
        if self.imap.is_some()
            && self.authserv_id.eq_ignore_ascii_case(DEFAULT_AUTHSERV_ID)
            && !self.allow_default_authserv_id
        {
            return Err(ConfigError::DefaultAuthservId);
        }
        Ok(())
    }

    /// The defaults, on another database: for benchmarks and examples run from the checkout.
    pub fn for_database(database_url: &str) -> Self {
        Settings {
            database_url: database_url.into(),
            ..Settings::defaults()
        }
    }

    /// Where the credential key is: as set, else `credential.key` in the data directory.
    pub fn credential_key_file(&self) -> PathBuf {
        self.credential_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("credential.key"))
    }

    pub fn defaults() -> Self {
        let data_dir = PathBuf::from("data");
        Settings {
            database_url: format!("sqlite://{}?mode=rwc", data_dir.join("countersign.db").display()),
            drop_folder: data_dir.join("inbox"),
            data_dir,
            workflows_dir: PathBuf::from("workflows"),
            templates_dir: PathBuf::from("templates"),
            bank_holidays_file: None,
            nhs_domains: NhsDomains::default(),
            authserv_id: DEFAULT_AUTHSERV_ID.into(),
            allow_default_authserv_id: false,
            sender_check: crate::dkim::SenderCheckSettings::default(),
            signature_trust_store: None,
            credential_key_file: None,
            max_pdf_bytes: ExtractLimits::default().max_bytes,
            pdf_timeout: ExtractLimits::default().timeout,
            imap: None,
            mailer: MailerSettings::default(),
            scheduler: SchedulerSettings::default(),
            web_bind: "127.0.0.1:8080".into(),
            web_base_url: "http://127.0.0.1:8080".into(),
            web_secure_cookies: false,
            staff_any_domain: false,
            ready_max_poll_age_secs: 300,
            oidc: None,
            password_sign_in: true,
        }
    }

    /// Loads the layers. `file` is the `--config` path; without it, `countersign.toml` in the
    /// working directory is read if present.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut settings = Settings::defaults();
        let env_file = std::env::var_os("COUNTERSIGN_CONFIG").map(PathBuf::from);
        let path = file.map(Path::to_path_buf).or(env_file);
        let (path, must_exist) = match path {
            Some(p) => (p, true),
            None => (PathBuf::from("countersign.toml"), false),
        };
        if must_exist || path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let layer: FileLayer = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
            settings.apply(layer)?;
        }
        settings.apply(FileLayer::from_env(|name| std::env::var(name).ok())?)?;
        Ok(settings)
    }

    fn apply(&mut self, layer: FileLayer) -> Result<(), ConfigError> {
        if let Some(v) = &layer.web_bind {
            self.web_bind = v.clone();
        }
        if let Some(v) = &layer.web_base_url {
            self.web_base_url = v.clone();
            // The digest links to the reports at the same address.
            self.scheduler.web_base_url = v.clone();
            self.mailer.web_base_url = v.clone();
        }
        if let Some(v) = layer.web_secure_cookies {
            self.web_secure_cookies = v;
        }
        if let Some(v) = layer.staff_any_domain {
            self.staff_any_domain = v;
        }
        if let Some(v) = layer.ready_max_poll_age_secs {
            self.ready_max_poll_age_secs = v;
        }
        if let Some(v) = layer.password_sign_in {
            self.password_sign_in = v;
        }
        self.apply_oidc(&layer)?;

        self.apply_imap(&layer)?;
        self.apply_mailer(&layer)?;
        if let Some(data_dir) = layer.data_dir {
            // The default database and drop folder live in the data folder, so follow it
            // unless they are set explicitly.
            if self.database_url == Settings::defaults().database_url {
                self.database_url = format!("sqlite://{}?mode=rwc", data_dir.join("countersign.db").display());
            }
            if self.drop_folder == Settings::defaults().drop_folder {
                self.drop_folder = data_dir.join("inbox");
            }
            if self.mailer.mail_folder == MailerSettings::default().mail_folder {
                self.mailer.mail_folder = data_dir.join("sent-mail");
            }
            self.data_dir = data_dir;
        }
        if let Some(v) = layer.database_url {
            self.database_url = v;
        }
        if let Some(v) = layer.workflows_dir {
            self.workflows_dir = v;
        }
        if let Some(v) = layer.templates_dir {
            self.templates_dir = v;
        }
        if let Some(v) = layer.bank_holidays_file {
            self.bank_holidays_file = Some(v);
        }
        if let Some(v) = layer.drop_folder {
            self.drop_folder = v;
        }
        if let Some(v) = layer.nhs_domains {
            self.nhs_domains = NhsDomains::new(v);
        }
        if let Some(v) = layer.authserv_id {
            self.authserv_id = v;
        }
        if let Some(v) = layer.allow_default_authserv_id {
            self.allow_default_authserv_id = v;
        }
        let check = &mut self.sender_check;
        if let Some(v) = layer.dkim_verify {
            check.verify_dkim = v;
        }
        if let Some(v) = &layer.dns_servers {
            check.dns_servers = v.clone();
        }
        if let Some(v) = layer.dns_timeout_ms {
            check.dns_timeout_ms = v;
        }
        if let Some(v) = &layer.trusted_arc_sealers {
            check.trusted_arc_sealers = v.clone();
        }
        if let Some(v) = layer.trust_exchange_internal {
            check.trust_exchange_internal = v;
        }
        if let Some(v) = layer.signature_trust_store {
            self.signature_trust_store = Some(v);
        }
        if let Some(v) = layer.credential_key_file {
            self.credential_key_file = Some(v);
        }
        if let Some(v) = layer.max_pdf_bytes {
            self.max_pdf_bytes = v;
        }
        if let Some(v) = layer.pdf_timeout_secs {
            self.pdf_timeout = Duration::from_secs(v);
        }
        Ok(())
    }

    fn apply_mailer(&mut self, layer: &FileLayer) -> Result<(), ConfigError> {
        let m = &mut self.mailer;
        if let Some(host) = &layer.smtp_host {
            let security: TransportSecurity = match &layer.smtp_security {
                Some(v) => v.parse().map_err(|message| ConfigError::Env {
                    name: "smtp_security".into(),
                    message,
                })?,
                None => TransportSecurity::Starttls,
            };
            let default_port = match security {
                TransportSecurity::Tls => 465,
                TransportSecurity::Starttls => 587,
                TransportSecurity::Plain => 25,
            };
            let password = secret_from(&layer.smtp_password, &layer.smtp_password_file)?;
            m.smtp = Some(SmtpSettings {
                host: host.clone(),
                port: layer.smtp_port.unwrap_or(default_port),
                security,
                user: layer.smtp_user.clone(),
                password,
                ca_file: layer.smtp_ca_file.clone(),
            });
        }
        if let Some(v) = &layer.mail_folder {
            m.mail_folder = v.clone();
        }
        if let Some(v) = &layer.mail_from {
            m.from_address = v.clone();
        }
        if let Some(v) = &layer.mail_from_name {
            m.from_name = v.clone();
        }
        if let Some(v) = layer.mail_rate_per_hour {
            m.per_recipient_per_hour = v as i64;
        }
        let j = &mut self.scheduler;
        if let Some(v) = &layer.team_address {
            j.team_address = Some(v.clone());
        }
        if let Some(v) = &layer.managers_address {
            j.managers_address = Some(v.clone());
        }
        for (name, value, target) in [
            ("digest_schedule", &layer.digest_schedule, &mut j.digest_schedule),
            (
                "housekeeping_schedule",
                &layer.housekeeping_schedule,
                &mut j.housekeeping_schedule,
            ),
            (
                "coverage_digest_schedule",
                &layer.coverage_digest_schedule,
                &mut j.coverage_digest_schedule,
            ),
            ("outreach_schedule", &layer.outreach_schedule, &mut j.outreach_schedule),
        ] {
            if let Some(expression) = value {
                cron::Schedule::from_str(expression).map_err(|e| ConfigError::Env {
                    name: name.into(),
                    message: format!("`{expression}` is not a cron expression (seconds first): {e}"),
                })?;
                *target = expression.clone();
            }
        }
        if let Some(v) = layer.raw_retention_days {
            j.raw_retention_days = v as i64;
        }
        if let Some(v) = layer.password_warning_days {
            j.password_warning_days = v as i64;
        }
        if let Some(v) = layer.outreach_per_run {
            j.outreach_per_run = v as i64;
        }
        Ok(())
    }

    /// IMAP is configured when a host is: then user and password (or a password file) are needed.
    fn apply_oidc(&mut self, layer: &FileLayer) -> Result<(), ConfigError> {
        let secret = secret_from(&layer.oidc_client_secret, &layer.oidc_client_secret_file)?;
        let mut oidc = match (self.oidc.take(), &layer.oidc_issuer) {
            (Some(existing), _) => existing,
            (None, Some(issuer)) => OidcSettings {
                issuer: issuer.clone(),
                client_id: layer.oidc_client_id.clone().ok_or_else(|| ConfigError::Env {
                    name: "oidc_client_id".into(),
                    message: "needed when oidc_issuer is set".into(),
                })?,
                client_secret: None,
                match_claim: OidcClaim::Email,
                label: "Sign in with NHS Care Identity Service".into(),
            },
            (None, None) => return Ok(()),
        };
        if let Some(issuer) = &layer.oidc_issuer {
            oidc.issuer = issuer.clone();
        }
        if let Some(id) = &layer.oidc_client_id {
            oidc.client_id = id.clone();
        }
        if secret.is_some() {
            oidc.client_secret = secret;
        }
        if let Some(claim) = &layer.oidc_claim {
            oidc.match_claim = match claim.trim() {
                "email" => OidcClaim::Email,
                "sub" => OidcClaim::Subject,
                other => {
                    return Err(ConfigError::Env {
                        name: "oidc_claim".into(),
                        message: format!("`{other}` is not email or sub"),
                    });
                }
            };
        }
        if let Some(label) = &layer.oidc_label {
            oidc.label = label.clone();
        }
        self.oidc = Some(oidc);
        Ok(())
    }

    fn apply_imap(&mut self, layer: &FileLayer) -> Result<(), ConfigError> {
        let missing = |key: &str| ConfigError::Env {
            name: key.to_string(),
            message: "needed when imap_host is set".into(),
        };
        let password = secret_from(&layer.imap_password, &layer.imap_password_file)?;
        let imap = match (self.imap.take(), &layer.imap_host) {
            (Some(mut existing), host) => {
                if let Some(host) = host {
                    existing.host = host.clone();
                }
                if let Some(user) = &layer.imap_user {
                    existing.user = user.clone();
                }
                if let Some(password) = password {
                    existing.password = password;
                }
                existing
            }
            (None, Some(host)) => ImapSettings::defaults(
                host.clone(),
                layer.imap_user.clone().ok_or_else(|| missing("imap_user"))?,
                password.ok_or_else(|| missing("imap_password or imap_password_file"))?,
            ),
            (None, None) => return Ok(()),
        };
        let mut imap = imap;
        if let Some(v) = &layer.imap_security {
            imap.security = v.parse().map_err(|message| ConfigError::Env {
                name: "imap_security".into(),
                message,
            })?;
            if layer.imap_port.is_none() {
                imap.port = if imap.security == TransportSecurity::Tls {
                    993
                } else {
                    143
                };
            }
        }
        if let Some(v) = layer.imap_port {
            imap.port = v;
        }
        if let Some(v) = &layer.imap_ca_file {
            imap.ca_file = Some(v.clone());
        }
        if let Some(v) = &layer.imap_mailbox {
            imap.mailbox = v.clone();
        }
        if let Some(v) = &layer.imap_processed_folder {
            imap.processed_folder = v.clone();
        }
        if let Some(v) = &layer.imap_quarantine_folder {
            imap.quarantine_folder = v.clone();
        }
        if let Some(v) = layer.imap_poll_secs {
            imap.poll_interval = Duration::from_secs(v.max(1));
        }
        if let Some(v) = layer.imap_idle {
            imap.use_idle = v;
        }
        self.imap = Some(imap);
        Ok(())
    }

    pub fn extract_limits(&self) -> ExtractLimits {
        ExtractLimits {
            max_bytes: self.max_pdf_bytes,
            timeout: self.pdf_timeout,
            ..ExtractLimits::default()
        }
    }
}

/// A secret given directly, or read from a file (its trailing newline dropped); the direct
/// value wins.
fn secret_from(value: &Option<String>, file: &Option<PathBuf>) -> Result<Option<SecretString>, ConfigError> {
    match (value, file) {
        (Some(value), _) => Ok(Some(SecretString::from(value.clone()))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Some(SecretString::from(text.trim_end().to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// The database URL with any password replaced, for logs and `Debug`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => "(unparseable URL)".into(),
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("data_dir", &self.data_dir)
            .field("workflows_dir", &self.workflows_dir)
            .field("templates_dir", &self.templates_dir)
            .field("bank_holidays_file", &self.bank_holidays_file)
            .field("drop_folder", &self.drop_folder)
            .field("nhs_domains", &self.nhs_domains.entries())
            .field("authserv_id", &self.authserv_id)
            .field("sender_check", &self.sender_check)
            .field("signature_trust_store", &self.signature_trust_store)
            .field("credential_key_file", &self.credential_key_file())
            .field("max_pdf_bytes", &self.max_pdf_bytes)
            .field("pdf_timeout", &self.pdf_timeout)
            .field("imap", &self.imap)
            .field("mailer", &self.mailer)
            .field("oidc", &self.oidc)
            .field("password_sign_in", &self.password_sign_in)
            .finish()
    }
}

/// One layer of optional settings: the config file has these keys, and each has a
/// `COUNTERSIGN_<KEY>` environment variable.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayer {
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    workflows_dir: Option<PathBuf>,
    templates_dir: Option<PathBuf>,
    bank_holidays_file: Option<PathBuf>,
    drop_folder: Option<PathBuf>,
    nhs_domains: Option<Vec<String>>,
    authserv_id: Option<String>,
    allow_default_authserv_id: Option<bool>,
    dkim_verify: Option<bool>,
    dns_servers: Option<Vec<String>>,
    dns_timeout_ms: Option<u64>,
    trusted_arc_sealers: Option<Vec<String>>,
    trust_exchange_internal: Option<bool>,
    signature_trust_store: Option<PathBuf>,
    credential_key_file: Option<PathBuf>,
    max_pdf_bytes: Option<usize>,
    pdf_timeout_secs: Option<u64>,
    imap_host: Option<String>,
    imap_port: Option<u16>,
    imap_user: Option<String>,
    imap_password: Option<String>,
    imap_password_file: Option<PathBuf>,
    imap_security: Option<String>,
    imap_ca_file: Option<PathBuf>,
    imap_mailbox: Option<String>,
    imap_processed_folder: Option<String>,
    imap_quarantine_folder: Option<String>,
    imap_poll_secs: Option<u64>,
    imap_idle: Option<bool>,
    web_bind: Option<String>,
    web_base_url: Option<String>,
    web_secure_cookies: Option<bool>,
    staff_any_domain: Option<bool>,
    ready_max_poll_age_secs: Option<u64>,
    password_sign_in: Option<bool>,
    oidc_issuer: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret: Option<String>,
    oidc_client_secret_file: Option<PathBuf>,
    oidc_claim: Option<String>,
    oidc_label: Option<String>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_security: Option<String>,
    smtp_user: Option<String>,
    smtp_password: Option<String>,
    smtp_password_file: Option<PathBuf>,
    smtp_ca_file: Option<PathBuf>,
    mail_folder: Option<PathBuf>,
    mail_from: Option<String>,
    mail_from_name: Option<String>,
    team_address: Option<String>,
    managers_address: Option<String>,
    mail_rate_per_hour: Option<u64>,
    digest_schedule: Option<String>,
    housekeeping_schedule: Option<String>,
    coverage_digest_schedule: Option<String>,
    outreach_schedule: Option<String>,
    password_warning_days: Option<u64>,
    outreach_per_run: Option<u64>,
    raw_retention_days: Option<u64>,
}

/// A comma-separated list, without empty entries.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

impl FileLayer {
    fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |name: &str| -> Result<Option<u64>, ConfigError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|e| ConfigError::Env {
                        name: name.into(),
                        message: e.to_string(),
                    })
                })
                .transpose()
        };
        Ok(FileLayer {
            database_url: get("COUNTERSIGN_DATABASE_URL"),
            data_dir: get("COUNTERSIGN_DATA_DIR").map(PathBuf::from),
            workflows_dir: get("COUNTERSIGN_WORKFLOWS_DIR").map(PathBuf::from),
            templates_dir: get("COUNTERSIGN_TEMPLATES_DIR").map(PathBuf::from),
            bank_holidays_file: get("COUNTERSIGN_BANK_HOLIDAYS_FILE").map(PathBuf::from),
            drop_folder: get("COUNTERSIGN_DROP_FOLDER").map(PathBuf::from),
            nhs_domains: get("COUNTERSIGN_NHS_DOMAINS").map(|v| {
                v.split(',')
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty())
                    .collect()
            }),
            authserv_id: get("COUNTERSIGN_AUTHSERV_ID"),
            allow_default_authserv_id: get("COUNTERSIGN_ALLOW_DEFAULT_AUTHSERV_ID")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            dkim_verify: get("COUNTERSIGN_DKIM_VERIFY")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            dns_servers: get("COUNTERSIGN_DNS_SERVERS").map(|v| list(&v)),
            dns_timeout_ms: number("COUNTERSIGN_DNS_TIMEOUT_MS")?,
            trusted_arc_sealers: get("COUNTERSIGN_TRUSTED_ARC_SEALERS").map(|v| list(&v)),
            trust_exchange_internal: get("COUNTERSIGN_TRUST_EXCHANGE_INTERNAL")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            signature_trust_store: get("COUNTERSIGN_SIGNATURE_TRUST_STORE").map(PathBuf::from),
            credential_key_file: get("COUNTERSIGN_CREDENTIAL_KEY_FILE").map(PathBuf::from),
            max_pdf_bytes: number("COUNTERSIGN_MAX_PDF_BYTES")?.map(|v| v as usize),
            pdf_timeout_secs: number("COUNTERSIGN_PDF_TIMEOUT_SECS")?,
            imap_host: get("COUNTERSIGN_IMAP_HOST"),
            imap_port: number("COUNTERSIGN_IMAP_PORT")?.map(|p| p as u16),
            imap_user: get("COUNTERSIGN_IMAP_USER"),
            imap_password: get("COUNTERSIGN_IMAP_PASSWORD"),
            imap_password_file: get("COUNTERSIGN_IMAP_PASSWORD_FILE").map(PathBuf::from),
            imap_security: get("COUNTERSIGN_IMAP_SECURITY"),
            imap_ca_file: get("COUNTERSIGN_IMAP_CA_FILE").map(PathBuf::from),
            imap_mailbox: get("COUNTERSIGN_IMAP_MAILBOX"),
            imap_processed_folder: get("COUNTERSIGN_IMAP_PROCESSED_FOLDER"),
            imap_quarantine_folder: get("COUNTERSIGN_IMAP_QUARANTINE_FOLDER"),
            imap_poll_secs: number("COUNTERSIGN_IMAP_POLL_SECS")?,
            web_bind: get("COUNTERSIGN_WEB_BIND"),
            web_base_url: get("COUNTERSIGN_WEB_BASE_URL"),
            web_secure_cookies: get("COUNTERSIGN_WEB_SECURE_COOKIES")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            staff_any_domain: get("COUNTERSIGN_STAFF_ANY_DOMAIN")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            ready_max_poll_age_secs: number("COUNTERSIGN_READY_MAX_POLL_AGE_SECS")?,
            password_sign_in: get("COUNTERSIGN_PASSWORD_SIGN_IN")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            oidc_issuer: get("COUNTERSIGN_OIDC_ISSUER"),
            oidc_client_id: get("COUNTERSIGN_OIDC_CLIENT_ID"),
            oidc_client_secret: get("COUNTERSIGN_OIDC_CLIENT_SECRET"),
            oidc_client_secret_file: get("COUNTERSIGN_OIDC_CLIENT_SECRET_FILE").map(PathBuf::from),
            oidc_claim: get("COUNTERSIGN_OIDC_CLAIM"),
            oidc_label: get("COUNTERSIGN_OIDC_LABEL"),
            smtp_host: get("COUNTERSIGN_SMTP_HOST"),
            smtp_port: number("COUNTERSIGN_SMTP_PORT")?.map(|p| p as u16),
            smtp_security: get("COUNTERSIGN_SMTP_SECURITY"),
            smtp_user: get("COUNTERSIGN_SMTP_USER"),
            smtp_password: get("COUNTERSIGN_SMTP_PASSWORD"),
            smtp_password_file: get("COUNTERSIGN_SMTP_PASSWORD_FILE").map(PathBuf::from),
            smtp_ca_file: get("COUNTERSIGN_SMTP_CA_FILE").map(PathBuf::from),
            mail_folder: get("COUNTERSIGN_MAIL_FOLDER").map(PathBuf::from),
            mail_from: get("COUNTERSIGN_MAIL_FROM"),
            mail_from_name: get("COUNTERSIGN_MAIL_FROM_NAME"),
            team_address: get("COUNTERSIGN_TEAM_ADDRESS"),
            managers_address: get("COUNTERSIGN_MANAGERS_ADDRESS"),
            mail_rate_per_hour: number("COUNTERSIGN_MAIL_RATE_PER_HOUR")?,
            digest_schedule: get("COUNTERSIGN_DIGEST_SCHEDULE"),
            housekeeping_schedule: get("COUNTERSIGN_HOUSEKEEPING_SCHEDULE"),
            coverage_digest_schedule: get("COUNTERSIGN_COVERAGE_DIGEST_SCHEDULE"),
            outreach_schedule: get("COUNTERSIGN_OUTREACH_SCHEDULE"),
            password_warning_days: number("COUNTERSIGN_PASSWORD_WARNING_DAYS")?,
            outreach_per_run: number("COUNTERSIGN_OUTREACH_PER_RUN")?,
            raw_retention_days: number("COUNTERSIGN_RAW_RETENTION_DAYS")?,
            imap_idle: get("COUNTERSIGN_IMAP_IDLE")
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let mut settings = Settings::defaults();
        settings
            .apply(toml::from_str("data_dir = \"/srv/cs\"\nauthserv_id = \"mx.file\"").unwrap())
            .unwrap();
        assert_eq!(settings.database_url, "sqlite:///srv/cs/countersign.db?mode=rwc");
        assert_eq!(settings.drop_folder, PathBuf::from("/srv/cs/inbox"));
        assert_eq!(settings.authserv_id, "mx.file");
        let env = FileLayer::from_env(|name| match name {
            "COUNTERSIGN_AUTHSERV_ID" => Some("mx.env".into()),
            "COUNTERSIGN_NHS_DOMAINS" => Some("nhs.net, *.nhs.uk".into()),
            _ => None,
        })
        .unwrap();
        settings.apply(env).unwrap();
        assert_eq!(settings.authserv_id, "mx.env");
        assert_eq!(settings.nhs_domains, NhsDomains::new(["nhs.net", "*.nhs.uk"]));
    }

    #[test]
    fn a_bad_number_in_the_environment_is_an_error_naming_it() {
        let err = FileLayer::from_env(|n| (n == "COUNTERSIGN_MAX_PDF_BYTES").then(|| "lots".into())).unwrap_err();
        assert!(err.to_string().contains("COUNTERSIGN_MAX_PDF_BYTES"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<FileLayer>("databse_url = \"x\"").is_err());
    }

    #[test]
    fn imap_is_configured_by_its_host_and_needs_credentials() {
        let mut settings = Settings::defaults();
        let layer: FileLayer = toml::from_str("imap_host = \"mail.example\"").unwrap();
        assert!(settings.apply(layer).unwrap_err().to_string().contains("imap_user"));
        let layer: FileLayer = toml::from_str(
            "imap_host = \"mail.example\"\nimap_user = \"pcse\"\nimap_password = \"hunter2\"\nimap_security = \"starttls\"",
        )
        .unwrap();
        settings.apply(layer).unwrap();
        let imap = settings.imap.as_ref().unwrap();
        assert_eq!((imap.port, imap.security), (143, TransportSecurity::Starttls));
        assert_eq!(imap.password.expose_secret(), "hunter2");
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(imap.mailbox_key(), "imap://pcse@mail.example:143/INBOX");
    }

    #[test]
    fn a_real_mailbox_is_refused_while_the_authserv_id_is_the_default() {
        let mut settings = Settings::defaults();
        assert!(
            settings.check_mailbox_authserv_id().is_ok(),
            "the drop folder needs no receiving server"
        );
        let layer: FileLayer =
            toml::from_str("imap_host = \"mail.example\"\nimap_user = \"pcse\"\nimap_password = \"x\"").unwrap();
        settings.apply(layer).unwrap();
        let refused = settings.check_mailbox_authserv_id().unwrap_err().to_string();
        assert!(refused.contains("COUNTERSIGN_AUTHSERV_ID"), "{refused}");
        let mut told = settings.clone();
        told.apply(toml::from_str("allow_default_authserv_id = true").unwrap())
            .unwrap();
        assert!(told.check_mailbox_authserv_id().is_ok());
        settings
            .apply(toml::from_str("authserv_id = \"mx.pcse.example\"").unwrap())
            .unwrap();
        assert!(settings.check_mailbox_authserv_id().is_ok());
    }

    #[test]
    fn a_password_file_is_read_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(
            secret_from(&None, &Some(file.clone()))
                .unwrap()
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert_eq!(
            secret_from(&Some("direct".into()), &Some(file))
                .unwrap()
                .unwrap()
                .expose_secret(),
            "direct"
        );
        assert!(secret_from(&None, &Some(dir.path().join("missing"))).is_err());
        assert!(secret_from(&None, &None).unwrap().is_none());
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let mut settings = Settings::defaults();
        settings.database_url = "postgres://cs:s3cret@db.example/cs".into();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }
}
