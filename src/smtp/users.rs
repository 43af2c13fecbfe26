//! The SMTP AUTH users file (`smtp.users_file`, default `<data_dir>/smtp-users`): one user a
//! line, `name:<argon2id PHC string>`, `#` comments. `journal-gateway smtp-user add|remove|list`
//! edits it ([`add`], [`remove`], [`list`]); a running gateway reads it again whenever its
//! modification time or size changes ([`Users`]), so no restart is needed.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes) and a
//! random salt; the file never holds a password. It is written whole (a temporary file, fsync,
//! rename) with mode 0600.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// Longest user name accepted.
const MAX_NAME: usize = 64;

/// What can go wrong with the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The users file (or its temporary copy).
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not `name:<argon2 hash>`.
    #[error("{path} line {line}: not `name:<argon2 hash>`")]
    Syntax {
        /// The users file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
    },
    /// A user name with characters other than letters, digits and `.-_@+`, or too long.
    #[error("invalid user name {0:?}: use 1 to 64 letters, digits or . - _ @ +")]
    Name(String),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// Hashing failed (no randomness for the salt).
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// Whether `name` is an acceptable user name.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@+".contains(c))
}

/// Hashes `password` into an Argon2id PHC string with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Adds `name` with `password` to the users file at `path` (created if missing), or changes
/// the password of an existing user. Returns true when the user existed.
pub fn add(path: &Path, name: &str, password: &str) -> Result<bool, UsersError> {
    if !valid_name(name) {
        return Err(UsersError::Name(name.to_string()));
    }
    let hash = hash_password(password)?;
    let mut entries = read(path)?;
    let existed = if let Some(e) = entries.iter_mut().find(|(n, _)| n == name) {
        e.1 = hash;
        true
    } else {
        entries.push((name.to_string(), hash));
        false
    };
    write(path, &entries)?;
    Ok(existed)
}

/// Removes `name` from the users file. Returns false when there was no such user.
pub fn remove(path: &Path, name: &str) -> Result<bool, UsersError> {
    let mut entries = read(path)?;
    let before = entries.len();
    entries.retain(|(n, _)| n != name);
    if entries.len() == before {
        return Ok(false);
    }
    write(path, &entries)?;
    Ok(true)
}

/// The user names in the file, in file order (none when the file does not exist).
pub fn list(path: &Path) -> Result<Vec<String>, UsersError> {
    Ok(read(path)?.into_iter().map(|(n, _)| n).collect())
}

/// Reads `(name, hash)` pairs; a missing file has none.
fn read(path: &Path) -> Result<Vec<(String, String)>, UsersError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(UsersError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, UsersError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = || UsersError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let (name, hash) = line.split_once(':').ok_or_else(syntax)?;
        if !valid_name(name) || PasswordHash::new(hash).is_err() {
            return Err(syntax());
        }
        entries.push((name.to_string(), hash.to_string()));
    }
    Ok(entries)
}

/// Writes the whole file: a temporary file beside it (mode 0600), fsync, rename.
fn write(path: &Path, entries: &[(String, String)]) -> Result<(), UsersError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| UsersError::Io { path: p, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut text = String::from("# journal-gateway SMTP AUTH users: name:<argon2id hash>\n");
    for (name, hash) in entries {
        text.push_str(name);
        text.push(':');
        text.push_str(hash);
        text.push('\n');
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The users file as a running gateway sees it: read again when it changes.
pub(crate) struct Users {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

/// The file as last read, with what identified that version of it.
#[derive(Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64, u64)>,
    hashes: HashMap<String, String>,
}

impl Users {
    /// The users of the file at `path` (read at the first check).
    pub(crate) fn new(path: PathBuf) -> Users {
        Users {
            path,
            loaded: Mutex::new(Loaded::default()),
        }
    }

    /// Whether `name` has `password`. Blocking (Argon2 takes tens of milliseconds): call it
    /// off the async workers. An unknown user costs the same as a wrong password.
    pub(crate) fn verify(&self, name: &str, password: &[u8]) -> bool {
        let hash = self.hash_of(name);
        let argon = Argon2::default();
        if let Some(Ok(h)) = hash.as_deref().map(PasswordHash::new) {
            return argon.verify_password(password, &h).is_ok();
        }
        // Spend the same work on a hash that cannot match.
        if let Ok(h) = PasswordHash::new(dummy_hash()) {
            let _ = argon.verify_password(password, &h);
        }
        false
    }

    /// The stored hash of `name`, after reading the file again if it changed.
    fn hash_of(&self, name: &str) -> Option<String> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            (
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
                inode,
            )
        });
        if stamp != loaded.stamp {
            match read(&self.path) {
                Ok(entries) => {
                    tracing::info!(file = %self.path.display(), users = entries.len(), "SMTP users file read");
                    loaded.hashes = entries.into_iter().collect();
                    loaded.stamp = stamp;
                }
                Err(e) => {
                    // Keep the users read before; try again at the next AUTH.
                    tracing::warn!("SMTP users file not read, keeping the previous users: {e}");
                }
            }
        }
        loaded.hashes.get(name).cloned()
    }
}

/// A hash of a random password, verified against for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 16];
        let _ = getrandom::fill(&mut secret);
        hash_password(&hex::encode(secret)).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_verify_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/smtp-users");
        assert_eq!(list(&path).unwrap(), Vec::<String>::new());
        assert!(!add(&path, "exchange", "s3cret pass").unwrap());
        assert!(!add(&path, "cloud", "other").unwrap());
        assert_eq!(list(&path).unwrap(), vec!["exchange", "cloud"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("exchange:$argon2id$"), "{text}");
        let users = Users::new(path.clone());
        assert!(users.verify("exchange", b"s3cret pass"));
        assert!(!users.verify("exchange", b"s3cret"));
        assert!(!users.verify("nobody", b"s3cret pass"));
        // A changed password is picked up without a new `Users`.
        assert!(add(&path, "exchange", "new one").unwrap());
        assert!(users.verify("exchange", b"new one"));
        assert!(remove(&path, "exchange").unwrap());
        assert!(!remove(&path, "exchange").unwrap());
        assert!(!users.verify("exchange", b"new one"));
        assert_eq!(list(&path).unwrap(), vec!["cloud"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }

    #[test]
    fn bad_names_lines_and_passwords_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        for bad in ["", "a:b", "with space", &"x".repeat(65)] {
            assert!(
                matches!(add(&path, bad, "p"), Err(UsersError::Name(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            add(&path, "ok", ""),
            Err(UsersError::EmptyPassword)
        ));
        std::fs::write(&path, "# c\n\nok:not-a-hash\n").unwrap();
        let err = list(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        // A broken file keeps the users read before.
        add(&dir.path().join("good"), "u", "pw").unwrap();
        let users = Users::new(dir.path().join("good"));
        assert!(users.verify("u", b"pw"));
        std::fs::write(dir.path().join("good"), "garbage line\n").unwrap();
        assert!(users.verify("u", b"pw"));
    }
}
