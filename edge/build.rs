//! Compiles the `AzureActiveDirectory` service tag into the edge's default
//! allowlist: Microsoft's entry is parsed here, at build time, with the same
//! parser `aws2azure allowlist` uses, and shipped as a compact allowlist
//! document. Measured against embedding the raw entry and parsing it per
//! isolate (docs/benchmarks.md): 5.6 KB less gzipped wasm (no Service Tags parser,
//! no whitespace) and 40% less first-request CPU.

use std::path::PathBuf;
use std::{env, fs};

use aws2azure_shared::service_tags;

const SERVICE_TAG: &str = "../shared/data/service-tags/AzureActiveDirectory.serviceTag.json";

fn main() {
    println!("cargo::rerun-if-changed={SERVICE_TAG}");
    let raw = fs::read(SERVICE_TAG).unwrap_or_else(|e| panic!("reading {SERVICE_TAG}: {e}"));
    let document = service_tags::select(&raw, service_tags::DEFAULT_TAG)
        .unwrap_or_else(|e| panic!("{SERVICE_TAG}: {e}"))
        .into_allowlist_document();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("azure_ad_allowlist.json");
    let json = serde_json::to_vec(&document).expect("an allowlist document serialises");
    fs::write(&out, json).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
