//! What each host says about itself under `/keel/fleet/GROUP/HOST`: a
//! JSON [`HostReport`] attached to a lease of three report intervals, so
//! that a host that stops reporting drops out of the fleet by itself. In
//! steady state a report is one lease renewal; the value is written again
//! only when it changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use keel_api::init::Health;
use keel_api::update::{Outcome, UpdateState};

use crate::etcd::EtcdError;
use crate::kv::{Kv, LeaseId};
use crate::lock::PREFIX;

/// The folder of the reports; a group's are under `GROUP/`.
pub fn fleet_prefix() -> String {
    format!("{PREFIX}fleet/")
}

pub fn report_key(group: &str, host: &str) -> String {
    format!("{PREFIX}fleet/{group}/{host}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub group: String,
    pub version: String,
    pub slot: String,
    pub health: Health,
    pub update: UpdateState,
    /// The last update this host tried, and what became of it.
    pub outcome: Option<Outcome>,
    /// The host's place in staged rollouts (of 10000).
    pub place: u32,
    /// Its turn in the last rollout it saw, in words.
    pub wave: Option<String>,
    /// It holds a reboot slot: it is rebooting into an update, or has
    /// not yet passed the health gate after one.
    pub rebooting: bool,
}

/// Keeps one host's report in etcd.
#[derive(Debug)]
pub struct Reporter {
    key: String,
    ttl_s: u64,
    lease: Option<LeaseId>,
    /// What etcd holds, as far as this reporter knows.
    written: Option<Vec<u8>>,
}

impl Reporter {
    /// Reports every `interval_s` seconds keep a lease of three intervals.
    pub fn new(group: &str, host: &str, interval_s: u64) -> Reporter {
        Reporter {
            key: report_key(group, host),
            ttl_s: interval_s.saturating_mul(3),
            lease: None,
            written: None,
        }
    }

    /// Renew the lease and write `r` if etcd does not hold it yet.
    pub fn report(&mut self, kv: &dyn Kv, r: &HostReport) -> Result<(), EtcdError> {
        let value = serde_json::to_vec(r).unwrap_or_default();
        if let Some(l) = self.lease {
            if kv.keep_alive(l)?.is_none() {
                // Expired (etcd was away longer than the TTL): the key
                // went with it.
                self.lease = None;
            }
        }
        let lease = match self.lease {
            Some(l) => l,
            None => {
                self.written = None;
                let l = kv.grant(self.ttl_s)?;
                self.lease = Some(l);
                l
            }
        };
        if self.written.as_deref() != Some(&value) {
            if let Err(e) = kv.put(&self.key, &value, lease) {
                self.lease = None;
                return Err(e);
            }
            self.written = Some(value);
        }
        Ok(())
    }
}

/// The fleet as etcd has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fleet {
    pub hosts: Vec<HostReport>,
    /// Reboot slots held: (group, host).
    pub rebooting: Vec<(String, String)>,
    /// Keys whose value is not a report, by key.
    pub unreadable: Vec<String>,
}

impl Fleet {
    /// Read every report, and every group's reboot slots; `group` narrows
    /// both to one group.
    pub fn read(kv: &dyn Kv, group: Option<&str>) -> Result<Fleet, EtcdError> {
        let mut f = Fleet::default();
        let base = match group {
            Some(g) => format!("{}{g}/", fleet_prefix()),
            None => fleet_prefix(),
        };
        for k in kv.range(&base)? {
            match serde_json::from_slice::<HostReport>(&k.value) {
                Ok(r) => f.hosts.push(r),
                Err(_) => f.unreadable.push(k.key),
            }
        }
        let reboot = format!("{PREFIX}reboot/");
        for k in kv.range(&match group {
            Some(g) => format!("{reboot}{g}/"),
            None => reboot.clone(),
        })? {
            // A key etcd should not have returned is skipped, not sliced.
            let Some(rest) = k.key.strip_prefix(reboot.as_str()) else {
                f.unreadable.push(k.key);
                continue;
            };
            let g = rest.split('/').next().unwrap_or_default().to_string();
            f.rebooting
                .push((g, String::from_utf8_lossy(&k.value).into_owned()));
        }
        Ok(f)
    }

    /// Hosts per version, in version order.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for h in &self.hosts {
            *m.entry(h.version.clone()).or_default() += 1;
        }
        m
    }

    /// Hosts that are unhealthy, or whose last update failed.
    pub fn failing(&self) -> Vec<&HostReport> {
        self.hosts.iter().filter(|h| failing(h)).collect()
    }

    /// How `version` fares: hosts that took it (run it, or tried it and
    /// failed) and those of them that failed.
    pub fn took(&self, version: &str) -> (usize, usize) {
        let mut took = 0;
        let mut failed = 0;
        for h in &self.hosts {
            let tried = h.outcome.as_ref().filter(|o| o.version == version);
            if h.version == version || tried.is_some() {
                took += 1;
                let bad = tried.is_some_and(|o| o.kind.failed())
                    || (h.version == version && h.health == Health::Failed);
                if bad {
                    failed += 1;
                }
            }
        }
        (took, failed)
    }
}

fn failing(h: &HostReport) -> bool {
    h.health == Health::Failed
        || h.outcome
            .as_ref()
            .is_some_and(|o| o.kind.failed() && o.version != h.version)
}

