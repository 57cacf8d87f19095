//! The shared token tier in DynamoDB.
//!
//! One table, partition key `pk` (string). Token items `token#{digest}` hold
//! the token and its times; lease items `lease#{digest}` hold who refreshes
//! it until when. Both carry a `ttl` attribute for DynamoDB's TTL deletion,
//! which is lazy (hours late, and never in moto), so expiry is always checked
//! here. Reads are strongly consistent, so an instance waiting on a peer's
//! refresh sees the peer's write at once.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use crate::Error;
use crate::cache::{CacheKey, SharedCache};
use crate::token::{AccessToken, CachedToken};

pub struct DynamoDbCache {
    client: Client,
    table: String,
}

impl DynamoDbCache {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Checks the table exists (and warms the connection) at start-up. A
    /// missing table is a configuration error (`Error::Config`); anything
    /// else is an outage the broker rides out (`Error::Cache`).
    pub async fn check(&self) -> Result<(), Error> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e))
                if e.err().code() == Some("ResourceNotFoundException") =>
            {
                Err(Error::config(
                    crate::settings::CACHE_TABLE,
                    format!(
                        "table `{}` does not exist; create it (partition key `pk`, string) or fix the name",
                        self.table
                    ),
                ))
            }
            Err(e) => Err(self.map_error(e)),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// A conditional write's result: `true` when written, `false` when its
    /// condition did not hold (a longer-lived token already stored, a lease
    /// held by someone else, a lease no longer ours).
    fn conditional<T, E, R>(&self, result: Result<T, SdkError<E, R>>) -> Result<bool, Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(s))
                if s.err().code() == Some("ConditionalCheckFailedException") =>
            {
                Ok(false)
            }
            Err(e) => Err(self.map_error(e)),
        }
    }

    fn map_error<E, R>(&self, err: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("Unknown");
                if code == "ResourceNotFoundException" {
                    Error::Cache(format!(
                        "table `{}` does not exist; create it (partition key `pk`, string) or \
                         fix AWS2AZURE_CACHE_TABLE",
                        self.table
                    ))
                } else {
                    Error::Cache(format!("{code}: {}", s.err().message().unwrap_or_default()))
                }
            }
            SdkError::TimeoutError(_) => Error::Cache("DynamoDB timed out".into()),
            SdkError::DispatchFailure(_) => Error::Cache("DynamoDB could not be reached".into()),
            other => Error::Cache(other.to_string()),
        }
    }
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn token_pk(key: &CacheKey) -> String {
    format!("token#{}", key.digest)
}

fn lease_pk(key: &CacheKey) -> String {
    format!("lease#{}", key.digest)
}

fn get_n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

#[async_trait]
impl SharedCache for DynamoDbCache {
    async fn get(&self, key: &CacheKey, now: u64) -> Result<Option<CachedToken>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(token_pk(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.map_error(e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let (Some(token), Some(expires_on), Some(refresh_on)) = (
            get_s(item, "access_token"),
            get_n(item, "expires_on"),
            get_n(item, "refresh_on"),
        ) else {
            tracing::warn!(profile = %key.profile, "ignoring a malformed token item in the cache table");
            return Ok(None);
        };
        if expires_on <= now {
            return Ok(None);
        }
        Ok(Some(CachedToken {
            access_token: AccessToken::new(token.to_string()),
            token_type: get_s(item, "token_type").unwrap_or("Bearer").to_string(),
            expires_on,
            refresh_on,
        }))
    }

    async fn put(&self, key: &CacheKey, token: &CachedToken) -> Result<(), Error> {
        // Never replace a token that lives longer: two instances finishing
        // out of order must not regress the shared copy.
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(token_pk(key)))
            .item("profile", s(&key.profile))
            .item("access_token", s(token.access_token.expose()))
            .item("token_type", s(&token.token_type))
            .item("expires_on", n(token.expires_on))
            .item("refresh_on", n(token.refresh_on))
            .item("ttl", n(token.expires_on))
            // A malformed item (no or non-numeric expires_on) is replaced too.
            .condition_expression(
                "attribute_not_exists(pk) OR NOT attribute_type(expires_on, :number) \
                 OR expires_on < :expires_on",
            )
            .expression_attribute_values(":number", s("N"))
            .expression_attribute_values(":expires_on", n(token.expires_on))
            .send()
            .await;
        self.conditional(result).map(|_| ())
    }

    async fn try_lease(
        &self,
        key: &CacheKey,
        holder: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, Error> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(lease_pk(key)))
            .item("profile", s(&key.profile))
            .item("holder", s(holder))
            .item("lease_until", n(until))
            .item("ttl", n(until))
            .condition_expression(
                "attribute_not_exists(pk) OR NOT attribute_type(lease_until, :number) \
                 OR lease_until < :now",
            )
            .expression_attribute_values(":number", s("N"))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        self.conditional(result)
    }

    async fn release_lease(&self, key: &CacheKey, holder: &str) -> Result<(), Error> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(key)))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        self.conditional(result).map(|_| ())
    }
}
