//! Where a job's checkpoint files live: a directory every node sees (one host, or a shared
//! file system) or a prefix of an S3-compatible object store. Control messages and checkpoint
//! metadata name a file by its location's text (a path or an `s3://` URL), which `resolve`
//! turns back into a location.

use std::fmt;
use std::io;
use std::path::PathBuf;

use spindle_storage::{DataUrl, ObjectUrl, S3Settings, block_on};

/// A checkpoint directory, or one file in it.
#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
    Object(ObjectUrl),
}

impl Location {
    /// Opens `text`: an absolute path, a `file://` or an `s3://` URL (with the job's settings).
    pub fn open(text: &str, s3: &S3Settings) -> io::Result<Location> {
        let url = DataUrl::parse(text).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        Ok(match ObjectUrl::open(&url, s3).map_err(io::Error::other)? {
            Some(object) => Location::Object(object),
            None => match url {
                DataUrl::Local(path) => Location::Dir(path),
                DataUrl::S3 { .. } => unreachable!("opened above"),
            },
        })
    }

    /// `text`, a location a message named: in this one's bucket, with this one's client (its
    /// pooled connections), else opened anew.
    pub fn resolve(&self, text: &str, s3: &S3Settings) -> io::Result<Location> {
        if let Location::Object(object) = self
            && let Ok(DataUrl::S3 { bucket, key }) = DataUrl::parse(text)
            && bucket == object.bucket()
        {
            return Ok(Location::Object(object.at(&key)));
        }
        Location::open(text, s3)
    }

    /// `name` (which may contain `/`) below this location.
    pub fn child(&self, name: &str) -> Location {
        match self {
            Location::Dir(path) => Location::Dir(path.join(name)),
            Location::Object(object) => Location::Object(object.child(name)),
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Location::Object(_))
    }

    /// The file's size; `None` when there is none.
    pub fn size(&self) -> io::Result<Option<u64>> {
        match self {
            Location::Dir(path) => match std::fs::metadata(path) {
                Ok(metadata) => Ok(Some(metadata.len())),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            },
            Location::Object(object) => block_on(object.size()).map_err(io::Error::other),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Dir(path) => write!(f, "{}", path.display()),
            Location::Object(object) => write!(f, "{object}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_through_their_text() {
        let s3 = S3Settings::from_env(&[("AWS_ENDPOINT_URL".to_owned(), "http://127.0.0.1:1".to_owned())].into());
        let dir = Location::open("/ckpt", &s3).unwrap();
        assert_eq!(dir.child("app/chk-1").to_string(), "/ckpt/app/chk-1");
        assert!(!dir.is_object());
        let root = Location::open("s3://bucket/ckpt/", &s3).unwrap();
        let file = root.child("app/chk-2/count-1.state");
        assert_eq!(file.to_string(), "s3://bucket/ckpt/app/chk-2/count-1.state");
        let resolved = root.resolve(&file.to_string(), &s3).unwrap();
        assert_eq!(resolved.to_string(), file.to_string());
        assert_eq!(root.resolve("s3://other/x", &s3).unwrap().to_string(), "s3://other/x");
        assert_eq!(root.resolve("/local/x.state", &s3).unwrap().to_string(), "/local/x.state");
        assert!(Location::open("relative", &s3).is_err());
    }
}
