//! The Worker: reads what the core needs from the runtime, calls it, writes
//! its answer and its log line. Nothing is decided here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use std::future::Future as _;

use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::{
    Cache, Env, Headers, KvStore, ResponseBuilder, console_error, console_log, js_sys,
    wasm_bindgen_futures, web_sys,
};

use crate::{
    Allowlist, AllowlistMode, AllowlistState, EdgeConfig, EdgeRequest, Error, Event, EventKind,
    Fetched, KV_BINDING, KeyDocument, KeySource, LastGoodKeys, handle, misconfigured,
    needs_key_document,
};

/// How long the Cache API keeps the last good key document. Only a fresh
/// isolate that cannot read KV ever uses it, so longer is safer: a stale
/// key set beats a 503 that fails every exchange.
const COPY_MAX_AGE_SECONDS: u32 = 30 * 86_400;

/// What one isolate keeps between requests. Workers run one request at a
/// time per thread but interleave them at `await`s, so no `RefCell` borrow
/// is ever held across one.
struct Isolate {
    config: Result<EdgeConfig, Error>,
    keys: RefCell<LastGoodKeys>,
    /// `None` in mode `off`: the compiled-in list is then never even parsed.
    allowlist: Option<RefCell<AllowlistState>>,
}

thread_local! {
    static ISOLATE: RefCell<Option<Rc<Isolate>>> = const { RefCell::new(None) };
}

impl Isolate {
    fn get(env: &Env) -> Rc<Self> {
        ISOLATE.with(|cell| {
            cell.borrow_mut()
                .get_or_insert_with(|| Rc::new(Self::new(env)))
                .clone()
        })
    }

    fn new(env: &Env) -> Self {
        let config = EdgeConfig::from_vars(|name| var(env, name)).and_then(|config| {
            let kv_bound = env.kv(KV_BINDING).is_ok();
            match config.key_source() {
                KeySource::Kv { .. } if !kv_bound => Err(Error::Setting {
                    setting: KV_BINDING,
                    problem:
                        "no KV namespace is bound under this name, and KEY_DOCUMENT is not set"
                            .into(),
                    fix: format!(
                        "add [[kv_namespaces]] with binding = \"{KV_BINDING}\" to wrangler.toml, \
                         or set KEY_DOCUMENT to an inline key document"
                    ),
                }),
                _ => Ok(config),
            }
        });
        let refresh = config
            .as_ref()
            .map(EdgeConfig::kv_refresh)
            .unwrap_or_default();
        let allowlist = match &config {
            Ok(c) if c.allowlist_mode() != AllowlistMode::Off => {
                Some(RefCell::new(AllowlistState::with_builtin(refresh)))
            }
            _ => None,
        };
        Self {
            config,
            keys: RefCell::new(LastGoodKeys::new(refresh)),
            allowlist,
        }
    }
}

/// A Worker variable as text: wrangler passes `[vars]` strings as strings,
/// numbers and tables as JSON values, so `JWKS_MAX_AGE = 300` and a
/// `KEY_DOCUMENT` written as a TOML table both work.
fn var(env: &Env, name: &str) -> Option<String> {
    let value = js_sys::Reflect::get(env, &JsValue::from_str(name)).ok()?;
    if value.is_undefined() || value.is_null() {
        return None;
    }
    if let Some(text) = value.as_string() {
        return Some(text);
    }
    js_sys::JSON::stringify(&value).ok()?.as_string()
}

/// `request.cf.colo`, when the runtime provides it.
fn colo(req: &web_sys::Request) -> Option<String> {
    let cf = js_sys::Reflect::get(req, &JsValue::from_str("cf")).ok()?;
    if !cf.is_object() {
        return None;
    }
    js_sys::Reflect::get(&cf, &JsValue::from_str("colo"))
        .ok()?
        .as_string()
}

