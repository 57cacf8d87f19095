//! The load: profiles, callers, the requests they send and what each
//! answer must be.
//!
//! Callers come in three roles. Steady callers ask any profile for tokens
//! with a small `min_validity` (cache hits; a refresh when a token reaches
//! half its life, the old token served if that fails). Demanding callers
//! ask the even-numbered profiles for most of a token's lifetime, so that
//! their tokens are replaced every few seconds, at Entra: they
//! are what makes a fault window reach Entra, while the odd-numbered
//! profiles' tokens age and refresh as the steady callers alone see them. Hostile callers send what the API must
//! refuse, each on a new connection with the exact bytes chosen here (an
//! HTTP client library would normalise some of them away).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dev::Credentials;
use crate::hostile::{self, Signing};

/// A configured profile and what its tokens must say.
#[derive(Clone, Debug)]
pub struct SoakProfile {
    pub name: String,
    pub tenant: String,
    pub client: String,
    pub scope: String,
    pub subject: String,
}

const SCOPES: [&str; 5] = [
    "https://graph.microsoft.com/.default",
    "https://vault.azure.net/.default",
    "https://storage.azure.com/.default",
    "https://management.azure.com/.default",
    "https://database.windows.net/.default",
];

/// `n` profiles over 4 tenants, 6 app registrations and 5 resources, each
/// with its own subject: the subject in a token names its profile. They go
/// in pairs that differ only by name and subject (one app, two federated
/// credentials), so that a token served across profiles cannot go unseen.
pub fn profiles(n: usize) -> Vec<SoakProfile> {
    (0..n)
        .map(|i| {
            let name = format!("soak-{i:02}");
            let pair = i / 2;
            SoakProfile {
                tenant: format!(
                    "{:08x}-50a4-4000-8000-{:012x}",
                    0x7e00_0000 + pair % 4,
                    pair % 4
                ),
                client: format!(
                    "{:08x}-c1e0-4000-8000-{:012x}",
                    0xc100_0000 + pair % 6,
                    pair % 6
                ),
                scope: SCOPES[pair % SCOPES.len()].to_string(),
                subject: format!("aws2azure:soak:{name}"),
                name,
            }
        })
        .collect()
}

/// The `--config` file of `aws2azure dev`.
pub fn config_toml(profiles: &[SoakProfile]) -> String {
    profiles
        .iter()
        .map(|p| {
            format!(
                "[profiles.{}]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nscope = \"{}\"\nsubject = \"{}\"\n\n",
                p.name, p.tenant, p.client, p.scope, p.subject
            )
        })
        .collect()
}

/// What every caller shares.
pub struct Target {
    pub endpoint: String,
    /// `127.0.0.1:PORT` of the gateway, for raw requests.
    pub authority: String,
    /// `/dev`
    pub stage_path: String,
    pub region: String,
    pub credentials: Credentials,
    pub profiles: Vec<SoakProfile>,
    pub token_lifetime: u64,
}

impl Target {
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: Credentials,
        profiles: Vec<SoakProfile>,
        token_lifetime: u64,
    ) -> Result<Self, String> {
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| format!("endpoint `{endpoint}` is not http://"))?;
        let (authority, stage) = rest
            .split_once('/')
            .ok_or_else(|| format!("endpoint `{endpoint}` has no stage"))?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            authority: authority.to_string(),
            stage_path: format!("/{stage}"),
            region: region.to_string(),
            credentials,
            profiles,
            token_lifetime,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Steady,
    Demanding,
    Hostile,
}

impl Role {
    /// Half the callers steady, a quarter demanding, a quarter hostile.
    pub fn of(caller: usize) -> Self {
        match caller % 4 {
            1 => Self::Demanding,
            2 => Self::Hostile,
            _ => Self::Steady,
        }
    }
}

/// One request's result, kept for the report.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `valid` or the name of a hostile case.
    pub kind: &'static str,
    /// For a valid request: the profile's index and `min_validity`.
    pub asked: Option<(usize, u64)>,
    /// HTTP status; 0 when no answer came.
    pub status: u16,
    /// Milliseconds from the start of the load.
    pub sent_ms: u64,
    pub done_ms: u64,
    pub latency_us: u64,
    /// A valid request answered 503/504 correctly (`Retry-After`, error
    /// code): correct only inside a fault window, which the report decides.
    pub unavailable: bool,
    /// What was wrong with the answer, whatever the time.
    pub problem: Option<String>,
}

