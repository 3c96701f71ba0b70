//! The host config reader takes text from a person's file on the ESP: no
//! input may make it panic, and what it accepts must be accepted again
//! after a round trip through its own serialisation (the last good config
//! keel-init keeps is written that way).
#![no_main]

use std::path::Path;

use keel_formats::hostconfig::{check, load, Context, Source};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = Context {
        services: Some(vec!["admin".into(), "web".into()]),
        zones: Some(vec!["Europe/Berlin".into()]),
    };
    let src = Source {
        name: Path::new("fuzz.toml"),
        text,
    };
    if let Ok(config) = check(src, &ctx) {
        let again = toml::to_string(&config).expect("an accepted config serialises");
        let back = Source {
            name: Path::new("last-good.toml"),
            text: &again,
        };
        assert!(
            load(None, Some(back), &ctx).is_ok(),
            "accepted, but not after a round trip:\n{again}"
        );
    }
    // As defaults under a small file, to exercise the merge.
    let user = Source {
        name: Path::new("user.toml"),
        text: "hostname = \"h\"\n[sysctl]\n\"vm.swappiness\" = 1\n",
    };
    let _ = load(Some(src), Some(user), &ctx);
});
