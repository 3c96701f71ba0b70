//! The reboot semaphore: `max` slots per group, each a key
//! `/keel/reboot/GROUP/slot/I` (I < max) whose value is the holder's host
//! name and which hangs on the holder's lease. Taking a slot is one
//! transaction that creates the key only if it does not exist, so two
//! hosts can never hold the same slot; a slot whose holder died frees
//! itself when the lease runs out. The holder keeps the lease alive
//! across its reboot (the lease ID is in its state) and gives the slot
//! back once the new slot passed the health gate, or once it has rolled
//! back. As locksmith's semaphore, but with etcd v3 leases instead of a
//! holders list, so that a dead host cannot hold a slot for ever.

use serde::{Deserialize, Serialize};

use crate::etcd::EtcdError;
use crate::kv::{Kv, LeaseId};

/// Where every key keel writes in etcd lives.
pub const PREFIX: &str = "/keel/";

/// The folder of a group's reboot slots.
pub fn slots_prefix(group: &str) -> String {
    format!("{PREFIX}reboot/{group}/slot/")
}

/// A reboot slot a host holds: what it keeps in its state across the
/// reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    pub key: String,
    pub lease: LeaseId,
}

/// One host's view of its group's semaphore.
#[derive(Debug, Clone)]
pub struct RebootLock {
    pub group: String,
    pub host: String,
    pub max: u32,
    /// Seconds a slot outlives a holder that stopped renewing it.
    pub ttl_s: u64,
}

/// What an attempt to take a slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Taken(Held),
    /// Every slot is held, by these hosts.
    Full(Vec<String>),
}

/// Who holds a group's slots: (slot key, host).
pub fn holders(kv: &dyn Kv, group: &str) -> Result<Vec<(String, String)>, EtcdError> {
    Ok(kv
        .range(&slots_prefix(group))?
        .into_iter()
        .map(|k| (k.key, String::from_utf8_lossy(&k.value).into_owned()))
        .collect())
}

impl RebootLock {
    /// Take a free slot, if there is one. A slot this host already holds
    /// (it took it, then stopped before it could say so) is its own again.
    pub fn acquire(&self, kv: &dyn Kv) -> Result<Attempt, EtcdError> {
        let held = kv.range(&slots_prefix(&self.group))?;
        if let Some(mine) = held.iter().find(|k| k.value == self.host.as_bytes()) {
            return Ok(Attempt::Taken(Held {
                key: mine.key.clone(),
                lease: mine.lease,
            }));
        }
        let names = || {
            held.iter()
                .map(|k| String::from_utf8_lossy(&k.value).into_owned())
                .collect()
        };
        // Slots at or above `max` count too: a host configured with a
        // larger max still holds one, and this host waits for it.
        if held.len() >= self.max as usize {
            return Ok(Attempt::Full(names()));
        }
        let lease = kv.grant(self.ttl_s)?;
        let prefix = slots_prefix(&self.group);
        for i in 0..self.max {
            let key = format!("{prefix}{i}");
            if held.iter().any(|k| k.key == key) {
                continue;
            }
            if kv.create(&key, self.host.as_bytes(), lease)? {
                return Ok(Attempt::Taken(Held { key, lease }));
            }
        }
        // Others took the free slots since the range: give the lease back.
        kv.revoke(lease)?;
        Ok(Attempt::Full(names()))
    }

    /// Renew the slot's lease; whether the slot is still this host's.
    pub fn renew(&self, kv: &dyn Kv, held: &Held) -> Result<bool, EtcdError> {
        Ok(kv.keep_alive(held.lease)?.is_some())
    }

    /// Give the slot back.
    pub fn release(&self, kv: &dyn Kv, held: &Held) -> Result<(), EtcdError> {
        // Only if it still names this host: after the lease ran out,
        // another host may hold the same key under its own lease.
        kv.delete_if(&held.key, self.host.as_bytes())?;
        kv.revoke(held.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::fake::Mem;

    fn lock(host: &str, max: u32) -> RebootLock {
        RebootLock {
            group: "web".into(),
            host: host.into(),
            max,
            ttl_s: 600,
        }
    }

    #[test]
    fn at_most_max_hold_a_slot() {
        let kv = Mem::default();
        let Attempt::Taken(a) = lock("a", 2).acquire(&kv).unwrap() else {
            panic!("a free slot")
        };
        assert_eq!(a.key, "/keel/reboot/web/slot/0");
        let Attempt::Taken(b) = lock("b", 2).acquire(&kv).unwrap() else {
            panic!("a free slot")
        };
        assert_eq!(b.key, "/keel/reboot/web/slot/1");
        assert_eq!(
            lock("c", 2).acquire(&kv).unwrap(),
            Attempt::Full(vec!["a".into(), "b".into()])
        );
        // A host that asks again gets back the slot it holds.
        assert_eq!(
            lock("a", 2).acquire(&kv).unwrap(),
            Attempt::Taken(a.clone())
        );
        lock("a", 2).release(&kv, &a).unwrap();
        let Attempt::Taken(c) = lock("c", 2).acquire(&kv).unwrap() else {
            panic!("a's slot is free")
        };
        assert_eq!(c.key, "/keel/reboot/web/slot/0");
        assert_eq!(holders(&kv, "web").unwrap().len(), 2);
        // Other groups are separate.
        assert!(matches!(
            RebootLock {
                group: "db".into(),
                ..lock("d", 1)
            }
            .acquire(&kv)
            .unwrap(),
            Attempt::Taken(_)
        ));
    }

    #[test]
    fn a_dead_holder_frees_its_slot_when_its_lease_ends() {
        let kv = Mem::default();
        let Attempt::Taken(a) = lock("a", 1).acquire(&kv).unwrap() else {
            panic!()
        };
        assert!(matches!(
            lock("b", 1).acquire(&kv).unwrap(),
            Attempt::Full(_)
        ));
        assert!(lock("a", 1).renew(&kv, &a).unwrap());
        kv.expire(a.lease);
        assert!(!lock("a", 1).renew(&kv, &a).unwrap(), "lost");
        let Attempt::Taken(b) = lock("b", 1).acquire(&kv).unwrap() else {
            panic!("a's lease ended")
        };
        // a coming back late does not take b's slot away.
        lock("a", 1).release(&kv, &a).unwrap();
        assert_eq!(holders(&kv, "web").unwrap(), [(b.key, "b".to_string())]);
    }

    #[test]
    fn a_lower_max_waits_for_holders_above_it() {
        let kv = Mem::default();
        for h in ["a", "b", "c"] {
            assert!(matches!(
                lock(h, 3).acquire(&kv).unwrap(),
                Attempt::Taken(_)
            ));
        }
        lock("a", 3)
            .release(
                &kv,
                &Held {
                    key: "/keel/reboot/web/slot/0".into(),
                    lease: 1,
                },
            )
            .unwrap();
        // Two held (slots 1 and 2), max 2: full, though slot 0 is free.
        assert!(matches!(
            lock("d", 2).acquire(&kv).unwrap(),
            Attempt::Full(_)
        ));
    }

    #[test]
    fn etcd_down_is_an_error_not_a_slot() {
        let kv = Mem::default();
        kv.down.set(true);
        assert!(matches!(
            lock("a", 1).acquire(&kv),
            Err(EtcdError::Unreachable { .. })
        ));
        kv.down.set(false);
        assert!(kv.leases.borrow().is_empty(), "nothing granted");
    }
}