/// What one caller saw.
#[derive(Default)]
pub struct CallerLog {
    pub outcomes: Vec<Outcome>,
    /// Every token served, with the profile it was served for.
    pub tokens: HashMap<String, usize>,
    /// A token served for two profiles (never printed).
    pub crossed: Vec<String>,
}

/// A minimal HTTP answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends requests for `caller` at `interval` until `deadline` (and at most
/// `max_requests`).
pub async fn run_caller(
    caller: usize,
    target: &Target,
    t0: Instant,
    deadline: Instant,
    interval: Duration,
    max_requests: u64,
) -> CallerLog {
    let role = Role::of(caller);
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a reqwest client builds");
    let mut log = CallerLog::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Callers start spread over one interval, not all at once.
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    for _ in 0..max_requests {
        ticks.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let sent = t0.elapsed();
        let (kind, asked, verdict) = match role {
            Role::Hostile => {
                let case = hostile::pick();
                (case.name, None, send_hostile(target, case).await)
            }
            _ => {
                let asked = pick_valid(target, role);
                let verdict = send_valid(&http, target, asked, &mut log).await;
                ("valid", Some(asked), verdict)
            }
        };
        let done = t0.elapsed();
        let (status, unavailable, problem) = verdict;
        log.outcomes.push(Outcome {
            kind,
            asked,
            status,
            sent_ms: sent.as_millis() as u64,
            done_ms: done.as_millis() as u64,
            latency_us: (done - sent).as_micros() as u64,
            unavailable,
            problem,
        });
    }
    log
}

/// Longer than the broker's 24 s request deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Status, whether it is a well-formed 503/504, what was wrong.
type Verdict = (u16, bool, Option<String>);

/// The profile (index) and `min_validity` of a valid request.
fn pick_valid(target: &Target, role: Role) -> (usize, u64) {
    let count = target.profiles.len();
    let lifetime = target.token_lifetime;
    match role {
        Role::Demanding => {
            let index = fastrand::usize(..count.div_ceil(2)) * 2;
            // Each profile its own threshold, so that its token is replaced
            // every 5, 8, 11... 20 s: with one threshold, every token
            // fetched at the start would expire for these callers at the
            // same moment, ever after, and Entra would see bursts. 5 s
            // below the lifetime at most: a fresh token has a second or two
            // less than its lifetime when served, and `expires_in >=
            // min_validity` must stay a promise the broker can keep.
            let spread = 5 + 3 * (index as u64 / 2 % 6);
            let relaxed = if fastrand::u8(..3) == 0 { 10 } else { 0 };
            (index, lifetime.saturating_sub(spread + relaxed))
        }
        _ => (
            fastrand::usize(..count),
            [0, 0, 0, 10, 20][fastrand::usize(..5)],
        ),
    }
}

async fn send_valid(
    http: &reqwest::Client,
    target: &Target,
    (index, min_validity): (usize, u64),
    log: &mut CallerLog,
) -> Verdict {
    let lifetime = target.token_lifetime;
    let profile = &target.profiles[index];
    let url = format!(
        "{}/token/{}?min_validity={min_validity}",
        target.endpoint, profile.name
    );
    let headers = signed_headers(
        "GET",
        &url,
        &target.credentials,
        &target.region,
        "execute-api",
        SystemTime::now(),
    );
    let mut request = http.get(&url);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let answer = match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers = r
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            match r.bytes().await {
                Ok(body) => Answer {
                    status,
                    headers,
                    body: body.to_vec(),
                },
                Err(e) => return (status, false, Some(format!("body not read: {e}"))),
            }
        }
        Err(e) => {
            return (0, false, Some(format!("no answer: {}", e.without_url())));
        }
    };
    let status = answer.status;
    match status {
        200 => match check_token(&answer, profile, min_validity, lifetime) {
            Ok(token) => {
                let first = *log.tokens.entry(token.clone()).or_insert(index);
                if first != index {
                    log.crossed.push(format!(
                        "a token served for {} was served again for {}",
                        target.profiles[first].name, profile.name
                    ));
                }
                (status, false, None)
            }
            Err(why) => (status, false, Some(format!("{}: {why}", profile.name))),
        },
        503 | 504 => match check_unavailable(&answer) {
            Ok(()) => (status, true, None),
            Err(why) => (status, false, Some(why)),
        },
        _ => (
            status,
            false,
            Some(format!(
                "{} min_validity={min_validity}: {status} {}",
                profile.name,
                error_summary(&answer)
            )),
        ),
    }
}

