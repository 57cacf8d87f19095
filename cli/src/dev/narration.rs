//! What `aws2azure dev` tells the console: the parts and their addresses,
//! the credentials to export, one token fetched step by step, and what to
//! try next. Never a token or an assertion whole.

use std::time::Instant;

use aws2azure_devstack::entra::issued_claims;
use aws2azure_identity::Endpoint;
use aws2azure_identity::protocol::{API_VERSION, IDENTITY_HEADER};
use aws2azure_shared::discovery::DISCOVERY_PATH;
use aws2azure_shared::profile::AssertionSource;

use super::rotation::DevRotation;
use super::stack::DevStack;
use super::{DevOptions, redacted};
use crate::Error;

/// The parts, their addresses, and the variables to export.
pub(super) fn introduce(stack: &DevStack, options: &DevOptions) {
    let issuer = &stack.issuer;
    let endpoint = &stack.endpoint;
    println!("aws2azure dev: the whole federation loop on loopback, no cloud account.\n");
    println!("  edge (issuer)     {issuer}");
    println!("                    discovery {}", issuer.discovery_url());
    println!(
        "  token API         {endpoint}   (SigV4-verifying gateway, region {})",
        options.region
    );
    println!(
        "  Entra stand-in    {}   (trusts the issuer above; validates like Entra; tokens live {} s)",
        stack.entra_url, options.token_lifetime_secs
    );
    println!(
        "  signing key       RSA {} bits, kid {} (generated for this run, in memory only)",
        stack.jwk.bits(),
        stack.jwk.kid()
    );
    if let Some(sts) = &stack.sts {
        println!(
            "  STS stand-in      {}   (AWS's issuer and GetWebIdentityToken, for assertion = \"sts\")",
            sts.issuer()
        );
    }
    for p in stack.profiles.iter() {
        println!(
            "  profile           {}: scope {}, subject {}{}",
            p.name,
            p.scope,
            p.subject,
            match p.assertion {
                AssertionSource::Kms => "",
                AssertionSource::Sts => " (assertion signed by STS)",
            }
        );
    }
    let identity = &stack.identity;
    println!(
        "  identity endpoint {}   (Azure SDKs' managed identity protocol; resources {})",
        identity.identity_endpoint(),
        identity.resources().served()
    );
    let principal = &stack.principal;
    println!(
        "\nLocal credentials of {} (only this gateway accepts them), and the credential endpoint's\nvariables, which Azure SDKs read by themselves:\n",
        principal.arn
    );
    println!("export AWS_ACCESS_KEY_ID={}", principal.access_key_id);
    println!(
        "export AWS_SECRET_ACCESS_KEY={}",
        principal.secret_access_key
    );
    println!(
        "export AWS_SESSION_TOKEN={}",
        principal.session_token.as_deref().unwrap_or_default()
    );
    println!("export AWS_REGION={}", options.region);
    println!("{}", crate::serve::exports(identity));
}

/// Fetches one token through the whole loop, as a workload would, and says
/// what each part did; then once more (the cache), then as an Azure SDK.
pub(super) async fn demonstrate(stack: &mut DevStack) -> Result<(), Error> {
    println!("\nFetching one token through the whole loop, as a workload would:");
    let first = stack.first_profile().clone();
    let (client, entra, issuer) = (&stack.client, &stack.entra, &stack.issuer);

    let started = Instant::now();
    let token = client.token(first.name.as_str(), 0).await?;
    let first_ms = started.elapsed().as_millis();
    // Who signed: the broker's key (the claims it minted), or STS.
    let sts_issuer = match (&stack.sts, first.assertion) {
        (Some(sts), AssertionSource::Sts) => Some(sts.issuer().to_string()),
        _ => None,
    };
    if let Some(sts_issuer) = &sts_issuer {
        println!(
            "  1. assertion signed   by the STS stand-in (GetWebIdentityToken): iss={sts_issuer} sub={}",
            first.subject
        );
    } else if let Ok((claims, prefix)) = stack.minted.try_recv() {
        println!(
            "  1. assertion minted   iss={} sub={} aud={} lifetime={} s jti={}\n                        {prefix}",
            claims.iss,
            claims.sub,
            claims.aud,
            claims.exp - claims.iat,
            claims.jti
        );
    }
    let stats = entra.stats();
    let discovery_url = match &sts_issuer {
        Some(sts) => format!("{sts}{DISCOVERY_PATH}"),
        None => issuer.discovery_url(),
    };
    println!(
        "  2. discovery fetched  the Entra stand-in read {discovery_url} and the key set over HTTP ({} + {} requests) and validated issuer, subject, audience, kid and signature",
        stats.discovery_fetches, stats.jwks_fetches
    );
    let aud = issued_claims(&token.access_token)
        .and_then(|c| c["aud"].as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "  3. token issued       {} for {aud}, expires in {} s, {} ms end to end\n                        {}",
        token.token_type,
        token.expires_in,
        first_ms,
        redacted(&token.access_token)
    );
    let started = Instant::now();
    let again = client.token(first.name.as_str(), 0).await?;
    let calls = entra.stats().token_requests;
    println!(
        "  4. second call        {} in {} ms (Entra calls so far: {calls})",
        if again.access_token == token.access_token && calls == 1 {
            "served from the cache"
        } else {
            "fetched again"
        },
        started.elapsed().as_millis()
    );
    let resource = first.scope.resource();
    let started = Instant::now();
    let sdk_view = sdk_request(&stack.identity, resource).await;
    println!(
        "  5. as an Azure SDK    GET {}?api-version=2019-08-01&resource={resource}: {sdk_view} in {} ms (Entra calls so far: {})",
        stack.identity.identity_endpoint(),
        started.elapsed().as_millis(),
        entra.stats().token_requests
    );
    Ok(())
}

