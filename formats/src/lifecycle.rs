//! When a service starts, when it counts as ready, and the order of
//! services: types and checks, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::container::ContainerDef;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Runs for as long as the host does.
    #[default]
    Service,
    /// Runs to completion (a boot task); exit status 0 is success.
    Oneshot,
}

/// How keel-init learns that a service is ready. With no probe a service
/// is ready once it runs its command (a oneshot: once it exits 0).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    /// A command run inside the container's namespaces; exit 0 is ready.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// `host:port` to which a TCP connection from the container's network
    /// namespace must succeed.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A path inside the container that must exist.
    #[serde(default)]
    pub file: Option<String>,
    /// The service writes `READY=1` and a newline to the fd named by
    /// `$KEEL_NOTIFY_FD` (3).
    #[serde(default)]
    pub notify: bool,
    /// How long the service has to become ready.
    #[serde(default = "thirty_seconds")]
    pub deadline_ms: u64,
    /// How often the probe runs until then.
    #[serde(default = "quarter_second")]
    pub interval_ms: u64,
}

fn thirty_seconds() -> u64 {
    30_000
}

fn quarter_second() -> u64 {
    250
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("service {service}: `{key}` names {missing:?}, which is not a service of this image")]
    Missing {
        service: String,
        key: &'static str,
        missing: String,
    },
    #[error("services depend on each other in a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// The longest any wait of a definition may be (a readiness deadline, a
/// stop timeout): a day. keel-init adds these to its clock.
pub const MAX_WAIT_MS: u64 = 86_400_000;

/// Validate a readiness block: exactly one probe, sane timings.
pub fn validate_readiness(r: &Readiness) -> Result<(), String> {
    let probes = usize::from(r.exec.is_some())
        + usize::from(r.tcp.is_some())
        + usize::from(r.file.is_some())
        + usize::from(r.notify);
    if probes != 1 {
        return Err("name exactly one of exec, tcp, file or notify".into());
    }
    if let Some(cmd) = &r.exec {
        if !cmd.first().is_some_and(|c| c.starts_with('/')) {
            return Err("exec must start with an absolute path".into());
        }
    }
    if let Some(addr) = &r.tcp {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "tcp {addr:?} is not an address:port such as 127.0.0.1:80"
            ));
        }
    }
    if let Some(f) = &r.file {
        if !f.starts_with('/') {
            return Err(format!("file {f:?} must be an absolute path"));
        }
    }
    if r.deadline_ms == 0 || r.interval_ms == 0 || r.interval_ms > r.deadline_ms {
        return Err("need 0 < interval_ms <= deadline_ms".into());
    }
    if r.deadline_ms > MAX_WAIT_MS {
        return Err(format!(
            "deadline_ms {} is more than a day ({MAX_WAIT_MS})",
            r.deadline_ms
        ));
    }
    Ok(())
}

/// Check that every `after`/`requires` names a service and that there is no
/// cycle; return the services in an order that respects the dependencies
/// (name order among equals).
pub fn start_order(services: &[(String, ContainerDef)]) -> Result<Vec<String>, GraphError> {
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, def) in services {
        let mut set = BTreeSet::new();
        for (key, list) in [("after", &def.after), ("requires", &def.requires)] {
            for d in list {
                if !names.contains(d.as_str()) {
                    return Err(GraphError::Missing {
                        service: name.clone(),
                        key,
                        missing: d.clone(),
                    });
                }
                set.insert(d.as_str());
            }
        }
        deps.insert(name, set);
    }
    let mut order = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < names.len() {
        let next: Vec<&str> = names
            .iter()
            .filter(|n| !done.contains(*n) && deps[*n].iter().all(|d| done.contains(d)))
            .copied()
            .collect();
        if next.is_empty() {
            return Err(GraphError::Cycle(find_cycle(&deps, &done)));
        }
        for n in next {
            done.insert(n);
            order.push(n.to_string());
        }
    }
    Ok(order)
}

/// A cycle among the services not yet ordered, for the error message.
fn find_cycle(deps: &BTreeMap<&str, BTreeSet<&str>>, done: &BTreeSet<&str>) -> Vec<String> {
    let Some(start) = deps.keys().find(|n| !done.contains(*n)) else {
        return Vec::new();
    };
    let mut path: Vec<&str> = vec![start];
    loop {
        let last = path[path.len() - 1];
        let Some(next) = deps[last].iter().find(|d| !done.contains(*d)) else {
            return Vec::new();
        };
        if let Some(i) = path.iter().position(|p| p == next) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(after: &[&str], requires: &[&str]) -> ContainerDef {
        let list = |l: &[&str]| {
            l.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ContainerDef::parse(&format!(
            "command = [\"/x\"]\nafter = [{}]\nrequires = [{}]\n[rootfs]\ncontents = []\n",
            list(after),
            list(requires)
        ))
        .unwrap()
    }

    #[test]
    fn orders_a_chain_and_names_missing_and_cyclic_dependencies() {
        let s = vec![
            ("c".to_string(), def(&[], &["b"])),
            ("b".to_string(), def(&["a"], &[])),
            ("a".to_string(), def(&[], &[])),
            ("z".to_string(), def(&[], &[])),
        ];
        assert_eq!(start_order(&s).unwrap(), ["a", "z", "b", "c"]);
        let missing = vec![("a".to_string(), def(&["nope"], &[]))];
        assert_eq!(
            start_order(&missing),
            Err(GraphError::Missing {
                service: "a".into(),
                key: "after",
                missing: "nope".into()
            })
        );
        let cyc = vec![
            ("a".to_string(), def(&["b"], &[])),
            ("b".to_string(), def(&[], &["c"])),
            ("c".to_string(), def(&["a"], &[])),
            ("d".to_string(), def(&[], &[])),
        ];
        let err = start_order(&cyc).unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert!(err.to_string().contains("a -> b -> c -> a"));
    }

    #[test]
    fn readiness_needs_exactly_one_probe() {
        let r = |t: &str| toml::from_str::<Readiness>(t).unwrap();
        assert!(validate_readiness(&r("tcp = \"127.0.0.1:80\"")).is_ok());
        assert!(validate_readiness(&r("notify = true")).is_ok());
        assert!(validate_readiness(&r("notify = true\nfile = \"/x\"")).is_err());
        assert!(validate_readiness(&r("file = \"/run/ready\"\nexec = [\"/bin/true\"]")).is_err());
        assert!(validate_readiness(&r("deadline_ms = 5")).is_err());
        assert!(validate_readiness(&r("tcp = \"localhost\"")).is_err());
        assert!(
            validate_readiness(&r("file = \"/x\"\ninterval_ms = 100\ndeadline_ms = 50")).is_err()
        );
        // Added to keel-init's clock: bounded.
        let e =
            validate_readiness(&r("notify = true\ndeadline_ms = 9000000000000000000")).unwrap_err();
        assert!(e.contains("more than a day"), "{e}");
    }
}
