//! Image references as people write them (`nginx`, `ghcr.io/o/app:1`,
//! `localhost:5000/app@sha256:…`), normalized the way Docker and containerd
//! do (distribution/reference's `ParseNormalizedNamed` then `TagNameOnly`),
//! so that a name means the same image to keel as to `docker pull`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

const DOCKER_HUB: &str = "docker.io";
/// The Hub's name from before `docker.io`; still in scripts and old configs.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// `docker.io` is a name, not a host: the Hub's API answers elsewhere.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Docker's `NameTotalLengthMax`, on the normalized `registry/repository`.
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;
/// Longer than any valid reference (name, tag and digest at their limits):
/// refuse before looking at the rest.
const MAX_INPUT: usize = 512;
/// How much of a hostile value an error message repeats.
const MAX_SHOWN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("image reference {0:?} is longer than {MAX_INPUT} bytes")]
    TooLong(String),
    #[error("image reference {0:?} has whitespace, a control or a non-ASCII character")]
    BadCharacter(String),
    #[error("{input:?} is a URL, not an image reference: drop the scheme ({suggestion:?})")]
    Scheme { input: String, suggestion: String },
    #[error("image reference {0:?} is a 64-digit hex string, which Docker reserves for image IDs: name a repository")]
    HexName(String),
    #[error("image reference {0:?} names no repository")]
    NoRepository(String),
    #[error(
        "image reference {0:?} has an empty path component (a leading, trailing or doubled '/')"
    )]
    EmptyComponent(String),
    #[error("image reference {input:?}: repository name {repository:?} must be lowercase")]
    Uppercase { input: String, repository: String },
    #[error("image reference {input:?}: path component {component:?} is not lowercase letters and digits separated by '.', '_', '__' or dashes")]
    BadComponent { input: String, component: String },
    #[error("image reference {input:?}: {registry:?} is not a registry host (a domain name, an IPv4 address or a bracketed IPv6 address, then an optional :port)")]
    BadRegistry { input: String, registry: String },
    #[error("image reference {input:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { input: String, port: String },
    #[error("image reference {input:?}: tag {tag:?} is not 1 to 128 letters, digits, '_', '.' or '-' starting with a letter, digit or '_'")]
    BadTag { input: String, tag: String },
    #[error("image reference {input:?}: name {name:?} is longer than {MAX_NAME} characters")]
    NameTooLong { input: String, name: String },
    #[error("digest {0:?} is not sha256:<64 lowercase hex digits>")]
    BadDigest(String),
    #[error("digest {0:?} uses an algorithm keel does not verify (only sha256)")]
    UnsupportedDigest(String),
}

/// A sha256 digest: the only algorithm registries use for images, and the
/// only one keel verifies, so nothing else gets past parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn from_sha256(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Digest, ReferenceError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(ReferenceError::BadDigest(shown(s)));
        };
        if algorithm != "sha256" {
            return Err(if is_algorithm(algorithm) {
                ReferenceError::UnsupportedDigest(shown(s))
            } else {
                ReferenceError::BadDigest(shown(s))
            });
        }
        // The OCI spec allows only lowercase hex for sha256: an uppercase
        // digest is a different string for the same bytes, and digests are
        // compared as strings by registries and by file names in stores.
        if encoded.len() != 64
            || !encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::BadDigest(shown(s)));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(encoded, &mut bytes)
            .map_err(|_| ReferenceError::BadDigest(shown(s)))?;
        Ok(Digest(bytes))
    }
}

