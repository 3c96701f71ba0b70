use super::*;

fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
    Challenge {
        scheme: Scheme::Bearer,
        realm: Some(realm.into()),
        service: service.map(Into::into),
        scope: scope.map(Into::into),
    }
}

fn one(header: &str) -> Challenge {
    let mut all = parse_challenges(header).unwrap();
    assert_eq!(all.len(), 1, "{header}: {all:?}");
    all.remove(0)
}

#[test]
fn docker_hubs_challenge() {
    let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;
    assert_eq!(
        one(header),
        bearer(
            "https://auth.docker.io/token",
            Some("registry.docker.io"),
            Some("repository:library/nginx:pull")
        )
    );
}

#[test]
fn distributions_challenge_with_an_error() {
    let header = r#"Bearer realm="http://127.0.0.1:5001/auth",service="Docker registry",error="invalid_token""#;
    assert_eq!(
        one(header),
        bearer("http://127.0.0.1:5001/auth", Some("Docker registry"), None)
    );
}

#[test]
fn basic_challenges() {
    assert_eq!(
        one(r#"Basic realm="Registry Realm""#),
        Challenge {
            scheme: Scheme::Basic,
            realm: Some("Registry Realm".into()),
            service: None,
            scope: None,
        }
    );
    assert_eq!(one("basic").realm, None, "a scheme alone");
    assert_eq!(one("BASIC realm=simple").realm.as_deref(), Some("simple"));
}

#[test]
fn schemes_and_parameter_names_ignore_case() {
    let c = one(r#"bEaReR REALM="https://a/t", Service=s, sCoPe="x""#);
    assert_eq!(c, bearer("https://a/t", Some("s"), Some("x")));
}

#[test]
fn several_challenges_in_one_header() {
    let all = parse_challenges(
        r#"Basic realm="r1", Bearer realm="https://a/token",service="svc", Basic realm=r2"#,
    )
    .unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].scheme, Scheme::Basic);
    assert_eq!(all[0].realm.as_deref(), Some("r1"));
    assert_eq!(all[1], bearer("https://a/token", Some("svc"), None));
    assert_eq!(all[2].realm.as_deref(), Some("r2"));
}

#[test]
fn unknown_schemes_are_skipped() {
    // RFC 7235's own example, with a token68 scheme in front.
    let all = parse_challenges(
        r#"Negotiate abc+/def==, Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
    )
    .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].realm.as_deref(), Some("simple"));
    assert_eq!(parse_challenges("Negotiate").unwrap(), vec![]);
    assert_eq!(parse_challenges("").unwrap(), vec![]);
    assert_eq!(parse_challenges(" , ,").unwrap(), vec![]);
}

