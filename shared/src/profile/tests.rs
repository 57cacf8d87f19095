use super::*;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "00000000-1111-2222-3333-444444444444";

fn config() -> ProfileConfig {
    ProfileConfig {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        scope: "https://graph.microsoft.com/.default".into(),
        subject: "aws2azure:graph-reader".into(),
        authority: None,
        allowed_principals: None,
        ..ProfileConfig::default()
    }
}

fn field_of(err: Error) -> (&'static str, String) {
    match err {
        Error::InvalidProfile {
            field, ref reason, ..
        } => (field, reason.clone()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn accepts_a_typical_profile() {
    let p = Profile::new("graph", &config()).unwrap();
    assert_eq!(p.authority.as_str(), DEFAULT_AUTHORITY);
    assert_eq!(
        p.token_endpoint(),
        format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    );
    let domain = ProfileConfig {
        tenant_id: "contoso.onmicrosoft.com".into(),
        scope: "api://00000000-1111-2222-3333-444444444444/.default".into(),
        authority: Some("http://127.0.0.1:9000/".into()),
        ..config()
    };
    let p = Profile::new("my_api.v2", &domain).unwrap();
    assert_eq!(p.authority.as_str(), "http://127.0.0.1:9000");
}

#[test]
fn errors_name_the_profile_field_and_fix() {
    let cases: Vec<(&str, ProfileConfig, &str, &str)> = vec![
        (
            "p",
            ProfileConfig {
                tenant_id: "common".into(),
                ..config()
            },
            "tenant_id",
            "verified domain",
        ),
        (
            "p",
            ProfileConfig {
                tenant_id: "not a tenant".into(),
                ..config()
            },
            "tenant_id",
            "GUID",
        ),
        (
            "p",
            ProfileConfig {
                tenant_id: "1.2.3.4".into(),
                ..config()
            },
            "tenant_id",
            "GUID",
        ),
        (
            "p",
            ProfileConfig {
                client_id: "graph".into(),
                ..config()
            },
            "client_id",
            "Application (client) ID",
        ),
        (
            "p",
            ProfileConfig {
                scope: "https://graph.microsoft.com/.default https://vault.azure.net/.default"
                    .into(),
                ..config()
            },
            "scope",
            "one profile per resource",
        ),
        (
            "p",
            ProfileConfig {
                scope: "https://graph.microsoft.com/User.Read".into(),
                ..config()
            },
            "scope",
            "/.default",
        ),
        (
            "p",
            ProfileConfig {
                scope: "/.default".into(),
                ..config()
            },
            "scope",
            "exactly one resource",
        ),
        (
            "p",
            ProfileConfig {
                scope: "https://a/.default/.default".into(),
                ..config()
            },
            "scope",
            "exactly one resource",
        ),
        (
            "p",
            ProfileConfig {
                subject: "x".repeat(700),
                ..config()
            },
            "subject",
            "700 characters",
        ),
        (
            "p",
            ProfileConfig {
                subject: "".into(),
                ..config()
            },
            "subject",
            "1 to 600",
        ),
        (
            "p",
            ProfileConfig {
                subject: " padded".into(),
                ..config()
            },
            "subject",
            "whitespace",
        ),
        (
            "p",
            ProfileConfig {
                authority: Some("http://login.example.com".into()),
                ..config()
            },
            "authority",
            "https",
        ),
        ("a/b", config(), "name", "letters, digits"),
        ("..", config(), "name", "must not start"),
        (".hidden", config(), "name", "must not start"),
        ("", config(), "name", "1 to 64"),
    ];
    for (name, cfg, field, hint) in cases {
        let err = Profile::new(name, &cfg).unwrap_err();
        let text = err.to_string();
        let (f, reason) = field_of(err);
        assert_eq!(f, field, "{text}");
        assert!(reason.contains(hint), "{text}");
        if field != "name" {
            assert!(text.starts_with(&format!("profile `{name}`")), "{text}");
        }
    }
}

#[test]
fn allowed_principals_are_exact_role_or_user_arns() {
    let with = |list: &[&str]| ProfileConfig {
        allowed_principals: Some(list.iter().map(|s| s.to_string()).collect()),
        ..config()
    };
    let p = Profile::new(
        "graph",
        &with(&[
            "arn:aws:iam::111122223333:role/orders-service",
            "arn:aws-us-gov:iam::111122223333:user/ops/alice",
            "arn:aws:iam::111122223333:user/bob",
        ]),
    )
    .unwrap();
    assert!(p.allows("arn:aws:iam::111122223333:role/orders-service"));
    assert!(p.allows("arn:aws-us-gov:iam::111122223333:user/ops/alice"));
    assert!(!p.allows("arn:aws:iam::111122223333:role/orders-service-admin"));
    assert!(!p.allows("arn:aws:iam::111122223333:role/Orders-Service"));
    assert!(!p.allows("arn:aws:iam::444455556666:role/orders-service"));
    assert!(!p.allows(""));
    // No list: IAM alone decides.
    assert!(Profile::new("graph", &config()).unwrap().allows("anything"));

    let cases = [
        (vec![], "is empty"),
        (vec!["arn:aws:iam::111122223333:role/*"], "wildcard"),
        (vec!["arn:aws:iam::111122223333:role/app-?"], "wildcard"),
        (
            vec!["arn:aws:sts::111122223333:assumed-role/app/i-0abc"],
            "write arn:aws:iam::111122223333:role/ROLE_NAME",
        ),
        (
            vec!["arn:aws:iam::111122223333:role/service-role/app"],
            "write the role without it, arn:aws:iam::111122223333:role/app",
        ),
        (vec!["arn:aws:iam::1111:role/app"], "12-digit"),
        (
            vec!["arn:aws:iam:us-east-1:111122223333:role/app"],
            "not an IAM role or user",
        ),
        (
            vec!["arn:aws:iam::111122223333:group/admins"],
            "not an IAM role or user",
        ),
        (vec!["arn:aws:s3:::bucket"], "not an IAM role or user"),
        (vec!["111122223333"], "not an IAM role or user"),
        (
            vec!["arn:aws:iam::111122223333:role/a b"],
            "invalid role name",
        ),
        (
            vec!["arn:aws:iam::111122223333:user//alice"],
            "invalid user name",
        ),
        (
            vec![
                "arn:aws:iam::111122223333:user/alice",
                " arn:aws:iam::111122223333:user/bob",
            ],
            "not an IAM role or user",
        ),
    ];
    for (list, hint) in cases {
        let err = Profile::new("graph", &with(&list)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("profile `graph`: invalid `allowed_principals`: "),
            "{text}"
        );
        let (field, reason) = field_of(err);
        assert_eq!(field, "allowed_principals", "{text}");
        assert!(reason.contains(hint), "{list:?}: {text}");
    }

    let json = format!(
        r#"{{"graph": {{"tenant_id":"{TENANT}","client_id":"{CLIENT}",
            "scope":"https://graph.microsoft.com/.default","subject":"s",
            "allowed_principals": ["arn:aws:iam::111122223333:role/app"]}}}}"#
    );
    let profiles = Profiles::from_json(&json).unwrap();
    let graph = profiles.get("graph").unwrap();
    assert!(graph.allows("arn:aws:iam::111122223333:role/app"));
    // Round trip through the written form keeps the list.
    let again = Profile::new("graph", &ProfileConfig::from(graph)).unwrap();
    assert_eq!(&again, graph);
}

