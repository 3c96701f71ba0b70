use serde_json::{json, Value};

use super::*;

fn d(seed: &str) -> String {
    Digest::of(seed.as_bytes()).to_string()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

fn oci_manifest() -> Value {
    // The image-spec's example, as `buildah push` writes it.
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": d("config"),
            "size": 7023
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 32654},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d("l2"), "size": 16724},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d("l3"), "size": 73109,
             "urls": ["https://mirror.example/l3"], "annotations": {"org.opencontainers.image.title": "l3"}}
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": d("subject"), "size": 1},
        "annotations": {"com.example.key1": "value1"}
    })
}

fn docker_manifest() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": d("config")
        },
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3623807, "digest": d("l1")}
        ]
    })
}

fn docker_list() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": d("amd64"), "size": 528,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": DOCKER_MANIFEST, "digest": d("armv7"), "size": 528,
             "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
            {"mediaType": DOCKER_MANIFEST, "digest": d("arm64"), "size": 528,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": DOCKER_MANIFEST, "digest": d("windows"), "size": 528,
             "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.5329",
                          "os.features": ["win32k"]}}
        ]
    })
}

/// As `docker buildx build --platform linux/amd64,linux/arm64` pushes it:
/// an attestation manifest per image, on platform unknown/unknown.
fn buildx_index() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d("amd64"), "size": 1052,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": d("arm64"), "size": 1052,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": d("att-amd64"), "size": 841,
             "annotations": {"vnd.docker.reference.digest": d("amd64"),
                             "vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
            {"mediaType": OCI_MANIFEST, "digest": d("att-arm64"), "size": 841,
             "annotations": {"vnd.docker.reference.digest": d("arm64"),
                             "vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}}
        ]
    })
}

fn manifest(content_type: Option<&str>, v: &Value) -> Manifest {
    match parse(content_type, &bytes(v)) {
        Ok(Parsed::Manifest(m)) => m,
        other => panic!("not a manifest: {other:?}"),
    }
}

fn index(content_type: Option<&str>, v: &Value) -> Index {
    match parse(content_type, &bytes(v)) {
        Ok(Parsed::Index(i)) => i,
        other => panic!("not an index: {other:?}"),
    }
}

fn reject(content_type: Option<&str>, v: &Value) -> ManifestError {
    match parse(content_type, &bytes(v)) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e,
    }
}

fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
    Platform {
        architecture: architecture.into(),
        os: os.into(),
        variant: variant.map(Into::into),
    }
}

#[test]
fn an_oci_image_manifest() {
    let m = manifest(Some(OCI_MANIFEST), &oci_manifest());
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert_eq!(m.config.digest, Digest::of(b"config"));
    assert_eq!(m.config.size, 7023);
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.layers[2].size, 73109);
    assert_eq!(
        m.layers[2].annotations.as_ref().unwrap()["org.opencontainers.image.title"],
        "l3"
    );
    for layer in &m.layers {
        check_layer(layer).unwrap();
    }
    // Also without a Content-Type, or with parameters and another case.
    assert_eq!(manifest(None, &oci_manifest()), m);
    let with_charset = "Application/VND.oci.image.manifest.v1+json; charset=utf-8";
    assert_eq!(manifest(Some(with_charset), &oci_manifest()), m);
}

#[test]
fn a_docker_schema2_manifest() {
    let m = manifest(Some(DOCKER_MANIFEST), &docker_manifest());
    assert_eq!(m.media_type, DOCKER_MANIFEST);
    assert_eq!(
        m.config.media_type,
        "application/vnd.docker.container.image.v1+json"
    );
    check_layer(&m.layers[0]).unwrap();
}

