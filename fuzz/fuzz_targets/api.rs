//! One request line on keel-init's API socket or keel-update's, as PID 1
//! and the updater read them: no line may panic, and a request that
//! parses means the same after a round trip.
#![no_main]

use keel_api::init::Request;
use keel_api::update::UpdateRequest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    if let Ok(r) = serde_json::from_str::<Request>(line.trim()) {
        let again = serde_json::to_string(&r).expect("a request serialises");
        let back: Request = serde_json::from_str(&again).expect("and parses again");
        assert_eq!(back, r);
    }
    let _ = serde_json::from_str::<UpdateRequest>(line.trim());
    // The superblock reader that keel-init runs on /var at every boot.
    let _ = keel_init::stage1::ext4::geometry(data);
});
