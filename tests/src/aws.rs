//! Resources the broker needs, created in moto the way an operator creates
//! them in AWS (see template.yaml).

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use aws_sdk_kms::types::{KeySpec, KeyUsageType};

/// An RSA-2048 signing key with an alias; returns the key id.
pub async fn create_signing_key(kms: &aws_sdk_kms::Client, alias: &str) -> String {
    create_key(kms, alias, KeySpec::Rsa2048).await
}

pub async fn create_key(kms: &aws_sdk_kms::Client, alias: &str, spec: KeySpec) -> String {
    let key = kms
        .create_key()
        .key_spec(spec)
        .key_usage(KeyUsageType::SignVerify)
        .description("aws2azure assertion signing key (test)")
        .send()
        .await
        .expect("CreateKey");
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(&key_id)
        .send()
        .await
        .expect("CreateAlias");
    key_id
}

/// The token cache table: partition key `pk`, TTL on `ttl`.
pub async fn create_cache_table(ddb: &aws_sdk_dynamodb::Client, name: &str) {
    ddb.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("CreateTable");
}

/// A unique name, so tests sharing one moto do not collide.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
