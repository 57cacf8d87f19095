//! AWS's own SigV4 test suite run through the devstack gateway's verifier:
//! for every vector, the canonical request and the string to sign the
//! gateway computes from the signed request must be the suite's, byte for
//! byte, and the signed request must verify (and stop verifying once its
//! signature is altered).
//!
//! The suite (Apache-2.0) comes from botocore's source distribution, at the
//! version `requirements-test.txt` pins: `scripts/test` fetches it with pip
//! (`ensure_sigv4_suite` in `scripts/tooling.sh`) into
//! `.tools/aws4_testsuite`, or `AWS2AZURE_SIGV4_SUITE` names the folder.
//! Without it the test fails, so that a run cannot pass without the suite,
//! unless `AWS2AZURE_SKIP_SIGV4_SUITE=1` says to skip it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws2azure_devstack::gateway::{
    Principal, PrincipalLookup, canonical_request, string_to_sign, verify,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// The suite's credentials, scope and time.
const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-east-1";
const SERVICE: &str = "service";
const AMZ_DATE: &str = "20150830T123600Z";
const SCOPE: &str = "20150830/us-east-1/service/aws4_request";

/// Vectors that are run differently from the others, and why. None is
/// skipped: the suite has no S3 vector (S3 signs its path unnormalised and
/// single-encoded), and botocore's own exclusions (`normalize-path/get-space`
/// for its HTTP parser, the repeated-key query vectors for its dict of
/// parameters) are verifier-side non-issues, so they run here.
const SPECIAL: &[(&str, &str)] = &[
    (
        "get-vanilla-with-session-token",
        "its .sreq carries a signature that matches neither its .sts nor its .authz (an error \
         in the suite, which botocore does not notice as it never reads .sreq): the request \
         verified is the .sreq with the .authz signature",
    ),
    (
        "get-header-value-multiline",
        "a header folded over three lines (obs-fold): the gateway's HTTP server refuses \
         folded headers; a recipient that accepts one replaces each fold by a space (RFC 9112 \
         section 5.2), as the parser here does, before canonicalising",
    ),
    (
        "normalize-path/get-space",
        "a raw space in the request line, which no HTTP/1.1 server (hyper included) accepts: \
         canonicalised and verified from the request target as written",
    ),
    (
        "get-utf8",
        "raw UTF-8 in the request line, which hyper refuses: canonicalised and verified from \
         the request target as written",
    ),
    (
        "get-vanilla-utf8-query",
        "raw UTF-8 in the query, which hyper refuses: canonicalised and verified from the \
         request target as written",
    ),
];

/// The fewest vectors a complete suite has (botocore 1.44.8 ships 34).
const MIN_VECTORS: usize = 30;

struct SuiteCredentials {
    session_token: Option<String>,
}

impl PrincipalLookup for SuiteCredentials {
    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        (access_key_id == ACCESS_KEY).then(|| Principal {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: self.session_token.clone(),
            arn: "arn:aws:iam::111122223333:user/example".into(),
            caller: "AIDAEXAMPLE".into(),
            account_id: "111122223333".into(),
        })
    }
    fn region(&self) -> &str {
        REGION
    }
    fn service(&self) -> &str {
        SERVICE
    }
}

