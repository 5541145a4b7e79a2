//! An RFC 8601 `Authentication-Results` parser: a tokenizer that understands quoted strings
//! (with their escapes) and nested comments, and a parser that refuses what it cannot read.
//!
//! The header is written by our own receiving server, but it copies values it was given
//! (`smtp.mailfrom`, `header.from`) from the sender. A `;` or `dmarc=pass` inside a quoted
//! string is the sender's text, not a clause: splitting on `;` let one steer the verdict. Any
//! syntax error makes the whole header unreadable, which counts as no verdict at all.

/// One `method=result` clause, with its properties (`header.from`, `header.d`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResult {
    /// Lower case, without its version (`dkim`, not `dkim/1`).
    pub method: String,
    /// Lower case (`pass`, `fail`, `none`...).
    pub result: String,
    pub reason: Option<String>,
    /// `(ptype.property, value)`, the key lower case; the value as written.
    pub properties: Vec<(String, String)>,
}

impl AuthResult {
    /// The first value of a property (`header.from`), case-insensitively by name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times a property is given: a clause that names two `header.from` values is
    /// ambiguous.
    pub fn property_count(&self, name: &str) -> usize {
        self.properties
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }
}

/// A parsed header: who wrote it, and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationResults {
    /// Lower case.
    pub authserv_id: String,
    pub results: Vec<AuthResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An atom, or a quoted string's content; `spaced` says whether whitespace or a comment
    /// came before it (a quoted local part and its `@domain` are one value).
    Word {
        text: String,
        quoted: bool,
        spaced: bool,
    },
    Semicolon,
    Equals,
}