#[test]
fn a_docker_manifest_list() {
    let i = index(Some(DOCKER_LIST), &docker_list());
    assert_eq!(i.media_type, DOCKER_LIST);
    assert_eq!(i.manifests.len(), 4);
    assert_eq!(
        i.manifests[3].platform,
        Some(platform("windows", "amd64", None)),
        "os.version and os.features are ignored"
    );
    let arm = platform("linux", "arm", Some("v7"));
    assert_eq!(choose(&i, &arm).unwrap().digest, Digest::of(b"armv7"));
    let arm_default = platform("linux", "arm", None);
    assert_eq!(
        choose(&i, &arm_default).unwrap().digest,
        Digest::of(b"armv7")
    );
}

#[test]
fn a_buildx_index_with_attestations() {
    let i = index(Some(OCI_INDEX), &buildx_index());
    assert_eq!(i.manifests.len(), 4);
    let amd64 = platform("linux", "amd64", None);
    assert_eq!(choose(&i, &amd64).unwrap().digest, Digest::of(b"amd64"));
    let arm64 = platform("linux", "arm64", Some("v8"));
    assert_eq!(choose(&i, &arm64).unwrap().digest, Digest::of(b"arm64"));
    let arm64_bare = platform("linux", "arm64", None);
    assert_eq!(
        choose(&i, &arm64_bare).unwrap().digest,
        Digest::of(b"arm64")
    );

    let e = choose(&i, &platform("linux", "riscv64", None)).unwrap_err();
    let ManifestError::NoPlatform { wanted, available } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(wanted, "linux/riscv64");
    assert_eq!(available, "linux/amd64, linux/arm64/v8");
    let message = e.to_string();
    assert!(message.contains("linux/riscv64"), "{message}");
    assert!(!message.contains("unknown"), "{message}");
}

#[test]
fn attestations_are_never_chosen() {
    let i = index(None, &buildx_index());
    let e = choose(&i, &platform("unknown", "unknown", None)).unwrap_err();
    assert!(matches!(e, ManifestError::NoPlatform { .. }));

    // Marked by annotation alone, on a real-looking platform.
    let mut v = buildx_index();
    v["manifests"][0]["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    let i = index(None, &v);
    let e = choose(&i, &platform("linux", "amd64", None)).unwrap_err();
    let ManifestError::NoPlatform { available, .. } = e else {
        panic!()
    };
    assert_eq!(available, "linux/arm64/v8");
}

#[test]
fn variants_are_compared_normalized() {
    let entry = |digest: &str, arch: &str, variant: Option<&str>| {
        json!({"mediaType": OCI_MANIFEST, "digest": d(digest), "size": 1,
               "platform": {"architecture": arch, "os": "linux", "variant": variant}})
    };
    let v = json!({"schemaVersion": 2, "manifests": [
        entry("arm64-bare", "arm64", None),
        entry("arm64-v8", "arm64", Some("v8")),
        entry("amd64-v3", "amd64", Some("v3")),
        entry("amd64-v1", "amd64", Some("v1")),
        entry("arm-v6", "arm", Some("v6")),
    ]});
    let i = index(None, &v);
    let pick = |p: Platform| choose(&i, &p).map(|e| e.digest.clone());
    // The entry naming the wanted variant exactly wins; else the first
    // that is the same platform once normalized.
    assert_eq!(
        pick(platform("linux", "arm64", Some("v8"))).unwrap(),
        Digest::of(b"arm64-v8")
    );
    assert_eq!(
        pick(platform("linux", "arm64", None)).unwrap(),
        Digest::of(b"arm64-bare")
    );
    // A plain amd64 host must not get an image built for v3 CPUs.
    assert_eq!(
        pick(platform("linux", "amd64", None)).unwrap(),
        Digest::of(b"amd64-v1")
    );
    assert_eq!(
        pick(platform("linux", "amd64", Some("v3"))).unwrap(),
        Digest::of(b"amd64-v3")
    );
    assert!(pick(platform("linux", "arm64", Some("v9"))).is_err());
    assert!(
        pick(platform("linux", "arm", None)).is_err(),
        "v7 is not v6"
    );
    assert!(pick(platform("windows", "amd64", None)).is_err());

    // Only the arm64 entry without a variant: a v8 host takes it.
    let v = json!({"schemaVersion": 2, "manifests": [entry("arm64-bare", "arm64", None)]});
    let i = index(None, &v);
    let got = choose(&i, &platform("linux", "arm64", Some("v8"))).unwrap();
    assert_eq!(got.digest, Digest::of(b"arm64-bare"));
}

#[test]
fn only_image_manifests_are_chosen() {
    let v = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": d("nested"), "size": 1,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.example.artifact", "digest": d("artifact"), "size": 1,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": d("no-platform"), "size": 1}
    ]});
    let i = index(None, &v);
    let e = choose(&i, &platform("linux", "amd64", None)).unwrap_err();
    let ManifestError::NoPlatform { wanted, available } = e else {
        panic!()
    };
    assert_eq!(
        (wanted.as_str(), available.as_str()),
        ("linux/amd64", "no image manifests")
    );
}

