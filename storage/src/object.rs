//! One object or prefix of a bucket, and what jobs do with it.

use std::io;
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::{DataUrl, S3Settings, StorageError, Store, block_on};

/// Parts of a multipart upload (S3's minimum is 5 MiB for all but the last).
const UPLOAD_PART_BYTES: usize = 16 * 1024 * 1024;

/// An object key (or a prefix of keys) in an opened bucket.
#[derive(Clone)]
pub struct ObjectUrl {
    store: Store,
    bucket: String,
    key: String,
}

impl std::fmt::Debug for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.key)
        }
    }
}

/// An object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Its full key.
    pub key: String,
    pub size: u64,
}

impl ObjectUrl {
    /// Opens `url` (an `s3://` one) with `settings`; `None` for a local path.
    pub fn open(url: &DataUrl, settings: &S3Settings) -> Result<Option<ObjectUrl>, StorageError> {
        let DataUrl::S3 { bucket, key } = url else { return Ok(None) };
        Ok(Some(ObjectUrl {
            store: settings.open(bucket)?,
            bucket: bucket.clone(),
            key: key.clone(),
        }))
    }

    /// Opens `text`, which must be an `s3://` URL (a staged upload's, a test's).
    pub fn parse(text: &str, settings: &S3Settings) -> Result<ObjectUrl, StorageError> {
        let url = DataUrl::parse(text).map_err(|error| StorageError::Config(error.to_string()))?;
        Self::open(&url, settings)?.ok_or_else(|| StorageError::Config(format!("{text:?} is not an s3:// URL")))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The same bucket at `key`.
    pub fn at(&self, key: &str) -> ObjectUrl {
        ObjectUrl {
            store: self.store.clone(),
            bucket: self.bucket.clone(),
            key: key.trim_matches('/').to_owned(),
        }
    }

    /// `name` (may contain `/`) below this one.
    pub fn child(&self, name: &str) -> ObjectUrl {
        if self.key.is_empty() {
            self.at(name)
        } else {
            self.at(&format!("{}/{name}", self.key))
        }
    }

    fn path(&self) -> Key {
        Key::from(self.key.as_str())
    }

    /// The object's size, or `None` if no object has this key.
    pub async fn size(&self) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.path()).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(StorageError::request(self)(error)),
        }
    }

    /// Every object below this prefix (`prefix/…`, at any depth), sorted by key.
    pub async fn list(&self) -> Result<Vec<ObjectEntry>, StorageError> {
        let prefix = (!self.key.is_empty()).then(|| self.path());
        let mut entries: Vec<ObjectEntry> = self
            .store
            .list(prefix.as_ref())
            .map_ok(|meta| ObjectEntry {
                key: meta.location.to_string(),
                size: meta.size,
            })
            .try_collect()
            .await
            .map_err(StorageError::request(self))?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Bytes `range` of the object.
    pub async fn get_range(&self, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.store.get_range(&self.path(), range).await.map_err(StorageError::request(self))
    }

    /// The whole object.
    pub async fn get(&self) -> Result<Bytes, StorageError> {
        let result = self.store.get(&self.path()).await.map_err(StorageError::request(self))?;
        result.bytes().await.map_err(StorageError::request(self))
    }

    /// Writes the object in one request (small objects: markers, manifests).
    pub async fn put(&self, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        let payload = PutPayload::from(bytes.into());
        self.store.put(&self.path(), payload).await.map_err(StorageError::request(self))?;
        Ok(())
    }

    /// Uploads a local file as the parts of a new multipart upload of this object and leaves
    /// it open: nothing is visible until `complete_upload` (a failed upload is aborted).
    /// Returns the upload's id and its parts' ids.
    pub async fn stage_file(&self, file: &Path) -> Result<(String, Vec<String>), StorageError> {
        let io_error = |error: io::Error| StorageError::Request {
            url: self.to_string(),
            reason: format!("reading {}: {error}", file.display()),
        };
        let mut reader = tokio::fs::File::open(file).await.map_err(io_error)?;
        let upload = self.start_upload().await?;
        let mut parts = Vec::new();
        loop {
            let mut part = Vec::with_capacity(UPLOAD_PART_BYTES);
            let read = (&mut reader).take(UPLOAD_PART_BYTES as u64).read_to_end(&mut part).await;
            let uploaded = match read {
                Ok(0) if !parts.is_empty() => break,
                Ok(_) => self.upload_part(&upload, parts.len(), part).await,
                Err(error) => Err(io_error(error)),
            };
            match uploaded {
                Ok(id) => parts.push(id),
                Err(error) => {
                    let _ = self.abort_upload(&upload).await;
                    return Err(error);
                }
            }
        }
        Ok((upload, parts))
    }

    /// Uploads a local file as this object: one request when it fits in a part, else in parts.
    /// It exists only once whole (a failed upload is aborted and leaves nothing visible).
    pub async fn upload_file(&self, file: &Path) -> Result<u64, StorageError> {
        let io_error = |error: io::Error| StorageError::Request {
            url: self.to_string(),
            reason: format!("reading {}: {error}", file.display()),
        };
        let mut reader = tokio::fs::File::open(file).await.map_err(io_error)?;
        let size = reader.metadata().await.map_err(io_error)?.len();
        if size <= UPLOAD_PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            reader.read_to_end(&mut bytes).await.map_err(io_error)?;
            let total = bytes.len() as u64;
            self.put(bytes).await?;
            return Ok(total);
        }
        let upload = self.store.put_multipart(&self.path()).await.map_err(StorageError::request(self))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
        let mut buffer = vec![0u8; 1024 * 1024];
        let mut total = 0u64;
        loop {
            let read = match reader.read(&mut buffer).await {
                Ok(read) => read,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(io_error(error));
                }
            };
            if read == 0 {
                break;
            }
            if let Err(error) = writer.wait_for_capacity(4).await {
                return Err(StorageError::request(self)(error));
            }
            writer.write(&buffer[..read]);
            total += read as u64;
        }
        writer.finish().await.map_err(StorageError::request(self))?;
        Ok(total)
    }

    /// Starts a multipart upload of this object: nothing is visible until it is completed.
    pub async fn start_upload(&self) -> Result<String, StorageError> {
        self.store.create_multipart(&self.path()).await.map_err(StorageError::request(self))
    }

    /// Uploads part `index` (from 0) of an upload; what completing it needs.
    pub async fn upload_part(&self, upload: &str, index: usize, bytes: impl Into<Bytes>) -> Result<String, StorageError> {
        let part = self
            .store
            .put_part(&self.path(), &upload.to_owned(), index, PutPayload::from(bytes.into()))
            .await
            .map_err(StorageError::request(self))?;
        Ok(part.content_id)
    }

    /// Completes an upload: the object appears whole. Idempotent: when the upload is gone but
    /// the object exists, it was completed before (object names are never reused).
    pub async fn complete_upload(&self, upload: &str, parts: &[String]) -> Result<(), StorageError> {
        let parts = parts.iter().map(|id| PartId { content_id: id.clone() }).collect();
        match self.store.complete_multipart(&self.path(), &upload.to_owned(), parts).await {
            Ok(_) => Ok(()),
            Err(error) => match self.size().await {
                Ok(Some(_)) => Ok(()),
                _ => Err(StorageError::request(self)(error)),
            },
        }
    }

    /// Aborts an upload: its parts are deleted (a missing upload is not an error).
    pub async fn abort_upload(&self, upload: &str) -> Result<(), StorageError> {
        match self.store.abort_multipart(&self.path(), &upload.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(StorageError::request(self)(error)),
        }
    }

    /// Copies this object to `to` (same bucket) on the server.
    pub async fn copy_to(&self, to: &ObjectUrl) -> Result<(), StorageError> {
        self.store.copy(&self.path(), &to.path()).await.map_err(StorageError::request(to))
    }

    /// Deletes this object (a missing one is not an error).
    pub async fn delete(&self) -> Result<(), StorageError> {
        match self.store.delete(&self.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(StorageError::request(self)(error)),
        }
    }

    /// Deletes every object below this prefix.
    pub async fn delete_all(&self) -> Result<(), StorageError> {
        for entry in self.list().await? {
            self.at(&entry.key).delete().await?;
        }
        Ok(())
    }
}

/// Reads an object from `offset` on with ranged GETs of `chunk` bytes: `std::io::Read` for the
/// blocking split readers.
pub struct ObjectReader {
    object: ObjectUrl,
    offset: u64,
    size: u64,
    chunk: u64,
    pending: Bytes,
}

impl ObjectReader {
    pub fn new(object: ObjectUrl, offset: u64, size: u64, chunk: usize) -> ObjectReader {
        ObjectReader {
            object,
            offset,
            size,
            chunk: chunk.max(1) as u64,
            pending: Bytes::new(),
        }
    }
}

impl io::Read for ObjectReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            if self.offset >= self.size {
                return Ok(0);
            }
            let end = (self.offset + self.chunk.max(buffer.len() as u64)).min(self.size);
            let object = self.object.clone();
            let range = self.offset..end;
            self.pending = block_on(async move { object.get_range(range).await }).map_err(io::Error::other)?;
            if self.pending.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} ended early", self.object)));
            }
            self.offset += self.pending.len() as u64;
        }
        let n = self.pending.len().min(buffer.len());
        buffer[..n].copy_from_slice(&self.pending[..n]);
        let _ = self.pending.split_to(n);
        Ok(n)
    }
}
