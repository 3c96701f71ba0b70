//! A registry's answer to an anonymous request: its `WWW-Authenticate`
//! challenges (RFC 7235), the token endpoint a Bearer challenge points to,
//! and the token that endpoint returns (Docker's token authentication spec).
//! Secrets never reach a `Debug` output or an error message.

use std::fmt::{self, Write as _};

use crate::reference::shown;

/// Far above any real challenge; bounds the work a hostile header costs.
const MAX_HEADER: usize = 16 << 10;
const MAX_CHALLENGES: usize = 16;
const MAX_PARAMS: usize = 32;
pub const MAX_TOKEN_RESPONSE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("WWW-Authenticate header of {0} bytes is longer than {MAX_HEADER}")]
    HeaderTooLong(usize),
    #[error("WWW-Authenticate header {header:?}: {reason} at byte {at}")]
    BadHeader {
        header: String,
        at: usize,
        reason: &'static str,
    },
    #[error("WWW-Authenticate header {0:?} has more than {MAX_CHALLENGES} challenges")]
    TooManyChallenges(String),
    #[error(
        "WWW-Authenticate header {0:?} has a challenge with more than {MAX_PARAMS} parameters"
    )]
    TooManyParams(String),
    #[error("WWW-Authenticate header {header:?} gives {param:?} twice in one challenge")]
    DuplicateParam { header: String, param: String },
    #[error("a token can only be asked for on a Bearer challenge (realm {0:?})")]
    NotBearer(Option<String>),
    #[error("the Bearer challenge has no realm to ask for a token")]
    NoRealm,
    #[error("token realm {0:?} is not an absolute http:// or https:// URL")]
    BadRealm(String),
    #[error("token response of {0} bytes is larger than {MAX_TOKEN_RESPONSE}")]
    TokenTooLarge(usize),
    #[error("token response is not JSON: {0}")]
    TokenNotJson(String),
    #[error("token response has no non-empty \"token\" or \"access_token\" string")]
    NoToken,
    #[error(
        "the token in the response has a character not allowed in an HTTP header, at byte {0}"
    )]
    BadTokenCharacter(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Bearer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: Scheme,
    pub realm: Option<String>,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// The Basic and Bearer challenges of one `WWW-Authenticate` value, in
/// order. Other schemes are skipped rather than refused: a registry may
/// offer several, and one keel cannot use does not make the others wrong.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, AuthError> {
    if header.len() > MAX_HEADER {
        return Err(AuthError::HeaderTooLong(header.len()));
    }
    let mut cursor = Cursor {
        header,
        rest: header.as_bytes(),
    };
    let mut challenges = Vec::new();
    let mut seen = 0usize;
    loop {
        cursor.list_separators();
        if cursor.peek().is_none() {
            break;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            return Err(cursor.error("expected an authentication scheme"));
        }
        seen = seen.saturating_add(1);
        if seen > MAX_CHALLENGES {
            return Err(AuthError::TooManyChallenges(shown(header)));
        }
        let params = cursor.params()?;
        if let Some(challenge) = challenge(header, scheme, &params)? {
            challenges.push(challenge);
        }
    }
    Ok(challenges)
}

fn challenge(
    header: &str,
    scheme: &str,
    params: &[(&str, String)],
) -> Result<Option<Challenge>, AuthError> {
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("basic") {
        Scheme::Basic
    } else {
        return Ok(None);
    };
    let mut challenge = Challenge {
        scheme,
        realm: None,
        service: None,
        scope: None,
    };
    for (name, value) in params {
        let slot = if name.eq_ignore_ascii_case("realm") {
            &mut challenge.realm
        } else if name.eq_ignore_ascii_case("service") {
            &mut challenge.service
        } else if name.eq_ignore_ascii_case("scope") {
            &mut challenge.scope
        } else {
            continue;
        };
        // RFC 7235 allows each name once: two realms would leave which one
        // is meant to whoever parses last.
        if slot.replace(value.clone()).is_some() {
            return Err(AuthError::DuplicateParam {
                header: shown(header),
                param: (*name).to_owned(),
            });
        }
    }
    Ok(Some(challenge))
}

