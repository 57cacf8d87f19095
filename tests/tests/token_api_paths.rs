//! The profile segment of `GET /token/{profile}` as IAM sees it, and who may
//! have a profile's tokens, driven by real API Gateway REST events.
//!
//! IAM authorizes the path as the caller sent it: a policy denying
//! `…/GET/token/graph` does not match `…/GET/token/gr%61ph`. API Gateway
//! REST keeps the caller's encoding in `path` and `requestContext.path`, and
//! the `{profile}` path parameter may come decoded, so an encoded name must
//! be refused (400) before any lookup, whichever field is decoded.
//! `rest-encoded-profile.json` is `rest-iam-user.json` requesting
//! `/prod/token/gr%61ph`: both paths encoded, the parameter decoded.

use std::sync::Arc;
use std::time::Duration;

use aws2azure_shared::clock::SystemClock;
use aws2azure_shared::profile::Profiles;
use aws2azure_signer::api::{handle, serve};
use aws2azure_signer::broker::{Broker, BrokerSettings};
use aws2azure_signer::entra::EntraClient;
use aws2azure_signer::metrics::{UNKNOWN_PROFILE, emf_line};
use aws2azure_signer::signing::{AssertionSigner, LocalKeySigner};
use aws2azure_tests::event;
use aws2azure_tests::logs::capture;
use aws2azure_tests::rig::{CLIENT, Federation, SCOPE, SUBJECT, TENANT};
use lambda_http::{Body, Response};
use serde_json::{Value, json};

fn body(response: &Response<Body>) -> Value {
    match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("unexpected body {other:?}"),
    }
}

async fn federation() -> (Federation, Arc<dyn AssertionSigner>) {
    let signer: Arc<dyn AssertionSigner> = Arc::new(LocalKeySigner::generate().unwrap());
    (Federation::start(signer.as_ref()).await, signer)
}

/// A broker for `fed` with these profiles (`{name: extra fields}`), each
/// otherwise the federation's trusted `graph` profile.
fn broker(fed: &Federation, signer: Arc<dyn AssertionSigner>, profiles: Value) -> Broker {
    let mut all = serde_json::Map::new();
    for (name, extra) in profiles.as_object().unwrap() {
        let mut profile = json!({"tenant_id": TENANT, "client_id": CLIENT, "scope": SCOPE,
            "subject": SUBJECT, "authority": fed.authority()});
        for (k, v) in extra.as_object().unwrap() {
            profile[k] = v.clone();
        }
        all.insert(name.clone(), profile);
    }
    let mut settings = BrokerSettings::new(fed.issuer.clone());
    settings.exchange_deadline = Duration::from_secs(3);
    Broker::new(
        Profiles::from_json(&Value::Object(all).to_string()).unwrap(),
        settings,
        signer,
        Arc::new(EntraClient::new(Duration::from_secs(2)).unwrap()),
        None,
        Arc::new(SystemClock),
    )
}

/// `rest-encoded-profile.json` with `raw` in both paths and `parameter` as
/// the path parameter (`None`: no parameter map at all).
fn encoded(raw: &str, parameter: Option<&str>) -> lambda_http::Request {
    event("rest-encoded-profile.json", |e| {
        e["path"] = json!(format!("/token/{raw}"));
        e["requestContext"]["path"] = json!(format!("/prod/token/{raw}"));
        e["pathParameters"] = match parameter {
            Some(p) => json!({ "profile": p }),
            None => Value::Null,
        };
    })
}

