//! keel-registry's client and store against a real registry (Debian's
//! docker-registry, the CNCF Distribution registry) that skopeo pushed
//! images to: anonymous over http, basic auth over TLS with a test CA, a
//! multi-arch index, pinning by digest, a pull-through mirror, a blob the
//! registry serves corrupted, and a pull cut in the middle of a layer.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use keel_registry::auth::Credentials;
use keel_registry::client::{Client, ClientError, Options, Progress};
use keel_registry::manifest::Platform;
use keel_registry::pull::{pull, Pulled};
use keel_registry::reference::{Digest, Reference};
use keel_registry::store::{Store, StoreError};
use keel_tests::registry::{
    image_layout, multi_arch_layout, push, wait_cached, Options as RegistryOptions, Push, Registry,
};

fn amd64() -> Platform {
    Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    }
}

fn arm64() -> Platform {
    Platform {
        architecture: "arm64".into(),
        os: "linux".into(),
        variant: Some("v8".into()),
    }
}

fn insecure(registry: &Registry) -> Client {
    Client::new(
        &registry.host(),
        Options {
            insecure: true,
            ..Options::default()
        },
    )
    .unwrap()
}

fn reference(registry: &Registry, rest: &str) -> Reference {
    format!("{}/{rest}", registry.host()).parse().unwrap()
}

fn pull_one(
    client: Client,
    r: &Reference,
    platform: &Platform,
    store: &Store,
) -> Result<Pulled, ClientError> {
    pull(&mut [client], r, platform, store, &mut |_: Progress<'_>| {})
}

/// A small two-layer image, pushed as `repo:tag`; its manifest digest.
fn push_small(registry: &Registry, dir: &Path, dest: &str, creds: Option<(&str, &str)>) -> String {
    let layout = dir.join(dest.replace(['/', ':'], "_"));
    image_layout(
        &layout,
        "v1",
        "amd64",
        &[
            vec![("etc/hello", b"hello from the registry\n".to_vec())],
            vec![("bin/app", b"#!/bin/sh\necho app\n".to_vec())],
        ],
    );
    let push_opts = Push {
        creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
        all: false,
    };
    push(registry, &layout, "v1", dest, &push_opts)
}

/// The store names the image, holds every blob, and keel-oci opens it.
fn assert_whole(store: &Store, pulled: &Pulled) {
    assert!(store.has(&pulled.manifest.digest));
    assert!(store.has(&pulled.config.digest));
    for layer in &pulled.layers {
        assert!(store.has(&layer.digest), "layer {} missing", layer.digest);
    }
    let tagged = store.tagged(&pulled.name).unwrap().unwrap();
    assert_eq!(tagged.digest, pulled.manifest.digest);
    let image = keel_oci::open(store.root()).unwrap();
    assert_eq!(image.id, pulled.config.digest.hex());
    assert_eq!(image.layers.len(), pulled.layers.len());
}

#[test]
fn anonymous_over_http_declared_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::http());
    let digest = push_small(&registry, dir.path(), "team/app:1.2", None);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, "team/app:1.2");
    let mut bytes = 0u64;
    let pulled = pull(
        &mut [insecure(&registry)],
        &r,
        &amd64(),
        &store,
        &mut |p: Progress<'_>| {
            assert!(p.done <= p.total);
            bytes = bytes.max(p.done);
        },
    )
    .unwrap();
    assert_eq!(pulled.manifest.digest.to_string(), digest);
    assert_eq!(pulled.name, format!("{}/team/app:1.2", registry.host()));
    assert!(pulled.fetched > 0 && bytes > 0);
    assert_whole(&store, &pulled);
    // Everything is in: a second pull fetches no blob.
    let again = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap();
    assert_eq!(again.fetched, 0);
    // Without the insecure flag the client speaks TLS to a plain http
    // registry, and fails saying so, rather than falling back to http.
    let tls = Client::new(&registry.host(), Options::default()).unwrap();
    let err = pull_one(tls, &r, &amd64(), &store).unwrap_err();
    assert!(matches!(err, ClientError::Http { .. }), "{err:?}");
}