#[test]
fn subject_limit_is_in_characters() {
    assert!(Subject::parse(&"é".repeat(600)).is_ok());
    assert!(Subject::parse(&"é".repeat(601)).is_err());
}

#[test]
fn profiles_from_json() {
    let json = format!(
        r#"{{"graph": {{"tenant_id":"{TENANT}","client_id":"{CLIENT}",
            "scope":"https://graph.microsoft.com/.default","subject":"s"}}}}"#
    );
    let profiles = Profiles::from_json(&json).unwrap();
    assert_eq!(profiles.len(), 1);
    assert!(profiles.get("graph").is_some());
    assert!(profiles.get("other").is_none());

    let err = Profiles::from_json("{}").unwrap_err();
    assert!(err.to_string().contains("at least one"), "{err}");
    let err = Profiles::from_json(r#"{"g": {"tenant": "x"}}"#).unwrap_err();
    assert!(err.to_string().contains("tenant_id"), "{err}");
}

#[test]
fn cache_keys_differ_when_anything_token_relevant_differs() {
    let a = Profile::new("a", &config()).unwrap();
    let b = Profile::new(
        "a",
        &ProfileConfig {
            subject: "other".into(),
            ..config()
        },
    )
    .unwrap();
    let c = Profile::new("c", &config()).unwrap();
    assert_ne!(a.cache_key(), b.cache_key());
    assert_ne!(a.cache_key(), c.cache_key());
}