/// The fleet as a table with its totals, for `keel fleet status`.
pub fn table(f: &Fleet) -> String {
    use std::fmt::Write as _;
    let mut hosts: Vec<&HostReport> = f.hosts.iter().collect();
    hosts.sort_by(|a, b| (&a.group, &a.host).cmp(&(&b.group, &b.host)));
    let mut rows = vec![[
        "HOST".to_string(),
        "GROUP".into(),
        "VERSION".into(),
        "SLOT".into(),
        "HEALTH".into(),
        "UPDATE".into(),
        "LAST UPDATE".into(),
    ]];
    for h in hosts {
        let health = match h.health {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Failed => "failed",
        };
        let update = if f
            .rebooting
            .iter()
            .any(|(g, n)| *g == h.group && *n == h.host)
        {
            "rebooting".to_string()
        } else {
            h.update.to_string()
        };
        let last = h.outcome.as_ref().map_or_else(
            || "-".to_string(),
            |o| {
                let kind = match o.kind {
                    keel_api::update::OutcomeKind::Updated => "updated to",
                    keel_api::update::OutcomeKind::RolledBack => "rolled back from",
                    keel_api::update::OutcomeKind::Failed => "failed",
                };
                format!("{kind} {}", o.version)
            },
        );
        rows.push([
            h.host.clone(),
            h.group.clone(),
            h.version.clone(),
            h.slot.clone(),
            health.into(),
            update,
            last,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let versions: Vec<String> = f
        .versions()
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\n{} hosts; versions: {}",
        f.hosts.len(),
        if versions.is_empty() {
            "-".to_string()
        } else {
            versions.join(", ")
        }
    );
    let failing: Vec<&str> = f.failing().iter().map(|h| h.host.as_str()).collect();
    let _ = writeln!(out, "failing: {} {failing:?}", failing.len());
    let rebooting: Vec<&str> = f.rebooting.iter().map(|(_, h)| h.as_str()).collect();
    let _ = writeln!(out, "rebooting: {} {rebooting:?}", rebooting.len());
    for k in &f.unreadable {
        let _ = writeln!(out, "unreadable report: {k}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::fake::Mem;
    use keel_api::update::OutcomeKind;

    fn host(name: &str, version: &str) -> HostReport {
        HostReport {
            host: name.into(),
            group: "web".into(),
            version: version.into(),
            slot: "a".into(),
            health: Health::Healthy,
            update: UpdateState::Idle,
            outcome: None,
            place: 42,
            wave: None,
            rebooting: false,
        }
    }

    #[test]
    fn reports_renew_and_write_only_changes() {
        let kv = Mem::default();
        let mut r = Reporter::new("web", "a", 60);
        let mut rep = host("a", "0.1.0");
        r.report(&kv, &rep).unwrap();
        r.report(&kv, &rep).unwrap();
        assert_eq!(kv.leases.borrow().len(), 1, "one lease, renewed");
        rep.version = "0.2.0".into();
        r.report(&kv, &rep).unwrap();
        let f = Fleet::read(&kv, None).unwrap();
        assert_eq!(f.hosts, [rep.clone()]);
        // The lease ran out (etcd was away): a new one, and the report again.
        let lease = *kv.leases.borrow().iter().next().unwrap();
        kv.expire(lease);
        assert!(Fleet::read(&kv, None).unwrap().hosts.is_empty());
        r.report(&kv, &rep).unwrap();
        assert_eq!(Fleet::read(&kv, Some("web")).unwrap().hosts, [rep]);
        assert!(Fleet::read(&kv, Some("db")).unwrap().hosts.is_empty());
    }

    #[test]
    fn counts_what_took_a_release_and_what_failed() {
        let kv = Mem::default();
        let mut b = host("b", "0.1.0");
        b.outcome = Some(Outcome {
            kind: OutcomeKind::RolledBack,
            version: "0.2.0".into(),
            at: 1,
        });
        let mut c = host("c", "0.2.0");
        c.outcome = Some(Outcome {
            kind: OutcomeKind::Updated,
            version: "0.2.0".into(),
            at: 1,
        });
        for h in [host("a", "0.1.0"), b, c] {
            kv.put(
                &report_key("web", &h.host),
                &serde_json::to_vec(&h).unwrap(),
                0,
            )
            .unwrap();
        }
        kv.put(&report_key("web", "junk"), b"{", 0).unwrap();
        kv.put("/keel/reboot/web/slot/0", b"c", 0).unwrap();
        let f = Fleet::read(&kv, None).unwrap();
        assert_eq!(f.took("0.2.0"), (2, 1));
        assert_eq!(f.took("0.3.0"), (0, 0));
        assert_eq!(f.versions().get("0.1.0"), Some(&2));
        assert_eq!(f.unreadable, ["/keel/fleet/web/junk"]);
        assert_eq!(f.rebooting, [("web".to_string(), "c".to_string())]);
        let t = table(&f);
        assert!(t.contains("rolled back from 0.2.0"), "{t}");
        assert!(t.contains("failing: 1 [\"b\"]"), "{t}");
        assert!(t.contains("rebooting: 1 [\"c\"]"), "{t}");
        assert!(t.contains("3 hosts; versions: 0.1.0: 2, 0.2.0: 1"), "{t}");
    }
}
