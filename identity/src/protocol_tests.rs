use super::*;

fn parse(query: &str) -> Result<TokenRequest, Error> {
    TokenRequest::from_query(Some(query))
}

#[test]
fn an_sdk_request_parses() {
    let r = parse("api-version=2019-08-01&resource=https%3A%2F%2Fgraph.microsoft.com").unwrap();
    assert_eq!(r.resource, "https://graph.microsoft.com");
    assert_eq!(r.selector, None);

    let r = parse(
        "api-version=2019-08-01&resource=https://vault.azure.net&client_id=00000000-1111-2222-3333-444444444444",
    )
    .unwrap();
    assert_eq!(
        r.selector,
        Some(Selector::ClientId(
            "00000000-1111-2222-3333-444444444444".into()
        ))
    );
    let r = parse("resource=api%3A%2F%2Fmy-api&api-version=2019-08-01&mi_res_id=graph").unwrap();
    assert_eq!(r.resource, "api://my-api");
    assert_eq!(r.selector, Some(Selector::ResourceId("graph".into())));
}

#[test]
fn parameters_of_other_clients_are_ignored() {
    let r = parse(
        "api-version=2019-08-01&resource=https://graph.microsoft.com&token_sha256_to_refresh=abc",
    )
    .unwrap();
    assert_eq!(r.resource, "https://graph.microsoft.com");
}

#[test]
fn missing_or_wrong_version_and_resource_are_refused() {
    let err = TokenRequest::from_query(None).unwrap_err();
    assert!(err.to_string().contains("api-version is missing"), "{err}");
    let err = parse("api-version=2017-09-01&resource=https://graph.microsoft.com").unwrap_err();
    assert!(matches!(err, Error::ApiVersion { .. }), "{err:?}");
    assert!(err.to_string().contains("2019-08-01"), "{err}");
    let err = parse("api-version=2019-08-01").unwrap_err();
    assert!(err.to_string().contains("resource is missing"), "{err}");
    let err = parse("api-version=2019-08-01&resource=").unwrap_err();
    assert!(err.to_string().contains("resource is missing"), "{err}");
    let err = parse("api-version=2019-08-01&resource=a%20b").unwrap_err();
    assert!(err.to_string().contains("whitespace"), "{err}");
    assert_eq!(err.status(), 400);
}

#[test]
fn repeated_parameters_are_refused() {
    let err = parse("api-version=2019-08-01&resource=a&resource=b").unwrap_err();
    assert!(
        err.to_string().contains("resource is given more than once"),
        "{err}"
    );
    let err = parse("api-version=2019-08-01&api-version=2019-08-01&resource=a").unwrap_err();
    assert!(
        err.to_string()
            .contains("api-version is given more than once"),
        "{err}"
    );
    let err = parse("api-version=2019-08-01&resource=a&client_id=x&client_id=y").unwrap_err();
    assert!(
        err.to_string()
            .contains("client_id is given more than once"),
        "{err}"
    );
    let err = parse("api-version=2019-08-01&resource=a&client_id=x&mi_res_id=y").unwrap_err();
    assert!(err.to_string().contains("client_id and mi_res_id"), "{err}");
}

#[test]
fn control_characters_are_refused_and_never_echoed() {
    for query in [
        "api-version=2019-08-01&resource=https://graph%0d%0aX-Injected:%201",
        "api-version=2019-08-01%00&resource=a",
        "api-version=2019-08-01&resource=a&client_id=%1b[31m",
        "api-version=2019-08-01&resource=a&x%0a=1",
        "api-version=2019-08-01&resource=a&x=%7f",
    ] {
        let err = parse(query).unwrap_err();
        assert_eq!(err.status(), 400, "{query}");
        let message = err.to_string();
        assert!(
            !message.chars().any(char::is_control),
            "{query}: {message:?}"
        );
        assert!(!message.contains("Injected"), "{query}: {message}");
    }
}

#[test]
fn huge_queries_are_refused_before_parsing() {
    let query = format!(
        "api-version=2019-08-01&resource={}",
        "a".repeat(MAX_QUERY_LEN)
    );
    let err = parse(&query).unwrap_err();
    assert_eq!(err.status(), 414);
    let query = format!("api-version=2019-08-01&resource={}", "a".repeat(600));
    let err = parse(&query).unwrap_err();
    assert!(err.to_string().contains("longer than 512"), "{err}");
}

#[test]
fn unsupported_selectors_are_named() {
    let r = parse("api-version=2019-08-01&resource=a&object_id=1").unwrap();
    assert_eq!(r.selector, Some(Selector::Unsupported("object_id")));
}

#[test]
fn an_answer_never_shows_its_token_in_debug() {
    let answer = TokenAnswer {
        access_token: "eyJ-secret",
        expires_on: "1700000000".into(),
        resource: "https://graph.microsoft.com",
        token_type: "Bearer",
        client_id: "c",
    };
    assert!(!format!("{answer:?}").contains("eyJ-secret"));
    let json = serde_json::to_value(&answer).unwrap();
    assert_eq!(
        json["expires_on"], "1700000000",
        "a string, as SDKs parse it"
    );
}

proptest::proptest! {
    /// Whatever the query, parsing answers (never panics) and a refusal's
    /// message holds no control character.
    #[test]
    fn any_query_gets_an_answer(query in "\\PC{0,300}|[%&=a-z0-9]{0,300}") {
        if let Err(err) = parse(&query) {
            proptest::prop_assert!(!err.to_string().chars().any(char::is_control));
            proptest::prop_assert!((400..500).contains(&err.status()));
        }
    }
}
