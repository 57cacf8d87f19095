use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::loopback;

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    api: ExtensionsApi,
    server: Server,
    http: reqwest::Client,
}

impl Rig {
    async fn start() -> Self {
        let api = ExtensionsApi::default();
        let server = api.serve(loopback()).await.unwrap();
        Self {
            api,
            server,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.server.url())
    }

    async fn register_raw(&self, name: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self.http.post(self.url("/register")).body(body.to_string());
        if let Some(name) = name {
            request = request.header("Lambda-Extension-Name", name);
        }
        request.send().await.unwrap()
    }

    /// Registers `name` for `events`; its identifier.
    async fn register(&self, name: &str, events: &[&str]) -> String {
        let response = self
            .register_raw(Some(name), &json!({ "events": events }).to_string())
            .await;
        assert_eq!(response.status(), 200);
        response.headers()["lambda-extension-identifier"]
            .to_str()
            .unwrap()
            .to_string()
    }

    fn next(&self, id: &str) -> tokio::task::JoinHandle<reqwest::Response> {
        let request = self
            .http
            .get(self.url("/event/next"))
            .header("Lambda-Extension-Identifier", id);
        tokio::spawn(async move { request.send().await.unwrap() })
    }
}

/// A refusal's status and `errorType`.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, body["errorType"].as_str().unwrap().to_string())
}

