//! The host config's typed values: each is read from the text a person
//! writes, once, when the file is read (with the messages of
//! [`super::units`]), and renders back to text that reads as the same
//! value, so that a config kept as the last good one reads back as it was.
//! Consumers take them as they are and parse nothing again.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::units::{
    parse_cidr, parse_duration, parse_ip, parse_port, parse_port_range, parse_size, parse_window,
};

/// `TryFrom<String>` (what serde reads through) and `Display` (what it
/// writes through `String`) for a value type.
macro_rules! text_value {
    ($t:ty, $parse:expr) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $parse(s.as_str())
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $parse(s)
            }
        }
    };
}

/// An IP address: `10.0.0.1`, `fd00::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ip(pub IpAddr);

text_value!(Ip, |s: &str| parse_ip(s).map(Ip));

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An address with its prefix length: `10.0.0.5/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

text_value!(Cidr, |s: &str| parse_cidr(s)
    .map(|(addr, prefix)| Cidr { addr, prefix }));

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether the address is the subnet's own: no bits past the prefix.
    pub fn is_network(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                u32::from(a)
                    .checked_shl(u32::from(self.prefix))
                    .unwrap_or(0)
                    == 0
            }
            IpAddr::V6(a) => {
                u128::from(a)
                    .checked_shl(u32::from(self.prefix))
                    .unwrap_or(0)
                    == 0
            }
        }
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = self.prefix.min(other.prefix);
        let head = |c: &Cidr| -> Option<u128> {
            let (bits, width) = match c.addr {
                IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
                IpAddr::V6(a) => (u128::from(a), 128u32),
            };
            // The first `shorter` bits, aligned at the top of the family's width.
            Some(
                bits.checked_shr(width.checked_sub(u32::from(shorter))?)
                    .unwrap_or(0),
            )
        };
        self.addr.is_ipv4() == other.addr.is_ipv4() && head(self) == head(other)
    }
}

/// `[network.containers] subnet6`: an IPv6 subnet, or `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet6(pub Option<Cidr>);

text_value!(Subnet6, |s: &str| match s {
    "none" => Ok(Subnet6(None)),
    _ => parse_cidr(s)
        .map(|(addr, prefix)| Subnet6(Some(Cidr { addr, prefix })))
        .map_err(|e| format!("{e}, or \"none\"")),
});

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(c) => c.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// A MAC address, `52:54:00:12:34:56` (either case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

fn parse_mac(s: &str) -> Result<Mac, String> {
    keel_tap::parse_mac(s)
        .map(Mac)
        .ok_or_else(|| format!("{s:?} is not a MAC address like 52:54:00:12:34:56"))
}

text_value!(Mac, parse_mac);

impl fmt::Display for Mac {
    /// Lower case, as sysfs writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A size with a unit: `64M`, `1.5GiB`, `100MB` (see [`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bytes(pub u64);

text_value!(Bytes, |s: &str| parse_size(s).map(Bytes));

impl fmt::Display for Bytes {
    /// In the largest binary unit that holds it exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

/// A duration in whole seconds: `90s`, `30m`, `1h30m`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Seconds(pub u64);

text_value!(Seconds, |s: &str| parse_duration(s).map(Seconds));

impl fmt::Display for Seconds {
    /// In the largest unit that holds it exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (size, unit) in [(86_400, "d"), (3600, "h"), (60, "m")] {
            if n != 0 && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}s")
    }
}

/// A published port: `8080:80` (TCP) or `5353:53/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortMap {
    /// Where the host listens.
    pub host: u16,
    /// Where the container listens, on its loopback.
    pub container: u16,
    pub udp: bool,
}

text_value!(PortMap, |s: &str| parse_port(s).map(
    |(host, container, udp)| {
        PortMap {
            host,
            container,
            udp,
        }
    }
));

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.container)?;
        if self.udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

/// Ports of the host for the firewall: `22`, `22/tcp`, `8000-8100/udp`;
/// with no protocol, TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    /// `Some(true)`: UDP only, `Some(false)`: TCP only, `None`: both.
    pub udp: Option<bool>,
}

text_value!(PortRange, |s: &str| parse_port_range(s)
    .map(|(first, last, udp)| PortRange { first, last, udp }));

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first)?;
        if self.last != self.first {
            write!(f, "-{}", self.last)?;
        }
        match self.udp {
            Some(true) => f.write_str("/udp"),
            Some(false) => f.write_str("/tcp"),
            None => Ok(()),
        }
    }
}

/// A folder of the host bound into a container:
/// `/var/SOURCE:/TARGET[:ro|:rw]`. Where the paths may lead is the
/// validation's to check; this is the shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Volume {
    pub source: String,
    pub target: String,
    pub readonly: bool,
}

fn parse_volume(v: &str) -> Result<Volume, String> {
    let (source, target, readonly) = match v.split(':').collect::<Vec<_>>().as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        [_, _, mode] => return Err(format!("{v:?}: mode {mode:?} is not ro or rw")),
        _ => return Err(format!("{v:?} is not /var/SOURCE:/TARGET[:ro|:rw]")),
    };
    Ok(Volume {
        source: source.to_string(),
        target: target.to_string(),
        readonly,
    })
}