#[test]
fn basic_auth_over_tls_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::tls().with_auth("ci", "s3cret-pw"));
    push_small(
        &registry,
        dir.path(),
        "private/app:1",
        Some(("ci", "s3cret-pw")),
    );
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, "private/app:1");
    let ca = registry.ca_pem().unwrap();
    let with = |credentials: Option<Credentials>, ca_pems: Vec<String>| {
        Client::new(
            &registry.host(),
            Options {
                insecure: false,
                ca_pems,
                credentials,
            },
        )
        .unwrap()
    };
    let good = Credentials {
        username: "ci".into(),
        password: "s3cret-pw".into(),
    };
    let bad = Credentials {
        username: "ci".into(),
        password: "wrong-pw".into(),
    };
    // The test CA is not in webpki's roots.
    let err = pull_one(with(Some(good.clone()), vec![]), &r, &amd64(), &store).unwrap_err();
    assert!(matches!(err, ClientError::Http { .. }), "{err:?}");
    // Wrong credentials: a clear error, the password in no message, and
    // one try, not a storm of them.
    let before = registry.log().matches("\"GET /v2/").count();
    let err = pull_one(with(Some(bad), vec![ca.clone()]), &r, &amd64(), &store).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unauthorized {
                had_credentials: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    let after = registry.log().matches("\"GET /v2/").count();
    assert!(
        after - before <= 2,
        "{} requests for wrong credentials",
        after - before
    );
    let err = pull_one(with(None, vec![ca.clone()]), &r, &amd64(), &store).unwrap_err();
    assert!(err.to_string().contains("no credentials"), "{err}");
    assert!(store.list().unwrap().is_empty());
    let pulled = pull_one(with(Some(good), vec![ca]), &r, &amd64(), &store).unwrap();
    assert_whole(&store, &pulled);
}

#[test]
fn a_multi_arch_index_gives_the_hosts_platform() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::http());
    let layout = dir.path().join("multi");
    let (index, amd, arm) = multi_arch_layout(&layout, "multi");
    let pushed = push(
        &registry,
        &layout,
        "multi",
        "team/multi:1",
        &Push {
            creds: None,
            all: true,
        },
    );
    assert_eq!(pushed, index);
    let r = reference(&registry, "team/multi:1");
    for (platform, want) in [(amd64(), &amd), (arm64(), &arm)] {
        let store = Store::open(
            &dir.path()
                .join(format!("store-{platform}").replace('/', "-")),
        )
        .unwrap();
        let pulled = pull_one(insecure(&registry), &r, &platform, &store).unwrap();
        assert_eq!(&pulled.manifest.digest.to_string(), want, "{platform}");
        assert_eq!(
            pulled.index.as_ref().map(Digest::to_string),
            Some(index.clone())
        );
        assert!(store.has(pulled.index.as_ref().unwrap()));
    }
    let riscv = Platform {
        architecture: "riscv64".into(),
        os: "linux".into(),
        variant: None,
    };
    let store = Store::open(&dir.path().join("store-riscv")).unwrap();
    let err = pull_one(insecure(&registry), &r, &riscv, &store).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("linux/riscv64") && text.contains("linux/amd64"),
        "{text}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn pinned_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::http());
    let digest = push_small(&registry, dir.path(), "team/pinned:1", None);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, &format!("team/pinned@{digest}"));
    let pulled = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap();
    assert_eq!(pulled.manifest.digest.to_string(), digest);
    assert_whole(&store, &pulled);
    // A tag and a digest that disagree: the digest wins, as in Docker;
    // a digest the registry does not have is not found.
    let other = Digest::of(b"no such manifest");
    let r = reference(&registry, &format!("team/pinned:1@{other}"));
    let err = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap_err();
    assert!(matches!(err, ClientError::NotFound { .. }), "{err:?}");
}