struct Cursor<'a> {
    header: &'a str,
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) {
        self.rest = self.rest.get(1..).unwrap_or_default();
    }

    fn error(&self, reason: &'static str) -> AuthError {
        AuthError::BadHeader {
            header: shown(self.header),
            at: self.header.len().saturating_sub(self.rest.len()),
            reason,
        }
    }

    /// Skips optional whitespace; says whether there was any.
    fn ows(&mut self) -> bool {
        let before = self.rest.len();
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.bump();
        }
        self.rest.len() != before
    }

    /// RFC 7230's `#rule` allows empty list elements: `a, , b`.
    fn list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.bump();
        }
    }

    fn take_while(&mut self, allowed: impl Fn(u8) -> bool) -> &'a [u8] {
        let n = self.rest.iter().take_while(|b| allowed(**b)).count();
        let (taken, rest) = self.rest.split_at_checked(n).unwrap_or((self.rest, &[]));
        self.rest = rest;
        taken
    }

    fn token(&mut self) -> &'a str {
        std::str::from_utf8(self.take_while(is_tchar)).unwrap_or_default()
    }

    /// The auth-params after a scheme, up to the comma that starts the next
    /// challenge (or the end).
    fn params(&mut self) -> Result<Vec<(&'a str, String)>, AuthError> {
        let mut params = Vec::new();
        let spaced = self.ows();
        if matches!(self.peek(), None | Some(b',')) {
            // A scheme alone, as `Negotiate`.
        } else if !spaced {
            return Err(self.error("expected a space after the scheme"));
        } else if let Some(param) = self.param()? {
            params.push(param);
        } else if !self.token68() {
            return Err(self.error("expected name=value or a token68"));
        }
        loop {
            self.ows();
            match self.peek() {
                None => break,
                Some(b',') => {
                    // Commas separate both parameters and challenges: what
                    // follows is this challenge's only if it is name=value.
                    let at_comma = self.rest;
                    self.list_separators();
                    if self.peek().is_none() {
                        break;
                    }
                    match self.param()? {
                        Some(param) => {
                            if params.len() >= MAX_PARAMS {
                                return Err(AuthError::TooManyParams(shown(self.header)));
                            }
                            params.push(param);
                        }
                        None => {
                            self.rest = at_comma;
                            break;
                        }
                    }
                }
                Some(_) => return Err(self.error("expected ',' after a parameter")),
            }
        }
        Ok(params)
    }

    /// `token BWS "=" BWS ( token / quoted-string )`, or None (and nothing
    /// consumed) when the text is not one.
    fn param(&mut self) -> Result<Option<(&'a str, String)>, AuthError> {
        let start = self.rest;
        let name = self.token();
        self.ows();
        if name.is_empty() || self.peek() != Some(b'=') {
            self.rest = start;
            return Ok(None);
        }
        self.bump();
        self.ows();
        if self.peek() == Some(b'"') {
            return Ok(Some((name, self.quoted()?)));
        }
        let value = self.token();
        if value.is_empty() {
            // `abc==` is token68 padding, not a parameter.
            self.rest = start;
            return Ok(None);
        }
        Ok(Some((name, value.to_owned())))
    }

    /// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`, which
    /// must end the challenge. keel uses none, but it must not derail the
    /// challenges after it.
    fn token68(&mut self) -> bool {
        let start = self.rest;
        let body = self.take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        self.take_while(|b| b == b'=');
        self.ows();
        if body.is_empty() || !matches!(self.peek(), None | Some(b',')) {
            self.rest = start;
            return false;
        }
        true
    }

    fn quoted(&mut self) -> Result<String, AuthError> {
        self.bump();
        let mut value = Vec::new();
        loop {
            let b = match self.peek() {
                None => return Err(self.error("unterminated quoted string")),
                Some(b'"') => {
                    self.bump();
                    break;
                }
                Some(b'\\') => {
                    self.bump();
                    self.peek()
                        .ok_or_else(|| self.error("unterminated quoted string"))?
                }
                Some(b) => b,
            };
            // qdtext and quoted-pair: HTAB, SP, visible ASCII, obs-text.
            if b != b'\t' && (b < 0x20 || b == 0x7f) {
                return Err(self.error("control character in a quoted string"));
            }
            value.push(b);
            self.bump();
        }
        // Only ASCII backslashes were dropped, so the UTF-8 of the header
        // is intact; the error is for the impossible case.
        String::from_utf8(value).map_err(|_| self.error("quoted string is not UTF-8"))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The URL to GET a bearer token from: the realm with `service` and `scope`
/// added to its query. Without a scope in the challenge, it asks to pull
/// `repository`. The realm is the registry's say, so only an absolute
/// http(s) URL is followed.
pub fn token_url(challenge: &Challenge, repository: &str) -> Result<String, AuthError> {
    if challenge.scheme != Scheme::Bearer {
        return Err(AuthError::NotBearer(challenge.realm.as_deref().map(shown)));
    }
    let realm = challenge.realm.as_deref().ok_or(AuthError::NoRealm)?;
    check_realm(realm)?;
    // As Docker's client: empty values are as good as absent.
    let scope = match challenge.scope.as_deref() {
        Some(scope) if !scope.is_empty() => scope.to_owned(),
        _ => format!("repository:{repository}:pull"),
    };
    let mut url = String::from(realm);
    let mut separator = match realm.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some((_, query)) if query.ends_with('&') => "",
        Some(_) => "&",
    };
    if let Some(service) = challenge.service.as_deref().filter(|s| !s.is_empty()) {
        url.push_str(separator);
        url.push_str("service=");
        percent_encode(&mut url, service);
        separator = "&";
    }
    url.push_str(separator);
    url.push_str("scope=");
    percent_encode(&mut url, &scope);
    Ok(url)
}