/// The Worker's `fetch`, as `#[event(fetch)]` would export it, but answered
/// at once when no read of KV or the Cache API is due, which is nearly
/// every request: the macro's export is always a future driven by
/// wasm-bindgen-futures and answered through a Promise, a cost on every
/// request of about a quarter of what workerd's floor allows
/// (docs/benchmarks.md). The answer is the same future, polled once: ready,
/// it is returned as the Response; pending (awaiting I/O), it is handed to
/// wasm-bindgen-futures as the Promise the macro would have returned, and
/// its next poll takes over the waker.
#[wasm_bindgen(js_name = fetch)]
pub fn fetch(req: web_sys::Request, env: Env, _ctx: JsValue) -> JsValue {
    let mut answer = Box::pin(answer(req, env));
    let mut now = std::task::Context::from_waker(std::task::Waker::noop());
    match answer.as_mut().poll(&mut now) {
        std::task::Poll::Ready(response) => response,
        std::task::Poll::Pending => {
            wasm_bindgen_futures::future_to_promise(async move { Ok(answer.await) }).into()
        }
    }
}

/// The response to one request, or the error the runtime turns into a 500.
async fn answer(req: web_sys::Request, env: Env) -> JsValue {
    match respond(req, env).await {
        Ok(response) => response.into(),
        Err(error) => {
            console_error!("the response could not be built: {:?}", error);
            internal_error()
        }
    }
}

/// A bare 500, as `#[event(fetch)]` answers a handler's error.
fn internal_error() -> JsValue {
    let init = web_sys::ResponseInit::new();
    init.set_status(500);
    web_sys::Response::new_with_opt_str_and_init(Some("INTERNAL SERVER ERROR"), &init)
        .map(JsValue::from)
        .unwrap_or(JsValue::UNDEFINED)
}

// The raw web_sys request and response rather than worker's wrappers: they
// copy every header and the URL across the wasm boundary in and out (without
// them the edge went from 8.4k to 13.7k requests/s on one core,
// docs/benchmarks.md), and worker's `Method` turns every method it does not
// know into GET.
async fn respond(req: web_sys::Request, env: Env) -> Result<web_sys::Response, JsValue> {
    let method = req.method();
    let url = req.url();
    let headers = req.headers();
    let if_none_match = headers.get("If-None-Match").ok().flatten();
    // Cloudflare sets CF-Connecting-IP itself; X-Forwarded-For is whatever
    // the client wrote, so it is never read.
    let client = headers.get("CF-Connecting-IP").ok().flatten();
    let colo = colo(&req);
    let request = EdgeRequest {
        method: &method,
        path: EdgeRequest::path_of_url(&url),
        if_none_match: if_none_match.as_deref(),
        client_address: client.as_deref(),
        colo: colo.as_deref(),
    };

    let isolate = Isolate::get(&env);
    let handled = match &isolate.config {
        Err(error) => misconfigured(error, &request),
        Ok(config) => serve(&isolate, config, &env, &request).await,
    };
    console_log!("{}", handled.log.to_json());
    to_js_response(&handled.response)
}

async fn serve(
    isolate: &Isolate,
    config: &EdgeConfig,
    env: &Env,
    request: &EdgeRequest<'_>,
) -> crate::Handled {
    let now = js_sys::Date::now() as u64;
    let kv = || env.kv(KV_BINDING).ok();
    let mut events = Vec::new();

    let mut allowlist_label = None;
    let allowlist: Arc<Allowlist> = match &isolate.allowlist {
        None => Arc::default(),
        Some(state) => {
            let due = state.borrow().is_due(now);
            if let (true, Some(kv)) = (due, kv()) {
                let fetched = read_kv(&kv, config.allowlist_kv_key()).await;
                events.extend(state.borrow_mut().apply_store_read(now, fetched));
            }
            let state = state.borrow();
            allowlist_label = Some(state.label().to_string());
            state.current().clone()
        }
    };

    let keys: Option<Arc<KeyDocument>> = match config.key_source() {
        KeySource::Inline(doc) => Some(doc.clone()),
        KeySource::Kv { key } => {
            if needs_key_document(config, &allowlist, request)
                && isolate.keys.borrow_mut().claim_read(now)
            {
                refresh_keys(isolate, config, kv().as_ref(), key, now, &mut events).await;
            }
            isolate.keys.borrow().current().cloned()
        }
    };

    let mut handled = handle(config, &allowlist, keys.as_deref(), request).with_events(events);
    handled.log.allowlist = allowlist_label;
    handled
}