#[test]
fn quoted_strings_unescape() {
    let c = one(r#"Bearer realm="https://a/t",service="say \"hi\" \\ \x""#);
    assert_eq!(c.service.as_deref(), Some(r#"say "hi" \ x"#));
    let c = one("Bearer realm=\"https://a/t\", service=\"tab\there, comma, é\"");
    assert_eq!(c.service.as_deref(), Some("tab\there, comma, é"));
    let c = one(r#"Bearer realm = "https://a/t" , scope = "" "#);
    assert_eq!(c.scope.as_deref(), Some(""));
}

#[test]
fn garbage_headers_are_errors_not_panics() {
    for header in [
        r#"Bearer realm="https://a/t"#,
        r#"Bearer realm="https://a/t\"#,
        r#"Bearer realm="a"b"#,
        r#"Bearer realm="a" b"#,
        "Bearer \"quoted\"",
        "Bearer realm=\"a\u{1}b\"",
        "Bearer realm=\"a\nb\"",
        "Bearer,realm=a=b",
        "=realm",
        "\"Bearer\"",
        "Bearer\"x\"",
        "Bearer realm=\"a\", service=\"",
        "Bearer realm=a, (x)",
        "Bearer ===",
        "Bearer @",
    ] {
        let e = parse_challenges(header).unwrap_err();
        assert!(
            matches!(e, AuthError::BadHeader { .. }),
            "{header:?}: {e:?}"
        );
    }
    let e = parse_challenges(r#"Bearer realm="https://a/t"#).unwrap_err();
    assert!(e.to_string().contains("unterminated"), "{e}");

    // Every prefix of real headers: errors or challenges, never a panic.
    let real = r#"Basic realm="r\"1", Bearer realm="https://a/token",service="svc é",scope="repository:x:pull""#;
    for end in 0..=real.len() {
        if let Some(prefix) = real.get(..end) {
            let _ = parse_challenges(prefix);
        }
    }
}

#[test]
fn repeated_parameters_and_floods_are_rejected() {
    let e = parse_challenges(r#"Bearer realm="https://a/t", realm="https://evil/t""#).unwrap_err();
    assert!(
        matches!(&e, AuthError::DuplicateParam { param, .. } if param == "realm"),
        "{e:?}"
    );
    // Unknown parameters may repeat: keel reads none of them.
    assert_eq!(one("Bearer error=a, error=b").realm, None);

    let many = vec!["Basic realm=x"; MAX_CHALLENGES + 1].join(", ");
    assert!(matches!(
        parse_challenges(&many),
        Err(AuthError::TooManyChallenges(_))
    ));
    let params = (0..=MAX_PARAMS)
        .map(|i| format!("p{i}=v"))
        .collect::<Vec<_>>();
    let header = format!("Bearer {}", params.join(", "));
    assert!(matches!(
        parse_challenges(&header),
        Err(AuthError::TooManyParams(_))
    ));
    let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_HEADER));
    assert!(matches!(
        parse_challenges(&long),
        Err(AuthError::HeaderTooLong(_))
    ));
}

#[test]
fn token_urls_encode_their_values() {
    let hub = bearer(
        "https://auth.docker.io/token",
        Some("registry.docker.io"),
        Some("repository:library/nginx:pull"),
    );
    assert_eq!(
        token_url(&hub, "ignored/when/scoped").unwrap(),
        "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fnginx%3Apull"
    );
    let c = bearer("http://127.0.0.1:5001/auth", Some("Docker registry"), None);
    assert_eq!(
        token_url(&c, "team/app").unwrap(),
        "http://127.0.0.1:5001/auth?service=Docker%20registry&scope=repository%3Ateam%2Fapp%3Apull"
    );
    let c = bearer("https://a/t", Some("a&b=c?d#é~-._"), Some(""));
    assert_eq!(
        token_url(&c, "x").unwrap(),
        "https://a/t?service=a%26b%3Dc%3Fd%23%C3%A9~-._&scope=repository%3Ax%3Apull"
    );
    let c = bearer("https://a/t", None, None);
    assert_eq!(
        token_url(&c, "x").unwrap(),
        "https://a/t?scope=repository%3Ax%3Apull"
    );
}

#[test]
fn token_urls_extend_an_existing_query() {
    for (realm, joined) in [
        ("https://a/t?x=1", "https://a/t?x=1&service=s&scope=q"),
        ("https://a/t?", "https://a/t?service=s&scope=q"),
        ("https://a/t?x=1&", "https://a/t?x=1&service=s&scope=q"),
        ("https://a?x=1", "https://a?x=1&service=s&scope=q"),
        ("HTTPS://a:8443", "HTTPS://a:8443?service=s&scope=q"),
    ] {
        let c = bearer(realm, Some("s"), Some("q"));
        assert_eq!(token_url(&c, "r").unwrap(), joined);
    }
}

#[test]
fn only_absolute_http_realms_are_used() {
    for realm in [
        "/token",
        "token",
        "auth.docker.io/token",
        "ftp://a/t",
        "file:///etc/passwd",
        "https://",
        "https:///t",
        "https://?x",
        "https://user:pass@a/t",
        "https://a/t#frag",
        "https://a/t x",
        "https://a/t\r\nX-Injected: 1",
        "https://é/t",
        "",
    ] {
        let e = token_url(&bearer(realm, Some("s"), None), "r").unwrap_err();
        assert!(
            matches!(&e, AuthError::BadRealm(r) if r == realm),
            "{realm:?}: {e:?}"
        );
    }
    let e = token_url(&bearer("/token", None, None), "r").unwrap_err();
    assert!(e.to_string().contains("\"/token\""), "{e}");

    let mut no_realm = bearer("x", None, None);
    no_realm.realm = None;
    assert!(matches!(token_url(&no_realm, "r"), Err(AuthError::NoRealm)));
    let basic = Challenge {
        scheme: Scheme::Basic,
        realm: Some("Registry Realm".into()),
        service: None,
        scope: None,
    };
    assert!(matches!(
        token_url(&basic, "r"),
        Err(AuthError::NotBearer(_))
    ));
}

#[test]
fn token_responses() {
    let t = |body: &str| parse_token(body.as_bytes()).map(|t| t.token);
    assert_eq!(t(r#"{"token":"abc.def-ghi_="}"#).unwrap(), "abc.def-ghi_=");
    assert_eq!(t(r#"{"access_token":"oauth"}"#).unwrap(), "oauth");
    assert_eq!(
        t(r#"{"token":"docker","access_token":"oauth"}"#).unwrap(),
        "docker"
    );
    assert_eq!(
        t(r#"{"token":"","access_token":"oauth"}"#).unwrap(),
        "oauth"
    );
    assert_eq!(
        t(r#"{"token":"a","expires_in":300,"issued_at":"2024-01-01T00:00:00Z","extra":[1]}"#)
            .unwrap(),
        "a"
    );

    for body in [
        r#"{}"#,
        r#"{"token":""}"#,
        r#"{"token":"","access_token":""}"#,
        r#"{"token":42}"#,
        r#"{"token":null}"#,
        r#"["token"]"#,
        r#""token""#,
    ] {
        assert!(matches!(t(body), Err(AuthError::NoToken)), "{body}");
    }
    for body in [
        "",
        "not json",
        r#"{"token":"a""#,
        r#"{"token":"a"} trailing"#,
    ] {
        assert!(
            matches!(t(body), Err(AuthError::TokenNotJson(_))),
            "{body:?}"
        );
    }
    for body in [
        r#"{"token":"a b"}"#,
        r#"{"token":"a\r\nX-Injected: 1"}"#,
        r#"{"token":"a\u0000"}"#,
        r#"{"token":"é"}"#,
        r#"{"token":"a\u007f"}"#,
    ] {
        assert!(
            matches!(t(body), Err(AuthError::BadTokenCharacter(_))),
            "{body}"
        );
    }

    let padding = " ".repeat(MAX_TOKEN_RESPONSE);
    let big = format!(r#"{{"token":"a"}}{padding}"#);
    assert!(matches!(
        parse_token(big.as_bytes()),
        Err(AuthError::TokenTooLarge(_))
    ));
    let just_fits = format!(
        r#"{{"token":"a"}}{}"#,
        " ".repeat(MAX_TOKEN_RESPONSE - r#"{"token":"a"}"#.len())
    );
    assert_eq!(t(&just_fits).unwrap(), "a");
}

#[test]
fn errors_never_carry_the_token() {
    let secret = "s3cr3t-token";
    for body in [
        format!(r#"{{"token":"{secret} x"}}"#),
        format!(r#"{{"token":"{secret}", "token": 5 ,"#),
        format!(r#"{{"access_token":"{secret}\u0001"}}"#),
    ] {
        let e = parse_token(body.as_bytes()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    }
}

#[test]
fn secrets_are_redacted_in_debug() {
    let token = Token {
        token: "s3cr3t".into(),
    };
    assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    let creds = Credentials {
        username: "alice".into(),
        password: "hunter2".into(),
    };
    let shown = format!("{creds:?}");
    assert_eq!(
        shown,
        r#"Credentials { username: "alice", password: <redacted> }"#
    );
    assert!(!format!("{creds:#?}").contains("hunter2"));
}
