//! Credentials Countersign issues (a new Open Exeter user's first password, a passcode): made
//! by the operating system's CSPRNG, never easy to guess, never the same twice, and never
//! kept. Pure: what is issued is checked against a [`FingerprintLedger`] of every credential
//! ever issued, which storage keeps as keyed fingerprints (HMAC-SHA-256 under a key held
//! outside the database), so that a stolen database gives no way to test guesses offline, not
//! even against 6-digit passcodes.
//!
//! The rules come from the smartcard passcode incident (seeds 002 and 003): one PIN for every
//! card, written on its back. Passcodes are 6 to 8 digits and refuse runs (123456, 987654),
//! repeats (111111, 121212, 112233) and dates (140387, 14031987, 870314).

use chrono::NaiveDate;
use rand::Rng;
use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How a workflow's credentials look: `[credential]` in its file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialPolicy {
    pub kind: CredentialKind,
    /// Lengths, inclusive.
    pub min_length: usize,
    pub max_length: usize,
    /// Days until it must be changed (Open Exeter passwords last 30).
    pub lifetime_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Digits only, with the weak patterns refused.
    Passcode,
    /// Letters (both cases) and digits, without the ones people misread (0 O o 1 l I), at least
    /// one of each kind.
    Password,
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a passcode is 6 to 8 digits (seed 003): lengths {min}..={max} are not allowed")]
    PasscodeLength { min: usize, max: usize },
    #[error("a password is at least 12 characters and at most 64: lengths {min}..={max} are not allowed")]
    PasswordLength { min: usize, max: usize },
    #[error("a credential must expire: lifetime_days must be 1 to 366")]
    Lifetime,
}

impl CredentialPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let (min, max) = (self.min_length, self.max_length);
        match self.kind {
            CredentialKind::Passcode if !(6 <= min && min <= max && max <= 8) => {
                return Err(PolicyError::PasscodeLength { min, max });
            }
            CredentialKind::Password if !(12 <= min && min <= max && max <= 64) => {
                return Err(PolicyError::PasswordLength { min, max });
            }
            _ => {}
        }
        if !(1..=366).contains(&self.lifetime_days) {
            return Err(PolicyError::Lifetime);
        }
        Ok(())
    }
}

/// Why a candidate credential is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    WrongLength,
    WrongCharacters,
    /// Digits that go up or down by one: 123456, 987654, 890123.
    Run,
    /// Few distinct characters, or a block repeated: 111111, 121212, 112233, 123123.
    Repeat,
    /// A date someone may know (a birthday): DDMMYY, MMDDYY, YYMMDD and their 8-digit forms.
    Date,
    /// A password without both letters and digits.
    MissingKind,
}

/// The characters a password is made of: no 0 O o 1 l I.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";

/// Why `candidate` may not be issued under `policy`, if it may not.
pub fn weakness(policy: &CredentialPolicy, candidate: &str) -> Option<Weakness> {
    let length = candidate.chars().count();
    if length < policy.min_length || length > policy.max_length {
        return Some(Weakness::WrongLength);
    }
    match policy.kind {
        CredentialKind::Passcode => passcode_weakness(candidate),
        CredentialKind::Password => {
            if !candidate.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)) {
                return Some(Weakness::WrongCharacters);
            }
            let has = |f: fn(&u8) -> bool| candidate.as_bytes().iter().any(f);
            if !(has(u8::is_ascii_digit) && has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase)) {
                return Some(Weakness::MissingKind);
            }
            None
        }
    }
}