/// Commands to try from another terminal.
pub(super) fn suggest(stack: &DevStack, options: &DevOptions) {
    let first = stack.first_profile();
    let (endpoint, issuer) = (&stack.endpoint, &stack.issuer);
    let resource = first.scope.resource();
    println!("\nTry it from another terminal, after the exports above:");
    println!(
        "  cargo run -q -p aws2azure-cli -- token {} --endpoint {endpoint}",
        first.name
    );
    println!(
        "  awscurl --service execute-api --region {} {endpoint}/token/{}",
        options.region, first.name
    );
    println!("  cargo run -q -p aws2azure-cli -- doctor {issuer} --allow-http");
    println!(
        "  curl -s -H \"X-IDENTITY-HEADER: $IDENTITY_HEADER\" \"$IDENTITY_ENDPOINT?api-version=2019-08-01&resource={resource}\""
    );
    println!("  Any Azure SDK program, unchanged; in Python (pip install azure-identity):");
    println!(
        "  python3 -c 'from azure.identity import DefaultAzureCredential as C; t = C().get_token(\"{}\"); print(\"token expires at\", t.expires_on)'",
        first.scope
    );
}

/// What the rotation will do, before it starts.
pub(super) fn rotating(rotation: &DevRotation) {
    let t = *rotation.timings();
    println!(
        "\nRotating the signing key every {} s (warm-up {} s, previous kept {} s; in production 90 days, 24 h, 24 h).\n\
         The Entra stand-in keeps key sets for {} s and does not refetch on an unknown kid, the worst case.\n\
         A workload asks for a fresh token every 2 s; [keys] lines are rotation steps.",
        t.period, t.warm_up, t.previous_retention, t.warm_up
    );
    println!(
        "Keys are published through the Cloudflare API client to a local stand-in at {}.",
        rotation.cloudflare.url()
    );
}

/// Asks the credential endpoint for a token as an SDK does, and says how it
/// answered (never the token).
async fn sdk_request(identity: &Endpoint, resource: &str) -> String {
    let url = reqwest::Url::parse_with_params(
        &identity.identity_endpoint(),
        [("api-version", API_VERSION), ("resource", resource)],
    );
    let Ok(url) = url else {
        return "failed (no URL)".into();
    };
    let answer = reqwest::Client::new()
        .get(url)
        .header(IDENTITY_HEADER, identity.identity_header())
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(e) => return format!("failed ({})", e.without_url()),
    };
    let status = response.status();
    match response.json::<serde_json::Value>().await {
        Ok(body) if status.is_success() => format!(
            "200, {} token for client_id {}, expires_on {}",
            body["token_type"].as_str().unwrap_or("?"),
            body["client_id"].as_str().unwrap_or("?"),
            body["expires_on"].as_str().unwrap_or("?")
        ),
        Ok(body) => format!(
            "{status}: {}",
            body["error_description"].as_str().unwrap_or("?")
        ),
        Err(e) => format!("{status}, unreadable answer ({e})"),
    }
}
