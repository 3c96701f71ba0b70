//! Starting one system container: clone3 into new namespaces and the
//! service's cgroup, then, in the child, build its mount namespace around
//! the read-only root, drop privileges and exec.
//!
//! - [`plan`]: a definition as a [`Plan`], and a plan as the ordered
//!   [`Step`]s of its child, all pure;
//! - [`spawn`]: clone3, the id maps of a user namespace, the wait for exec;
//! - `child`: the child's side, one system call per step;
//! - [`error`]: [`LaunchError`], and the child's report of a failed step;
//! - [`confine`], [`caps`], [`masks`], [`userns`], [`cgroup`]: the pieces
//!   of a step that are their own subject;
//! - [`facts`]: what `keelctl status` reads of a running service.
//!
//! keel-init is single-threaded, so the child of clone3 may allocate and
//! use the standard library freely until it execs.

pub mod caps;
pub mod cgroup;
mod child;
pub mod confine;
pub mod error;
pub mod facts;
pub mod masks;
pub mod plan;
pub mod spawn;
pub mod userns;

#[cfg(test)]
mod tests;

pub use error::{LaunchError, StepKind};
pub use facts::{parse_ns_pid, parse_root_readonly, proc_facts, ProcFacts};
pub use plan::{
    console_tty, plan, plan_with, steps, ChildFds, Plan, Step, Writable, PERSISTENT_DIR,
};
pub use spawn::{begin, open_cgroup, spawn, Io, Spawned, NOTIFY_FD};
