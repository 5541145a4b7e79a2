//! Our own check of who sent an email, in addition to the receiving server's
//! `Authentication-Results`: every DKIM signature on the stored bytes verified with
//! mail-auth, and judged for alignment with the From domain (DMARC's rule), ARC seals from
//! forwarders we were told to trust, and the Exchange Online "internal" marker when the
//! mailbox is in the same tenant. DNS answers are cached for their TTL; a DNS failure is a
//! temporary state, checked again later, never a pass.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mail::{SenderAuth, aligned};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, DnsError, MessageAuthenticator, Parameters, ResolverCache, Txt};

/// Settings for the own check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderCheckSettings {
    /// Verify DKIM signatures ourselves (on by default).
    pub verify_dkim: bool,
    /// DNS servers to ask for DKIM keys (`IP` or `IP:port`); none: the system's resolv.conf.
    pub dns_servers: Vec<String>,
    /// How long one DNS question may take before it counts as a (temporary) failure.
    pub dns_timeout_ms: u64,
    /// Domains whose ARC seals are trusted: a forwarder (a mailing list, a shared mailbox
    /// relay) that checked the original DKIM before it changed the message.
    pub trusted_arc_sealers: Vec<String>,
    /// Trust `X-MS-Exchange-Organization-AuthAs: Internal` (see the README: only when the
    /// intake mailbox is itself in the NHSmail Exchange Online tenant).
    pub trust_exchange_internal: bool,
}

impl Default for SenderCheckSettings {
    fn default() -> Self {
        SenderCheckSettings {
            verify_dkim: true,
            dns_servers: Vec::new(),
            dns_timeout_ms: 3_000,
            trusted_arc_sealers: Vec::new(),
            trust_exchange_internal: false,
        }
    }
}

/// TXT answers (DKIM keys) kept until their TTL runs out. Temporary failures are never kept:
/// the next check asks again.
#[derive(Default)]
pub struct DnsCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
}

/// Answers kept at most; past this, expired ones go first, then all.
const MAX_CACHED_ANSWERS: usize = 10_000;

impl DnsCache {
    /// Adds a DKIM key record (`v=DKIM1; k=…; p=…`) for `selector._domainkey.domain`, as if DNS
    /// had answered it with this TTL. Tests fill the cache this way, so that no test needs
    /// the internet; an operator could pin a key the same way.
    pub fn add_dkim_key(&self, selector: &str, domain: &str, record: &str, ttl: Duration) -> Result<(), String> {
        let key = DomainKey::parse(record.as_bytes()).map_err(|e| format!("not a DKIM key record: {e}"))?;
        let name = format!("{selector}._domainkey.{domain}.").to_ascii_lowercase();
        self.insert(name.into_boxed_str(), Txt::from(key), Instant::now() + ttl);
        Ok(())
    }

    fn is_temporary(value: &Txt) -> bool {
        matches!(value, Txt::Error(mail_auth::Error::Dns(DnsError::Resolver(_))))
    }
}

impl ResolverCache<Box<str>, Txt> for DnsCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.lock().ok()?.remove(name).map(|(value, _)| value)
    }

    fn insert(&self, name: Box<str>, value: Txt, valid_until: Instant) {
        if Self::is_temporary(&value) {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= MAX_CACHED_ANSWERS {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_CACHED_ANSWERS {
                entries.clear();
            }
        }
        entries.insert(name, (value, valid_until));
    }
}

/// One DKIM signature, as checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignatureCheck {
    /// The signing domain (`d=`).
    pub domain: String,
    pub selector: String,
    /// `pass`, `fail`, `neutral`, `policy` (verified, but not enough: `l=`, or From not
    /// signed), `permerror`, `temperror` or `none`.
    pub result: String,
    /// Why it did not pass, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether `d=` is aligned with the From domain (it counts for the sender only then).
    pub aligned: bool,
}

/// What our own check found.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct OwnCheck {
    pub signatures: Vec<SignatureCheck>,
    /// The trusted forwarder whose ARC seal vouched for an aligned DKIM pass, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_vouched_by: Option<String>,
    /// Why the ARC chain did not count, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_detail: Option<String>,
    /// The Exchange Online internal marker was present and trusted.
    #[serde(default)]
    pub exchange_internal: bool,
}

impl OwnCheck {
    /// An aligned signature that verified.
    pub fn aligned_pass(&self) -> Option<&SignatureCheck> {
        self.signatures.iter().find(|s| s.aligned && s.result == "pass")
    }

