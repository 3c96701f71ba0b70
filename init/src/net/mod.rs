//! The host's network: its interfaces configured from the host config
//! over rtnetlink, and the published ports of user containers.

pub mod interfaces;
pub mod netlink;
pub mod portproxy;
