use super::*;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const FFFF: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn parse(s: &str) -> Reference {
    match s.parse::<Reference>() {
        Ok(r) => r,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn reject(s: &str) -> ReferenceError {
    match s.parse::<Reference>() {
        Ok(r) => panic!("{s:?} should be rejected, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn names_normalize_as_docker_does() {
    // (input, canonical form), from distribution/reference's normalize and
    // reference tests plus the usual cases.
    let ffff_hex = FFFF.trim_start_matches("sha256:");
    let pinned = [
        (
            format!("nginx@{FFFF}"),
            format!("docker.io/library/nginx@{FFFF}"),
        ),
        (
            format!("test:5000/repo@{FFFF}"),
            format!("test:5000/repo@{FFFF}"),
        ),
        (
            format!("test:5000/repo:tag@{FFFF}"),
            format!("test:5000/repo:tag@{FFFF}"),
        ),
        (format!("r/a:1@{FFFF}"), format!("docker.io/r/a:1@{FFFF}")),
        (
            format!("app:1@sha256:{ffff_hex}"),
            format!("docker.io/library/app:1@{FFFF}"),
        ),
    ];
    let table: Vec<(&str, String)> = vec![
        ("nginx", "docker.io/library/nginx:latest".into()),
        ("nginx:1.25", "docker.io/library/nginx:1.25".into()),
        ("debian", "docker.io/library/debian:latest".into()),
        ("library/debian", "docker.io/library/debian:latest".into()),
        ("docker/docker", "docker.io/docker/docker:latest".into()),
        ("user/app", "docker.io/user/app:latest".into()),
        ("docker.io/debian", "docker.io/library/debian:latest".into()),
        (
            "docker.io/library/debian",
            "docker.io/library/debian:latest".into(),
        ),
        (
            "docker.io/docker/docker",
            "docker.io/docker/docker:latest".into(),
        ),
        (
            "index.docker.io/nginx",
            "docker.io/library/nginx:latest".into(),
        ),
        (
            "index.docker.io/docker/docker",
            "docker.io/docker/docker:latest".into(),
        ),
        ("localhost/app", "localhost/app:latest".into()),
        ("localhost:5000/app:1", "localhost:5000/app:1".into()),
        ("localhost", "docker.io/library/localhost:latest".into()),
        ("example.com/a/b/c:tag", "example.com/a/b/c:tag".into()),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest".into()),
        (
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/docker/docker:latest".into(),
        ),
        ("192.168.1.1/repo", "192.168.1.1/repo:latest".into()),
        ("192.168.1.1:5/repo", "192.168.1.1:5/repo:latest".into()),
        // One component, so the Hub's: the ':' is a tag, not a port.
        ("192.168.0.1:80", "docker.io/library/192.168.0.1:80".into()),
        ("test.com:5000", "docker.io/library/test.com:5000".into()),
        ("test.com:tag", "docker.io/library/test.com:tag".into()),
        ("test_com", "docker.io/library/test_com:latest".into()),
        (
            "foo/foo_bar.com:8080",
            "docker.io/foo/foo_bar.com:8080".into(),
        ),
        ("test:5000/repo", "test:5000/repo:latest".into()),
        ("test.com/repo:tag", "test.com/repo:tag".into()),
        ("[::1]:5000/app", "[::1]:5000/app:latest".into()),
        ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest".into()),
        (
            "[2001:db8::]:5000/repo",
            "[2001:db8::]:5000/repo:latest".into(),
        ),
        (
            "[2001:db8:1:2:3:4:5:6]/repo:tag",
            "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
        ),
        (
            "[fc00::1]:5000/docker/docker",
            "[fc00::1]:5000/docker/docker:latest".into(),
        ),
        (
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
        ),
        (
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "b.gcr.io/test.example.com/my-app:test.example.com".into(),
        ),
        (
            "xn--n3h.com/myimage:xn--n3h.com",
            "xn--n3h.com/myimage:xn--n3h.com".into(),
        ),
        (
            "registry.example:5000/team/app",
            "registry.example:5000/team/app:latest".into(),
        ),
        (
            "lowercase:Uppercase",
            "docker.io/library/lowercase:Uppercase".into(),
        ),
        (
            "a_b__c-d---e/f.g",
            "docker.io/a_b__c-d---e/f.g:latest".into(),
        ),
    ];
    // A digest pins without inventing a tag; a tag and a digest both stay.
    let pinned = pinned.iter().map(|(i, c)| (i.as_str(), c.clone()));
    for (input, canonical) in table.into_iter().chain(pinned) {
        let r = parse(input);
        assert_eq!(r.to_string(), canonical, "{input}");
        assert_eq!(parse(&r.to_string()), r, "round trip of {input}");
    }
}

#[test]
fn fields_are_split_and_normalized() {
    let r = parse("nginx");
    assert_eq!(
        r,
        Reference {
            registry: "docker.io".into(),
            repository: "library/nginx".into(),
            tag: Some("latest".into()),
            digest: None,
        }
    );
    assert_eq!(r.api_host(), "registry-1.docker.io");
    assert_eq!(r.manifest_ref(), "latest");
    assert_eq!(r.name(), "docker.io/library/nginx");

    let r = parse("registry.example:5000/team/app:v2");
    assert_eq!(r.registry, "registry.example:5000");
    assert_eq!(r.repository, "team/app");
    assert_eq!(r.tag.as_deref(), Some("v2"));
    assert_eq!(r.api_host(), "registry.example:5000");
    assert_eq!(r.manifest_ref(), "v2");
    assert_eq!(r.name(), "registry.example:5000/team/app");

    let r = parse(&format!("[::1]:5000/team/app:v2@{FFFF}"));
    assert_eq!(r.registry, "[::1]:5000");
    assert_eq!(r.tag.as_deref(), Some("v2"));
    assert_eq!(r.digest, Some(FFFF.parse().unwrap()));
    assert_eq!(r.manifest_ref(), FFFF, "the digest wins over the tag");

    let r = parse(&format!("localhost:5000/app@{FFFF}"));
    assert_eq!(
        (r.tag.as_deref(), r.manifest_ref()),
        (None, FFFF.to_owned())
    );

    let hand_built = Reference {
        registry: "r".into(),
        repository: "a".into(),
        tag: None,
        digest: None,
    };
    assert_eq!(hand_built.manifest_ref(), "latest");
}

#[test]
fn malformed_references_are_rejected() {
    let long_tag = format!("app:{}", "a".repeat(129));
    let short_digest = "app@sha256:ffff".to_owned();
    let sha512 = format!("app@sha512:{}", "f".repeat(128));
    let upper_digest = format!("app@sha256:{}", "F".repeat(64));
    let two_digests = format!("app@{FFFF}@{FFFF}");
    let cases: Vec<&str> = vec![
        "",
        "Uppercase:tag",
        "Docker/docker",
        "docker.io/docker/Docker",
        "test:5000/Uppercase/lowercase:tag",
        "app:-tag",
        "app:.tag",
        "app:t@g",
        "app:a:b",
        &long_tag,
        &short_digest,
        &sha512,
        &upper_digest,
        &two_digests,
        "app@",
        "app@sha256",
        "validname@invaliddigest:ffff",
        "a//b",
        "docker///docker",
        "docker.io/docker///docker",
        "/nginx",
        "nginx/",
        "localhost:5000/",
        "nginx:",
        ":justtag",
        "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "localhost:0/app",
        "localhost:99999/app",
        "localhost:65536/app",
        "localhost:/app",
        "localhost:5x/app",
        "localhost:5000:1/app",
        "-bad.com/app",
        "bad-.com/app",
        "bad..com/app",
        "[::1/app",
        "[::1]x/app",
        "[fe80::1%eth0]:5000/repo",
        "[::ffff:1.2.3.4]/repo",
        "[]/repo",
        "[g::1]/repo",
        "2001:db8::1/repo",
        "a/../b",
        "a/./b",
        "a..b",
        "a.",
        "-a",
        "a_",
        "a___b",
        "a.-b",
        "aa/asdf$$^/aa",
        "nginx latest",
        " nginx",
        "nginx\n",
        "ngi\tnx",
        "ngin\u{7f}x",
        "nginx\u{0}",
        "ngïnx",
        "https://registry.example/app",
        "docker://nginx",
        "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    ];
    for case in cases {
        reject(case);
    }
}

#[test]
fn rejections_say_what_is_wrong() {
    assert!(matches!(reject(""), ReferenceError::Empty));
    assert!(matches!(
        reject("MyOrg/app"),
        ReferenceError::Uppercase { repository, .. } if repository == "MyOrg/app"
    ));
    assert!(matches!(reject("a//b"), ReferenceError::EmptyComponent(i) if i == "a//b"));
    assert!(matches!(reject("/a"), ReferenceError::EmptyComponent(_)));
    assert!(
        matches!(reject("a/../b"), ReferenceError::BadComponent { component, .. } if component == "..")
    );
    assert!(matches!(reject("nginx:"), ReferenceError::BadTag { tag, .. } if tag.is_empty()));
    assert!(matches!(reject("localhost:0/a"), ReferenceError::BadPort { port, .. } if port == "0"));
    assert!(
        matches!(reject("localhost:99999/a"), ReferenceError::BadPort { port, .. } if port == "99999")
    );
    assert!(
        matches!(reject("bad_host.com/a"), ReferenceError::BadRegistry { registry, .. } if registry == "bad_host.com")
    );
    assert!(
        matches!(reject("app@sha256:ffff"), ReferenceError::BadDigest(d) if d == "sha256:ffff")
    );
    assert!(
        matches!(reject(&format!("app@sha512:{}", "f".repeat(128))), ReferenceError::UnsupportedDigest(d) if d.starts_with("sha512:"))
    );
    assert!(matches!(reject("a b"), ReferenceError::BadCharacter(i) if i == "a b"));
    assert!(matches!(
        reject(&"a".repeat(1000)),
        ReferenceError::TooLong(_)
    ));
    assert!(matches!(
        reject(&format!("@{FFFF}")),
        ReferenceError::NoRepository(_)
    ));

    let e = reject("https://registry.example/team/app:1");
    assert!(
        matches!(&e, ReferenceError::Scheme { suggestion, .. } if suggestion == "registry.example/team/app:1")
    );
    let message = e.to_string();
    assert!(message.contains("drop the scheme"), "{message}");
    assert!(
        message.contains("\"registry.example/team/app:1\""),
        "{message}"
    );

    // Messages escape what they repeat: a hostile name cannot drive the
    // terminal that prints the error.
    let message = reject("a\u{1b}[2J").to_string();
    assert!(message.contains("\\u{1b}"), "{message}");
}

#[test]
fn the_name_limit_is_on_the_normalized_name() {
    // 255 = "docker.io/" (10) + "library/" (8) + 237.
    let fits = "a".repeat(237);
    assert_eq!(parse(&fits).name().len(), 255);
    let over = "a".repeat(238);
    assert!(matches!(reject(&over), ReferenceError::NameTooLong { .. }));
    let deep = ["a"; 128].join("/");
    assert!(matches!(reject(&deep), ReferenceError::NameTooLong { .. }));
    // The longest tag is 128 characters.
    let tag = format!("app:{}", "t".repeat(128));
    assert_eq!(parse(&tag).tag.map(|t| t.len()), Some(128));
}

#[test]
fn ports_at_the_edges() {
    assert_eq!(parse("h:1/a").registry, "h:1");
    assert_eq!(parse("h:65535/a").registry, "h:65535");
    assert_eq!(parse("[::1]:65535/a").registry, "[::1]:65535");
    assert!(matches!(
        reject("[::1]:0/a"),
        ReferenceError::BadPort { .. }
    ));
    assert!(matches!(reject("[::1]:/a"), ReferenceError::BadPort { .. }));
    assert!(matches!(
        reject("h:123456/a"),
        ReferenceError::BadPort { .. }
    ));
}

#[test]
fn digests() {
    assert_eq!(Digest::of(b"").hex(), EMPTY_SHA256);
    assert_eq!(
        Digest::of(b"").to_string(),
        format!("sha256:{EMPTY_SHA256}")
    );
    let d: Digest = format!("sha256:{EMPTY_SHA256}").parse().unwrap();
    assert_eq!(d, Digest::of(b""));
    assert_eq!(Digest::from_sha256(*d.as_bytes()), d);
    assert_eq!(d.as_bytes()[0], 0xe3);

    for bad in [
        "",
        "sha256",
        "sha256:",
        ":abc",
        "sha256:ffff",
        &format!("sha256:{EMPTY_SHA256}0"),
        &format!("sha256:{}", EMPTY_SHA256.to_uppercase()),
        &format!("SHA256:{EMPTY_SHA256}"),
        &format!("sha256:{}g", &EMPTY_SHA256[1..]),
        &format!(" sha256:{EMPTY_SHA256}"),
    ] {
        assert!(
            matches!(bad.parse::<Digest>(), Err(ReferenceError::BadDigest(_))),
            "{bad:?}"
        );
    }
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let e = sha512.parse::<Digest>().unwrap_err();
    assert!(
        matches!(&e, ReferenceError::UnsupportedDigest(v) if sha512.starts_with(v.trim_end_matches('…')))
    );
    assert!(e.to_string().contains("sha512:aaaa"), "{e}");
}

#[test]
fn digests_serialize_as_their_string() {
    let d = Digest::of(b"");
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(json, format!("\"sha256:{EMPTY_SHA256}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    assert!(serde_json::from_str::<Digest>("\"sha256:ffff\"").is_err());
    assert!(serde_json::from_str::<Digest>("\"md5:d41d8cd98f00b204e9800998ecf8427e\"").is_err());
    assert!(serde_json::from_str::<Digest>("42").is_err());
}

#[test]
fn long_hostile_values_are_cut_in_messages() {
    let huge = format!("sha256:{}", "é".repeat(10_000));
    let message = huge.parse::<Digest>().unwrap_err().to_string();
    assert!(message.len() < 400, "{} bytes", message.len());
    assert!(message.contains('…'));
    assert_eq!(shown("short"), "short");
}
