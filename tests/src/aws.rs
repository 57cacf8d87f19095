//! Names for AWS resources in a moto shared by many tests. The resources
//! themselves are created with `aws2azure_devstack::moto`'s helpers.

/// A unique name, so tests sharing one moto do not collide.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
