use super::*;

const GRAPH_A: &str = "00000000-1111-2222-3333-444444444444";
const GRAPH_B: &str = "55555555-6666-7777-8888-999999999999";

fn profiles(entries: &[(&str, &str, &str)]) -> Profiles {
    let json: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(name, client, scope)| {
            (
                name.to_string(),
                serde_json::json!({
                    "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "client_id": client,
                    "scope": scope,
                    "subject": format!("aws2azure:{name}"),
                }),
            )
        })
        .collect();
    Profiles::from_json(&serde_json::Value::Object(json).to_string()).unwrap()
}

fn request(resource: &str, selector: Option<Selector>) -> TokenRequest {
    TokenRequest {
        resource: resource.into(),
        selector,
    }
}

#[test]
fn a_scope_serves_its_resource_with_or_without_the_slash() {
    let map = ResourceMap::new(
        &profiles(&[("graph", GRAPH_A, "https://graph.microsoft.com/.default")]),
        &BTreeMap::new(),
    )
    .unwrap();
    for resource in [
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/",
    ] {
        let served = map.resolve(&request(resource, None)).unwrap();
        assert_eq!(served.profile.as_str(), "graph");
        assert_eq!(served.client_id, GRAPH_A);
    }
    let err = map
        .resolve(&request("https://vault.azure.net", None))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownResource { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("served: https://graph.microsoft.com"),
        "{err}"
    );
}

#[test]
fn several_apps_for_one_resource_need_a_selector() {
    let map = ResourceMap::new(
        &profiles(&[
            ("graph-a", GRAPH_A, "https://graph.microsoft.com/.default"),
            ("graph-b", GRAPH_B, "https://graph.microsoft.com/.default"),
        ]),
        &BTreeMap::new(),
    )
    .unwrap();
    let graph = "https://graph.microsoft.com";
    let err = map.resolve(&request(graph, None)).unwrap_err();
    assert!(matches!(err, Error::AmbiguousResource { .. }), "{err:?}");
    assert!(err.to_string().contains(GRAPH_B), "{err}");

    let by_client = map
        .resolve(&request(
            graph,
            Some(Selector::ClientId(GRAPH_B.to_uppercase())),
        ))
        .unwrap();
    assert_eq!(by_client.profile.as_str(), "graph-b");
    let by_name = map
        .resolve(&request(
            graph,
            Some(Selector::ResourceId("graph-a".into())),
        ))
        .unwrap();
    assert_eq!(by_name.profile.as_str(), "graph-a");

    let err = map
        .resolve(&request(graph, Some(Selector::ClientId("nope".into()))))
        .unwrap_err();
    assert!(err.to_string().contains("client_id `nope`"), "{err}");
    let err = map
        .resolve(&request(graph, Some(Selector::Unsupported("object_id"))))
        .unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string().contains("object_id is not supported"),
        "{err}"
    );
}

#[test]
fn overrides_add_resources_and_name_configured_profiles_only() {
    let profiles = profiles(&[
        ("graph", GRAPH_A, "https://graph.microsoft.com/.default"),
        ("api", GRAPH_B, "api://my-api/.default"),
    ]);
    let overrides = BTreeMap::from([("https://my-api.example.com".into(), "api".into())]);
    let map = ResourceMap::new(&profiles, &overrides).unwrap();
    let served = map
        .resolve(&request("https://my-api.example.com/", None))
        .unwrap();
    assert_eq!(served.profile.as_str(), "api");
    assert_eq!(
        map.resolve(&request("api://my-api", None))
            .unwrap()
            .profile
            .as_str(),
        "api"
    );
    assert_eq!(map.profiles().len(), 2);

    let bad = BTreeMap::from([("https://x".into(), "missing".into())]);
    let err = ResourceMap::new(&profiles, &bad).unwrap_err();
    assert!(
        err.to_string()
            .contains("profile `missing`, which is not configured"),
        "{err}"
    );
    assert!(err.to_string().contains("api, graph"), "{err}");
    let bad = BTreeMap::from([("two words".into(), "api".into())]);
    assert!(ResourceMap::new(&profiles, &bad).is_err());
}