async fn event(next: tokio::task::JoinHandle<reqwest::Response>) -> Value {
    let response = tokio::time::timeout(WAIT, next).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let event_id = response.headers()["lambda-extension-event-identifier"]
        .to_str()
        .unwrap();
    assert!(Uuid::parse_str(event_id).is_ok(), "{event_id}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn registration_answers_like_lambda_and_is_recorded() {
    let rig = Rig::start().await;
    let response = rig
        .register_raw(
            Some("aws2azure-identity"),
            r#"{"events":["INVOKE","SHUTDOWN"]}"#,
        )
        .await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["lambda-extension-identifier"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(Uuid::parse_str(&id).is_ok(), "{id}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"functionName": FUNCTION_NAME, "functionVersion": "$LATEST", "handler": HANDLER})
    );

    // The account id only for an extension that accepts the feature.
    let response = rig
        .http
        .post(rig.url("/register"))
        .header("Lambda-Extension-Name", "second")
        .header("Lambda-Extension-Accept-Feature", "accountId")
        .body(r#"{"events":["SHUTDOWN"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accountId"], ACCOUNT_ID);

    let registered = rig.api.registered();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0].name, "aws2azure-identity");
    assert_eq!(registered[0].id, id);
    assert_eq!(registered[0].events, ["INVOKE", "SHUTDOWN"]);
    assert_eq!(registered[0].accept_feature, None);
    assert_eq!((registered[0].next_calls, registered[0].parked), (0, false));
    assert_eq!(registered[1].name, "second");
    assert_eq!(registered[1].events, ["SHUTDOWN"]);
    assert_eq!(registered[1].accept_feature.as_deref(), Some("accountId"));
    assert!(rig.api.refused().is_empty(), "{:?}", rig.api.refused());
}

#[tokio::test]
async fn bad_registrations_are_refused_with_lambdas_error_types() {
    let rig = Rig::start().await;
    let cases = [
        (
            None,
            r#"{"events":["INVOKE"]}"#,
            "Extension.InvalidExtensionName",
        ),
        (
            Some(""),
            r#"{"events":["INVOKE"]}"#,
            "Extension.InvalidExtensionName",
        ),
        (Some("x"), "", "InvalidRequestFormat"),
        (Some("x"), r#"{"events":"INVOKE"}"#, "InvalidRequestFormat"),
        (
            Some("x"),
            r#"{"events":["INVOKE","RESTORE"]}"#,
            "Extension.InvalidEventType",
        ),
    ];
    for (name, body, error_type) in cases {
        let response = rig.register_raw(name, body).await;
        assert_eq!(
            refusal(response).await,
            (403, error_type.to_string()),
            "{name:?} {body}"
        );
    }
    assert!(rig.api.registered().is_empty());

    rig.register("x", &["INVOKE"]).await;
    let again = rig.register_raw(Some("x"), r#"{"events":[]}"#).await;
    assert_eq!(
        refusal(again).await,
        (403, "Extension.InvalidExtensionState".into())
    );
    for n in 1..MAX_EXTENSIONS {
        rig.register(&format!("ext{n}"), &[]).await;
    }
    let eleventh = rig.register_raw(Some("one-too-many"), "{}").await;
    assert_eq!(
        refusal(eleventh).await,
        (403, "Extension.TooManyExtensions".into())
    );
    assert_eq!(rig.api.registered().len(), MAX_EXTENSIONS);
    assert_eq!(
        rig.api.refused().len(),
        cases.len() + 2,
        "{:?}",
        rig.api.refused()
    );
    assert_eq!(
        rig.api.refused()[0],
        "POST /2020-01-01/extension/register -> 403 Extension.InvalidExtensionName"
    );
}

#[tokio::test]
async fn registration_closes_with_the_first_event() {
    let rig = Rig::start().await;
    rig.register("early", &["INVOKE", "SHUTDOWN"]).await;
    rig.api.push_invoke(Duration::from_secs(3)).unwrap();
    let late = rig
        .register_raw(Some("late"), r#"{"events":["INVOKE"]}"#)
        .await;
    assert_eq!(
        refusal(late).await,
        (403, "Extension.RegistrationClosed".into())
    );
}

#[tokio::test]
async fn next_long_polls_until_an_event_is_pushed() {
    let rig = Rig::start().await;
    let id = rig.register("ext", &["INVOKE", "SHUTDOWN"]).await;
    let first = rig.next(&id);
    rig.api.wait_for_next(1, WAIT).await.unwrap();
    let seen = &rig.api.registered()[0];
    assert_eq!((seen.next_calls, seen.parked), (1, true));
    // Parked: no answer until an event comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!first.is_finished());

    let before = epoch_ms();
    let request_id = rig.api.push_invoke(Duration::from_secs(30)).unwrap();
    let invoke = event(first).await;
    assert_eq!(invoke["eventType"], "INVOKE");
    assert_eq!(invoke["requestId"], request_id.as_str());
    assert_eq!(
        invoke["invokedFunctionArn"],
        format!("arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{FUNCTION_NAME}")
    );
    assert_eq!(invoke["tracing"]["type"], "X-Amzn-Trace-Id");
    assert!(
        invoke["tracing"]["value"]
            .as_str()
            .unwrap()
            .starts_with("Root=1-")
    );
    let deadline = invoke["deadlineMs"].as_u64().unwrap();
    assert!(
        (before + 30_000..=epoch_ms() + 30_000).contains(&deadline),
        "{deadline}"
    );
    let seen = &rig.api.registered()[0];
    assert_eq!(
        (seen.next_calls, seen.parked, seen.events_received),
        (1, false, 1)
    );

    // Handling the INVOKE is done when the extension asks again.
    let second = rig.next(&id);
    rig.api.wait_for_next(2, WAIT).await.unwrap();
    rig.api.push_shutdown().unwrap();
    let shutdown = event(second).await;
    assert_eq!(shutdown["eventType"], "SHUTDOWN");
    assert_eq!(shutdown["shutdownReason"], "spindown");
    let deadline = shutdown["deadlineMs"].as_u64().unwrap();
    assert!(
        deadline > epoch_ms() && deadline <= epoch_ms() + 2_000,
        "{deadline}"
    );

    // Nothing comes after SHUTDOWN: the next call waits for the end.
    let third = rig.next(&id);
    rig.api.wait_for_next(3, WAIT).await.unwrap();
    let refused = rig.api.push_invoke(Duration::from_secs(3)).unwrap_err();
    assert!(refused.to_string().contains("shut down"), "{refused}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!third.is_finished());
    third.abort();
}

#[tokio::test]
async fn an_event_pushed_before_next_waits_for_it() {
    let rig = Rig::start().await;
    let id = rig.register("ext", &["INVOKE"]).await;
    let request_id = rig.api.push_invoke(Duration::from_secs(5)).unwrap();
    let invoke = event(rig.next(&id)).await;
    assert_eq!(invoke["requestId"], request_id.as_str());
}

#[tokio::test]
async fn events_go_only_to_extensions_registered_for_them() {
    let rig = Rig::start().await;
    let both = rig.register("both", &["INVOKE", "SHUTDOWN"]).await;
    let shutdown_only = rig.register("shutdown-only", &["SHUTDOWN"]).await;
    let both_next = rig.next(&both);
    let other_next = rig.next(&shutdown_only);
    rig.api.wait_for_next(1, WAIT).await.unwrap();

    rig.api.push_invoke(Duration::from_secs(5)).unwrap();
    assert_eq!(event(both_next).await["eventType"], "INVOKE");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!other_next.is_finished());

    // wait_for_next waits for every extension.
    assert!(
        rig.api
            .wait_for_next(2, Duration::from_millis(300))
            .await
            .is_err()
    );
    let both_next = rig.next(&both);
    rig.api.wait_for_next(1, WAIT).await.unwrap();
    rig.api.push_shutdown().unwrap();
    assert_eq!(event(both_next).await["eventType"], "SHUTDOWN");
    assert_eq!(event(other_next).await["eventType"], "SHUTDOWN");
}

#[tokio::test]
async fn pushing_with_nobody_registered_for_the_event_is_an_error() {
    let rig = Rig::start().await;
    let none = rig.api.push_invoke(Duration::from_secs(1)).unwrap_err();
    assert!(none.to_string().contains("no extension"), "{none}");
    rig.register("shutdown-only", &["SHUTDOWN"]).await;
    assert!(rig.api.push_invoke(Duration::from_secs(1)).is_err());
    assert!(rig.api.push_shutdown().is_ok());
}

#[tokio::test]
async fn next_refuses_missing_bad_unknown_and_concurrent_callers() {
    let rig = Rig::start().await;
    let url = rig.url("/event/next");
    let missing = rig.http.get(&url).send().await.unwrap();
    assert_eq!(
        refusal(missing).await,
        (403, "Extension.MissingExtensionIdentifier".into())
    );
    let bad = rig
        .http
        .get(&url)
        .header("Lambda-Extension-Identifier", "not-a-uuid")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(bad).await,
        (403, "Extension.InvalidExtensionIdentifier".into())
    );
    let unknown = rig
        .http
        .get(&url)
        .header("Lambda-Extension-Identifier", Uuid::new_v4().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(unknown).await,
        (403, "Extension.UnknownExtensionIdentifier".into())
    );

    let id = rig.register("ext", &["INVOKE"]).await;
    let parked = rig.next(&id);
    rig.api.wait_for_next(1, WAIT).await.unwrap();
    let twice = rig.next(&id).await.unwrap();
    assert_eq!(
        refusal(twice).await,
        (403, "Extension.InvalidExtensionState".into())
    );
    // The refused call is not counted, and the first one still waits.
    assert_eq!(rig.api.registered()[0].next_calls, 1);
    assert!(!parked.is_finished());
    assert_eq!(rig.api.refused().len(), 4, "{:?}", rig.api.refused());
}

#[tokio::test]
async fn a_caller_that_goes_away_is_no_longer_parked() {
    let rig = Rig::start().await;
    let id = rig.register("ext", &["INVOKE"]).await;
    let parked = rig.next(&id);
    rig.api.wait_for_next(1, WAIT).await.unwrap();
    parked.abort();
    let gone = rig
        .api
        .wait_until(WAIT, "unparked", |i| !i.extensions[0].record.parked)
        .await;
    assert!(gone.is_ok(), "{gone:?}");
}

#[tokio::test]
async fn posted_errors_are_recorded_and_end_the_extension() {
    let rig = Rig::start().await;
    let init = rig.register("init-fails", &["INVOKE", "SHUTDOWN"]).await;
    let exit = rig.register("exit-fails", &["SHUTDOWN"]).await;

    let no_type = rig
        .http
        .post(rig.url("/init/error"))
        .header("Lambda-Extension-Identifier", &init)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(no_type).await,
        (403, "Extension.MissingHeader".into())
    );
    let no_id = rig
        .http
        .post(rig.url("/exit/error"))
        .header("Lambda-Extension-Function-Error-Type", "Fatal.Bad")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(no_id).await,
        (403, "Extension.MissingExtensionIdentifier".into())
    );
    assert!(rig.api.errors().is_empty());

    let body = json!({"errorMessage": "IDENTITY_HEADER is empty", "errorType": "Extension.Config", "stackTrace": []});
    let posted = rig
        .http
        .post(rig.url("/init/error"))
        .header("Lambda-Extension-Identifier", &init)
        .header("Lambda-Extension-Function-Error-Type", "Extension.Config")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    assert_eq!(
        posted.json::<Value>().await.unwrap(),
        json!({"status": "OK"})
    );
    let posted = rig
        .http
        .post(rig.url("/exit/error"))
        .header("Lambda-Extension-Identifier", &exit)
        .header("Lambda-Extension-Function-Error-Type", "Fatal.Crash")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    rig.api.wait_for_errors(2, WAIT).await.unwrap();
    assert_eq!(
        rig.api.errors(),
        [
            PostedError {
                extension: "init-fails".into(),
                kind: ErrorKind::Init,
                error_type: "Extension.Config".into(),
                body: Some(body),
            },
            PostedError {
                extension: "exit-fails".into(),
                kind: ErrorKind::Exit,
                error_type: "Fatal.Crash".into(),
                body: None,
            },
        ]
    );

    // No further call succeeds, and no event goes to a failed extension.
    let after = rig.next(&init).await.unwrap();
    assert_eq!(
        refusal(after).await,
        (403, "Extension.InvalidExtensionState".into())
    );
    let again = rig
        .http
        .post(rig.url("/exit/error"))
        .header("Lambda-Extension-Identifier", &init)
        .header("Lambda-Extension-Function-Error-Type", "Fatal.Again")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(again).await,
        (403, "Extension.InvalidExtensionState".into())
    );
    assert!(rig.api.push_shutdown().is_err());
    assert_eq!(rig.api.errors().len(), 2);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_and_recorded() {
    let rig = Rig::start().await;
    let telemetry = rig
        .http
        .put(format!("{}/2022-07-01/telemetry", rig.server.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(telemetry.status(), 404);
    let get_register = rig.http.get(rig.url("/register")).send().await.unwrap();
    assert_eq!(get_register.status(), 405);
    assert_eq!(
        rig.api.refused(),
        [
            "PUT /2022-07-01/telemetry -> 404",
            "GET /2020-01-01/extension/register -> 405"
        ]
    );
}

#[tokio::test]
async fn waiting_for_next_times_out_with_what_was_seen() {
    let rig = Rig::start().await;
    let nobody = rig
        .api
        .wait_for_next(1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(nobody.to_string().contains("registered: []"), "{nobody}");
    rig.register("slow", &["INVOKE"]).await;
    let not_yet = rig
        .api
        .wait_for_next(1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(not_yet.to_string().contains("\"slow\""), "{not_yet}");
}