/// An HTTP/1.1 request as the suite writes it.
struct RawRequest {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl RawRequest {
    fn parse(text: &str) -> Self {
        let text = text.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let request_line = lines.next().expect("a request line");
        // The target may itself hold a space (normalize-path/get-space).
        let (method, rest) = request_line.split_once(' ').expect("METHOD TARGET VERSION");
        let (target, _version) = rest.rsplit_once(' ').expect("METHOD TARGET VERSION");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                let (_, value) = fields.last_mut().expect("a fold follows a field");
                value.push(' ');
                value.push_str(line.trim());
            } else {
                let (name, value) = line.split_once(':').expect("NAME:VALUE");
                fields.push((name.to_string(), value.trim().to_string()));
            }
        }
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&value).unwrap(),
            );
        }
        Self {
            method: method.parse().unwrap(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn authorization(&self) -> &str {
        self.headers["authorization"].to_str().unwrap()
    }

    fn signed_headers(&self) -> Vec<String> {
        self.authorization()
            .split(',')
            .find_map(|p| p.trim().strip_prefix("SignedHeaders="))
            .expect("SignedHeaders")
            .split(';')
            .map(str::to_string)
            .collect()
    }

    fn verify(&self) -> Result<Principal, String> {
        let lookup = SuiteCredentials {
            session_token: self
                .headers
                .get("x-amz-security-token")
                .map(|v| v.to_str().unwrap().to_string()),
        };
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        verify(
            &lookup,
            &self.method,
            &self.path,
            &self.query,
            &self.headers,
            &self.body,
            now,
        )
        .map_err(|refusal| refusal.message)
    }
}

fn suite_dir() -> Option<PathBuf> {
    if std::env::var("AWS2AZURE_SKIP_SIGV4_SUITE").is_ok_and(|v| v == "1") {
        eprintln!("AWS2AZURE_SKIP_SIGV4_SUITE=1: the AWS SigV4 test suite is not run");
        return None;
    }
    let dir = std::env::var_os("AWS2AZURE_SIGV4_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/aws4_testsuite"));
    assert!(
        dir.join("get-vanilla/get-vanilla.req").is_file(),
        "the AWS SigV4 test suite is not in {}: run ./scripts/test, or \
         `. scripts/tooling.sh && ensure_python && ensure_sigv4_suite`, or set \
         AWS2AZURE_SIGV4_SUITE to its folder (AWS2AZURE_SKIP_SIGV4_SUITE=1 skips this test)",
        dir.display()
    );
    Some(dir)
}

/// Every vector: its name (the folder below the suite, `/`-separated) and
/// the path of its files without extension.
fn vectors(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            }
        }
        let base = folder.file_name().unwrap().to_string_lossy().into_owned();
        let stem = folder.join(&base);
        if stem.with_extension("req").is_file() {
            let name = folder
                .strip_prefix(dir)
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            found.push((name, stem));
        }
    }
    found.sort();
    found
}

fn read(stem: &Path, extension: &str) -> String {
    let path = stem.with_extension(extension);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace('\r', "")
}

#[test]
fn every_vector_of_the_aws_sigv4_test_suite_canonicalises_and_verifies() {
    let Some(dir) = suite_dir() else { return };
    let vectors = vectors(&dir);
    assert!(
        vectors.len() >= MIN_VECTORS,
        "only {} vectors in {}: an incomplete suite",
        vectors.len(),
        dir.display()
    );
    for (name, why) in SPECIAL {
        assert!(
            vectors.iter().any(|(n, _)| n == name),
            "{name} ({why}) is not in the suite: update SPECIAL"
        );
    }

    let mut failures = Vec::new();
    for (name, stem) in &vectors {
        let authz = read(stem, "authz");
        let mut signed = RawRequest::parse(&read(stem, "sreq"));
        if name == "get-vanilla-with-session-token" {
            assert_ne!(signed.authorization(), authz, "{name}: the suite was fixed");
            signed
                .headers
                .insert("authorization", authz.trim().parse().unwrap());
        }
        assert_eq!(
            signed.authorization(),
            authz.trim(),
            "{name}: .sreq vs .authz"
        );

        let names = signed.signed_headers();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let canonical = canonical_request(
            &signed.method,
            &signed.path,
            &signed.query,
            &signed.headers,
            &names,
            &signed.body,
        );
        let expected = read(stem, "creq");
        if canonical.as_deref() != Some(expected.as_str()) {
            failures.push(format!(
                "{name}: canonical request\n--- ours\n{canonical:?}\n--- suite\n{expected:?}"
            ));
            continue;
        }
        let sts = string_to_sign(AMZ_DATE, SCOPE, &expected);
        if sts != read(stem, "sts") {
            failures.push(format!("{name}: string to sign\n{sts:?}"));
            continue;
        }
        if let Err(message) = signed.verify() {
            failures.push(format!("{name}: the signed request is refused: {message}"));
            continue;
        }
        // And a signature that is not the suite's is refused.
        let (head, signature) = authz.trim().rsplit_once("Signature=").unwrap();
        let forged = format!("{head}Signature=0{}", &signature[..signature.len() - 1]);
        signed
            .headers
            .insert("authorization", forged.parse().unwrap());
        match signed.verify() {
            Err(message) if message.contains("signature we calculated does not match") => {}
            other => failures.push(format!("{name}: a forged signature gave {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "{} AWS SigV4 test-suite vectors canonicalised and verified",
        vectors.len()
    );
}
