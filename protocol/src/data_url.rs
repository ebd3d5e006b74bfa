//! Where a job's data is: a local absolute path (`/data/in`, `file:///data/in`) or an object
//! prefix on an S3-compatible store (`s3://bucket/prefix`).

use std::fmt;
use std::path::PathBuf;

/// A parsed data location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataUrl {
    /// A path every node sees the same way (one host, or a shared file system).
    Local(PathBuf),
    /// Objects of an S3 bucket under `key` (`""`: the whole bucket). No trailing `/`.
    S3 { bucket: String, key: String },
}

/// Why a data location was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

impl DataUrl {
    /// Parses `/abs/path`, `file:///abs/path` or `s3://bucket[/key]`.
    pub fn parse(text: &str) -> Result<DataUrl, UrlError> {
        let error = |reason: &str| UrlError {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket).map_err(error)?;
            let key = key.trim_end_matches('/');
            if key.split('/').any(|part| part.is_empty() && !key.is_empty()) || key.split('/').any(|part| part == "." || part == "..") {
                return Err(error("has an empty, `.` or `..` component in its key"));
            }
            return Ok(DataUrl::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        let path = text.strip_prefix("file://").unwrap_or(text);
        if !path.starts_with('/') {
            return Err(error("is neither an absolute path nor a file:// or s3:// URL"));
        }
        Ok(DataUrl::Local(PathBuf::from(path)))
    }

    pub fn is_object_store(&self) -> bool {
        matches!(self, DataUrl::S3 { .. })
    }

    /// `name` (which may contain `/`) below this location.
    pub fn join(&self, name: &str) -> DataUrl {
        match self {
            DataUrl::Local(path) => DataUrl::Local(path.join(name)),
            DataUrl::S3 { bucket, key } if key.is_empty() => DataUrl::S3 {
                bucket: bucket.clone(),
                key: name.to_owned(),
            },
            DataUrl::S3 { bucket, key } => DataUrl::S3 {
                bucket: bucket.clone(),
                key: format!("{key}/{name}"),
            },
        }
    }
}

impl fmt::Display for DataUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataUrl::Local(path) => write!(f, "{}", path.display()),
            DataUrl::S3 { bucket, key } if key.is_empty() => write!(f, "s3://{bucket}"),
            DataUrl::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// S3's rules for bucket names, loosely: 3 to 63 of `a-z 0-9 . -`, starting and ending with a
/// letter or digit.
fn validate_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.is_empty() {
        return Err("names no bucket (s3://BUCKET/prefix)");
    }
    let valid_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !ends_ok(bucket.bytes().next()) || !ends_ok(bucket.bytes().last()) {
        return Err("has an invalid bucket name (3-63 of a-z, 0-9, `.` and `-`, starting and ending with a letter or digit)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_parse_and_print_back() {
        for (text, shown) in [
            ("/data/in", "/data/in"),
            ("file:///data/in", "/data/in"),
            ("s3://books", "s3://books"),
            ("s3://books/", "s3://books"),
            ("s3://books/2026/in/", "s3://books/2026/in"),
        ] {
            assert_eq!(DataUrl::parse(text).unwrap().to_string(), shown, "{text}");
        }
        let url = DataUrl::parse("s3://books/in").unwrap();
        assert_eq!(url.join("part-r-00000").to_string(), "s3://books/in/part-r-00000");
        assert_eq!(DataUrl::parse("s3://books").unwrap().join("a/b").to_string(), "s3://books/a/b");
        assert!(url.is_object_store());
    }

    #[test]
    fn bad_locations_say_why() {
        for (text, why) in [
            ("data/in", "neither an absolute path"),
            ("hdfs://nn/data", "neither an absolute path"),
            ("s3:///key", "names no bucket"),
            ("s3://Books/key", "invalid bucket name"),
            ("s3://ab/key", "invalid bucket name"),
            ("s3://books/a//b", "empty"),
            ("s3://books/a/../b", "`..`"),
        ] {
            let error = DataUrl::parse(text).unwrap_err().to_string();
            assert!(error.contains(text) && error.contains(why), "{text}: {error}");
        }
    }
}