/// A 200 must carry a token of the profile asked for, valid long enough.
/// Returns the token (never printed).
pub fn check_token(
    answer: &Answer,
    profile: &SoakProfile,
    min_validity: u64,
    lifetime: u64,
) -> Result<String, String> {
    common_headers(answer)?;
    let body = answer.json();
    let token = body["access_token"]
        .as_str()
        .ok_or("no access_token in the 200")?;
    let claims = aws2azure_devstack::entra::issued_claims(token)
        .ok_or("the access token is not one the stand-in issued")?;
    let resource = profile.scope.trim_end_matches("/.default");
    let expect = [
        (
            "body profile",
            body["profile"].as_str(),
            profile.name.as_str(),
        ),
        ("body scope", body["scope"].as_str(), profile.scope.as_str()),
        ("token_type", body["token_type"].as_str(), "Bearer"),
        (
            "token sub",
            claims["sub"].as_str(),
            profile.subject.as_str(),
        ),
        (
            "token appid",
            claims["appid"].as_str(),
            profile.client.as_str(),
        ),
        ("token tid", claims["tid"].as_str(), profile.tenant.as_str()),
        ("token aud", claims["aud"].as_str(), resource),
    ];
    for (what, got, want) in expect {
        if got != Some(want) {
            return Err(format!("{what} is {got:?}, not {want:?}"));
        }
    }
    let expires_in = body["expires_in"].as_u64().ok_or("no expires_in")?;
    let expires_on = body["expires_on"].as_u64().ok_or("no expires_on")?;
    let exp = claims["exp"].as_u64().ok_or("no exp claim")?;
    if expires_in < min_validity.max(1) {
        return Err(format!(
            "expires_in {expires_in} s, below min_validity {min_validity}"
        ));
    }
    if expires_in > lifetime + 1 {
        return Err(format!(
            "expires_in {expires_in} s, beyond the tokens' {lifetime} s"
        ));
    }
    if expires_on.abs_diff(exp) > 2 {
        return Err(format!(
            "expires_on {expires_on} is not the token's exp {exp}"
        ));
    }
    Ok(token.to_string())
}

/// A 503/504 to a valid request: the caller must be told when to retry.
pub fn check_unavailable(answer: &Answer) -> Result<(), String> {
    common_headers(answer)?;
    let want = if answer.status == 503 {
        "upstream_unavailable"
    } else {
        "upstream_timeout"
    };
    let body = answer.json();
    if body["error"] != want {
        return Err(format!(
            "{} with error {}, not {want}",
            answer.status, body["error"]
        ));
    }
    match answer.header("retry-after").map(str::parse::<u64>) {
        Some(Ok(secs)) if secs >= 1 => Ok(()),
        other => Err(format!(
            "{} {want} without a usable Retry-After ({other:?})",
            answer.status
        )),
    }
}

fn common_headers(answer: &Answer) -> Result<(), String> {
    if answer.header("cache-control") != Some("no-store") {
        return Err(format!(
            "Cache-Control {:?}, not no-store",
            answer.header("cache-control")
        ));
    }
    if answer.header("content-type") != Some("application/json") {
        return Err(format!("Content-Type {:?}", answer.header("content-type")));
    }
    Ok(())
}

/// `error`, `aadsts` and API Gateway's error type of a refusal: enough to
/// diagnose, never a token.
pub fn error_summary(answer: &Answer) -> String {
    let body = answer.json();
    format!(
        "error={} aadsts={} x-amzn-errortype={:?}",
        body["error"],
        body["aadsts"],
        answer.header("x-amzn-errortype")
    )
}

