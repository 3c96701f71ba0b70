//! The seam between keel's coordination logic and etcd: the few calls the
//! lock and the reports make. [`crate::Etcd`] is the real one; the unit
//! tests run the same logic against an in-memory store.

use crate::etcd::EtcdError;

pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0: none.
    pub lease: LeaseId,
    pub create_revision: i64,
    pub mod_revision: i64,
}

pub trait Kv {
    /// Every key under `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError>;
    /// Set `key`, attached to `lease` (0: none).
    fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<(), EtcdError>;
    /// Set `key` only if it does not exist; whether it was set.
    fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<bool, EtcdError>;
    /// Delete `key` only if it holds `value`; whether it was deleted.
    fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError>;
    fn grant(&self, ttl_s: u64) -> Result<LeaseId, EtcdError>;
    /// Renew `lease`; its TTL, or none if it has expired.
    fn keep_alive(&self, lease: LeaseId) -> Result<Option<u64>, EtcdError>;
    /// End `lease` and delete its keys.
    fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError>;
}

#[cfg(test)]
pub mod fake {
    //! etcd's semantics for the calls above, in memory, with a switch
    //! that makes it unreachable and a way to expire a lease.

    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[derive(Debug, Default)]
    pub struct Mem {
        pub keys: RefCell<BTreeMap<String, (Vec<u8>, LeaseId)>>,
        pub leases: RefCell<BTreeSet<LeaseId>>,
        next: Cell<LeaseId>,
        pub down: Cell<bool>,
    }

    impl Mem {
        fn up(&self) -> Result<(), EtcdError> {
            if self.down.get() {
                Err(EtcdError::Unreachable {
                    tried: vec!["mem: down".into()],
                })
            } else {
                Ok(())
            }
        }

        /// What etcd does when a lease's TTL runs out.
        pub fn expire(&self, lease: LeaseId) {
            self.leases.borrow_mut().remove(&lease);
            self.keys.borrow_mut().retain(|_, (_, l)| *l != lease);
        }

        fn check_lease(&self, lease: LeaseId) -> Result<(), EtcdError> {
            if lease != 0 && !self.leases.borrow().contains(&lease) {
                return Err(EtcdError::Refused {
                    endpoint: "mem".into(),
                    call: "put",
                    status: 400,
                    message: "etcdserver: requested lease not found".into(),
                });
            }
            Ok(())
        }
    }

    impl Kv for Mem {
        fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
            self.up()?;
            Ok(self
                .keys
                .borrow()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, l))| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                    lease: *l,
                    create_revision: 1,
                    mod_revision: 1,
                })
                .collect())
        }

        fn put(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<(), EtcdError> {
            self.up()?;
            self.check_lease(lease)?;
            self.keys
                .borrow_mut()
                .insert(key.into(), (value.to_vec(), lease));
            Ok(())
        }

        fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<bool, EtcdError> {
            self.up()?;
            self.check_lease(lease)?;
            if self.keys.borrow().contains_key(key) {
                return Ok(false);
            }
            self.put(key, value, lease)?;
            Ok(true)
        }

        fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
            self.up()?;
            let mut keys = self.keys.borrow_mut();
            if keys.get(key).is_some_and(|(v, _)| v == value) {
                keys.remove(key);
                return Ok(true);
            }
            Ok(false)
        }

        fn grant(&self, ttl_s: u64) -> Result<LeaseId, EtcdError> {
            self.up()?;
            let _ = ttl_s;
            let id = self.next.get() + 1;
            self.next.set(id);
            self.leases.borrow_mut().insert(id);
            Ok(id)
        }

        fn keep_alive(&self, lease: LeaseId) -> Result<Option<u64>, EtcdError> {
            self.up()?;
            Ok(self.leases.borrow().contains(&lease).then_some(60))
        }

        fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
            self.up()?;
            self.expire(lease);
            Ok(())
        }
    }
}
