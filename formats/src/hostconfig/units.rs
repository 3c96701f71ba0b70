//! Values with units as people write them: sizes (`64M`, `1.5GiB`),
//! durations (`90s`, `1h30m`), addresses and CIDRs, ports.

use std::net::IpAddr;

/// Bytes in a size: `K`, `M`, `G`, `T` and `KiB`..`TiB` are powers of
/// 1024 (as Docker and most people mean them), `KB`..`TB` powers of 1000,
/// `B` bytes. A unit is required: a bare number is a likely mistake.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit (B, K, M, G, T, KiB.., KB..)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "K" | "k" | "KiB" => 1024.0,
        "M" | "m" | "MiB" => 1024.0 * 1024.0,
        "G" | "g" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "t" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (B, K, M, G, T, KiB.., KB..)"
            ))
        }
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Seconds in a duration: one or more `<integer><unit>` with units `s`,
/// `m`, `h`, `d` (`90s`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration like 90s, 30m, 6h, 1d or 1h30m");
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(bad());
    }
    Ok(total)
}

/// An address with its prefix length: `10.0.0.5/24`, `fd00::5/64`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (10.0.0.5/24)"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{a:?} in {s:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("prefix {p:?} in {s:?} is not 0..={max}"))?;
    Ok((addr, prefix))
}

pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// A published port: `HOST:CONTAINER`, optionally `/tcp` or `/udp`.
/// Returns (host port, container port, udp).
pub fn parse_port(s: &str) -> Result<(u16, u16, bool), String> {
    let (ports, udp) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, false),
        Some((p, "udp")) => (p, true),
        Some((_, proto)) => return Err(format!("{s:?}: protocol {proto:?} is not tcp or udp")),
        None => (s, false),
    };
    let (h, c) = ports
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:CONTAINER (8080:80)"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{p:?} in {s:?} is not a port 1..=65535"))
    };
    Ok((port(h)?, port(c)?, udp))
}

/// `22`, `22/tcp`, `8000-8100/udp`: the first and last port and the
/// protocol, if one is given (`Some(true)` for UDP).
pub fn parse_port_range(s: &str) -> Result<(u16, u16, Option<bool>), String> {
    let (ports, udp) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, Some(false)),
        Some((p, "udp")) => (p, Some(true)),
        Some((_, proto)) => return Err(format!("{s:?}: protocol {proto:?} is not tcp or udp")),
        None => (s, None),
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{p:?} in {s:?} is not a port 1..=65535"))
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if first > last {
        return Err(format!("{s:?}: the range ends before it starts"));
    }
    Ok((first, last, udp))
}

/// `HH:MM-HH:MM`, as minutes of the day (the end may be before the start:
/// the window spans midnight).
pub fn parse_window(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not HH:MM-HH:MM (02:00-04:00)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
    };
    let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!("{s:?} is an empty window"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_need_a_unit_and_know_binary_from_decimal() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(
            parse_size("64").unwrap_err(),
            "\"64\" needs a unit (B, K, M, G, T, KiB.., KB..)"
        );
        assert!(parse_size("64X")
            .unwrap_err()
            .contains("unknown unit \"X\""));
        assert!(parse_size("M").unwrap_err().contains("number"));
    }

    #[test]
    fn durations_add_up_their_parts() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1d"), Ok(86400));
        for bad in ["", "10", "h", "5w", "1.5h", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_prefixes_ports_and_windows() {
        assert!(parse_cidr("10.0.0.5/24").is_ok());
        assert!(parse_cidr("fd00::5/64").is_ok());
        assert!(parse_cidr("10.0.0.5/33").unwrap_err().contains("0..=32"));
        assert!(parse_cidr("10.0.0.5")
            .unwrap_err()
            .contains("ADDRESS/PREFIX"));
        assert!(parse_cidr("10.0.0.300/8")
            .unwrap_err()
            .contains("not an IP"));
        assert_eq!(parse_port("8080:80"), Ok((8080, 80, false)));
        assert_eq!(parse_port("53:53/udp"), Ok((53, 53, true)));
        assert!(parse_port("0:80").is_err());
        assert!(parse_port("80").is_err());
        assert!(parse_port("80:80/sctp").unwrap_err().contains("sctp"));
        assert_eq!(parse_window("02:00-04:30"), Ok((120, 270)));
        assert_eq!(parse_window("23:00-01:00"), Ok((1380, 60)));
        assert!(parse_window("2:00-4:00").is_err());
        assert!(parse_window("02:00-02:00").unwrap_err().contains("empty"));
    }
}