async fn refresh_keys(
    isolate: &Isolate,
    config: &EdgeConfig,
    kv: Option<&KvStore>,
    key: &str,
    now: u64,
    events: &mut Vec<Event>,
) {
    let fetched = match kv {
        Some(kv) => read_kv(kv, key).await,
        None => Fetched::Failed(Error::Kv {
            key: key.to_string(),
            message: format!("the `{KV_BINDING}` binding disappeared"),
        }),
    };
    let refresh = isolate.keys.borrow_mut().apply_store_read(now, fetched);
    events.extend(refresh.events);
    let copy_url = config.last_good_cache_url();
    if refresh.store_copy {
        let current = isolate.keys.borrow().current().cloned();
        if let Some(doc) = current {
            // Awaited rather than left to `waitUntil`: it happens once per
            // new version per isolate, and its failure belongs in this log line.
            if let Err(error) = write_copy(&copy_url, doc.body()).await {
                events.push(Event::new(EventKind::KeyCopyFailed).failed(error));
            }
        }
    }
    let missing = isolate.keys.borrow().current().is_none();
    if missing {
        let copy = read_copy(&copy_url).await;
        events.extend(isolate.keys.borrow_mut().restore_copy(copy));
    }
}

async fn read_kv(kv: &KvStore, key: &str) -> Fetched {
    match kv.get(key).bytes().await {
        Ok(Some(bytes)) => Fetched::Found(bytes),
        Ok(None) => Fetched::Missing,
        Err(error) => Fetched::Failed(Error::Kv {
            key: key.to_string(),
            message: error.to_string(),
        }),
    }
}

fn cache_error(operation: &'static str, error: worker::Error) -> Error {
    Error::Cache {
        operation,
        message: error.to_string(),
    }
}

async fn read_copy(url: &str) -> Fetched {
    let cache = Cache::default();
    match cache.get(url, false).await {
        Ok(None) => Fetched::Missing,
        Ok(Some(mut response)) => match response.bytes().await {
            Ok(bytes) => Fetched::Found(bytes),
            Err(error) => Fetched::Failed(cache_error("read", error)),
        },
        Err(error) => Fetched::Failed(cache_error("read", error)),
    }
}

async fn write_copy(url: &str, body: &Bytes) -> Result<(), Error> {
    let headers = Headers::new();
    headers
        .set(
            "Cache-Control",
            &format!("public, max-age={COPY_MAX_AGE_SECONDS}"),
        )
        .map_err(|e| cache_error("write", e))?;
    headers
        .set("Content-Type", "application/json")
        .map_err(|e| cache_error("write", e))?;
    let response = ResponseBuilder::new()
        .with_headers(headers)
        .fixed(body.to_vec());
    Cache::default()
        .put(url, response)
        .await
        .map_err(|e| cache_error("write", e))
}

thread_local! {
    /// JavaScript `Headers` per distinct header block. A response copies
    /// the headers it is built with, so one object serves every response
    /// with the same block; there are a handful (per route, status and key
    /// document version), and the map is emptied should it ever grow.
    static HEADERS: RefCell<HashMap<String, web_sys::Headers>> = RefCell::new(HashMap::new());
}
const MAX_HEADER_BLOCKS: usize = 64;

fn js_headers(response: &http::Response<Bytes>) -> Result<web_sys::Headers, JsValue> {
    let mut block = String::with_capacity(256);
    for (name, value) in response.headers() {
        block.push_str(name.as_str());
        block.push(':');
        // Every header value the core sets is ASCII.
        block.push_str(value.to_str().unwrap_or_default());
        block.push('\n');
    }
    if let Some(headers) = HEADERS.with(|cache| cache.borrow().get(&block).cloned()) {
        return Ok(headers);
    }
    let headers = web_sys::Headers::new()?;
    for (name, value) in response.headers() {
        headers.set(name.as_str(), value.to_str().unwrap_or_default())?;
    }
    HEADERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= MAX_HEADER_BLOCKS {
            cache.clear();
        }
        cache.insert(block, headers.clone());
    });
    Ok(headers)
}

fn to_js_response(response: &http::Response<Bytes>) -> Result<web_sys::Response, JsValue> {
    let init = web_sys::ResponseInit::new();
    init.set_status(response.status().as_u16());
    init.set_headers_headers(&js_headers(response)?);
    let body = response.body();
    // A null body, not an empty one: JavaScript refuses any body on a 304.
    if body.is_empty() {
        web_sys::Response::new_with_opt_str_and_init(None, &init)
    } else {
        let bytes = js_sys::Uint8Array::from(body.as_ref());
        web_sys::Response::new_with_opt_buffer_source_and_init(Some(&bytes), &init)
    }
}
