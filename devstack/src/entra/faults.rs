//! Faults the Entra stand-in injects: the next N token requests, or every
//! token request during a window of time (an outage).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::EntraStandIn;

/// A failure to inject into token requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 429 with `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// An HTTP 5xx.
    ServerError { status: u16 },
    /// Wait before answering normally.
    Delay { millis: u64 },
    /// AADSTS70021: a new federated credential not yet propagated.
    NotPropagated,
}

/// The longest fault window accepted: one hour.
pub const MAX_FAULT_WINDOW: Duration = Duration::from_secs(3600);

/// A fault applied to every token request until `until`.
struct Window {
    fault: Fault,
    until: Instant,
}

/// Queued faults, then the open window.
#[derive(Default)]
pub(super) struct Faults {
    queue: Mutex<VecDeque<Fault>>,
    window: Mutex<Option<Window>>,
}

impl Faults {
    pub(super) fn push(&self, fault: Fault, count: usize) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.extend(std::iter::repeat_n(fault, count));
    }

    pub(super) fn open_window(&self, fault: Fault, duration: Duration) {
        let until = Instant::now() + duration.min(MAX_FAULT_WINDOW);
        *self.window.lock().unwrap_or_else(|p| p.into_inner()) = Some(Window { fault, until });
    }

    /// The fault for the token request arriving now, if any.
    pub(super) fn next(&self) -> Option<Fault> {
        let queued = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        queued.or_else(|| {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            match window.as_ref() {
                Some(w) if Instant::now() < w.until => Some(w.fault.clone()),
                Some(_) => {
                    *window = None;
                    None
                }
                None => None,
            }
        })
    }
}

/// `POST /_devstack/faults`: `{"kind": …, "count": N}` fails the next N
/// token requests (default 1); `{"kind": …, "window_ms": M}` fails every
/// token request for the next M milliseconds.
#[derive(Deserialize)]
pub(super) struct FaultRequest {
    #[serde(flatten)]
    fault: Fault,
    count: Option<usize>,
    window_ms: Option<u64>,
}

pub(super) async fn add_faults(
    State(entra): State<EntraStandIn>,
    Json(req): Json<FaultRequest>,
) -> Response {
    let max_ms = MAX_FAULT_WINDOW.as_millis() as u64;
    match (req.count, req.window_ms) {
        (Some(_), Some(_)) => (
            StatusCode::BAD_REQUEST,
            "give either `count` (the next N requests) or `window_ms` (every request for that long), not both\n",
        )
            .into_response(),
        (None, Some(ms)) if ms > max_ms => (
            StatusCode::BAD_REQUEST,
            format!("`window_ms` must be at most {max_ms} (one hour)\n"),
        )
            .into_response(),
        (None, Some(ms)) => {
            entra.inject_for(req.fault, Duration::from_millis(ms));
            StatusCode::NO_CONTENT.into_response()
        }
        (count, None) => {
            entra.inject(req.fault, count.unwrap_or(1));
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::EntraConfig;
    use serde_json::json;

    async fn token_status(http: &reqwest::Client, url: &str) -> u16 {
        http.post(format!("{url}/tenant/oauth2/v2.0/token"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn a_fault_window_fails_every_request_until_it_closes() {
        let entra = EntraStandIn::new(EntraConfig::new(vec![]));
        let server = entra.clone().serve(crate::loopback()).await.unwrap();
        let (http, url) = (reqwest::Client::new(), server.url());
        let faults = format!("{url}/_devstack/faults");

        let both = http
            .post(&faults)
            .json(&json!({"kind": "not_propagated", "count": 2, "window_ms": 100}))
            .send()
            .await
            .unwrap();
        assert_eq!(both.status(), 400, "count and window_ms together");
        let too_long = http
            .post(&faults)
            .json(&json!({"kind": "not_propagated", "window_ms": 3_600_001}))
            .send()
            .await
            .unwrap();
        assert_eq!(too_long.status(), 400);
        assert_eq!(entra.stats().faults, 0);

        let window = http
            .post(&faults)
            .json(&json!({"kind": "throttle", "retry_after_secs": 1, "window_ms": 400}))
            .send()
            .await
            .unwrap();
        assert_eq!(window.status(), 204);
        for _ in 0..5 {
            assert_eq!(token_status(&http, &url).await, 429);
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
        // The form is incomplete: answered by validation, not by a fault.
        assert_eq!(token_status(&http, &url).await, 400);
        assert_eq!(entra.stats().faults, 5);

        // A counted fault goes before an open window.
        entra.inject_for(Fault::ServerError { status: 503 }, Duration::from_secs(60));
        entra.inject(Fault::NotPropagated, 1);
        assert_eq!(token_status(&http, &url).await, 400, "AADSTS70021 first");
        assert_eq!(token_status(&http, &url).await, 503);
        assert_eq!(entra.stats().refused.get(&70021), Some(&1));
        drop(http);
        server.stop().await;
    }
}
