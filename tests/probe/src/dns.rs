//! `keel-probe dns NAME=ADDRESS...`: a DNS server on UDP port 53 (IPv4
//! and IPv6) for the network tests, answering A and AAAA queries for the
//! names given and NXDOMAIN for any other. busybox's dnsd cannot stand in:
//! it answers AAAA with NOTIMP, which musl's resolver takes as a failure
//! of the whole lookup.

use std::net::{IpAddr, UdpSocket};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The answer to query `q` from `table`, or None for a packet that is no
/// query (answered with silence).
pub fn answer(q: &[u8], table: &[(String, IpAddr)]) -> Option<Vec<u8>> {
    // Header (12 bytes), one question: labels, type, class.
    let header = q.get(..12)?;
    if header[2] & 0x80 != 0 || u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = q.get(at..at + len)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    let kind = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question = q.get(12..at + 4)?;
    let known: Vec<&IpAddr> = table
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, a)| a)
        .collect();
    let records: Vec<&IpAddr> = known
        .iter()
        .copied()
        .filter(|a| match a {
            IpAddr::V4(_) => kind == TYPE_A,
            IpAddr::V6(_) => kind == TYPE_AAAA,
        })
        .collect();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&header[..2]);
    // A response, authoritative, recursion desired copied; NXDOMAIN for a
    // name not in the table, else NOERROR (with no record of a family
    // the name has none of).
    let rcode = if known.is_empty() { 3 } else { 0 };
    out.extend_from_slice(&[0x84 | (header[2] & 0x01), 0x80 | rcode]);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for a in records {
        // The name by a pointer to the question's, type, class IN, TTL 60.
        out.extend_from_slice(&[0xc0, 12]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        let data = match a {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// Serve `table` until killed.
pub fn run(args: &[String]) -> Result<(), String> {
    let table = args
        .iter()
        .map(|a| {
            let (n, ip) = a.split_once('=').ok_or(format!("{a}: not NAME=ADDRESS"))?;
            let ip = ip.parse().map_err(|_| format!("{a}: not an address"))?;
            Ok((n.to_ascii_lowercase(), ip))
        })
        .collect::<Result<Vec<(String, IpAddr)>, String>>()?;
    let v6 = UdpSocket::bind("[::]:53").map_err(|e| format!("[::]:53: {e}"))?;
    // Dual-stack unless the kernel says otherwise; then IPv4 on its own.
    let v4 = UdpSocket::bind("0.0.0.0:53").ok();
    println!("dns: serving {} names", table.len());
    let serve = move |s: UdpSocket| {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if let Some(reply) = buf.get(..n).and_then(|q| answer(q, &table)) {
                let _ = s.send_to(&reply, from);
            }
        }
    };
    if let Some(v4) = v4 {
        let serve4 = serve.clone();
        std::thread::spawn(move || serve4(v4));
    }
    serve(v6);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, kind: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&kind.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn answers_the_family_asked_and_nxdomain_otherwise() {
        let table = vec![("updates.test".to_string(), "10.0.2.100".parse().unwrap())];
        let a = answer(&query("Updates.test", TYPE_A), &table).unwrap();
        assert_eq!(&a[..4], &[0x12, 0x34, 0x85, 0x80]);
        assert_eq!(&a[6..8], &[0, 1], "one answer");
        assert_eq!(&a[a.len() - 4..], &[10, 0, 2, 100]);
        let aaaa = answer(&query("updates.test", TYPE_AAAA), &table).unwrap();
        assert_eq!(
            (aaaa[3], &aaaa[6..8]),
            (0x80, &[0u8, 0][..]),
            "no error, no record"
        );
        let none = answer(&query("other.test", TYPE_A), &table).unwrap();
        assert_eq!(none[3] & 15, 3);
        assert!(answer(&[0; 5], &table).is_none());
        assert!(answer(&query("x", TYPE_A)[..14], &table).is_none());
    }
}
