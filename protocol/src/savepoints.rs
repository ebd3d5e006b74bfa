//! Savepoints of stream jobs on the wire: the request a user makes (`POST
//! /v1/apps/{app_id}/savepoints`, `spindle savepoint`, `spindle stop --savepoint`), the app
//! request the RM stores for the AM (`savepoints/<id>`), and what the AM reports of each.
//!
//! The RM reads and writes no savepoint: it checks the request's shape, stores it and hands it
//! to the AM, which writes the savepoint as the app's account.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AppId, SpecError};

/// The kind of app request a savepoint is: its requests are app controls keyed
/// `savepoints/<id>`.
pub const SAVEPOINT_REQUEST_KIND: &str = "savepoints";

/// `POST /v1/apps/{app_id}/savepoints` body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// Absolute path (or `file://` URL) of the directory to put the savepoint in; the AM writes
    /// `<dir>/savepoint-<app_id>-<id>/` there, as the app's account. Default: the job's
    /// `savepoint_dir`, else `<checkpoint_dir>/savepoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Stop the job after the savepoint (Flink's stop-with-savepoint): sources stop at its
    /// barrier, sinks commit what came before, and the app ends FINISHED/SUCCEEDED.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/apps/{app_id}/savepoints` answer (202): the request is stored; the AM takes the
/// savepoint and reports it in the app's `detail.stream.savepoints` under `savepoint_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SavepointReply {
    pub app_id: AppId,
    pub savepoint_id: u64,
}

/// Where a savepoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SavepointState {
    InProgress,
    Completed,
    Failed,
}

/// One savepoint the AM was asked for, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SavepointStatus {
    /// The request's id (`savepoint_id` of the answer to the request).
    pub id: u64,
    pub state: SavepointState,
    /// The savepoint's directory (what `from_savepoint` takes).
    pub path: String,
    /// Asked for by a stop: the job ends once it is complete.
    #[serde(default)]
    pub stop: bool,
    /// The checkpoint it was taken at, once triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The control key of savepoint request `id`.
pub fn savepoint_request_key(id: u64) -> String {
    format!("{SAVEPOINT_REQUEST_KIND}/{id}")
}

/// A savepoint request among an app's controls (`savepoints/<id>` → its request), as the AM
/// reads them; `None` for other keys or a garbled value.
pub fn parse_savepoint_request(key: &str, value: &serde_json::Value) -> Option<(u64, SavepointRequest)> {
    let id = key.strip_prefix(SAVEPOINT_REQUEST_KIND)?.strip_prefix('/')?.parse().ok()?;
    let request = serde_json::from_value(value.clone()).ok()?;
    Some((id, request))
}

/// Longest storage path accepted (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

/// A savepoint or checkpoint location as users write it: an absolute path or a `file://` URL,
/// without `..` (the AM writes and reads it as the app's account, on nodes whose working
/// directories differ, so a relative path would mean nothing and `..` hides where it points).
/// `field` names it in the error.
pub fn storage_path(field: &str, text: &str) -> Result<PathBuf, SpecError> {
    let invalid = |reason: String| SpecError {
        field: field.to_owned(),
        reason,
    };
    let path = match text.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(format!(
                "`{text}`: only file system paths (or file:// URLs) are supported, not {scheme}://; every node must see the directory (a shared mount)"
            )));
        }
        None => text,
    };
    if path.is_empty() || path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(invalid(format!(
            "`{text}` must be a path of 1 to {MAX_PATH_BYTES} bytes without NUL"
        )));
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "`{text}` must be an absolute path: the job's containers run in directories of their own, on other nodes"
        )));
    }
    if path.components().any(|component| component == Component::ParentDir) {
        return Err(invalid(format!("`{text}` must not contain `..`: name the directory itself")));
    }
    Ok(path.to_owned())
}

/// A savepoint's location as users write it: `storage_path`'s rules for a directory, or an
/// `s3://bucket/prefix` URL (the job's credentials reach it). Returned as the text the AM
/// opens: a path, or the URL without a trailing `/`.
pub fn savepoint_location(field: &str, text: &str) -> Result<String, SpecError> {
    if text.starts_with("s3://") {
        let url = crate::DataUrl::parse(text).map_err(|error| SpecError {
            field: field.to_owned(),
            reason: error.to_string(),
        })?;
        return Ok(url.to_string());
    }
    if let Some((scheme, _)) = text.split_once("://")
        && scheme != "file"
    {
        return Err(SpecError {
            field: field.to_owned(),
            reason: format!("`{text}`: a savepoint's location is an absolute path, a file:// or an s3:// URL, not {scheme}://"),
        });
    }
    storage_path(field, text).map(|path| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_locations_are_storage_paths_or_s3_urls() {
        assert_eq!(savepoint_location("dir", "file:///data/sp").unwrap(), "/data/sp");
        assert_eq!(savepoint_location("dir", "s3://bucket/sp/").unwrap(), "s3://bucket/sp");
        assert!(savepoint_location("dir", "s3://Bad_Bucket/sp").is_err());
        assert!(savepoint_location("dir", "hdfs://nn/sp").unwrap_err().reason.contains("hdfs://"));
        assert!(savepoint_location("dir", "s3://bucket/a/../b").is_err());
    }

    #[test]
    fn storage_paths_are_absolute_without_dot_dot_and_file_urls_are_paths() {
        assert_eq!(storage_path("dir", "/data/sp").unwrap(), PathBuf::from("/data/sp"));
        assert_eq!(storage_path("dir", "file:///data/sp").unwrap(), PathBuf::from("/data/sp"));
        for (text, hint) in [
            ("savepoints", "absolute"),
            ("./sp", "absolute"),
            ("/data/../etc", "`..`"),
            ("file://../x", "absolute"),
            ("s3://bucket/sp", "not s3://"),
            ("", "1 to 4096"),
            ("/a\0b", "NUL"),
        ] {
            let err = storage_path("dir", text).expect_err(text);
            assert_eq!(err.field, "dir");
            assert!(err.reason.contains(hint), "`{hint}` not in: {err}");
        }
    }

    #[test]
    fn a_request_round_trips_through_its_control() {
        let request = SavepointRequest {
            dir: Some("/data/sp".to_owned()),
            stop: true,
        };
        let key = savepoint_request_key(7);
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(parse_savepoint_request(&key, &value), Some((7, request)));
        assert_eq!(parse_savepoint_request("operators/count", &value), None);
        assert_eq!(parse_savepoint_request("savepoints/x", &value), None);
        assert_eq!(parse_savepoint_request("savepoints/7", &serde_json::json!({"stop": "yes"})), None);
    }
}
