//! Placeholder: the signed A/B updater arrives with the updates issue.

fn main() -> std::process::ExitCode {
    eprintln!(
        "keel-update {}: not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::FAILURE
}