fn check_realm(realm: &str) -> Result<(), AuthError> {
    let bad = || AuthError::BadRealm(shown(realm));
    // A fragment would swallow the query appended after it.
    if realm.is_empty() || !realm.bytes().all(|b| b.is_ascii_graphic()) || realm.contains('#') {
        return Err(bad());
    }
    let after_scheme = strip_prefix_ignore_case(realm, "https://")
        .or_else(|| strip_prefix_ignore_case(realm, "http://"))
        .ok_or_else(bad)?;
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    // Userinfo in a realm would make the HTTP client send credentials the
    // registry chose; no token service needs it.
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// RFC 3986: everything but unreserved characters, so the values cannot
/// break out of their parameter.
fn percent_encode(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[derive(Clone)]
pub struct Token {
    pub token: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token in a token endpoint's JSON body: `token`, else `access_token`
/// (the Docker token spec names both; OAuth2 servers send the second).
pub fn parse_token(body: &[u8]) -> Result<Token, AuthError> {
    if body.len() > MAX_TOKEN_RESPONSE {
        return Err(AuthError::TokenTooLarge(body.len()));
    }
    // Into a Value, not a typed struct: serde's type errors quote the
    // values they trip on, and those could be the token.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AuthError::TokenNotJson(e.to_string()))?;
    let non_empty = |key: &str| match value.get(key) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let token = non_empty("token")
        .or_else(|| non_empty("access_token"))
        .ok_or(AuthError::NoToken)?;
    // It goes into an Authorization header: anything else there would be
    // header injection, or a request the HTTP client refuses to send.
    if let Some(at) = token.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(AuthError::BadTokenCharacter(at));
    }
    Ok(Token { token })
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