async fn send_hostile(target: &Target, case: &hostile::Case) -> Verdict {
    let request = (case.build)(target);
    let url = |path: &str| format!("http://{}{path}", target.authority);
    let mut creds = target.credentials.clone();
    let (mut region, mut service, mut time) =
        (target.region.as_str(), "execute-api", SystemTime::now());
    let mut signed_path = request.path.clone();
    match &request.signing {
        Signing::Valid => {}
        Signing::Unsigned => {}
        Signing::WrongSecret => {
            creds.secret_access_key = format!("{}x", &creds.secret_access_key[1..])
        }
        Signing::UnknownKey => creds.access_key_id = "AKIAIOSFODNN7EXAMPLE".into(),
        Signing::NoSessionToken => creds.session_token.clear(),
        Signing::SignedAgo(ago) => time -= *ago,
        Signing::SignedAhead(ahead) => time += *ahead,
        Signing::Region(r) => region = r,
        Signing::Service(s) => service = s,
        Signing::SignedFor(path) => signed_path = path.clone(),
    }
    let headers = match request.signing {
        Signing::Unsigned => vec![],
        _ => signed_headers(
            request.method,
            &url(&signed_path),
            &creds,
            region,
            service,
            time,
        ),
    };
    let answer = match raw_request(&target.authority, request.method, &request.path, &headers).await
    {
        Ok(a) => a,
        Err(e) => return (0, false, Some(e)),
    };
    let problem = hostile::check(&case.expect, &answer).err();
    (answer.status, false, problem)
}

/// The SigV4 headers for a request, as `aws2azure token` signs it.
pub fn signed_headers(
    method: &str,
    url: &str,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Vec<(String, String)> {
    let session = Some(credentials.session_token.clone()).filter(|t| !t.is_empty());
    let identity = AwsCredentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        session,
        None,
        "soak",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters are complete")
        .into();
    let signable = SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(&[]))
        .expect("a request to sign");
    let (instructions, _) = sign(signable, &params)
        .expect("the request signs")
        .into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .into_iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect()
}

/// One HTTP/1.1 request on a new connection, exactly as given (`path` may
/// hold what a URL parser would rewrite or refuse), read to the close.
pub async fn raw_request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Answer, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !matches!(method, "GET" | "HEAD") {
            head.push_str("content-length: 0\r\n");
        }
        head.push_str("connection: close\r\n\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut bytes = Vec::new();
        stream
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_answer(&bytes)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

fn parse_answer(bytes: &[u8]) -> Result<Answer, String> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    };
    if answer.header("transfer-encoding") == Some("chunked") {
        answer.body = dechunk(&answer.body).ok_or("a malformed chunked body")?;
    }
    Ok(answer)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // Bounded: every round consumes at least the size line.
    for _ in 0..data.len().max(1) {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_distinct() {
        let list = profiles(24);
        let configs = list
            .iter()
            .map(|p| {
                let config = aws2azure_shared::profile::ProfileConfig {
                    tenant_id: p.tenant.clone(),
                    client_id: p.client.clone(),
                    scope: p.scope.clone(),
                    subject: p.subject.clone(),
                    authority: None,
                    allowed_principals: None,
                    ..Default::default()
                };
                (p.name.clone(), config)
            })
            .collect();
        let parsed = aws2azure_shared::profile::Profiles::from_configs(configs)
            .expect("every soak profile passes the profile rules");
        assert_eq!(parsed.iter().count(), 24);
        let subjects: std::collections::HashSet<_> = list.iter().map(|p| &p.subject).collect();
        assert_eq!(subjects.len(), 24, "a subject names one profile");
        let toml = config_toml(&list[..1]);
        assert!(
            toml.starts_with(
                "[profiles.soak-00]\ntenant_id = \"7e000000-50a4-4000-8000-000000000000\"\n"
            ),
            "{toml}"
        );
    }

    #[test]
    fn parses_plain_and_chunked_answers() {
        let a = parse_answer(
            b"HTTP/1.1 403 Forbidden\r\nX-Amzn-ErrorType: Foo\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((a.status, a.header("x-amzn-errortype")), (403, Some("Foo")));
        let c = parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(c.body, b"abcde");
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
