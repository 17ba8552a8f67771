//! The file server (hjson both ways): put/get/list/delete of files under a root
//! directory, hardened against path escapes, symlinks and interrupted uploads.
//!
//! Every request and reply is one hjson frame (`u32be` header length, JSON header with
//! `size`, then `size` body bytes):
//!
//! | request header (+ body) | reply header (+ body) |
//! |---|---|
//! | `{"op":"put","name":N,"size":S,"sha256":HEX}` + S bytes | `{"ok":true,"sha256":HEX,"size":0}` |
//! | `{"op":"get","name":N,"size":0}` | `{"ok":true,"sha256":HEX,"size":LEN}` + LEN bytes |
//! | `{"op":"list","size":0}` | `{"ok":true,"files":[{"name","bytes","sha256"},...],"size":0}` |
//! | `{"op":"delete","name":N,"size":0}` | `{"ok":true,"size":0}` |
//! | anything refused | `{"ok":false,"error":"<reason>","size":0}` |
//!
//! A refused request (bad name, missing file, wrong hash, unknown op, ...) gets an error
//! reply and the connection stays open. A corrupt stream (bad hjson header, a length
//! over the limit, EOF inside a frame) ends the connection with a [`ConnError`], which
//! the shared accept loop counts.
//!
//! Names are checked by [`names::validate`] (relative, `[A-Za-z0-9._-]` components, no
//! `.`/`..`, no hidden components) and resolved without passing through any symlink;
//! see [`store`]. A put is hash-checked, written to a hidden temporary file, fsynced and
//! renamed into place inside a blocking task: it is whole or absent, whatever happens
//! to the connection. `list` is sorted by name and recursive, with `/`-separated names.
//! Its file list travels in the reply header, so it is bounded by
//! [`crate::wire::MAX_HEADER`]; a larger listing is refused with an error reply. That
//! is about 650 files with short names; [`store::MAX_LIST_ENTRIES`] (100 000) bounds
//! the directory walk, not the reply.
//!
//! There is no disk quota: each put is at most the frame max (8 MiB by default), and
//! the number of files is not limited. Give the root its own filesystem or a quota
//! when clients are not trusted. Duplicate keys in a request header are not refused:
//! the last one wins (serde_json's map).

pub mod names;
pub mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::memory::Budgeted;
use crate::server::{self, Common, ConnError, ServerError, Tracked};
use crate::wire::{Framing, HjsonCodec, HjsonFrame, DEFAULT_MAX, MAX_HEADER};

pub use names::{validate, NameError, ValidName};
pub use store::{Entry, FileError, TEMP_PREFIX};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Every name is resolved inside this directory.
    pub root: PathBuf,
}

impl Config {
    /// Serves `root` with the default [`Common`] options.
    pub fn new(root: impl Into<PathBuf>) -> Config {
        Config {
            common: Common::default(),
            root: root.into(),
        }
    }

    /// Largest body accepted in a request or sent in a reply.
    pub fn max_body(&self) -> usize {
        let framing = Framing::Hjson { max: DEFAULT_MAX };
        match self.common.max_frame {
            Some(max) => framing.with_max(max).max(),
            None => framing.max(),
        }
    }
}

/// Serves files under `config.root` on `listener` until `shutdown` resolves.
///
/// Refuses a non-loopback listener (the file server has no authentication of its own;
/// put it behind auth to expose it) and a root that is not an existing directory.
/// Temporary files left by an earlier crash are removed before serving.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    server::require_loopback(&listener, "file")?;
    prepare_root(&config.root).await?;
    let config = Arc::new(config);
    server::serve(
        listener,
        &config.common.clone(),
        shutdown,
        move |stream, _peer| {
            let config = config.clone();
            async move { serve_conn(stream, &config).await }
        },
    )
    .await
}

/// Checks that `root` is an existing directory and removes temporary files left by an
/// earlier crash. [`run`] calls it, and so does auth for `--inner file`.
pub async fn prepare_root(root: &std::path::Path) -> Result<(), ServerError> {
    let meta = tokio::fs::metadata(root)
        .await
        .map_err(|e| ServerError::Config(format!("file root {}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(ServerError::Config(format!(
            "file root {} is not a directory",
            root.display()
        )));
    }
    let root = root.to_path_buf();
    let swept = tokio::task::spawn_blocking(move || store::sweep_temp_files(&root))
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
    if swept > 0 {
        tracing::info!(swept, "removed stale temporary files from an earlier run");
    }
    Ok(())
}

