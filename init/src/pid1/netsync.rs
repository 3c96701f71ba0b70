//! The container networks of the config in force, kept on the host: the
//! bridges, the addresses given to containers, their hosts files and the
//! nf_tables rules (masquerade out, DNAT for published ports, the
//! firewall between networks and towards the host). Worked out by
//! [`crate::net::containers::layout`], put on the host by
//! [`crate::net::containers::Networks::realize`].

use std::time::{Duration, Instant};

use keel_formats::container::NetInterface;

use crate::log;
use crate::net::containers::{layout, RealNet};
use crate::supervisor::Change;

use super::Init;

/// How long a failed network change waits before it is tried again.
const NETS_RETRY: Duration = Duration::from_secs(10);

impl Init {
    /// Bring the container networks to the config in force. A running
    /// container whose interfaces changed (it joined or left a network,
    /// or its network's subnet changed) is restarted on the new ones;
    /// one whose hosts file changed keeps running: the file is rewritten
    /// in place under its bind mount. Containers being prepared get
    /// their interfaces once ready.
    pub(super) fn sync_networks(&mut self, now: Instant) {
        let new = layout(&self.cfg.config, &mut self.cfg.nets.given);
        for (name, uc) in &self.cfg.config.containers {
            let on = crate::net::containers::networks_of(uc);
            if !on.is_empty() && new.interfaces.get(name).is_none_or(|l| l.len() < on.len()) {
                log(format!(
                    "warning: containers.{name}: a network's subnet is full: no address on it"
                ));
            }
        }
        let errors = self.cfg.nets.realize(new, &mut RealNet);
        // What failed is tried again (a tap or a device that was not
        // there yet, a ruleset the kernel refused for lack of memory).
        self.cfg.nets_retry = (!errors.is_empty())
            .then(|| now.checked_add(NETS_RETRY))
            .flatten();
        for e in errors {
            self.warn(format!(
                "container networks: {e} (trying again in {} s)",
                NETS_RETRY.as_secs()
            ));
        }
        let changed: Vec<_> = self
            .sup
            .services()
            .iter()
            .filter(|s| !s.retiring && self.cfg.config.containers.contains_key(&s.name))
            .filter(|s| !self.cfg.preparing.contains_key(&s.name))
            .filter_map(|s| {
                let want = self.interfaces_of(&s.name);
                (s.def.interfaces != want).then(|| {
                    let mut def = s.def.clone();
                    def.interfaces = want;
                    (s.name.clone(), def)
                })
            })
            .collect();
        for (name, def) in changed {
            if self.sup.upsert(&name, def, now) == Change::Replaced {
                log(format!("{name}: its networks changed, restarting"));
            }
        }
    }

    /// When the networks are next tried again, if something failed.
    pub(super) fn nets_deadline(&self) -> Option<Instant> {
        self.cfg.nets_retry
    }

    /// Try again what of the networks failed, once it is time.
    pub(super) fn retry_networks(&mut self) {
        let now = Instant::now();
        if self.cfg.nets_retry.is_some_and(|at| at <= now) {
            self.sync_networks(now);
        }
    }

    /// The interfaces container `name` gets on the networks in force.
    pub(super) fn interfaces_of(&self, name: &str) -> Vec<NetInterface> {
        self.cfg
            .nets
            .current
            .interfaces
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}
