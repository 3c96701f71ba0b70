//! What a registry and a host config send keel-pull and keel-init: image
//! references, `WWW-Authenticate` challenges, token bodies, manifests and
//! indexes, and keel-pull's requests and events. No input may panic; a
//! reference that parses reads back the same from its own rendering, and
//! an index's chosen entry is one of its entries.
#![no_main]

use keel_api::pull::{PullEvent, PullerRequest};
use keel_registry::auth;
use keel_registry::manifest::{self, Parsed, Platform};
use keel_registry::reference::{Digest, Reference};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = text.parse::<Reference>() {
        let again: Reference = r.to_string().parse().expect("a rendered reference parses");
        assert_eq!(again, r);
    }
    let _ = text.parse::<Digest>();
    if let Ok(challenges) = auth::parse_challenges(&text) {
        for c in &challenges {
            let _ = auth::token_url(c, "library/app");
        }
    }
    let _ = auth::parse_token(data);
    for content_type in [None, Some(manifest::OCI_MANIFEST), Some(manifest::DOCKER_LIST)] {
        if let Ok(Parsed::Index(index)) = manifest::parse(content_type, data) {
            let platform = Platform::host();
            if let Ok(d) = manifest::choose(&index, &platform) {
                assert!(index.manifests.iter().any(|e| e == d));
            }
        }
    }
    if let Ok(Parsed::Manifest(m)) = manifest::parse(None, data) {
        for l in &m.layers {
            let _ = manifest::check_layer(l);
        }
    }
    let _ = serde_json::from_str::<PullerRequest>(text.trim());
    let _ = serde_json::from_str::<PullEvent>(text.trim());
});