/// Splits a header value into tokens, dropping comments. `None` on an unterminated quoted
/// string or comment, or an unbalanced `)`.
fn tokenize(value: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = value.chars().peekable();
    let mut spaced = true;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => spaced = true,
            '(' => {
                let mut depth = 1usize;
                while depth > 0 {
                    match chars.next()? {
                        '\\' => {
                            chars.next()?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
                spaced = true;
            }
            ')' => return None,
            '"' => {
                let mut text = String::new();
                loop {
                    match chars.next()? {
                        '\\' => text.push(chars.next()?),
                        '"' => break,
                        other => text.push(other),
                    }
                }
                tokens.push(Token::Word {
                    text,
                    quoted: true,
                    spaced,
                });
                spaced = false;
            }
            ';' => {
                tokens.push(Token::Semicolon);
                spaced = true;
            }
            '=' => {
                tokens.push(Token::Equals);
                spaced = true;
            }
            _ => {
                let mut text = String::from(c);
                while let Some(&next) = chars.peek() {
                    if matches!(next, ' ' | '\t' | '\r' | '\n' | '(' | ')' | '"' | ';' | '=') {
                        break;
                    }
                    text.push(next);
                    chars.next();
                }
                tokens.push(Token::Word {
                    text,
                    quoted: false,
                    spaced,
                });
                spaced = false;
            }
        }
    }
    Some(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn word(&mut self) -> Option<String> {
        match self.next()? {
            Token::Word { text, .. } => Some(text),
            _ => None,
        }
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek()? {
            Token::Word { text, .. } => Some(text),
            _ => None,
        }
    }

    fn expect_equals(&mut self) -> Option<()> {
        matches!(self.next()?, Token::Equals).then_some(())
    }

    /// A value: one word or quoted string, joined with the words that follow it with no
    /// space between (`"quoted local part"@example.com`).
    fn value(&mut self) -> Option<String> {
        let mut text = self.word()?;
        while let Some(Token::Word {
            text: more,
            spaced: false,
            ..
        }) = self.peek()
        {
            text.push_str(more);
            self.at += 1;
        }
        Some(text)
    }

    /// `word` or `word/version` or `word / version`: returns the word without its version.
    fn keyword_with_version(&mut self) -> Option<String> {
        let word = self.word()?;
        let (name, version) = match word.split_once('/') {
            Some((name, version)) => (name.to_string(), Some(version.is_empty())),
            None => (word, None),
        };
        match version {
            // `dkim/ 1`: the version is the next word.
            Some(true) => {
                self.word()?;
            }
            Some(false) => {}
            None => match self.peek_word() {
                Some("/") => {
                    self.at += 1;
                    self.word()?;
                }
                Some(next) if next.starts_with('/') => self.at += 1,
                _ => {}
            },
        }
        (!name.is_empty()).then_some(name)
    }

    /// `ptype.property` written as one word or as `ptype . property`.
    fn property_name(&mut self, first: String) -> Option<String> {
        if first.contains('.') && !first.ends_with('.') {
            return Some(first);
        }
        let mut name = first;
        if !name.ends_with('.') {
            if self.peek_word() != Some(".") {
                return None;
            }
            self.at += 1;
            name.push('.');
        }
        name.push_str(&self.word()?);
        Some(name)
    }
}

/// Parses an `Authentication-Results` value. `None` when it does not follow RFC 8601.
pub fn parse(value: &str) -> Option<AuthenticationResults> {
    let mut p = Parser {
        tokens: tokenize(value)?,
        at: 0,
    };
    let authserv_id = p.value()?.to_ascii_lowercase();
    // An optional version after the authserv-id.
    if p.peek_word().is_some_and(|w| w.chars().all(|c| c.is_ascii_digit())) {
        p.at += 1;
    }
    let mut results = Vec::new();
    loop {
        match p.next() {
            None => break,
            Some(Token::Semicolon) => {}
            Some(_) => return None,
        }
        // `; none` means no checks were made; a trailing `;` is tolerated.
        match p.peek() {
            None => break,
            Some(Token::Word { text, .. }) if text.eq_ignore_ascii_case("none") && p.tokens.len() == p.at + 1 => {
                p.at += 1;
                break;
            }
            _ => {}
        }
        let method = p.keyword_with_version()?.to_ascii_lowercase();
        p.expect_equals()?;
        let result = p.word()?.to_ascii_lowercase();
        let mut clause = AuthResult {
            method,
            result,
            reason: None,
            properties: Vec::new(),
        };
        while let Some(Token::Word { .. }) = p.peek() {
            let key = p.word()?;
            if key.eq_ignore_ascii_case("reason") {
                p.expect_equals()?;
                clause.reason = Some(p.value()?);
                continue;
            }
            let key = p.property_name(key)?.to_ascii_lowercase();
            p.expect_equals()?;
            clause.properties.push((key, p.value()?));
        }
        results.push(clause);
    }
    Some(AuthenticationResults { authserv_id, results })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> AuthenticationResults {
        parse(value).unwrap_or_else(|| panic!("should parse: {value}"))
    }

    // RFC 8601, Appendix B.

    #[test]
    fn b2_nothing_was_checked() {
        let h = one("example.org 1; none");
        assert_eq!(h.authserv_id, "example.org");
        assert!(h.results.is_empty());
    }

    #[test]
    fn b3_spf() {
        let h = one("example.com; spf=pass smtp.mailfrom=example.net");
        assert_eq!(h.results[0].method, "spf");
        assert_eq!(h.results[0].result, "pass");
        assert_eq!(h.results[0].property("smtp.mailfrom"), Some("example.net"));
    }

    #[test]
    fn b4_smtp_auth_and_iprev_with_comments() {
        let h = one(
            "example.com;\r\n auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n spf=pass smtp.mailfrom=example.net",
        );
        assert_eq!(h.results.len(), 2);
        assert_eq!(h.results[0].property("smtp.auth"), Some("sender@example.net"));
        let h = one("example.com; iprev=pass\r\n policy.iprev=192.0.2.200");
        assert_eq!(h.results[0].property("policy.iprev"), Some("192.0.2.200"));
    }

    #[test]
    fn b5_two_dkim_signatures() {
        let h = one(
            "example.com;\r\n dkim=pass (good signature) header.d=mail-router.example.net;\r\n dkim=fail (bad signature) header.d=newyork.example.com",
        );
        assert_eq!(h.results[0].property("header.d"), Some("mail-router.example.net"));
        assert_eq!(h.results[1].result, "fail");
    }

    #[test]
    fn b6_reasons_in_quoted_strings() {
        let h = one(
            "example.com;\r\n dkim=pass reason=\"good signature\"\r\n header.i=@mail-router.example.net;\r\n dkim=fail reason=\"bad signature\"\r\n header.i=@newyork.example.com",
        );
        assert_eq!(h.results[0].reason.as_deref(), Some("good signature"));
        assert_eq!(h.results[1].property("header.i"), Some("@newyork.example.com"));
    }

    #[test]
    fn b7_comments_and_spaces_everywhere() {
        let h = one(
            "foo.example.net (foobar) 1 (baz);\r\n dkim (Because I like it) / 1 (One yay) = (wait for it) fail\r\n policy (A dot can go here) . (like that) expired\r\n (this surprised me) = (as I wasn't expecting it) 1362471462",
        );
        assert_eq!(h.authserv_id, "foo.example.net");
        assert_eq!(h.results[0].method, "dkim");
        assert_eq!(h.results[0].result, "fail");
        assert_eq!(h.results[0].property("policy.expired"), Some("1362471462"));
    }

    // The security review's injections.

    #[test]
    fn a_semicolon_inside_a_quoted_string_is_not_a_clause() {
        let h = one(
            "mx.countersign.test; spf=fail smtp.mailfrom=\"x; dmarc=pass header.from=nhs.net y\"@evil.example; dkim=none; dmarc=fail header.from=nhs.net",
        );
        let methods: Vec<(&str, &str)> = h
            .results
            .iter()
            .map(|r| (r.method.as_str(), r.result.as_str()))
            .collect();
        assert_eq!(methods, vec![("spf", "fail"), ("dkim", "none"), ("dmarc", "fail")]);
        assert_eq!(
            h.results[0].property("smtp.mailfrom"),
            Some("x; dmarc=pass header.from=nhs.net y@evil.example")
        );
    }

    #[test]
    fn escapes_inside_quoted_strings_and_comments_are_understood() {
        let h = one(r#"mx.example; spf=pass (a \) in a comment; dmarc=pass) smtp.mailfrom="a\"b;c"@x.example"#);
        assert_eq!(h.results.len(), 1);
        assert_eq!(h.results[0].property("smtp.mailfrom"), Some("a\"b;c@x.example"));
    }

    #[test]
    fn a_header_that_does_not_follow_the_grammar_is_unreadable() {
        for bad in [
            "",
            "mx.example; dmarc",
            "mx.example; dmarc=",
            "mx.example; dmarc=pass header.from",
            "mx.example; spf=pass smtp.mailfrom=\"unterminated",
            "mx.example; spf=pass (unterminated comment",
            "mx.example; spf=pass ) stray",
            "mx.example dmarc=pass",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