text_value!(Volume, parse_volume);

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.target)?;
        if self.readonly {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// A daily window, `HH:MM-HH:MM` (UTC), as minutes of the day; the end
/// may come before the start (the window spans midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    pub start: u16,
    pub end: u16,
}

text_value!(Window, |s: &str| parse_window(s)
    .map(|(start, end)| Window { start, end }));

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| (m / 60, m % 60);
        let ((a, b), (c, d)) = (hm(self.start), hm(self.end));
        write!(f, "{a:02}:{b:02}-{c:02}:{d:02}")
    }
}

/// A container's `image`: a path under /var (an OCI image layout or a
/// `docker save` archive put there by hand), or a registry reference
/// (`registry.example:5000/team/app:1.2`, `nginx`, `...@sha256:…`).
/// Paths start with '/', references never do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ImageSource {
    Path(String),
    Registry(crate::reference::Reference),
}

text_value!(ImageSource, |s: &str| if s.starts_with('/') {
    Ok(ImageSource::Path(s.to_string()))
} else if s.starts_with("var/") {
    // It would read as the Docker Hub image docker.io/var/…, a namespace
    // anyone may own: almost surely a path with its '/' missing.
    Err(format!(
        "{s:?}: a path starts with /var/; for the Docker Hub image, write docker.io/{s}"
    ))
} else {
    s.parse()
        .map(ImageSource::Registry)
        .map_err(|e: crate::reference::ReferenceError| e.to_string())
});

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Path(p) => f.write_str(p),
            ImageSource::Registry(r) => r.fmt(f),
        }
    }
}

/// A password or token: written to the file as it is (the last good
/// config must read back the same), shown nowhere else.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

/// Read by hand: serde's own message for a wrong type quotes the value
/// (`invalid type: integer 12345678`), and this value is a password.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("a password is a string (in quotes)"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("a password is a string (in quotes)"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a password is a string (in quotes)"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a password is a string (in quotes)"))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value renders to text that reads as the same value.
    fn round_trips<T>(texts: &[&str])
    where
        T: std::str::FromStr<Err = String> + fmt::Display + PartialEq + fmt::Debug,
    {
        for text in texts {
            let v: T = text.parse().unwrap();
            assert_eq!(v.to_string().parse::<T>().unwrap(), v, "{text}");
        }
    }

    #[test]
    fn values_render_to_what_reads_back_the_same() {
        round_trips::<Ip>(&["10.0.0.1", "fd00::1"]);
        round_trips::<Cidr>(&["10.0.0.5/24", "fd00::5/64"]);
        round_trips::<Subnet6>(&["fd88::/64", "none"]);
        round_trips::<Mac>(&["52:54:00:12:34:56", "AA:BB:CC:DD:EE:FF"]);
        round_trips::<Bytes>(&["64M", "1.5G", "100MB", "512B", "1K", "0B"]);
        round_trips::<Seconds>(&["90s", "1h30m", "1d", "30m", "0s"]);
        round_trips::<PortMap>(&["8080:80", "5353:53/udp", "80:80/tcp"]);
        round_trips::<PortRange>(&["22", "22/tcp", "8000-8100/udp", "1-65535"]);
        for bad in ["0", "9-8", "22/sctp", "a-b", "70000", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        round_trips::<Volume>(&["/var/a:/a", "/var/a:/a:ro", "/var/a:/a:rw"]);
        round_trips::<Window>(&["02:00-04:30", "23:00-01:00"]);
        round_trips::<ImageSource>(&["/var/lib/app", "nginx", "r.example:5000/a/b:1"]);
        assert_eq!(
            "nginx".parse::<ImageSource>().unwrap().to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!("1.5G".parse::<Bytes>().unwrap().to_string(), "1536M");
        assert_eq!("1h30m".parse::<Seconds>().unwrap().to_string(), "90m");
        assert_eq!(
            "AA:BB:CC:DD:EE:FF".parse::<Mac>().unwrap().to_string(),
            "aa:bb:cc:dd:ee:ff"
        );
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert!("52:54:00:12:34".parse::<Mac>().unwrap_err().contains("MAC"));
        assert!("52:54:00:12:34:5g".parse::<Mac>().is_err());
        assert!("52:54:00:12:34:56:78".parse::<Mac>().is_err());
        assert!("+a:54:00:12:34:56".parse::<Mac>().is_err());
        assert!("/var/a".parse::<Volume>().unwrap_err().contains("/TARGET"));
        assert!("/var/a:/a:rx".parse::<Volume>().unwrap_err().contains("rx"));
        assert!("64".parse::<Bytes>().unwrap_err().contains("needs a unit"));
        assert!("Team/App".parse::<ImageSource>().is_err());
        assert!("var/lib/app"
            .parse::<ImageSource>()
            .unwrap_err()
            .contains("/var/"));
        assert!("docker.io/var/lib/app".parse::<ImageSource>().is_ok());
        assert!("https://r.example/app".parse::<ImageSource>().is_err());
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<redacted>");
    }
}
