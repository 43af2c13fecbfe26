//! Message objects in an S3-compatible object store (issue 13, scale-out; see
//! `docs/notes-scaleout.md`): the counterpart of the [`super::Maildir`] for several nodes
//! sharing one archive. Built on `object_store` (its `aws` client: reqwest and rustls on
//! aws-lc-rs, the one crypto provider).
//!
//! An object is named after its content: `<prefix>/<first two hex digits>/<SHA-256 hex>`
//! ([`ObjectName`]), so a repeated PUT of the same bytes (a retry, two nodes storing one
//! message) writes the same object and is harmless, and a reader can verify what it got. An
//! object is durable when its PUT (or the multipart upload's completion) returned; what no index
//! record references after a grace period is an orphan (a crash between the PUT and the index
//! commit, or the loser of a cross-node race) for the sweeper, which [`S3Store::list`] and
//! [`S3Store::head`] serve.
//!
//! Behind [`crate::archive::SharedArchive`] on a node of a shared archive.

#![allow(
    dead_code,
    reason = "issue 13: head, delete, get_to serve the sweeper and storage copy, still to come"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock::UnixMs;

/// Files up to this size are sent in one PUT; larger ones as a multipart upload.
pub(crate) const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The part size of a multipart upload (S3's minimum is 5 MiB for every part but the last).
pub(crate) const DEFAULT_PART_SIZE: usize = 8 << 20;
const MIN_PART_SIZE: usize = 5 << 20;

/// Where the objects are and how to reach them.
#[derive(Debug, Clone)]
pub(crate) struct S3Settings {
    /// The endpoint URL (`https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:3900`).
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region (what the endpoint signs for; Garage's default is `garage`).
    pub region: String,
    /// Prepended to every object name (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// Path-style requests (`<endpoint>/<bucket>/<object>`), as most self-hosted stores need;
    /// otherwise virtual-hosted style (`<bucket>.<endpoint host>/<object>`).
    pub path_style: bool,
    /// Trust these CA certificates (PEM) for an `https` endpoint, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Files above this size are uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of each part (at least 5 MiB).
    pub part_size: usize,
}

impl S3Settings {
    /// Settings with the default multipart threshold and part size, path-style, no extra CA.
    pub(crate) fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> S3Settings {
        S3Settings {
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            region: region.to_string(),
            prefix: String::new(),
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            path_style: true,
            ca_file: None,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// A failure of the object store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum S3Error {
    /// The settings are unusable (the message says which).
    #[error("S3 settings: {0}")]
    Settings(String),
    /// The object store answered with an error, or could not be reached.
    #[error("S3: {0}")]
    Store(#[from] object_store::Error),
    /// Reading the local file, or writing what was fetched, failed.
    #[error("S3 transfer (local side): {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not have the SHA-256 their name says (a file that changed while it was
    /// uploaded, or an object damaged in the store).
    #[error("S3 object {name}: content has SHA-256 {found}, its name says {expected}")]
    Digest {
        /// The object.
        name: String,
        /// The SHA-256 in its name.
        expected: String,
        /// The SHA-256 of the bytes.
        found: String,
    },
    /// An object name that is not one of this store's (`<prefix>/<hh>/<sha256>`).
    #[error("not an object name of this store: {0:?}")]
    Name(String),
}

/// The name of a stored object: `<prefix>/<hh>/<sha256 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectName(String);

impl ObjectName {
    /// The name as stored (what an index record keeps).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The SHA-256 (hex) of the object's content.
    pub(crate) fn sha256(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`S3Store::put_file`] and [`S3Store::put_bytes`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Its name.
    pub name: ObjectName,
    /// Its size in bytes.
    pub size: u64,
    /// Whether an object of that name was there already (nothing was sent).
    pub existed: bool,
}

/// An object as listed or looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectInfo {
    /// Its name.
    pub name: ObjectName,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (the store's clock).
    pub modified: UnixMs,
}

/// An existing object older than this is written again by a PUT of the same bytes instead of
/// being reused (`Stored::existed`): its modified time is renewed, so an object an arrival is
/// about to reference (a retry of a message whose first PUT never got its index commit) is
/// always young, and the orphan sweeper, whose grace period is longer, never removes it between
/// that PUT and the commit.
pub(crate) const REFRESH_AFTER: std::time::Duration = std::time::Duration::from_hours(1);

impl ObjectInfo {
    /// Whether it was written less than [`REFRESH_AFTER`] ago (by this machine's clock; a store
    /// clock ahead of it only makes objects look younger).
    fn is_fresh(&self) -> bool {
        let age = UnixMs::now().0.saturating_sub(self.modified.0);
        u128::from(age) < REFRESH_AFTER.as_millis()
    }
}

/// The name of the object [`S3Store::store_now`] writes under the prefix: not a content name,
/// so never listed, swept or copied.
const CLOCK_OBJECT: &str = "gateway-clock";

/// The message objects in one bucket (under one prefix).
#[derive(Debug, Clone)]
pub(crate) struct S3Store {
    store: Arc<AmazonS3>,
    prefix: String,
    multipart_threshold: u64,
    part_size: usize,
}

impl S3Store {
    /// The store described by `settings` (no request is made: the first operation connects).
    pub(crate) fn open(settings: &S3Settings) -> Result<S3Store, S3Error> {
        let prefix = settings.prefix.trim_matches('/').to_string();
        if settings.part_size < MIN_PART_SIZE {
            return Err(S3Error::Settings(format!(
                "part size {} is below S3's minimum of 5 MiB",
                settings.part_size
            )));
        }
        let mut options = ClientOptions::new()
            .with_allow_http(settings.endpoint.starts_with("http://"))
            .with_connect_timeout(std::time::Duration::from_secs(10))
            .with_timeout(std::time::Duration::from_mins(5));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| S3Error::Settings(format!("CA file {}: {e}", ca.display())))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| S3Error::Settings(format!("CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(S3Error::Settings(format!(
                    "CA file {}: no certificate in it",
                    ca.display()
                )));
            }
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let store = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_client_options(options)
            // A store that is down fails the operation within seconds (the SMTP client gets its
            // 451 and retries later) instead of the client's default three minutes.
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: std::time::Duration::from_secs(15),
            })
            .build()
            .map_err(|e| S3Error::Settings(e.to_string()))?;
        Ok(S3Store {
            store: Arc::new(store),
            prefix,
            multipart_threshold: settings.multipart_threshold,
            part_size: settings.part_size,
        })
    }

    /// The name of the object whose content has SHA-256 `sha256` (hex).
    pub(crate) fn name_for(&self, sha256: &str) -> ObjectName {
        let shard = sha256.get(..2).unwrap_or("00");
        if self.prefix.is_empty() {
            ObjectName(format!("{shard}/{sha256}"))
        } else {
            ObjectName(format!("{}/{shard}/{sha256}", self.prefix))
        }
    }

    /// Checks that `name` (as an index record keeps it) is one of this store's object names.
    pub(crate) fn parse_name(&self, name: &str) -> Result<ObjectName, S3Error> {
        let rest = if self.prefix.is_empty() {
            Some(name)
        } else {
            name.strip_prefix(self.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
        };
        let ok = rest
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(shard, hash)| {
                hash.len() == 64
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    && hash.starts_with(shard)
                    && shard.len() == 2
            });
        if ok {
            Ok(ObjectName(name.to_string()))
        } else {
            Err(S3Error::Name(name.to_string()))
        }
    }

    /// Stores `bytes` (one PUT) under their content's name, unless that object exists.
    pub(crate) async fn put_bytes(&self, bytes: Vec<u8>) -> Result<Stored, S3Error> {
        let name = self.name_for(&hex::encode(Sha256::digest(&bytes)));
        let size = bytes.len() as u64;
        if self
            .head(&name)
            .await?
            .is_some_and(|i| i.size == size && i.is_fresh())
        {
            return Ok(Stored {
                name,
                size,
                existed: true,
            });
        }
        self.store
            .put(&path(&name), PutPayload::from(bytes))
            .await?;
        Ok(Stored {
            name,
            size,
            existed: false,
        })
    }

    /// Stores the file at `file` under its content's name, unless that object exists: one PUT
    /// up to the multipart threshold, above it a multipart upload streamed from the file (one
    /// part in memory at a time). The file is read twice (its SHA-256 names the object before
    /// the upload starts); a file whose content changed in between aborts the upload.
    pub(crate) async fn put_file(&self, file: &Path) -> Result<Stored, S3Error> {
        let size = tokio::fs::metadata(file).await?.len();
        if size <= self.multipart_threshold {
            return self.put_bytes(tokio::fs::read(file).await?).await;
        }
        let owned = file.to_path_buf();
        let sha256 = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut hasher = Sha256::new();
            std::io::copy(&mut std::fs::File::open(owned)?, &mut hasher)?;
            Ok(hex::encode(hasher.finalize()))
        })
        .await
        .map_err(std::io::Error::other)??;
        let name = self.name_for(&sha256);
        if self
            .head(&name)
            .await?
            .is_some_and(|i| i.size == size && i.is_fresh())
        {
            return Ok(Stored {
                name,
                size,
                existed: true,
            });
        }
        let mut upload = self.store.put_multipart(&path(&name)).await?;
        match self.upload_parts(file, &mut upload, &name).await {
            Ok(sent) => {
                upload.complete().await?;
                Ok(Stored {
                    name,
                    size: sent,
                    existed: false,
                })
            }
            Err(e) => {
                // Best effort: parts left behind are the store's to expire (lifecycle rule).
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Sends `file` as parts of `upload`, checking its SHA-256 against `name`'s.
    async fn upload_parts(
        &self,
        file: &Path,
        upload: &mut Box<dyn MultipartUpload>,
        name: &ObjectName,
    ) -> Result<u64, S3Error> {
        let mut f = tokio::fs::File::open(file).await?;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        loop {
            let mut part = Vec::with_capacity(self.part_size);
            while part.len() < self.part_size {
                let n = (&mut f)
                    .take((self.part_size - part.len()) as u64)
                    .read_to_end(&mut part)
                    .await?;
                if n == 0 {
                    break;
                }
            }
            if part.is_empty() {
                break;
            }
            hasher.update(&part);
            sent += part.len() as u64;
            let last = part.len() < self.part_size;
            upload.put_part(PutPayload::from(part)).await?;
            if last {
                break;
            }
        }
        check_digest(name, hasher)?;
        Ok(sent)
    }

    /// The object's bytes, checked against its name's SHA-256.
    pub(crate) async fn get(&self, name: &ObjectName) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        self.get_to(name, &mut out).await?;
        Ok(out)
    }

    /// Streams the object into `out` (an export, a forward), checking its SHA-256 at the end:
    /// a damaged object fails with [`S3Error::Digest`] after its bytes were written. Returns
    /// the bytes written.
    pub(crate) async fn get_to<W: AsyncWrite + Unpin>(
        &self,
        name: &ObjectName,
        out: &mut W,
    ) -> Result<u64, S3Error> {
        let mut stream = self.store.get(&path(name)).await?.into_stream();
        let mut hasher = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
            n += chunk.len() as u64;
        }
        out.flush().await?;
        check_digest(name, hasher)?;
        Ok(n)
    }

    /// The object's size and time, or None when there is no such object.
    pub(crate) async fn head(&self, name: &ObjectName) -> Result<Option<ObjectInfo>, S3Error> {
        match self.store.head(&path(name)).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                name: name.clone(),
                size: meta.size,
                modified: modified(&meta),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under the prefix whose name is one of this store's (others are skipped),
    /// as the store lists them (by name, a page at a time).
    pub(crate) fn list(&self) -> BoxStream<'static, Result<ObjectInfo, S3Error>> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let this = self.clone();
        self.store
            .list(prefix.as_ref())
            .filter_map(move |meta| {
                let item = match meta {
                    Ok(meta) => this.parse_name(meta.location.as_ref()).ok().map(|name| {
                        Ok(ObjectInfo {
                            name,
                            size: meta.size,
                            modified: modified(&meta),
                        })
                    }),
                    Err(e) => Some(Err(S3Error::from(e))),
                };
                std::future::ready(item)
            })
            .boxed()
    }

    /// The store's clock now: a small object (`<prefix>/gateway-clock`) written and looked at,
    /// its modified time (whole seconds, rounded down by HTTP's `Last-Modified`). The sweeper
    /// judges the age of objects by it, never by a node's clock.
    pub(crate) async fn store_now(&self) -> Result<UnixMs, S3Error> {
        let probe = if self.prefix.is_empty() {
            ObjectPath::from(CLOCK_OBJECT)
        } else {
            ObjectPath::from(format!("{}/{CLOCK_OBJECT}", self.prefix))
        };
        self.store
            .put(
                &probe,
                PutPayload::from(b"the store's clock, for the sweeper\n".to_vec()),
            )
            .await?;
        Ok(modified(&self.store.head(&probe).await?))
    }

    /// Removes the object (no error when it is not there).
    pub(crate) async fn delete(&self, name: &ObjectName) -> Result<(), S3Error> {
        match self.store.delete(&path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn path(name: &ObjectName) -> ObjectPath {
    ObjectPath::from(name.as_str())
}

fn modified(meta: &object_store::ObjectMeta) -> UnixMs {
    UnixMs(u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or_default())
}

/// Fails with [`S3Error::Digest`] unless the bytes `hasher` saw are the ones `name` names.
fn check_digest(name: &ObjectName, hasher: Sha256) -> Result<(), S3Error> {
    let found = hex::encode(hasher.finalize());
    if found == name.sha256() {
        return Ok(());
    }
    Err(S3Error::Digest {
        name: name.to_string(),
        expected: name.sha256().to_string(),
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal_gateway_testkit::garage::{Garage, REGION};

    fn settings(g: &Garage, prefix: &str) -> S3Settings {
        S3Settings {
            prefix: prefix.to_string(),
            ..S3Settings::new(
                &g.endpoint,
                &g.bucket,
                REGION,
                &g.access_key_id,
                &g.secret_access_key,
            )
        }
    }

    async fn names(store: &S3Store) -> Vec<String> {
        let mut out: Vec<String> = store
            .list()
            .map(|i| i.expect("listing").name.to_string())
            .collect()
            .await;
        out.sort();
        out
    }

    #[test]
    fn names_are_content_derived_and_checked() {
        let open = |prefix: &str| {
            let mut s = S3Settings::new("http://127.0.0.1:9", "b", "r", "k", "s");
            s.prefix = prefix.to_string();
            S3Store::open(&s).unwrap()
        };
        let sha = hex::encode(Sha256::digest(b"x"));
        let plain = open("");
        let prefixed = open("/journal/archive/");
        assert_eq!(
            plain.name_for(&sha).as_str(),
            format!("{}/{sha}", &sha[..2])
        );
        let name = prefixed.name_for(&sha);
        assert_eq!(
            name.as_str(),
            format!("journal/archive/{}/{sha}", &sha[..2])
        );
        assert_eq!(name.sha256(), sha);
        assert_eq!(prefixed.parse_name(name.as_str()).unwrap(), name);
        assert!(plain.parse_name(name.as_str()).is_err());
        let upper = format!("journal/archive/{}/{}", &sha[..2], sha.to_uppercase());
        let wrong_shard = format!("journal/archive/zz/{sha}");
        let short = format!("journal/archive/{}/{}", &sha[..2], &sha[..63]);
        for bad in [upper.as_str(), &wrong_shard, &short, "journal/archive", ""] {
            assert!(prefixed.parse_name(bad).is_err(), "{bad:?}");
        }
        // S3's minimum part size is enforced when opening.
        let mut s = S3Settings::new("http://127.0.0.1:9", "b", "r", "k", "s");
        s.part_size = MIN_PART_SIZE - 1;
        assert!(matches!(S3Store::open(&s), Err(S3Error::Settings(_))));
    }

    #[test]
    fn only_a_recent_object_is_reused_by_a_put_of_the_same_bytes() {
        let info = |age: std::time::Duration| ObjectInfo {
            name: ObjectName("00/x".into()),
            size: 1,
            modified: UnixMs(
                UnixMs::now()
                    .0
                    .saturating_sub(u64::try_from(age.as_millis()).unwrap()),
            ),
        };
        assert!(info(std::time::Duration::ZERO).is_fresh());
        assert!(info(REFRESH_AFTER / 2).is_fresh());
        // Old enough for a sweeper to be near: written again, its modified time renewed.
        assert!(!info(REFRESH_AFTER + std::time::Duration::from_mins(1)).is_fresh());
    }

    #[tokio::test]
    async fn objects_are_put_under_their_content_hash_read_back_listed_and_deleted() {
        let g = Garage::start("messages");
        let store = S3Store::open(&settings(&g, "/archive/")).unwrap();
        let body = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n".to_vec();
        let sha = hex::encode(Sha256::digest(&body));

        let stored = store.put_bytes(body.clone()).await.unwrap();
        assert_eq!(stored.name.as_str(), format!("archive/{}/{sha}", &sha[..2]));
        assert_eq!(stored.name.sha256(), sha);
        assert_eq!((stored.size, stored.existed), (body.len() as u64, false));
        // The same bytes again (a retry, another node): the same object, nothing sent.
        let again = store.put_bytes(body.clone()).await.unwrap();
        assert_eq!(
            (again.name.clone(), again.existed),
            (stored.name.clone(), true)
        );

        assert_eq!(store.get(&stored.name).await.unwrap(), body);
        let info = store.head(&stored.name).await.unwrap().expect("head");
        assert_eq!(info.size, body.len() as u64);
        let now = UnixMs::now();
        assert!(
            info.modified.0 > now.0 - 600_000 && info.modified.0 < now.0 + 600_000,
            "{info:?}"
        );

        let other = store.put_bytes(b"another message".to_vec()).await.unwrap();
        // Something else in the bucket, under the prefix and outside it: not listed.
        let raw = object_store::path::Path::from("archive/notes.txt");
        store
            .store
            .put(&raw, PutPayload::from(b"x".to_vec()))
            .await
            .unwrap();
        let outside = object_store::path::Path::from("elsewhere/00/x");
        store
            .store
            .put(&outside, PutPayload::from(b"x".to_vec()))
            .await
            .unwrap();
        let mut want = vec![stored.name.to_string(), other.name.to_string()];
        want.sort();
        assert_eq!(names(&store).await, want);

        store.delete(&stored.name).await.unwrap();
        assert_eq!(store.head(&stored.name).await.unwrap(), None);
        // Deleting what is gone is not an error (a sweeper racing another).
        store.delete(&stored.name).await.unwrap();
        assert_eq!(names(&store).await, vec![other.name.to_string()]);
        let err = store.get(&stored.name).await.unwrap_err();
        assert!(
            matches!(err, S3Error::Store(object_store::Error::NotFound { .. })),
            "{err}"
        );

        // Names as an index keeps them are checked before use.
        assert_eq!(store.parse_name(other.name.as_str()).unwrap(), other.name);
        for bad in [
            "archive/notes.txt",
            "elsewhere/00/x",
            &format!("{}/{sha}", &sha[..2]),
        ] {
            assert!(store.parse_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_large_file_is_streamed_as_a_multipart_upload() {
        let g = Garage::start("large");
        let mut s = settings(&g, "");
        s.part_size = MIN_PART_SIZE;
        s.multipart_threshold = 6 << 20;
        let store = S3Store::open(&s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.eml");
        // 12 MiB and a bit: two full parts and a short last one.
        let body: Vec<u8> = (0..(12u32 << 20) + 12_345)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        std::fs::write(&file, &body).unwrap();
        let stored = store.put_file(&file).await.unwrap();
        assert_eq!(stored.name.sha256(), hex::encode(Sha256::digest(&body)));
        assert_eq!((stored.size, stored.existed), (body.len() as u64, false));
        assert_eq!(
            store.head(&stored.name).await.unwrap().unwrap().size,
            body.len() as u64
        );
        let mut fetched = Vec::new();
        let n = store.get_to(&stored.name, &mut fetched).await.unwrap();
        assert_eq!(n, body.len() as u64);
        assert!(fetched == body, "the fetched bytes differ");
        assert!(store.put_file(&file).await.unwrap().existed);

        // A small file takes one PUT.
        let small = dir.path().join("small.eml");
        std::fs::write(&small, b"small").unwrap();
        let stored = store.put_file(&small).await.unwrap();
        assert_eq!(store.get(&stored.name).await.unwrap(), b"small");
    }

    #[tokio::test]
    async fn damaged_objects_and_wrong_credentials_are_errors() {
        let g = Garage::start("damaged");
        let store = S3Store::open(&settings(&g, "p")).unwrap();
        // An object whose bytes are not what its name says.
        let name = store.name_for(&hex::encode(Sha256::digest(b"the original")));
        store
            .store
            .put(&path(&name), PutPayload::from(b"tampered".to_vec()))
            .await
            .unwrap();
        let err = store.get(&name).await.unwrap_err();
        assert!(matches!(err, S3Error::Digest { .. }), "{err}");

        let mut wrong = settings(&g, "p");
        wrong.secret_access_key = "0".repeat(64);
        let bad = S3Store::open(&wrong).unwrap();
        let err = bad.put_bytes(b"x".to_vec()).await.unwrap_err();
        assert!(matches!(err, S3Error::Store(_)), "{err}");

        let mut tiny = settings(&g, "p");
        tiny.part_size = 1 << 20;
        assert!(matches!(S3Store::open(&tiny), Err(S3Error::Settings(_))));
        let mut no_ca = settings(&g, "p");
        no_ca.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(S3Store::open(&no_ca), Err(S3Error::Settings(_))));
    }
}