#[test]
fn hostile_input_is_bounded_in_messages() {
    let err = Profile::new(&"\u{0}x".repeat(5000), &config()).unwrap_err();
    let text = err.to_string();
    assert!(text.len() < 400, "{}", text.len());
    assert!(!text.contains('\u{0}'));
}

#[test]
fn an_sts_profile_carries_a_role_arn_as_its_subject() {
    const ROLE: &str = "arn:aws:iam::111122223333:role/graph-reader";
    let sts = |subject: &str, role_arn: Option<&str>| ProfileConfig {
        subject: subject.into(),
        assertion: Some("sts".into()),
        role_arn: role_arn.map(Into::into),
        ..config()
    };
    // role_arn alone: the subject is the role's ARN.
    let p = Profile::new("g", &sts("", Some(ROLE))).unwrap();
    assert_eq!(p.assertion, AssertionSource::Sts);
    assert_eq!(p.subject.as_str(), ROLE);
    assert_eq!(p.role_arn.as_ref().unwrap().as_str(), ROLE);
    // The same ARN written twice is fine; a role with a path too.
    assert!(Profile::new("g", &sts(ROLE, Some(ROLE))).is_ok());
    let with_path = "arn:aws:iam::111122223333:role/team/graph-reader";
    assert!(Profile::new("g", &sts("", Some(with_path))).is_ok());
    // No role_arn: the subject names the broker's own role.
    let p = Profile::new("g", &sts(ROLE, None)).unwrap();
    assert_eq!((p.subject.as_str(), p.role_arn.as_ref()), (ROLE, None));
    // Written back, it parses to the same profile.
    let again = Profile::new("g", &ProfileConfig::from(&p)).unwrap();
    assert_eq!(again, p);
    // Default and explicit kms.
    assert_eq!(
        Profile::new("g", &config()).unwrap().assertion,
        AssertionSource::Kms
    );
    let kms = ProfileConfig {
        assertion: Some("kms".into()),
        ..config()
    };
    assert_eq!(
        Profile::new("g", &kms).unwrap().assertion,
        AssertionSource::Kms
    );

    for (bad, field, says) in [
        (sts("", None), "subject", "set role_arn"),
        (
            sts("aws2azure:graph", None),
            "subject",
            "not an IAM role ARN",
        ),
        (
            sts("arn:aws:iam::111122223333:role/other", Some(ROLE)),
            "subject",
            "differs from role_arn",
        ),
        (
            sts("", Some("arn:aws:iam::111122223333:user/u")),
            "role_arn",
            "not an IAM role ARN",
        ),
        (
            sts("", Some("arn:aws:iam::1111:role/r")),
            "role_arn",
            "12-digit",
        ),
        (
            sts("", Some("arn:aws:iam::111122223333:role/a b")),
            "role_arn",
            "invalid role name",
        ),
        (
            ProfileConfig {
                role_arn: Some(ROLE.into()),
                ..config()
            },
            "role_arn",
            "only for assertion = \"sts\"",
        ),
        (
            ProfileConfig {
                assertion: Some("KMS".into()),
                ..config()
            },
            "assertion",
            "neither \"kms\"",
        ),
        (
            ProfileConfig {
                subject: String::new(),
                ..config()
            },
            "subject",
            "is missing",
        ),
    ] {
        let (got_field, reason) = field_of(Profile::new("g", &bad).unwrap_err());
        assert_eq!(got_field, field, "{bad:?}");
        assert!(reason.contains(says), "{bad:?}: {reason}");
    }
}
