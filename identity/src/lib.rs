//! The credential endpoint: Azure SDKs' managed-identity protocol, served
//! from the token API, so programs using `DefaultAzureCredential` or
//! `ManagedIdentityCredential` run on AWS unchanged.
//!
//! Azure SDKs find the endpoint through two environment variables,
//! `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` (App Service's protocol,
//! api-version 2019-08-01), and ask it for a token per resource. The
//! endpoint maps the resource to a profile, gets the profile's token from
//! the token API (SigV4, the standard AWS credential chain) and caches it.
//!
//! One module per concept, the I/O at the edges:
//! - [`protocol`]: the request's query and the answers, pure;
//! - [`resources`]: which profile serves a resource;
//! - [`cache`]: the token cache (injected clock, single flight, refresh
//!   ahead, never a token with under five minutes left);
//! - [`source`]: where tokens come from ([`TokenSource`], implemented for
//!   the token API's client);
//! - [`settings`]: where to listen and the header secret;
//! - [`server`]: the HTTP shell ([`Endpoint`]), used by `aws2azure serve`,
//!   `aws2azure dev` and the Lambda extension.

pub mod cache;
mod error;
pub mod protocol;
pub mod resources;
pub mod server;
pub mod settings;
pub mod source;

pub use cache::{CachePolicy, TokenCache};
pub use error::Error;
pub use resources::ResourceMap;
pub use server::Endpoint;
pub use settings::{EndpointSettings, IdentityHeader};
pub use source::{Token, TokenSource};