fn passcode_weakness(candidate: &str) -> Option<Weakness> {
    if !candidate.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Weakness::WrongCharacters);
    }
    let digits: Vec<i32> = candidate.bytes().map(|b| i32::from(b - b'0')).collect();
    // Up or down by one each step, wrapping 9 to 0 (890123).
    let steps: Vec<i32> = digits.windows(2).map(|w| (w[1] - w[0]).rem_euclid(10)).collect();
    if steps.iter().all(|&s| s == 1) || steps.iter().all(|&s| s == 9) {
        return Some(Weakness::Run);
    }
    let mut distinct = digits.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // Two distinct digits or fewer (111111, 121212, 100100), or every digit doubled (112233).
    let doubled = digits.chunks(2).all(|pair| pair.len() == 2 && pair[0] == pair[1]);
    if distinct.len() <= 2 || doubled {
        return Some(Weakness::Repeat);
    }
    // A block repeated (123123, 12341234).
    let n = digits.len();
    if (1..n)
        .filter(|size| n.is_multiple_of(*size))
        .any(|size| digits.chunks(size).all(|c| c == &digits[..size]))
    {
        return Some(Weakness::Repeat);
    }
    if looks_like_a_date(candidate) {
        return Some(Weakness::Date);
    }
    None
}

/// Whether the digits read as a calendar date in a way people write them.
fn looks_like_a_date(digits: &str) -> bool {
    let number = |range: std::ops::Range<usize>| digits.get(range).and_then(|d| d.parse::<u32>().ok());
    let valid = |year: Option<u32>, month: Option<u32>, day: Option<u32>| match (year, month, day) {
        (Some(y), Some(m), Some(d)) => NaiveDate::from_ymd_opt(y as i32, m, d).is_some(),
        _ => false,
    };
    // Two-digit years stand for any century: 29 February is checked against a leap year.
    let short_year = |y: Option<u32>| y.map(|y| 2000 + y);
    match digits.len() {
        6 => {
            valid(short_year(number(4..6)), number(2..4), number(0..2)) // DDMMYY
                || valid(short_year(number(4..6)), number(0..2), number(2..4)) // MMDDYY
                || valid(short_year(number(0..2)), number(2..4), number(4..6)) // YYMMDD
        }
        8 => {
            let plausible = |y: Option<u32>| y.filter(|y| (1900..=2099).contains(y));
            valid(plausible(number(4..8)), number(2..4), number(0..2)) // DDMMYYYY
                || valid(plausible(number(4..8)), number(0..2), number(2..4)) // MMDDYYYY
                || valid(plausible(number(0..4)), number(4..6), number(6..8)) // YYYYMMDD
        }
        _ => false,
    }
}

/// Every credential ever issued, as fingerprints: storage keeps it (a unique column); tests
/// keep it in memory.
pub trait FingerprintLedger {
    /// Records the fingerprint; false when it was there already (the credential was issued
    /// before, to someone, and must not be issued again).
    fn record(&mut self, fingerprint: &str) -> bool;
}

impl FingerprintLedger for std::collections::HashSet<String> {
    fn record(&mut self, fingerprint: &str) -> bool {
        self.insert(fingerprint.to_string())
    }
}

/// The key fingerprints are made with: 32 random bytes held outside the database.
pub struct FingerprintKey(ring::hmac::Key);

impl FingerprintKey {
    pub fn new(bytes: &[u8]) -> FingerprintKey {
        FingerprintKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// A fresh random key (for tests).
    pub fn generate() -> (FingerprintKey, [u8; 32]) {
        let bytes = random_bytes();
        (FingerprintKey::new(&bytes), bytes)
    }

    /// The credential's fingerprint: hex HMAC-SHA-256.
    pub fn fingerprint(&self, secret: &SecretString) -> String {
        hex::encode(ring::hmac::sign(&self.0, secret.expose_secret().as_bytes()).as_ref())
    }
}

/// The keys credentials are kept under, both derived from one 32-byte key held outside the
/// database (a file beside it, `credential_key_file`): one makes the ledger's fingerprints, the
/// other seals a secret until its owner opens their one-time link. A copy of the database
/// alone can neither test guesses against the fingerprints nor open a sealed secret.
pub struct CredentialKeys {
    fingerprints: FingerprintKey,
    sealing: ring::aead::LessSafeKey,
}

/// Why a key file or a sealed secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create the credential key file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the credential key file {path} must hold exactly 32 bytes, not {length}")]
    Length { path: std::path::PathBuf, length: usize },
    #[error("a sealed credential cannot be opened: it was sealed under another key, or changed")]
    Unseal,
}