#[test]
fn no_platform_lists_are_bounded_and_escaped() {
    let entries: Vec<Value> = (0..40)
        .map(|n| {
            json!({"mediaType": OCI_MANIFEST, "digest": d(&n.to_string()), "size": 1,
                   "platform": {"architecture": format!("arch{n}\u{1b}"), "os": "linux"}})
        })
        .collect();
    let i = index(None, &json!({"schemaVersion": 2, "manifests": entries}));
    let e = choose(&i, &platform("linux", "amd64", None)).unwrap_err();
    let ManifestError::NoPlatform { available, .. } = e else {
        panic!()
    };
    assert!(available.ends_with(" and 24 more"), "{available}");
    assert!(!available.contains('\u{1b}'), "{available}");
}

#[test]
fn the_kind_comes_from_the_header_the_body_or_the_shape() {
    let mut bare = oci_manifest();
    bare.as_object_mut().unwrap().remove("mediaType");
    assert_eq!(manifest(None, &bare).media_type, OCI_MANIFEST);
    assert_eq!(
        manifest(Some(DOCKER_MANIFEST), &bare).media_type,
        DOCKER_MANIFEST
    );
    // Generic types say nothing; the body decides.
    for generic in [
        "application/json",
        "application/octet-stream",
        "text/plain",
        "",
    ] {
        assert_eq!(manifest(Some(generic), &bare).media_type, OCI_MANIFEST);
        assert_eq!(
            manifest(Some(generic), &docker_manifest()).media_type,
            DOCKER_MANIFEST
        );
    }
    let mut bare_index = buildx_index();
    bare_index.as_object_mut().unwrap().remove("mediaType");
    assert_eq!(index(None, &bare_index).media_type, OCI_INDEX);
    assert_eq!(
        index(Some(DOCKER_LIST), &bare_index).media_type,
        DOCKER_LIST
    );

    // Both or neither shape: nothing to go by.
    let mut both = bare.clone();
    both["manifests"] = json!([]);
    assert!(matches!(reject(None, &both), ManifestError::UnknownShape));
    let neither = json!({"schemaVersion": 2, "layers": []});
    assert!(matches!(
        reject(None, &neither),
        ManifestError::UnknownShape
    ));
}

#[test]
fn disagreeing_and_unknown_media_types_are_rejected() {
    let e = reject(Some(OCI_INDEX), &oci_manifest());
    assert!(
        matches!(&e, ManifestError::MediaTypeMismatch { header, body } if header == OCI_INDEX && body == OCI_MANIFEST),
        "{e:?}"
    );
    let e = reject(Some(DOCKER_MANIFEST), &oci_manifest());
    assert!(matches!(e, ManifestError::MediaTypeMismatch { .. }));

    let e = reject(Some("application/vnd.example.thing+json"), &oci_manifest());
    assert!(matches!(e, ManifestError::MediaTypeMismatch { .. }));
    let mut artifact = oci_manifest();
    artifact["mediaType"] = json!("application/vnd.cncf.helm.chart.v1+json");
    let e = reject(None, &artifact);
    assert!(
        matches!(&e, ManifestError::UnknownMediaType(t) if t == "application/vnd.cncf.helm.chart.v1+json")
    );
    let mut bare = oci_manifest();
    bare.as_object_mut().unwrap().remove("mediaType");
    let e = reject(Some("application/vnd.example.thing+json"), &bare);
    assert!(matches!(e, ManifestError::UnknownMediaType(_)));
}

