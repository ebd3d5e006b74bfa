//! How a process reaches an S3-compatible store: settings from a job's environment, named as
//! the AWS tools name them, so the same variables work with the AWS CLI.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `AWS_ENDPOINT_URL` | the server (`http://127.0.0.1:9000` for MinIO, s3s-fs…) | AWS's |
//! | `AWS_REGION` (or `AWS_DEFAULT_REGION`) | the region signed for | `us-east-1` |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | credentials | none |
//! | `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` | `true`: `bucket.host/key`; `false`: `host/bucket/key` | `false` with an endpoint, `true` without |
//! | `AWS_ALLOW_HTTP` | allow `http://` endpoints | `true` when the endpoint is `http://` |
//! | `AWS_UNSIGNED_PAYLOAD` | sign without hashing payloads | `true` unless the endpoint is `http://` |

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use crate::{StorageError, Store};

/// Variables whose values are secrets: never shown in reports, logs or diagnostics.
pub const SECRET_VARIABLES: [&str; 2] = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// How to reach and sign for an S3-compatible store.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub virtual_hosted_style: bool,
    pub allow_http: bool,
    /// Sign requests without hashing their payload (`UNSIGNED-PAYLOAD`): what AWS's SDKs do
    /// over HTTPS, where TLS protects the bytes; over plain HTTP the signature covers them.
    pub unsigned_payload: bool,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("allow_http", &self.allow_http)
            .field("unsigned_payload", &self.unsigned_payload)
            .finish()
    }
}

impl S3Settings {
    /// From a job's environment (the `AWS_*` variables above).
    pub fn from_env(env: &BTreeMap<String, String>) -> S3Settings {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty()).cloned();
        let flag = |name: &str| get(name).map(|value| matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        let endpoint = get("AWS_ENDPOINT_URL").or_else(|| get("AWS_ENDPOINT"));
        let plain_http = endpoint.as_deref().is_some_and(|endpoint| endpoint.starts_with("http://"));
        S3Settings {
            virtual_hosted_style: flag("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").unwrap_or(endpoint.is_none()),
            allow_http: flag("AWS_ALLOW_HTTP").unwrap_or(plain_http),
            unsigned_payload: flag("AWS_UNSIGNED_PAYLOAD").unwrap_or(!plain_http),
            endpoint,
            region: get("AWS_REGION")
                .or_else(|| get("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
            session_token: get("AWS_SESSION_TOKEN"),
        }
    }

    /// A client of `bucket`.
    pub fn open(&self, bucket: &str) -> Result<Store, StorageError> {
        install_tls_provider();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            .with_allow_http(self.allow_http)
            .with_unsigned_payload(self.unsigned_payload);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(token) = &self.session_token {
                    builder = builder.with_token(token);
                }
            }
            (None, None) => builder = builder.with_skip_signature(true),
            _ => {
                return Err(StorageError::Config(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither".to_owned(),
                ));
            }
        }
        // The builder's errors name settings, never the secret's value.
        let store = builder
            .build()
            .map_err(|error| StorageError::Config(format!("s3://{bucket}: {error}")))?;
        Ok(Arc::new(store))
    }
}

/// reqwest is built without a TLS provider of its own (see the workspace Cargo.toml): ring's,
/// once per process (a provider installed already by the binary is kept).
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_aws_variables_and_hide_the_secret() {
        let env = BTreeMap::from([
            ("AWS_ENDPOINT_URL".to_owned(), "http://127.0.0.1:9000".to_owned()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "spindle".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "very-secret".to_owned()),
        ]);
        let settings = S3Settings::from_env(&env);
        assert_eq!(settings.region, "us-east-1");
        assert!(
            settings.allow_http && !settings.virtual_hosted_style && !settings.unsigned_payload,
            "{settings:?}"
        );
        assert!(!format!("{settings:?}").contains("very-secret"));
        assert!(settings.open("books").is_ok());

        let aws = S3Settings::from_env(&BTreeMap::from([("AWS_REGION".to_owned(), "eu-west-1".to_owned())]));
        assert!(aws.virtual_hosted_style && !aws.allow_http && aws.unsigned_payload && aws.region == "eu-west-1");

        let half = S3Settings::from_env(&BTreeMap::from([("AWS_ACCESS_KEY_ID".to_owned(), "x".to_owned())]));
        let error = half.open("books").err().unwrap().to_string();
        assert!(error.contains("set both or neither"), "{error}");
    }
}
