//! The blocking filesystem side of the file server: resolve a validated name under the
//! root without following symlinks, and put/get/list/delete atomically.
//!
//! Every function here blocks; the server calls them through `spawn_blocking`, so a
//! cancelled connection cannot stop one halfway (a blocking task runs to its end).
//!
//! Atomic put: the body goes to a fresh temporary file (`.chopstick-put-*.tmp`, opened
//! with `O_EXCL`) in the target's directory, is fsynced, renamed over the target, and
//! the directory is fsynced. A guard deletes the temporary file on every failure path,
//! and [`sweep_temp_files`] removes any left by a crash. Readers therefore see the old
//! file or the new one, never a mix.
//!
//! Symlinks: every existing component is checked with `symlink_metadata` and a symlink
//! anywhere is refused; the resolved directory is also canonicalised and must stay
//! under the canonical root. The server itself never creates symlinks, so only the
//! operator (or another local process) can plant one; a local process racing the
//! checks (swapping a directory for a symlink between check and use) is outside this
//! server's threat model, which is remote clients.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::names::{self, NameError, ValidName};

/// Temporary files of puts in progress start with this (hidden from clients).
pub const TEMP_PREFIX: &str = ".chopstick-put-";
const TEMP_SUFFIX: &str = ".tmp";

/// Most directory entries a listing walks before giving up (bounds the work of one list).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Why a request was refused. The `Display` text is the reply's `error`; it names the
/// client's own name but never the server's paths.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    #[error("bad name: {0}")]
    Name(#[from] NameError),
    #[error("refused: '{0}' is a symlink; names may not pass through symlinks")]
    Symlink(String),
    #[error("refused: '{0}' resolves outside the root")]
    Escapes(String),
    #[error("no such file: '{0}'")]
    NotFound(String),
    #[error("'{0}' is a directory, not a file")]
    IsDirectory(String),
    #[error("'{0}' is not a directory")]
    NotADirectory(String),
    #[error("'{0}' is not a regular file")]
    NotAFile(String),
    #[error("sha256 mismatch: header says {expected}, body hashes to {actual}; nothing stored")]
    HashMismatch { expected: String, actual: String },
    #[error("'{name}' is {len} bytes, more than the largest frame of {max}")]
    TooLarge { name: String, len: u64, max: usize },
    #[error("listing too large: {0}")]
    ListTooLarge(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The root, canonicalised once per operation so a renamed root is noticed.
fn canonical_root(root: &Path) -> Result<PathBuf, FileError> {
    Ok(root.canonicalize()?)
}

/// Walks the directory components of `name` under `root`, refusing symlinks and
/// non-directories. With `create`, missing directories are made (and recorded in
/// `created`, outermost first, so a failed put can remove them again).
fn resolve_dir(
    root: &Path,
    name: &ValidName,
    create: bool,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, FileError> {
    let mut dir = root.to_path_buf();
    let mut shown = String::new();
    for component in name.parents() {
        if !shown.is_empty() {
            shown.push('/');
        }
        shown.push_str(component);
        dir.push(component);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(FileError::Symlink(shown)),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(FileError::NotADirectory(shown)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match fs::create_dir(&dir) {
                    Ok(()) => {
                        created.push(dir.clone());
                        // The new entry lives in the parent; make it durable too.
                        sync_dir(dir.parent().unwrap_or(root))?;
                    }
                    // Another put made it meanwhile: check it again like any existing one.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let meta = fs::symlink_metadata(&dir)?;
                        if meta.file_type().is_symlink() {
                            return Err(FileError::Symlink(shown));
                        }
                        if !meta.is_dir() {
                            return Err(FileError::NotADirectory(shown));
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FileError::NotFound(name.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Belt and braces: whatever the walk missed, the directory must lie under the root.
    if !dir.canonicalize()?.starts_with(root) {
        return Err(FileError::Escapes(name.to_string()));
    }
    Ok(dir)
}

/// What the final component currently is.
enum Target {
    Missing,
    File(fs::Metadata),
}

fn inspect_target(path: &Path, name: &ValidName) -> Result<Target, FileError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(FileError::Symlink(name.to_string())),
        Ok(meta) if meta.is_dir() => Err(FileError::IsDirectory(name.to_string())),
        Ok(meta) if meta.is_file() => Ok(Target::File(meta)),
        Ok(_) => Err(FileError::NotAFile(name.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Target::Missing),
        Err(e) => Err(e.into()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the temporary file unless the put committed (renamed it into place).
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), "could not remove temporary file: {e}");
            }
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores `body` as `name`, atomically, if it hashes to `expected`; returns the hash.
pub fn put(
    root: &Path,
    name: &ValidName,
    expected: &[u8; 32],
    body: &[u8],
) -> Result<String, FileError> {
    // Checked before touching the filesystem, so a bad hash changes nothing at all.
    let actual: [u8; 32] = Sha256::digest(body).into();
    if &actual != expected {
        return Err(FileError::HashMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    let root = canonical_root(root)?;
    let mut created = Vec::new();
    let result = put_resolved(&root, name, body, &mut created);
    if result.is_err() {
        // Leave the tree as it was: drop the directories this put made (if still empty).
        for dir in created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result.map(|()| hex::encode(actual))
}

fn put_resolved(
    root: &Path,
    name: &ValidName,
    body: &[u8],
    created: &mut Vec<PathBuf>,
) -> Result<(), FileError> {
    let dir = resolve_dir(root, name, true, created)?;
    let target = dir.join(name.file_name());
    inspect_target(&target, name)?;

    let (mut file, temp) = create_temp(&dir)?;
    let mut guard = TempGuard {
        path: Some(temp.clone()),
    };
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    // rename() replaces a symlink itself rather than writing through it, but recheck
    // so a symlink planted meanwhile is refused, as promised, rather than replaced.
    inspect_target(&target, name)?;
    fs::rename(&temp, &target)?;
    guard.path = None;
    sync_dir(&dir)?;
    Ok(())
}

/// A new, exclusively created temporary file in `dir` (`O_EXCL`: never an existing
/// file or symlink).
fn create_temp(dir: &Path) -> io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(format!(
            "{TEMP_PREFIX}{:016x}{TEMP_SUFFIX}",
            rand::random::<u64>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// Reads `name` (at most `max` bytes); returns its hash and contents.
pub fn get(root: &Path, name: &ValidName, max: usize) -> Result<(String, Vec<u8>), FileError> {
    let root = canonical_root(root)?;
    let dir = resolve_dir(&root, name, false, &mut Vec::new())?;
    let path = dir.join(name.file_name());
    let Target::File(meta) = inspect_target(&path, name)? else {
        return Err(FileError::NotFound(name.to_string()));
    };
    let too_large = |len: u64| FileError::TooLarge {
        name: name.to_string(),
        len,
        max,
    };
    if meta.len() > max as u64 {
        return Err(too_large(meta.len()));
    }
    // O_NOFOLLOW: a symlink swapped in since the check fails to open instead of being read.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FileError::NotFound(name.to_string()),
            _ => e.into(),
        })?;
    let mut body = Vec::with_capacity(meta.len() as usize);
    // The file may grow meanwhile; never read more than one byte past the limit.
    file.take(max as u64 + 1).read_to_end(&mut body)?;
    if body.len() > max {
        return Err(too_large(body.len() as u64));
    }
    Ok((hex_sha256(&body), body))
}

/// Removes `name`.
pub fn delete(root: &Path, name: &ValidName) -> Result<(), FileError> {
    let root = canonical_root(root)?;
    let dir = resolve_dir(&root, name, false, &mut Vec::new())?;
    let path = dir.join(name.file_name());
    match inspect_target(&path, name)? {
        Target::Missing => Err(FileError::NotFound(name.to_string())),
        Target::File(_) => {
            fs::remove_file(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => FileError::NotFound(name.to_string()),
                _ => e.into(),
            })?;
            sync_dir(&dir)?;
            Ok(())
        }
    }
}

/// Every regular file a client could name, sorted by name, with its size and hash.
/// Symlinks, hidden entries (temp files included) and invalid names are skipped.
/// `budget` bounds the reply: a listing whose names alone exceed it is refused before
/// any file is hashed.
pub fn list(root: &Path, budget: usize) -> Result<Vec<Entry>, FileError> {
    let root = canonical_root(root)?;
    let mut found = Vec::new();
    let mut visited = 0usize;
    walk(&root, "", &mut visited, &mut |name, path| {
        found.push((name, path))
    })?;
    // An entry costs its name, a 64-digit hash and some JSON punctuation.
    let estimate: usize = found.iter().map(|(n, _)| n.len() + 100).sum();
    if estimate > budget {
        return Err(FileError::ListTooLarge(format!(
            "{} files would not fit in one {budget}-byte reply header",
            found.len()
        )));
    }
    found.sort();
    let mut entries = Vec::with_capacity(found.len());
    for (name, path) in found {
        let Some((bytes, sha256)) = hash_file(&path)? else {
            continue; // deleted meanwhile
        };
        entries.push(Entry {
            name,
            bytes,
            sha256,
        });
    }
    Ok(entries)
}

fn hash_file(path: &Path) -> Result<Option<(u64, String)>, FileError> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher)?;
    Ok(Some((bytes, hex::encode(hasher.finalize()))))
}

/// Walks real directories under `dir` (never through symlinks), calling `each` with
/// (relative name, path) for every regular file a client could name.
fn walk(
    dir: &Path,
    prefix: &str,
    visited: &mut usize,
    each: &mut dyn FnMut(String, PathBuf),
) -> Result<(), FileError> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        *visited += 1;
        if *visited > MAX_LIST_ENTRIES {
            return Err(FileError::ListTooLarge(format!(
                "more than {MAX_LIST_ENTRIES} entries under the root"
            )));
        }
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // not UTF-8: no client could have named it
        };
        if !names::is_valid_component(&file_name) {
            continue;
        }
        let name = if prefix.is_empty() {
            file_name
        } else {
            format!("{prefix}/{file_name}")
        };
        // DirEntry::file_type does not follow symlinks.
        let kind = entry.file_type()?;
        // Past MAX_NAME nothing is nameable, so deeper directories are not descended.
        if kind.is_dir() && name.len() < names::MAX_NAME {
            walk(&entry.path(), &name, visited, each)?;
        } else if kind.is_file() && names::validate(&name).is_ok() {
            each(name, entry.path());
        }
    }
    Ok(())
}

/// Removes temporary files left behind by a crash (any file named like ours), without
/// following symlinks. Returns how many were removed; failures are logged, not fatal.
pub fn sweep_temp_files(root: &Path) -> usize {
    fn sweep(dir: &Path, removed: &mut usize, depth: usize) {
        // Names are at most MAX_NAME bytes, so deeper trees are not ours to clean.
        if depth > names::MAX_NAME / 2 {
            return;
        }
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "temp sweep cannot read directory: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if kind.is_dir() {
                sweep(&entry.path(), removed, depth + 1);
            } else if kind.is_file()
                && file_name.starts_with(TEMP_PREFIX)
                && file_name.ends_with(TEMP_SUFFIX)
            {
                match fs::remove_file(entry.path()) {
                    Ok(()) => *removed += 1,
                    Err(e) => tracing::warn!(
                        path = %entry.path().display(),
                        "cannot remove stale temporary file: {e}"
                    ),
                }
            }
        }
    }
    let mut removed = 0;
    sweep(root, &mut removed, 0);
    removed
}