#[test]
fn docker_schema1_is_refused_by_name() {
    let schema1 = json!({
        "schemaVersion": 1,
        "name": "library/hello-world",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": d("l1")}],
        "history": [{"v1Compatibility": "{}"}],
        "signatures": [{"header": {"alg": "ES256"}, "signature": "x", "protected": "y"}]
    });
    for content_type in [
        None,
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        Some("application/vnd.docker.distribution.manifest.v1+json"),
        Some("text/plain"),
    ] {
        let e = reject(content_type, &schema1);
        assert!(
            matches!(e, ManifestError::Schema1(_)),
            "{content_type:?}: {e:?}"
        );
        assert!(e.to_string().contains("schema 1"), "{e}");
    }
    let mut disguised = oci_manifest();
    disguised["mediaType"] = json!("application/vnd.docker.distribution.manifest.v1+json");
    assert!(matches!(
        reject(None, &disguised),
        ManifestError::Schema1(_)
    ));
}

#[test]
fn schema_version_must_be_2() {
    for version in [json!(3), json!(0), json!(-1)] {
        let mut v = oci_manifest();
        v["schemaVersion"] = version;
        assert!(matches!(
            reject(None, &v),
            ManifestError::SchemaVersion(Some(_))
        ));
    }
    let mut v = buildx_index();
    v["schemaVersion"] = json!(3);
    assert!(matches!(
        reject(None, &v),
        ManifestError::SchemaVersion(Some(3))
    ));
    let mut v = oci_manifest();
    v.as_object_mut().unwrap().remove("schemaVersion");
    assert!(matches!(
        reject(None, &v),
        ManifestError::SchemaVersion(None)
    ));
    let mut v = oci_manifest();
    v["schemaVersion"] = json!("2");
    assert!(matches!(reject(None, &v), ManifestError::Json(_)));
}

#[test]
fn bodies_that_are_not_manifests() {
    for body in [
        &b""[..],
        b"not json",
        b"[2, \"application/vnd.oci.image.manifest.v1+json\"]",
        b"\"manifest\"",
        b"null",
        b"{\"schemaVersion\": 2, \"config\": ",
        b"{\"schemaVersion\": 2, \"schemaVersion\": 2}",
    ] {
        let e = parse(None, body).unwrap_err();
        assert!(matches!(e, ManifestError::Json(_)), "{body:?}: {e:?}");
    }
    // A malformed digest anywhere is a parse error, not a later surprise.
    for bad in ["sha256:abc", "sha512:00", "", "SHA256:x"] {
        let mut v = oci_manifest();
        v["layers"][1]["digest"] = json!(bad);
        let e = reject(None, &v);
        assert!(matches!(e, ManifestError::Json(_)), "{bad}: {e:?}");
    }
    let mut v = oci_manifest();
    v["config"]["size"] = json!(-1);
    assert!(matches!(reject(None, &v), ManifestError::Json(_)));
    let mut v = oci_manifest();
    v["layers"] = json!({});
    assert!(matches!(reject(None, &v), ManifestError::Json(_)));
    let mut v = buildx_index();
    v["manifests"][0]["platform"] = json!({"os": "linux"});
    assert!(matches!(reject(None, &v), ManifestError::Json(_)));
}