#[test]
fn a_mirror_serves_when_the_upstream_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut upstream = Registry::start(RegistryOptions::http());
    let mirror = Registry::start(RegistryOptions::http().mirror_of(&upstream));
    let digest = push_small(&upstream, dir.path(), "library/app:1", None);
    // Pulled from the upstream's name, through its mirror first.
    let r = reference(&upstream, "library/app:1");
    let first = Store::open(&dir.path().join("first")).unwrap();
    let pulled = pull(
        &mut [insecure(&mirror), insecure(&upstream)],
        &r,
        &amd64(),
        &first,
        &mut |_: Progress<'_>| {},
    )
    .unwrap();
    assert_eq!(pulled.host, mirror.host());
    assert_eq!(pulled.manifest.digest.to_string(), digest);
    // The mirror stores a blob after it has streamed it, in the
    // background: let it finish before its upstream goes.
    let blobs: Vec<String> = std::iter::once(&pulled.config)
        .chain(&pulled.layers)
        .map(|d| d.digest.to_string())
        .collect();
    let blobs: Vec<&str> = blobs.iter().map(String::as_str).collect();
    wait_cached(&mirror, &blobs, std::time::Duration::from_secs(30));
    // A mirror that is down: the upstream serves.
    let dead = format!("127.0.0.1:{}", keel_tests::free_port());
    let by_upstream = Store::open(&dir.path().join("by-upstream")).unwrap();
    let pulled_up = pull(
        &mut [
            Client::new(
                &dead,
                Options {
                    insecure: true,
                    ..Options::default()
                },
            )
            .unwrap(),
            insecure(&upstream),
        ],
        &r,
        &amd64(),
        &by_upstream,
        &mut |_: Progress<'_>| {},
    )
    .unwrap();
    assert_eq!(pulled_up.host, upstream.host());
    upstream.stop();
    let second = Store::open(&dir.path().join("second")).unwrap();
    let pulled = pull(
        &mut [insecure(&mirror), insecure(&upstream)],
        &r,
        &amd64(),
        &second,
        &mut |_: Progress<'_>| {},
    )
    .unwrap();
    assert_eq!(pulled.host, mirror.host());
    assert_whole(&second, &pulled);
    // With the mirror down too, the error names both hosts.
    drop(mirror);
    let third = Store::open(&dir.path().join("third")).unwrap();
    let mirror_host = pulled.host.clone();
    let err = pull(
        &mut [
            Client::new(
                &mirror_host,
                Options {
                    insecure: true,
                    ..Options::default()
                },
            )
            .unwrap(),
            insecure(&upstream),
        ],
        &r,
        &amd64(),
        &third,
        &mut |_: Progress<'_>| {},
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&mirror_host) && text.contains(&upstream.host()),
        "{text}"
    );
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::http());
    push_small(&registry, dir.path(), "team/bad:1", None);
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, "team/bad:1");
    // Find the image's last layer, and change its bytes in the registry's
    // storage (same length: the registry serves it as it is).
    let probe = Store::open(&dir.path().join("probe")).unwrap();
    let layer = pull_one(insecure(&registry), &r, &amd64(), &probe)
        .unwrap()
        .layers
        .last()
        .unwrap()
        .clone();
    let path = registry.blob_path(&layer.digest.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap_err();
    assert!(
        matches!(err, ClientError::Store(StoreError::Digest { .. })),
        "{err:?}"
    );
    assert!(!store.has(&layer.digest));
    assert!(
        store.list().unwrap().is_empty(),
        "a name for a broken image"
    );
    assert!(std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_pull_cut_in_a_layer_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(RegistryOptions::http());
    // Incompressible, so the gzip layer is as big as its file.
    let big = keel_tests::fixtures::noise(0x9e37_79b9_7f4a_7c15, 24 << 20);
    let layout = dir.path().join("big");
    image_layout(&layout, "v1", "amd64", &[vec![("data/big", big)]]);
    push(
        &registry,
        &layout,
        "v1",
        "team/big:1",
        &Push {
            creds: None,
            all: false,
        },
    );
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, "team/big:1");
    // The registry dies with some of the layer in: the pull fails.
    let mut seen = 0u64;
    let mut size = 0u64;
    let client = insecure(&registry);
    let err = pull(&mut [client], &r, &amd64(), &store, &mut |p: Progress<
        '_,
    >| {
        if seen == 0 && p.total > 1 << 20 && p.done > 4 << 20 && p.done < p.total {
            seen = p.done;
            size = p.total;
            registry.stop();
        }
    })
    .unwrap_err();
    assert!(seen > 0, "the layer was never in progress");
    assert!(
        matches!(err, ClientError::Http { .. } | ClientError::Broken { .. }),
        "{err:?}"
    );
    assert!(store.list().unwrap().is_empty());
    registry.start_again();
    let pulled = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap();
    assert!(
        pulled.fetched < size,
        "fetched {} of a {size}-byte layer again: no resume",
        pulled.fetched
    );
    assert_whole(&store, &pulled);
}

#[test]
fn a_single_platform_image_for_another_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::http());
    let layout = dir.path().join("arm");
    image_layout(
        &layout,
        "v1",
        "arm64",
        &[vec![("etc/arch", b"arm64\n".to_vec())]],
    );
    push(&registry, &layout, "v1", "team/arm:1", &Push::default());
    let store = Store::open(&dir.path().join("store")).unwrap();
    let r = reference(&registry, "team/arm:1");
    let err = pull_one(insecure(&registry), &r, &amd64(), &store).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("linux/arm64") && text.contains("linux/amd64"),
        "{text}"
    );
    assert!(store.list().unwrap().is_empty());
    // The host it is for gets it.
    pull_one(insecure(&registry), &r, &arm64(), &store).unwrap();
}
