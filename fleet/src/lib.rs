//! What keel hosts and the publisher's workstation share to run a fleet
//! through etcd: a client for etcd's v3 JSON gateway, the reboot
//! semaphore (`lock`), and the reports each host keeps under the fleet
//! prefix (`report`). docs/update.md describes the keys and the protocol.

pub mod etcd;
pub mod kv;
pub mod lock;
pub mod report;

pub use etcd::{Etcd, EtcdError, Tls};
pub use kv::Kv;
