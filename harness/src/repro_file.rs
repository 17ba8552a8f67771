//! Reproducer files on disk, one layer for both kinds: TCP ([`crate::campaign::repro`])
//! and UDP ([`crate::udp::repro`]).
//!
//! A reproducer is pretty JSON with a top-level format `version`, whatever its kind.
//! [`write_to`] records the `chopstick replay FILE` command in it and writes it
//! atomically; [`read`] parses it back and refuses a version this build does not read.
//! What differs between the kinds (fields, file name, version number) stays in their
//! modules; [`ReproFile`] is what this layer needs from them.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A kind of reproducer file: what [`read`] and [`write_to`] need to know about it.
pub trait ReproFile: Serialize + DeserializeOwned {
    /// What the file should be, as errors say it: "… is not a chopstick {KIND}".
    const KIND: &'static str;
    /// The format version this build writes and reads (the file's `version` field).
    const VERSION: u32;
    /// Records the command that replays the file; set just before writing, since it
    /// names the file's own path.
    fn set_replay(&mut self, command: String);
}

/// Why a reproducer file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReproFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not JSON, or not the fields of the expected kind ([`ReproFile::KIND`]).
    #[error("{path} is not a chopstick {kind}: {source}")]
    Parse {
        path: PathBuf,
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this chopstick reads version {expected}")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `r` into `dir` (created if missing) as `name`, with its replay command set to
/// run that file again; returns the file's path.
///
/// The JSON goes to a hidden temp file in the same directory first and is renamed into
/// place, so a reader (or a crash) never sees a half-written reproducer; on failure the
/// temp file is removed too.
pub fn write_to<R: ReproFile>(
    r: &mut R,
    dir: &Path,
    name: &str,
) -> Result<PathBuf, ReproFileError> {
    let path = dir.join(name);
    r.set_replay(format!("chopstick replay {}", path.display()));
    let wrap = |source| ReproFileError::Write {
        path: path.clone(),
        source,
    };
    let json = serde_json::to_vec_pretty(r).map_err(|e| wrap(std::io::Error::other(e)))?;
    write_atomic(&path, &json).map_err(wrap)?;
    Ok(path)
}

/// Mode of the files [`write_atomic`] creates, before the umask.
const FILE_MODE: u32 = 0o644;

/// Writes `data` to `path` (its directory created if missing) through a hidden temp file
/// in the same directory and a rename, so a reader (or a crash) sees the old file or the
/// new one, never half of one. The temp file is removed on failure. Every file
/// chopstick writes (reproducers, `--json`, `--junit`) goes through here.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // Same directory as the target, so the rename stays on one file system and is atomic.
    // Readable like any file the user writes (tempfile's default is owner-only 0600);
    // the umask still applies.
    let mut tmp = tempfile::Builder::new()
        .prefix(".chopstick-")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    // A failed persist hands the temp file back; dropping it removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The field every kind of reproducer has, whatever else it holds.
#[derive(Deserialize)]
struct Header {
    version: u32,
}

/// Reads a reproducer of kind `R` from `path`, refusing other format versions.
pub fn read<R: ReproFile>(path: &Path) -> Result<R, ReproFileError> {
    let text = std::fs::read(path).map_err(|source| ReproFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |source| ReproFileError::Parse {
        path: path.to_path_buf(),
        kind: R::KIND,
        source,
    };
    // The whole file first, so that a file of another kind says so rather than
    // complaining about its version.
    let r: R = serde_json::from_slice(&text).map_err(parse)?;
    let found = serde_json::from_slice::<Header>(&text)
        .map_err(parse)?
        .version;
    if found != R::VERSION {
        return Err(ReproFileError::Version {
            path: path.to_path_buf(),
            found,
            expected: R::VERSION,
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Toy {
        version: u32,
        seed: u64,
        replay: String,
    }

    impl ReproFile for Toy {
        const KIND: &'static str = "toy reproducer";
        const VERSION: u32 = 3;
        fn set_replay(&mut self, command: String) {
            self.replay = command;
        }
    }

    fn toy(version: u32) -> Toy {
        Toy {
            version,
            seed: 7,
            replay: String::new(),
        }
    }

    #[test]
    fn round_trip_records_the_replay_command() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("artifacts");
        let mut t = toy(3);
        let path = write_to(&mut t, &sub, "toy-s7.json").unwrap();
        assert_eq!(path, sub.join("toy-s7.json"));
        assert_eq!(t.replay, format!("chopstick replay {}", path.display()));
        assert_eq!(read::<Toy>(&path).unwrap(), t);
        // Only the reproducer is left: the temp file was renamed away.
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn other_version_and_other_kind_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_to(&mut toy(4), dir.path(), "toy.json").unwrap();
        let e = read::<Toy>(&path).unwrap_err();
        assert!(
            matches!(
                e,
                ReproFileError::Version {
                    found: 4,
                    expected: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e
            .to_string()
            .ends_with("has format version 4; this chopstick reads version 3"));
        std::fs::write(&path, br#"{"datagrams": []}"#).unwrap();
        let e = read::<Toy>(&path).unwrap_err();
        assert!(
            e.to_string().contains("is not a chopstick toy reproducer"),
            "{e}"
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_old_file_whole_with_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports/r.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // As `File::create` would make it: FILE_MODE under this process's umask.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map_or(0o022, |v| u32::from_str_radix(v.trim(), 8).unwrap());
        assert_eq!(mode, FILE_MODE & !umask, "{mode:o}");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn failed_write_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should go makes the rename fail after the write.
        std::fs::create_dir(dir.path().join("toy-s7.json")).unwrap();
        let e = write_to(&mut toy(3), dir.path(), "toy-s7.json").unwrap_err();
        assert!(matches!(e, ReproFileError::Write { .. }), "{e}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names, ["toy-s7.json"]);
    }
}