    /// A signature whose key could not be fetched for now (a DNS failure).
    pub fn temporary_failure(&self) -> Option<&SignatureCheck> {
        self.signatures.iter().find(|s| s.result == "temperror")
    }
}

/// The sender verdict as stored with the message: the verdict, which path decided it, and
/// the evidence of our own check. Stored as one JSON object whose `verdict`, `method` and
/// `reason` keys read as a [`SenderAuth`] too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SenderVerdict {
    #[serde(flatten)]
    pub auth: SenderAuth,
    /// What decided it: `authentication_results` (our receiving server's header), `dkim`
    /// (our own check), `arc` (a trusted forwarder's seal), `exchange_internal`, or `none`.
    #[serde(default)]
    pub decided_by: String,
    #[serde(default)]
    pub own_check: OwnCheck,
}

impl SenderVerdict {
    /// Reads a stored verdict (one stored before the own check existed reads with no evidence).
    pub fn from_stored(json: &str) -> SenderVerdict {
        serde_json::from_str(json).unwrap_or_else(|_| SenderVerdict {
            auth: SenderAuth::Missing {
                reason: "no verdict stored".into(),
            },
            decided_by: "none".into(),
            own_check: OwnCheck::default(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Puts the receiving server's verdict (`header`) and our own check together. A pass by
/// either path is a pass; a DNS failure with nothing else passing is temporary (checked
/// again), never a pass; a malformed message (two From headers, say) is never authenticated.
pub fn decide(header: &SenderAuth, own: OwnCheck, malformed: bool) -> SenderVerdict {
    let verdict = |auth: SenderAuth, decided_by: &str, own: OwnCheck| SenderVerdict {
        auth,
        decided_by: decided_by.into(),
        own_check: own,
    };
    if malformed {
        return verdict(header.clone(), "none", own);
    }
    if header.passed() {
        return verdict(header.clone(), "authentication_results", own);
    }
    if own.aligned_pass().is_some() {
        return verdict(SenderAuth::Pass { method: "dkim".into() }, "dkim", own);
    }
    if own.arc_vouched_by.is_some() {
        return verdict(SenderAuth::Pass { method: "arc".into() }, "arc", own);
    }
    if own.exchange_internal {
        return verdict(
            SenderAuth::Pass {
                method: "exchange_internal".into(),
            },
            "exchange_internal",
            own,
        );
    }
    if let Some(pending) = own.temporary_failure() {
        let reason = format!(
            "the DKIM key of {} could not be fetched for now, so the sender will be checked again",
            pending.domain
        );
        return verdict(SenderAuth::Temporary { reason }, "dkim", own);
    }
    // Neither path passed: say what our own check saw as well.
    let auth = match header {
        SenderAuth::Fail { reason } | SenderAuth::Missing { reason } | SenderAuth::Temporary { reason } => {
            let seen = own_summary(&own);
            let reason = if seen.is_empty() {
                reason.clone()
            } else {
                format!("{reason}; {seen}")
            };
            match header {
                SenderAuth::Fail { .. } => SenderAuth::Fail { reason },
                _ => SenderAuth::Missing { reason },
            }
        }
        SenderAuth::Pass { .. } => header.clone(),
    };
    verdict(auth, "none", own)
}

/// What our own check saw, in a few words, for a verdict that did not pass.
fn own_summary(own: &OwnCheck) -> String {
    if own.signatures.is_empty() {
        return "no DKIM signature on the message".into();
    }
    let each: Vec<String> = own
        .signatures
        .iter()
        .map(|s| {
            let aligned = if s.aligned {
                "aligned"
            } else {
                "not aligned with the From domain"
            };
            format!("DKIM d={} {} ({aligned})", s.domain, s.result)
        })
        .collect();
    format!("our own check: {}", each.join(", "))
}

/// The checker: a DNS resolver (built once) and its cache.
#[derive(Clone)]
pub struct SenderChecker {
    settings: SenderCheckSettings,
    authenticator: Option<MessageAuthenticator>,
    cache: Arc<DnsCache>,
}

impl std::fmt::Debug for SenderChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderChecker")
            .field("settings", &self.settings)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SenderCheckError {
    #[error("dns_servers: `{0}` is not an IP address or IP:port")]
    DnsServer(String),
    #[error("cannot set up the DNS resolver for DKIM: {0}")]
    Resolver(String),
}

impl SenderChecker {
    pub fn new(settings: SenderCheckSettings) -> Result<SenderChecker, SenderCheckError> {
        let authenticator = if settings.verify_dkim {
            let (config, mut options) = if settings.dns_servers.is_empty() {
                mail_auth::hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|_| {
                    (
                        ResolverConfig::from_parts(None, vec![], vec![]),
                        ResolverOpts::default(),
                    )
                })
            } else {
                let mut servers = Vec::new();
                for text in &settings.dns_servers {
                    let address: SocketAddr = text
                        .parse()
                        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| SenderCheckError::DnsServer(text.clone()))?;
                    let mut udp = ConnectionConfig::udp();
                    udp.port = address.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = address.port();
                    servers.push(NameServerConfig::new(address.ip(), true, vec![udp, tcp]));
                }
                (
                    ResolverConfig::from_parts(None, vec![], servers),
                    ResolverOpts::default(),
                )
            };
            options.timeout = Duration::from_millis(settings.dns_timeout_ms.max(1));
            options.attempts = 1;
            // Our own cache keeps the answers, for their TTL.
            options.cache_size = 0;
            Some(MessageAuthenticator::new(config, options).map_err(|e| SenderCheckError::Resolver(e.to_string()))?)
        } else {
            None
        };
        Ok(SenderChecker {
            settings,
            authenticator,
            cache: Arc::new(DnsCache::default()),
        })
    }

    /// The DNS cache (tests fill it in advance).
    pub fn cache(&self) -> &DnsCache {
        &self.cache
    }

    pub fn settings(&self) -> &SenderCheckSettings {
        &self.settings
    }

    /// Checks `raw` as stored. `from_domain` is the single From address's domain, lower case.
    /// `exchange_internal` is whether the message carries Exchange's internal marker.
    pub async fn check(&self, raw: &[u8], from_domain: Option<&str>, exchange_internal: bool) -> OwnCheck {
        let mut own = OwnCheck {
            exchange_internal: exchange_internal
                && self.settings.trust_exchange_internal
                && from_domain.is_some_and(|d| d == "nhs.net"),
            ..OwnCheck::default()
        };
        let Some(authenticator) = &self.authenticator else {
            return own;
        };
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return own;
        };
        let outputs = authenticator
            .verify_dkim(Parameters::new(&message).with_txt_cache(&*self.cache))
            .await;
        for output in &outputs {
            let Some(signature) = output.signature() else {
                // A DKIM-Signature header that could not be read at all: evidence too.
                let (result, detail) = describe(output.result());
                own.signatures.push(SignatureCheck {
                    domain: "(unreadable)".into(),
                    selector: String::new(),
                    result: result.into(),
                    detail,
                    aligned: false,
                });
                continue;
            };
            let domain = signature.d.to_ascii_lowercase();
            let (result, detail) = judge(describe(output.result()), signature.l, &signature.h);
            own.signatures.push(SignatureCheck {
                aligned: from_domain.is_some_and(|from| aligned(&domain, from)),
                domain,
                selector: signature.s.clone(),
                result: result.into(),
                detail,
            });
        }
        if own.aligned_pass().is_none()
            && !self.settings.trusted_arc_sealers.is_empty()
            && !message.as_headers.is_empty()
        {
            let arc = authenticator
                .verify_arc(Parameters::new(&message).with_txt_cache(&*self.cache))
                .await;
            own.arc_detail = match arc.result() {
                DkimResult::Pass => {
                    // The newest seal is the last forwarder's; it vouches for the results
                    // the first hop recorded (instance 1's ARC-Authentication-Results).
                    let sealer = arc.sets().last().map(|set| set.seal.header.d.to_ascii_lowercase());
                    let first = arc.sets().iter().find(|set| set.results.header.i == 1);
                    match (sealer, first) {
                        (Some(sealer), Some(first)) if self.trusts_sealer(&sealer) => {
                            let text = String::from_utf8_lossy(first.results.value).to_string();
                            if first_hop_aligned_pass(&text, from_domain) {
                                own.arc_vouched_by = Some(sealer);
                                None
                            } else {
                                Some(format!(
                                    "the ARC seal by {sealer} records no aligned DKIM or DMARC pass"
                                ))
                            }
                        }
                        (Some(sealer), _) => Some(format!("ARC sealed by {sealer}, which is not a trusted forwarder")),
                        _ => Some("the ARC chain has no sets".into()),
                    }
                }
                other => Some(format!("the ARC chain did not verify: {}", describe(other).0)),
            };
        }
        own
    }

    fn trusts_sealer(&self, sealer: &str) -> bool {
        self.settings
            .trusted_arc_sealers
            .iter()
            .any(|trusted| trusted.trim_end_matches('.').eq_ignore_ascii_case(sealer))
    }
}

/// Whether the first hop's ARC-Authentication-Results (`i=1; authserv; dkim=pass header.d=…`)
/// record a DMARC pass for the From domain or an aligned DKIM pass.
fn first_hop_aligned_pass(aar: &str, from_domain: Option<&str>) -> bool {
    let Some(from) = from_domain else { return false };
    // Drop the instance tag; what is left is an Authentication-Results value.
    let value = aar.trim_start().split_once(';').map_or("", |(_, rest)| rest);
    let Some(parsed) = crate::mail::auth_results::parse(value) else {
        return false;
    };
    parsed.results.iter().any(|r| {
        r.result == "pass"
            && match r.method.as_str() {
                "dmarc" => r
                    .property("header.from")
                    .is_some_and(|d| d.trim_end_matches('.').eq_ignore_ascii_case(from)),
                "dkim" => r
                    .property("header.d")
                    .is_some_and(|d| aligned(&d.to_ascii_lowercase(), from)),
                _ => false,
            }
    })
}

/// A verified signature still does not count when it signs only part of the body (`l=`: the
/// rest, a PDF of anyone's, could have been added) or does not sign the From header.
fn judge(
    (result, detail): (&'static str, Option<String>),
    body_length: u64,
    signed_headers: &[String],
) -> (&'static str, Option<String>) {
    if result != "pass" {
        (result, detail)
    } else if body_length > 0 {
        (
            "policy",
            Some(format!(
                "it signs only the first {body_length} bytes of the body (l=), so the rest could have been added"
            )),
        )
    } else if !signed_headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        ("policy", Some("it does not sign the From header".into()))
    } else {
        (result, detail)
    }
}

fn describe(result: &DkimResult) -> (&'static str, Option<String>) {
    match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
        DkimResult::Fail(e) => ("fail", Some(e.to_string())),
        DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::None => ("none", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_from_domain_or_a_parent_never_a_bare_tld() {
        assert!(aligned("nhs.net", "nhs.net"));
        assert!(aligned("nhs.net", "practice.nhs.net"));
        assert!(!aligned("net", "nhs.net"));
        assert!(!aligned("evil.example", "nhs.net"));
        assert!(!aligned("hs.net", "nhs.net"));
        assert!(!aligned("practice.nhs.net", "nhs.net"));
    }

    #[test]
    fn a_pass_over_part_of_the_body_or_without_from_does_not_count() {
        let signed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let pass = ("pass", None);
        assert_eq!(judge(pass.clone(), 0, &signed(&["From", "Subject"])), pass);
        assert_eq!(judge(pass.clone(), 120, &signed(&["From"])).0, "policy");
        assert_eq!(judge(pass.clone(), 0, &signed(&["Subject", "To"])).0, "policy");
        let fail = ("fail", Some("bad".to_string()));
        assert_eq!(judge(fail.clone(), 120, &signed(&[])), fail);
    }

    #[test]
    fn a_first_hop_pass_counts_only_for_the_from_domain() {
        let aar = "i=1; lists.example; dkim=pass header.d=nhs.net; dmarc=pass header.from=nhs.net";
        assert!(first_hop_aligned_pass(aar, Some("nhs.net")));
        assert!(!first_hop_aligned_pass(aar, Some("gmail.example")));
        let unaligned = "i=1; lists.example; dkim=pass header.d=evil.example";
        assert!(!first_hop_aligned_pass(unaligned, Some("nhs.net")));
        assert!(!first_hop_aligned_pass("garbage", Some("nhs.net")));
    }

    #[test]
    fn answers_expire_with_their_ttl_and_temporary_failures_are_never_kept() {
        let cache = DnsCache::default();
        let record = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        cache
            .add_dkim_key("s1", "nhs.net", record, Duration::from_secs(60))
            .unwrap();
        assert!(cache.get("s1._domainkey.nhs.net.").is_some());
        cache.add_dkim_key("old", "nhs.net", record, Duration::ZERO).unwrap();
        assert!(cache.get("old._domainkey.nhs.net.").is_none(), "expired");
        cache.insert(
            "t._domainkey.nhs.net.".into(),
            Txt::Error(mail_auth::Error::Dns(DnsError::Resolver("timed out".into()))),
            Instant::now() + Duration::from_secs(60),
        );
        assert!(
            cache.get("t._domainkey.nhs.net.").is_none(),
            "a DNS failure is asked again"
        );
        assert!(
            cache
                .add_dkim_key("bad", "nhs.net", "not a key", Duration::from_secs(1))
                .is_err()
        );
    }
}
