//! Placeholder: the KVM microVM monitor arrives with the keel-vmm issue.

fn main() -> std::process::ExitCode {
    eprintln!(
        "keel-vmm {}: not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::FAILURE
}