impl CredentialKeys {
    /// Keys derived from `master`: each is HMAC-SHA-256(master, its purpose), so neither
    /// reveals the other.
    pub fn from_master(master: &[u8; 32]) -> CredentialKeys {
        let derive = |purpose: &[u8]| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master);
            ring::hmac::sign(&key, purpose)
        };
        let sealing = derive(b"countersign credential sealing v1");
        let sealing = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, sealing.as_ref())
            .expect("32 bytes is an AES-256 key");
        CredentialKeys {
            fingerprints: FingerprintKey::new(derive(b"countersign credential fingerprints v1").as_ref()),
            sealing: ring::aead::LessSafeKey::new(sealing),
        }
    }

    /// Fresh random keys, for tests and tools that keep nothing.
    pub fn ephemeral() -> CredentialKeys {
        CredentialKeys::from_master(&random_bytes())
    }

    /// The keys in `path`, made (32 random bytes, readable by this user alone) on first use.
    pub fn load_or_create(path: &std::path::Path) -> Result<CredentialKeys, KeyError> {
        let file_error = |source| KeyError::File {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let master: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                    path: path.to_path_buf(),
                    length: bytes.len(),
                })?;
                Ok(CredentialKeys::from_master(&master))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(file_error)?;
                }
                // Written whole to a file of its own, then linked into place: two processes
                // starting at once never see half a key, and the second keeps the first's.
                let master = random_bytes();
                let draft = path.with_extension(format!("new-{}", hex::encode(random_bytes::<8>())));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let written = options.open(&draft).and_then(|mut file| {
                    std::io::Write::write_all(&mut file, &master)?;
                    file.sync_all()
                });
                let linked = written.and_then(|()| std::fs::hard_link(&draft, path));
                let _ = std::fs::remove_file(&draft);
                match linked {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "made a new credential key file: back it up apart from the database");
                        Ok(CredentialKeys::from_master(&master))
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        CredentialKeys::load_or_create(path)
                    }
                    Err(error) => Err(file_error(error)),
                }
            }
            Err(error) => Err(file_error(error)),
        }
    }

    pub fn fingerprints(&self) -> &FingerprintKey {
        &self.fingerprints
    }

    /// `secret` sealed (AES-256-GCM, a random nonce) to the credential named `name`: the
    /// sealed text opens only under these keys and only for that name.
    pub fn seal(&self, name: &str, secret: &SecretString) -> String {
        let nonce_bytes: [u8; 12] = random_bytes();
        let mut sealed = secret.expose_secret().as_bytes().to_vec();
        self.sealing
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce_bytes),
                ring::aead::Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .expect("a credential is far shorter than AES-GCM's limit");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out)
    }

    /// The secret [`CredentialKeys::seal`] sealed for `name`.
    pub fn unseal(&self, name: &str, sealed: &str) -> Result<SecretString, KeyError> {
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sealed).map_err(|_| KeyError::Unseal)?;
        if bytes.len() < 12 {
            return Err(KeyError::Unseal);
        }
        let (nonce, rest) = bytes.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unseal)?;
        let mut rest = rest.to_vec();
        let plain = self
            .sealing
            .open_in_place(nonce, ring::aead::Aad::from(name.as_bytes()), &mut rest)
            .map_err(|_| KeyError::Unseal)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| KeyError::Unseal)?;
        Ok(SecretString::from(text))
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator");
    bytes
}

/// Why no credential could be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("no new credential found in {0} tries: the policy's space is (nearly) used up")]
    Exhausted(usize),
}

/// How many candidates are drawn before giving up (a weak or reused one is drawn again).
pub const MAX_TRIES: usize = 10_000;

/// A new credential under `policy`: random, not weak, and never issued before (its
/// fingerprint is recorded in `ledger` before it is returned).
pub fn issue(
    policy: &CredentialPolicy,
    key: &FingerprintKey,
    ledger: &mut dyn FingerprintLedger,
) -> Result<(SecretString, String), IssueError> {
    for _ in 0..MAX_TRIES {
        let Some(secret) = draw(policy) else { continue };
        let fingerprint = key.fingerprint(&secret);
        if ledger.record(&fingerprint) {
            return Ok((secret, fingerprint));
        }
    }
    Err(IssueError::Exhausted(MAX_TRIES))
}