/// Speaks the file protocol on one connection (a socket, or auth's inner stream).
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: &Config,
) -> Result<(), ConnError> {
    let max = config.max_body();
    let counters = &config.common.counters;
    let common = &config.common;
    let (stream, activity) = Tracked::new(stream);
    let mut frames = Framed::new(stream, Budgeted::new(HjsonCodec::new(max), &common.memory));
    server::until_idle(&activity, common.idle_timeout, async {
        while let Some(frame) = server::next_frame(&mut frames, &activity, common).await? {
            counters.frame_in();
            // A put's fsync may take a while on a busy disk: that is not the peer idling.
            let busy = activity.busy();
            let reply = match handle(frame, config.root.clone(), max).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!("file request refused: {e}");
                    error_reply(&e.to_string())
                }
            };
            drop(busy);
            // A body and its encoded copy, until written.
            let (reply, _held) = match common.memory.try_reserve(2 * reply.body.len()) {
                Some(held) => (reply, Some(held)),
                None => (
                    error_reply("server memory budget exhausted; try again later"),
                    None,
                ),
            };
            server::send_frame(&mut frames, reply, counters).await?;
        }
        Ok(())
    })
    .await
}

/// Why a well-framed request was refused; becomes the reply's `error`.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("bad request: {0}")]
    Bad(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError::Bad(msg.into())
}

fn error_reply(reason: &str) -> HjsonFrame {
    HjsonFrame::new(json!({"ok": false, "error": reason}), Bytes::new())
}

fn name_field(header: &Map<String, Value>) -> Result<ValidName, RequestError> {
    match header.get("name") {
        None => Err(bad("missing `name`")),
        Some(Value::String(name)) => Ok(names::validate(name).map_err(FileError::from)?),
        Some(other) => Err(bad(format!("`name` must be a string, got {other}"))),
    }
}

fn sha256_field(header: &Map<String, Value>) -> Result<[u8; 32], RequestError> {
    let text = match header.get("sha256") {
        None => return Err(bad("put needs `sha256`: the hex SHA-256 of the body")),
        Some(Value::String(text)) => text,
        Some(other) => return Err(bad(format!("`sha256` must be a string, got {other}"))),
    };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest)
        .map_err(|e| bad(format!("`sha256` must be 64 hex digits: {e}")))?;
    Ok(digest)
}

/// Runs blocking filesystem work to completion on the blocking pool. If the connection
/// is dropped meanwhile, the work still finishes (or fails) as a whole.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, RequestError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(RequestError::Internal(e.to_string())),
    }
}

async fn handle(frame: HjsonFrame, root: PathBuf, max: usize) -> Result<HjsonFrame, RequestError> {
    let HjsonFrame { header, body } = frame;
    let op = match header.get("op") {
        None => return Err(bad("missing `op` (put, get, list or delete)")),
        Some(Value::String(op)) => op.as_str(),
        Some(other) => return Err(bad(format!("`op` must be a string, got {other}"))),
    };
    if op != "put" && !body.is_empty() {
        return Err(bad(format!("{op} takes no body (size must be 0)")));
    }
    match op {
        "put" => {
            let name = name_field(&header)?;
            let expected = sha256_field(&header)?;
            let sha256 = blocking(move || store::put(&root, &name, &expected, &body)).await?;
            Ok(HjsonFrame::new(
                json!({"ok": true, "sha256": sha256}),
                Bytes::new(),
            ))
        }
        "get" => {
            let name = name_field(&header)?;
            let (sha256, body) = blocking(move || store::get(&root, &name, max)).await?;
            Ok(HjsonFrame::new(json!({"ok": true, "sha256": sha256}), body))
        }
        "delete" => {
            let name = name_field(&header)?;
            blocking(move || store::delete(&root, &name)).await?;
            Ok(HjsonFrame::new(json!({"ok": true}), Bytes::new()))
        }
        "list" => {
            let files = blocking(move || store::list(&root, MAX_HEADER)).await?;
            let count = files.len();
            let reply = HjsonFrame::new(json!({"ok": true, "files": files}), Bytes::new());
            // The exact check: a header over the limit could not be sent at all.
            if HjsonCodec::header_bytes(&reply.header, 0).len() > MAX_HEADER {
                return Err(FileError::ListTooLarge(format!(
                    "{count} files would not fit in one {MAX_HEADER}-byte reply header"
                ))
                .into());
            }
            Ok(reply)
        }
        other => Err(bad(format!(
            "unknown op {other:?} (expected put, get, list or delete)"
        ))),
    }
}