#[tokio::test]
async fn an_encoded_profile_name_is_refused_whichever_field_api_gateway_decodes() {
    let (fed, signer) = federation().await;
    let broker = broker(&fed, signer, json!({"graph": {}}));
    let (logs, _guard) = capture();

    // The fixture as is: both paths encoded, the parameter decoded.
    let response = serve(&broker, event("rest-encoded-profile.json", |_| {})).await;
    assert_eq!(response.status(), 400);
    let json = body(&response);
    assert_eq!(json["error"], "invalid_request");
    let text = json["error_description"].as_str().unwrap();
    assert!(
        text.contains("without percent-encoding") && text.contains("`gr%61ph`"),
        "{text}"
    );
    let audit = logs.audit();
    assert_eq!(audit.len(), 1, "one audit line");
    assert_eq!(audit[0]["profile"], "gr%61ph", "audited as sent");
    assert_eq!(audit[0]["status"], 400);
    assert_eq!(audit[0]["error"], "invalid_request");
    assert_eq!(audit[0]["caller"], "arn:aws:iam::111122223333:user/alice");

    for (raw, decoded) in [
        ("gr%61ph", "graph"),
        ("%67%72%61%70%68", "graph"),
        ("g%72aph", "graph"),
        ("graph%2D", "graph-"),
        ("%2E%2E", ".."),
        ("graph%2Fadmin", "graph/admin"),
    ] {
        for parameter in [Some(decoded), Some(raw), None] {
            let (response, audit) = handle(&broker, &encoded(raw, parameter)).await;
            assert_eq!(response.status(), 400, "{raw} / {parameter:?}");
            assert_eq!(body(&response)["error"], "invalid_request");
            assert!(
                body(&response)["error_description"]
                    .as_str()
                    .unwrap()
                    .contains("without percent-encoding"),
                "{raw} / {parameter:?}: {}",
                body(&response)
            );
            assert_eq!(audit.profile, raw);
            assert!(!audit.profile_configured);
        }
    }
    // A parameter that disagrees with the path, encoding or not.
    let (response, _) = handle(&broker, &encoded("graph", Some("other"))).await;
    assert_eq!(response.status(), 400);
    assert!(
        body(&response)["error_description"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{}",
        body(&response)
    );

    // The plain name still gets its token.
    let (response, audit) = handle(&broker, &encoded("graph", Some("graph"))).await;
    assert_eq!(response.status(), 200, "{}", body(&response));
    assert!(audit.profile_configured);
    assert_eq!(
        fed.entra.stats().token_requests,
        1,
        "only the plain request reached Entra"
    );
}

#[tokio::test]
async fn allowed_principals_refuse_other_callers_before_the_broker_is_asked() {
    let (fed, signer) = federation().await;
    let broker = broker(
        &fed,
        signer,
        json!({
            "graph": {"allowed_principals": ["arn:aws:iam::111122223333:role/orders-service"]},
            "open": {},
        }),
    );
    let (logs, _guard) = capture();

    // alice (an IAM user) is not in graph's list.
    let response = serve(&broker, event("rest-iam-user.json", |_| {})).await;
    assert_eq!(response.status(), 403);
    let json = body(&response);
    assert_eq!(json["error"], "principal_not_allowed");
    let text = json["error_description"].as_str().unwrap();
    assert!(
        text.contains("`arn:aws:iam::111122223333:user/alice`")
            && text.contains("allowed_principals")
            && text.contains("`graph`"),
        "{text}"
    );
    assert!(
        !text.contains("orders-service"),
        "the list is not disclosed"
    );
    assert_eq!(
        fed.entra.stats().token_requests,
        0,
        "the broker was not asked"
    );
    let audit = logs.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["status"], 403);
    assert_eq!(audit[0]["error"], "principal_not_allowed");
    assert_eq!(
        audit[0]["principal"],
        "arn:aws:iam::111122223333:user/alice"
    );
    assert_eq!(audit[0]["profile"], "graph");

    // An assumed role of orders-service is matched by its role, whatever the
    // session.
    let response = serve(&broker, event("rest-assumed-role.json", |_| {})).await;
    assert_eq!(response.status(), 200, "{}", body(&response));
    assert_eq!(fed.entra.stats().token_requests, 1);

    // A profile without a list leaves access to IAM alone.
    let response = serve(
        &broker,
        event("rest-iam-user.json", |e| {
            aws2azure_tests::with_profile(e, "open")
        }),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", body(&response));
}

/// The metric dimension is a configured name or one fixed value: a caller
/// inventing names cannot create metrics.
#[tokio::test]
async fn only_configured_profiles_become_a_metric_dimension() {
    let (fed, signer) = federation().await;
    let broker = broker(&fed, signer, json!({"graph": {}}));
    let cases = [
        (event("rest-iam-user.json", |_| {}), 200, "graph"),
        (
            event("rest-iam-user.json", |e| {
                aws2azure_tests::with_profile(e, "made-up-1")
            }),
            404,
            UNKNOWN_PROFILE,
        ),
        (
            event("rest-encoded-profile.json", |_| {}),
            400,
            UNKNOWN_PROFILE,
        ),
    ];
    for (request, status, dimension) in cases {
        let (response, audit) = handle(&broker, &request).await;
        assert_eq!(response.status(), status);
        let emf: Value = serde_json::from_str(&emf_line(&audit, 1)).unwrap();
        assert_eq!(emf["Profile"], dimension, "{emf}");
    }
}
