//! Which profile serves a requested resource.
//!
//! Each profile's scope names one resource (`https://graph.microsoft.com/.default`
//! serves `https://graph.microsoft.com`, with or without a trailing slash);
//! explicit overrides add resources a scope does not spell the way SDKs ask
//! for them. When several profiles (of different app registrations) serve a
//! resource, the request's `client_id` or `mi_res_id` chooses.

use std::collections::BTreeMap;

use aws2azure_shared::profile::{ProfileName, Profiles};

use crate::Error;
use crate::protocol::{Selector, TokenRequest};

/// One identity that can answer: the profile asked of the token API and the
/// client id reported to the SDK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub profile: ProfileName,
    pub client_id: String,
}

/// Resource → the profiles serving it, built and validated once at start-up.
#[derive(Clone, Debug, Default)]
pub struct ResourceMap {
    by_resource: BTreeMap<String, Vec<Served>>,
}

/// The setting names the overrides come from, for messages.
pub const RESOURCES_SETTING: &str = "resources";

impl ResourceMap {
    /// `overrides`: resource → profile name, added to (and taking precedence
    /// over) what the scopes give.
    pub fn new(profiles: &Profiles, overrides: &BTreeMap<String, String>) -> Result<Self, Error> {
        if profiles.is_empty() {
            return Err(Error::setting(
                "profiles",
                "no profile is configured",
                "list the profiles the token API serves, as the broker's AWS2AZURE_PROFILES does",
            ));
        }
        let mut by_resource: BTreeMap<String, Vec<Served>> = BTreeMap::new();
        for profile in profiles.iter() {
            let served = Served {
                profile: profile.name.clone(),
                client_id: profile.client_id.to_string(),
            };
            by_resource
                .entry(normalise(profile.scope.resource()))
                .or_default()
                .push(served);
        }
        for (resource, name) in overrides {
            let profile = profiles.get(name).ok_or_else(|| {
                Error::setting(
                    RESOURCES_SETTING,
                    format!(
                        "`{}` names profile `{}`, which is not configured",
                        aws2azure_shared::echo(resource, 100),
                        aws2azure_shared::echo(name, 64)
                    ),
                    format!("use one of: {}", names(profiles)),
                )
            })?;
            if resource.is_empty()
                || resource.contains(char::is_whitespace)
                || resource.chars().any(char::is_control)
            {
                return Err(Error::setting(
                    RESOURCES_SETTING,
                    format!(
                        "`{}` is not a resource",
                        aws2azure_shared::echo(resource, 100)
                    ),
                    "name the resource as SDKs send it, e.g. https://vault.azure.net",
                ));
            }
            // An override says which profile serves the resource: it
            // replaces what the scopes gave rather than making it ambiguous.
            by_resource.insert(
                normalise(resource),
                vec![Served {
                    profile: profile.name.clone(),
                    client_id: profile.client_id.to_string(),
                }],
            );
        }
        Ok(Self { by_resource })
    }

    /// The identity answering `request`, or why there is none.
    pub fn resolve(&self, request: &TokenRequest) -> Result<&Served, Error> {
        let resource = &request.resource;
        let candidates =
            self.by_resource
                .get(&normalise(resource))
                .ok_or_else(|| Error::UnknownResource {
                    resource: aws2azure_shared::echo(resource, 100),
                    served: self.served(),
                })?;
        let (selector, value, chosen) = match &request.selector {
            None if candidates.len() == 1 => return Ok(&candidates[0]),
            None => {
                return Err(Error::AmbiguousResource {
                    resource: aws2azure_shared::echo(resource, 100),
                    client_ids: candidates
                        .iter()
                        .map(|s| format!("{} for {}", s.client_id, s.profile))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            Some(Selector::Unsupported(selector)) => {
                return Err(Error::UnsupportedSelector { selector });
            }
            Some(Selector::ClientId(id)) => (
                "client_id",
                id,
                candidates
                    .iter()
                    .find(|s| s.client_id.eq_ignore_ascii_case(id)),
            ),
            Some(Selector::ResourceId(name)) => (
                "mi_res_id",
                name,
                candidates.iter().find(|s| s.profile.as_str() == name),
            ),
        };
        chosen.ok_or_else(|| Error::UnknownIdentity {
            resource: aws2azure_shared::echo(resource, 100),
            selector,
            value: aws2azure_shared::echo(value, 100),
        })
    }

    /// Every resource served, for messages and the start-up summary.
    pub fn served(&self) -> String {
        self.by_resource
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every profile some resource maps to (the ones worth fetching ahead).
    pub fn profiles(&self) -> Vec<ProfileName> {
        let mut names: Vec<_> = self
            .by_resource
            .values()
            .flatten()
            .map(|s| s.profile.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// SDKs send the resource with or without a trailing slash
/// (`https://graph.microsoft.com/` from an older `.default` scope); both
/// name the same resource.
fn normalise(resource: &str) -> String {
    resource.trim_end_matches('/').to_string()
}

fn names(profiles: &Profiles) -> String {
    profiles
        .iter()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