/// One random candidate under `policy`, or None when it came out weak (draw again). The
/// engine, whose ledger is a database table it asks asynchronously, loops over this itself
/// (up to [`MAX_TRIES`]); [`issue`] is the same loop over a ledger in memory.
pub fn draw(policy: &CredentialPolicy) -> Option<SecretString> {
    let mut rng = OsRng.unwrap_err();
    let length = rng.random_range(policy.min_length..=policy.max_length);
    let candidate: String = match policy.kind {
        CredentialKind::Passcode => (0..length)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect(),
        CredentialKind::Password => (0..length)
            .map(|_| char::from(PASSWORD_ALPHABET[rng.random_range(0..PASSWORD_ALPHABET.len())]))
            .collect(),
    };
    weakness(policy, &candidate)
        .is_none()
        .then(|| SecretString::from(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passcodes() -> CredentialPolicy {
        CredentialPolicy {
            kind: CredentialKind::Passcode,
            min_length: 6,
            max_length: 8,
            lifetime_days: 30,
        }
    }

    fn passwords() -> CredentialPolicy {
        CredentialPolicy {
            kind: CredentialKind::Password,
            min_length: 14,
            max_length: 14,
            lifetime_days: 30,
        }
    }

    #[test]
    fn every_weak_pattern_is_refused() {
        let p = passcodes();
        for (candidate, why) in [
            ("123456", Weakness::Run),
            ("987654", Weakness::Run),
            ("89012345", Weakness::Run),
            ("111111", Weakness::Repeat),
            ("00000000", Weakness::Repeat),
            ("121212", Weakness::Repeat),
            ("112233", Weakness::Repeat),
            ("123123", Weakness::Repeat),
            ("12341234", Weakness::Repeat),
            ("140387", Weakness::Date),
            ("14031987", Weakness::Date),
            ("870314", Weakness::Date),
            ("031487", Weakness::Date),
            ("19870314", Weakness::Date),
            ("290204", Weakness::Date),
            ("12345", Weakness::WrongLength),
            ("123456789", Weakness::WrongLength),
            ("12a456", Weakness::WrongCharacters),
        ] {
            assert_eq!(weakness(&p, candidate), Some(why), "{candidate}");
        }
    }

    #[test]
    fn unremarkable_passcodes_pass() {
        for candidate in ["583920", "4729185", "90417362", "350481"] {
            assert_eq!(weakness(&passcodes(), candidate), None, "{candidate}");
        }
        // 31/02/84 is no date, read any of the three ways.
        assert_eq!(weakness(&passcodes(), "310284"), None);
    }

    #[test]
    fn passwords_need_every_kind_of_character_and_none_that_is_misread() {
        let p = passwords();
        assert_eq!(weakness(&p, "abcdefghijkmnp"), Some(Weakness::MissingKind));
        assert_eq!(weakness(&p, "Abcdefghijkm0p"), Some(Weakness::WrongCharacters));
        assert_eq!(weakness(&p, "Abcdefghijkm2p"), None);
    }

    #[test]
    fn a_hundred_thousand_issued_passcodes_are_all_distinct_and_none_is_weak() {
        let (key, _) = FingerprintKey::generate();
        let mut ledger = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let (secret, fingerprint) = issue(&passcodes(), &key, &mut ledger).unwrap();
            assert_eq!(weakness(&passcodes(), secret.expose_secret()), None);
            assert_eq!(fingerprint, key.fingerprint(&secret));
            assert!(seen.insert(secret.expose_secret().to_string()), "issued twice");
        }
        assert_eq!(ledger.len(), 100_000);
    }

    #[test]
    fn a_credential_issued_before_is_never_issued_again() {
        // A ledger in which the first five candidates drawn were issued before.
        struct IssuedBefore {
            refused: Vec<String>,
        }
        impl FingerprintLedger for IssuedBefore {
            fn record(&mut self, fingerprint: &str) -> bool {
                if self.refused.len() < 5 {
                    self.refused.push(fingerprint.to_string());
                    return false;
                }
                !self.refused.iter().any(|f| f == fingerprint)
            }
        }
        let key = FingerprintKey::new(&[7; 32]);
        let mut ledger = IssuedBefore { refused: Vec::new() };
        let (secret, fingerprint) = issue(&passcodes(), &key, &mut ledger).unwrap();
        assert_eq!(ledger.refused.len(), 5, "each refusal drew again");
        assert!(!ledger.refused.contains(&fingerprint));
        assert_eq!(key.fingerprint(&secret), fingerprint);

        // A ledger that has everything: issuing stops, and says why.
        struct Full;
        impl FingerprintLedger for Full {
            fn record(&mut self, _: &str) -> bool {
                false
            }
        }
        assert_eq!(
            issue(&passcodes(), &key, &mut Full).unwrap_err(),
            IssueError::Exhausted(MAX_TRIES)
        );
    }

    #[test]
    fn a_sealed_secret_opens_only_under_its_key_and_for_its_name() {
        let keys = CredentialKeys::from_master(&[9; 32]);
        let secret = SecretString::from("Kq7xMnp3Rt8vWz");
        let sealed = keys.seal("cred-1", &secret);
        assert!(!sealed.contains("Kq7xMnp3Rt8vWz"));
        assert_ne!(sealed, keys.seal("cred-1", &secret), "a fresh nonce each time");
        assert_eq!(
            keys.unseal("cred-1", &sealed).unwrap().expose_secret(),
            "Kq7xMnp3Rt8vWz"
        );
        assert!(matches!(keys.unseal("cred-2", &sealed), Err(KeyError::Unseal)));
        assert!(matches!(
            CredentialKeys::from_master(&[8; 32]).unseal("cred-1", &sealed),
            Err(KeyError::Unseal)
        ));
        let mut tampered = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &sealed).unwrap();
        tampered[14] ^= 1;
        let tampered = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, tampered);
        assert!(matches!(keys.unseal("cred-1", &tampered), Err(KeyError::Unseal)));
        assert!(matches!(keys.unseal("cred-1", "short"), Err(KeyError::Unseal)));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/credential.key");
        let made = CredentialKeys::load_or_create(&path).unwrap();
        let sealed = made.seal("c", &SecretString::from("583920"));
        let again = CredentialKeys::load_or_create(&path).unwrap();
        assert_eq!(again.unseal("c", &sealed).unwrap().expose_secret(), "583920");
        let secret = SecretString::from("583920");
        assert_eq!(
            made.fingerprints().fingerprint(&secret),
            again.fingerprints().fingerprint(&secret)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"too short").unwrap();
        assert!(matches!(
            CredentialKeys::load_or_create(&path),
            Err(KeyError::Length { length: 9, .. })
        ));
    }

    #[test]
    fn the_same_credential_has_a_different_fingerprint_under_another_key() {
        let secret = SecretString::from("583920");
        assert_ne!(
            FingerprintKey::new(&[1; 32]).fingerprint(&secret),
            FingerprintKey::new(&[2; 32]).fingerprint(&secret)
        );
    }

    #[test]
    fn policies_outside_the_rules_are_refused() {
        assert!(passcodes().validate().is_ok());
        assert!(
            CredentialPolicy {
                min_length: 4,
                ..passcodes()
            }
            .validate()
            .is_err()
        );
        assert!(
            CredentialPolicy {
                max_length: 10,
                ..passcodes()
            }
            .validate()
            .is_err()
        );
        assert!(
            CredentialPolicy {
                min_length: 8,
                max_length: 8,
                ..passwords()
            }
            .validate()
            .is_err()
        );
        assert!(
            CredentialPolicy {
                lifetime_days: 0,
                ..passwords()
            }
            .validate()
            .is_err()
        );
    }
}