/// The OCI digest grammar's algorithm, so that `sha512:…` is reported as
/// unsupported rather than as garbage.
fn is_algorithm(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'+' | b'.' | b'_' | b'-'))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host to send API requests to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What goes after `/manifests/`: a pinned digest wins over the tag, so
    /// that `app:1@sha256:…` fetches exactly the pinned manifest. Only a
    /// hand-built reference has neither; it means what Docker would pull.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > MAX_INPUT {
            return Err(ReferenceError::TooLong(shown(input)));
        }
        if let Some((_, rest)) = input.split_once("://") {
            return Err(ReferenceError::Scheme {
                input: shown(input),
                suggestion: shown(rest),
            });
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReferenceError::BadCharacter(shown(input)));
        }
        // As Docker: a bare image ID is never taken for a Hub repository.
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::HexName(input.to_owned()));
        }

        // Neither names nor tags contain '@', so the first one starts the
        // digest, and a second one makes the digest invalid.
        let (named, digest) = match input.split_once('@') {
            Some((named, digest)) => (named, Some(digest.parse::<Digest>()?)),
            None => (input, None),
        };
        let (registry, remainder) = split_registry(named);
        // Path components have no ':', so past the registry the first ':'
        // starts the tag, and a second one makes the tag invalid.
        let (path, tag) = match remainder.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (remainder, None),
        };

        check_registry(input, registry)?;
        check_path(input, path)?;
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(ReferenceError::BadTag {
                    input: input.to_owned(),
                    tag: tag.to_owned(),
                });
            }
        }

        let registry = if registry == LEGACY_DOCKER_HUB {
            DOCKER_HUB
        } else {
            registry
        };
        // Only the Hub has official images at the top level; elsewhere a
        // single component is the whole repository name.
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        if registry
            .len()
            .saturating_add(1)
            .saturating_add(repository.len())
            > MAX_NAME
        {
            return Err(ReferenceError::NameTooLong {
                input: input.to_owned(),
                name: format!("{registry}/{repository}"),
            });
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            // A digest alone pins the image; inventing a tag would make
            // Display claim a tag the user never asked for.
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry only if
/// it cannot be a Hub namespace, since Hub namespaces have no '.' or ':'
/// and "localhost" is reserved.
fn split_registry(named: &str) -> (&str, &str) {
    match named.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, named),
    }
}

/// Whether `host` is a registry host as a reference names one
/// (`registry.example:5000`, `localhost`, `[::1]:5000`, `docker.io`).
pub fn is_registry_host(host: &str) -> bool {
    check_registry(host, host).is_ok()
}

fn check_registry(input: &str, registry: &str) -> Result<(), ReferenceError> {
    let bad_registry = || ReferenceError::BadRegistry {
        input: input.to_owned(),
        registry: registry.to_owned(),
    };
    let (host_ok, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(bad_registry)?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(bad_registry)?),
        };
        (is_ipv6(address), port)
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (is_domain(host), Some(port)),
            None => (is_domain(registry), None),
        }
    };
    if !host_ok {
        return Err(bad_registry());
    }
    if let Some(port) = port {
        let number =
            (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
                .then(|| port.parse::<u32>().ok())
                .flatten();
        if !matches!(number, Some(1..=65535)) {
            return Err(ReferenceError::BadPort {
                input: input.to_owned(),
                port: port.to_owned(),
            });
        }
    }
    Ok(())
}

/// Docker's grammar for the address: hex digits and colons only, so no zone
/// (`%eth0`) and no embedded dotted IPv4.
fn is_ipv6(address: &str) -> bool {
    !address.is_empty()
        && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        && address.parse::<Ipv6Addr>().is_ok()
}

/// Labels of letters, digits and inner dashes; IPv4 addresses are such
/// names too, as in Docker's grammar.
fn is_domain(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_path(input: &str, path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(ReferenceError::NoRepository(input.to_owned()));
    }
    // Said apart from other bad characters because it is the usual mistake
    // (`MyOrg/App`), and Docker checks it first too.
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            input: input.to_owned(),
            repository: path.to_owned(),
        });
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ReferenceError::EmptyComponent(input.to_owned()));
        }
        if !is_path_component(component) {
            return Err(ReferenceError::BadComponent {
                input: input.to_owned(),
                component: component.to_owned(),
            });
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*`, walked byte by byte.
fn is_path_component(component: &str) -> bool {
    #[derive(PartialEq)]
    enum After {
        Start,
        Alnum,
        Dot,
        Underscore,
        TwoUnderscores,
        Dashes,
    }
    let mut state = After::Start;
    for b in component.bytes() {
        state = match (b, &state) {
            (b'a'..=b'z' | b'0'..=b'9', _) => After::Alnum,
            (b'.', After::Alnum) => After::Dot,
            (b'_', After::Alnum) => After::Underscore,
            (b'_', After::Underscore) => After::TwoUnderscores,
            (b'-', After::Alnum | After::Dashes) => After::Dashes,
            _ => return false,
        };
    }
    state == After::Alnum
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    tag.len() <= MAX_TAG
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A hostile value cut to a length an error message can carry.
pub fn shown(value: &str) -> String {
    if value.len() <= MAX_SHOWN {
        return value.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !value.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}…", value.get(..end).unwrap_or_default())
}

#[cfg(test)]
#[path = "reference_tests.rs"]
mod tests;
