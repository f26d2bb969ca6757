//! `--remote-storage` URLs: which object store, and the prefix inside it.
//!
//! * `file:///dir[/prefix]`: a directory of this machine (created if missing);
//! * `s3://bucket[/prefix]`: S3 or an S3-protocol server, configured by the usual AWS
//!   environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`, ...); an `http://` endpoint is allowed, for local servers;
//! * `gs://bucket[/prefix]` (`GOOGLE_SERVICE_ACCOUNT`, ...), `az://container[/prefix]`
//!   (`AZURE_STORAGE_ACCOUNT_NAME`, ...), from their environments likewise.
//!
//! Owns: that mapping and the client settings (timeouts, object_store's own retries kept
//! short, since the offloader backs off itself). Must never: put credentials in the URL
//! or in messages.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::RemoteError;

/// How long one request may take (a 16 MiB upload over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An object store and the prefix of our objects in it.
pub fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), RemoteError> {
    let bad = |reason: &str| RemoteError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("expected scheme://..., e.g. file:///var/lib/wal-archive or s3://bucket/prefix")
    })?;
    // The HTTPS client needs a process-wide crypto provider; the first caller installs
    // ring's (a provider already installed stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_allow_http(true);
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let prefix_of = |p: &str| {
        ObjectPath::parse(p.trim_matches('/')).map_err(|e| bad(&format!("bad prefix: {e}")))
    };
    match scheme {
        "file" => {
            if !rest.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
            }
            std::fs::create_dir_all(rest)
                .map_err(|e| bad(&format!("cannot create {rest}: {e}")))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(rest)?;
            Ok((Arc::new(store), ObjectPath::default()))
        }
        "s3" | "gs" | "az" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            let prefix = prefix_of(prefix)?;
            let store: Arc<dyn ObjectStore> = match scheme {
                "s3" => Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_client_options(client)
                        .with_retry(retry)
                        .build()?,
                ),
                "gs" => Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .with_client_options(client)
                        .with_retry(retry)
                        .build()?,
                ),
                _ => Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .with_client_options(client)
                        .with_retry(retry)
                        .build()?,
                ),
            };
            Ok((store, prefix))
        }
        other => Err(bad(&format!(
            "unknown scheme {other:?} (file, s3, gs and az are supported)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_make_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("archive");
        let (_, prefix) = open(&format!("file://{}", p.display())).unwrap();
        assert!(p.is_dir());
        assert_eq!(prefix.as_ref(), "");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("/tmp/x", "scheme://"),
            ("file://relative", "absolute"),
            ("ftp://host/x", "unknown scheme"),
            ("s3:///prefix", "no bucket"),
        ] {
            let e = open(url).err().unwrap().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn s3_urls_split_bucket_and_prefix() {
        // Building a client reads the environment but does not connect.
        let (_, prefix) = open("s3://bucket/some/prefix/").unwrap();
        assert_eq!(prefix.as_ref(), "some/prefix");
    }
}
