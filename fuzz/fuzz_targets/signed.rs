//! What keel-update reads from a repository before it trusts a byte: the
//! signed envelope (bundle head, index), the bundle manifest and the
//! repository index it holds, and the PE sections of a UKI (keel-init and
//! keel-update read .osrel and .cmdline of installed entries). No input
//! may panic; an envelope that parses writes back to the same bytes.
#![no_main]

use keel_formats::bundle::Manifest;
use keel_formats::repo::Index;
use keel_formats::signed::{Envelope, Kind};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Bundle, Kind::Index] {
        if let Ok(env) = Envelope::parse(kind, data) {
            // Nothing is trusted: verification must fail, not panic.
            assert!(env.verify(&[]).is_err(), "verified with no trusted keys");
            let bytes = env.to_bytes();
            assert_eq!(data.get(..bytes.len()), Some(&bytes[..]), "round trip");
            let _ = Manifest::parse(&env.body).map(|m| m.payloads_len());
            let _ = Index::parse(&env.body);
        }
    }
    if let Ok(m) = Manifest::parse(data) {
        let _ = m.payloads_len();
        // What a delta walks: every chunk's offset, within the payload.
        for p in &m.payloads {
            for (at, c) in p.spans() {
                assert!(at + c.size <= p.size, "chunk past its payload");
            }
        }
    }
    let _ = Index::parse(data);
    for section in [".osrel", ".cmdline", ".linux"] {
        let _ = keel_formats::bootentry::pe_section(data, section);
    }
});
