//! The host's network: its interfaces configured from the host config
//! over rtnetlink, and the container networks: bridges, veths, NAT and
//! the firewall (rtnetlink and nf_tables).

pub mod containers;
pub mod interfaces;
pub mod netlink;
pub mod nft;

/// `keelctl network`: the links from sysfs (which are bridges, which
/// bridge each port is on) and the rules the kernel holds.
pub fn inspect() -> keel_api::init::Response {
    let mut links = Vec::new();
    let mut ifaces = interfaces::sysfs_interfaces();
    ifaces.sort_by_key(|i| i.index);
    for i in ifaces {
        let dir = std::path::Path::new("/sys/class/net").join(&i.name);
        let mut line = i.name.clone();
        if dir.join("bridge").is_dir() {
            line.push_str(" bridge");
        }
        if let Some(m) = std::fs::read_link(dir.join("master"))
            .ok()
            .and_then(|m| m.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            line.push_str(&format!(" on {m}"));
        }
        links.push(line);
    }
    match nft::listing() {
        Ok(rules) => keel_api::init::Response::Network { links, rules },
        Err(e) => keel_api::init::Response::Error(e.to_string()),
    }
}