#[test]
fn sizes_and_counts_are_bounded() {
    let body = bytes(&oci_manifest());
    let mut padded = body.clone();
    padded.resize(MAX_MANIFEST + 1, b' ');
    assert!(
        matches!(parse(None, &padded), Err(ManifestError::TooLarge(n)) if n == MAX_MANIFEST + 1)
    );
    padded.truncate(MAX_MANIFEST);
    assert!(parse(None, &padded).is_ok(), "exactly the limit is fine");

    let layer =
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d("l"), "size": 1});
    let mut v = oci_manifest();
    v["layers"] = Value::Array(vec![layer.clone(); 1000]);
    assert_eq!(manifest(None, &v).layers.len(), 1000);
    v["layers"] = Value::Array(vec![layer; 1001]);
    assert!(matches!(
        reject(None, &v),
        ManifestError::TooManyLayers(1001)
    ));

    let entry = buildx_index()["manifests"][0].clone();
    let v = json!({"schemaVersion": 2, "manifests": vec![entry; 1001]});
    assert!(matches!(
        reject(None, &v),
        ManifestError::TooManyEntries(1001)
    ));

    let mut v = oci_manifest();
    v["config"]["size"] = json!(MAX_CONFIG);
    manifest(None, &v);
    v["config"]["size"] = json!(MAX_CONFIG + 1);
    let e = reject(None, &v);
    assert!(
        matches!(&e, ManifestError::ConfigTooLarge { digest, size } if *digest == Digest::of(b"config") && *size == MAX_CONFIG + 1),
        "{e:?}"
    );
}

#[test]
fn serde_deserialize_checks_too() {
    let m: Manifest = serde_json::from_value(oci_manifest()).unwrap();
    assert_eq!(m.layers.len(), 3);
    let mut v = oci_manifest();
    v["schemaVersion"] = json!(1);
    assert!(serde_json::from_value::<Manifest>(v).is_err());
    let i: Index = serde_json::from_value(buildx_index()).unwrap();
    assert_eq!(i.manifests.len(), 4);

    // Descriptors write back what they read, without the absent options.
    let layer = &m.layers[0];
    let text = serde_json::to_value(layer).unwrap();
    assert_eq!(text, oci_manifest()["layers"][0]);
    assert_eq!(serde_json::from_value::<Descriptor>(text).unwrap(), *layer);
}

#[test]
fn layers_keel_can_and_cannot_unpack() {
    let layer = |media_type: &str| Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(b"layer"),
        size: 1,
        platform: None,
        annotations: None,
    };
    for ok in [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ] {
        check_layer(&layer(ok)).unwrap();
    }
    for foreign in [
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ] {
        let e = check_layer(&layer(foreign)).unwrap_err();
        assert!(
            matches!(&e, ManifestError::NonDistributable { media_type, .. } if media_type == foreign),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains(foreign) && message.contains(&d("layer")),
            "{message}"
        );
    }
    for other in [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        "application/octet-stream",
        "",
    ] {
        let e = check_layer(&layer(other)).unwrap_err();
        assert!(
            matches!(&e, ManifestError::UnsupportedLayer { media_type, .. } if media_type == other)
        );
        assert!(e.to_string().contains(&d("layer")), "{e}");
    }
}

#[test]
fn platforms() {
    assert_eq!(
        platform("linux", "arm64", Some("v8")).to_string(),
        "linux/arm64/v8"
    );
    assert_eq!(platform("linux", "amd64", None).to_string(), "linux/amd64");
    let host = Platform::host();
    assert_eq!(host.os, "linux");
    let expected = match std::env::consts::ARCH {
        "x86_64" => Some(("amd64", None)),
        "aarch64" => Some(("arm64", Some("v8"))),
        "riscv64" => Some(("riscv64", None)),
        "s390x" => Some(("s390x", None)),
        _ => None,
    };
    if let Some((architecture, variant)) = expected {
        assert_eq!(
            (host.architecture.as_str(), host.variant.as_deref()),
            (architecture, variant)
        );
    }
    // The host finds itself in a multi-platform index of the usual ones.
    if matches!(std::env::consts::ARCH, "x86_64" | "aarch64") {
        choose(&index(None, &buildx_index()), &host).unwrap();
    }
}
