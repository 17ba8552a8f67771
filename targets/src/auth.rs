//! The auth server: an HMAC-SHA256 challenge-response in front of an inner protocol.
//!
//! What it is for: exec and file must not be reachable by anyone who can open a TCP
//! connection, so without auth they only listen on loopback. Putting them behind this
//! handshake is what makes a non-loopback `--listen` acceptable; it is also a target in
//! its own right (a fixed-size binary handshake that must survive split writes, stalls
//! and disconnects, and must never accept a replayed digest).
//!
//! ```text
//!   client                                   server
//!     |            connect                     |
//!     | -------------------------------------> |
//!     |      nonce: 32 random bytes (fresh)    |  handshake_timeout starts
//!     | <------------------------------------- |
//!     |  digest: HMAC-SHA256(key, nonce), 32 B |  read until all 32 bytes arrive,
//!     | -------------------------------------> |  compared in constant time
//!     |      verdict: 1 byte, 1 = accepted     |
//!     | <------------------------------------- |  handshake_timeout ends
//!     |                                        |
//!     |  inner protocol (echo | exec | file)   |  verdict 1 only
//!     | <====================================> |
//!     |                                        |
//!     |      verdict 0 = rejected, then FIN    |  verdict 0: counted `auth_rejected`
//! ```
//!
//! The nonce comes from the operating system's CSPRNG for every connection, so a digest
//! seen on one connection is worthless on the next. The key is read from a file or the
//! `CHOPSTICK_KEY` environment variable ([`load_key`]), never from the command line
//! (where `ps` would show it to every local user).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::server::{self, Common, ConnError, ServerError};
use crate::wire::WireError;
use crate::{echo, exec, file};

/// Length of the server's challenge.
pub const NONCE_LEN: usize = 32;
/// Length of the client's answer (an HMAC-SHA256 tag).
pub const DIGEST_LEN: usize = 32;
/// Verdict byte: the digest matched; the inner protocol follows.
pub const ACCEPTED: u8 = 1;
/// Verdict byte: the digest did not match; the server closes.
pub const REJECTED: u8 = 0;
/// Environment variable holding the key when no key file is given.
pub const KEY_ENV: &str = "CHOPSTICK_KEY";
/// Default bound on the whole handshake (nonce out, digest in, verdict out).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

/// The protocol spoken after a successful handshake.
#[derive(Debug, Clone)]
pub enum Inner {
    Echo(echo::Config),
    Exec(exec::Config),
    File(file::Config),
}

#[derive(Clone)]
pub struct Config {
    pub common: Common,
    /// The shared HMAC key (never from the command line: see `load_key`).
    pub key: Vec<u8>,
    /// A client that has not sent its 32-byte digest by then is dropped.
    pub handshake_timeout: Duration,
    pub inner: Inner,
}

impl Config {
    /// A config with the default handshake timeout and default common options.
    pub fn new(key: Vec<u8>, inner: Inner) -> Config {
        Config {
            common: Common::default(),
            key,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            inner,
        }
    }
}

// Hand-written so that logging a config (e.g. at startup) never prints the key.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .field("handshake_timeout", &self.handshake_timeout)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Why no key could be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the key from {0} is empty")]
    Empty(String),
    #[error("no key: give a key file or set {KEY_ENV}")]
    Missing,
}

/// The key taken out of the environment by [`take_env_key`], if it was called.
static ENV_KEY: OnceLock<Option<Vec<u8>>> = OnceLock::new();

/// Moves `CHOPSTICK_KEY` out of the process environment into memory only [`load_key`]
/// reads, so that nothing that can read the environment later (`/proc/PID/environ`,
/// a child that inherits it, a crash reporter) finds the key.
///
/// Removing the variable is not enough on Linux: `/proc/PID/environ` shows the
/// environment block the process started with, whatever `unsetenv` did to the
/// `environ` array, so the value's bytes in that block are overwritten with NULs first
/// (its length stays visible, its content does not).
///
/// # Safety
/// Call it before any other thread exists (first thing in `main`): it writes the
/// environment, which other threads may read without a lock (see
/// [`std::env::remove_var`]).
pub unsafe fn take_env_key() {
    let value = std::env::var_os(KEY_ENV);
    if value.is_some() {
        let name = c"CHOPSTICK_KEY";
        // SAFETY: single-threaded (the caller's contract). getenv returns a pointer to
        // the NUL-terminated value inside the environment block, which stays valid
        // and writable; we overwrite exactly its strlen bytes.
        unsafe {
            let p = libc::getenv(name.as_ptr());
            if !p.is_null() {
                std::ptr::write_bytes(p, 0, libc::strlen(p));
            }
            std::env::remove_var(KEY_ENV);
        }
    }
    let _ = ENV_KEY.set(value.map(|v| v.into_encoded_bytes()));
}

/// Loads the shared key: the bytes of `key_file` with one trailing newline (`\n` or
/// `\r\n`) dropped, or else the `CHOPSTICK_KEY` environment variable (as taken out
/// of the environment by [`take_env_key`], or read there if it was not called).
///
/// A key file that is given but unreadable is an error, not a reason to fall back to
/// the environment: silently using another key would be a confusing failure. Only one
/// newline is dropped because editors add exactly one; anything else is key material.
pub fn load_key(key_file: Option<&Path>) -> Result<Vec<u8>, KeyError> {
    let (key, source) = match key_file {
        Some(path) => {
            let mut bytes = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            })?;
            strip_one_newline(&mut bytes);
            (bytes, format!("key file {}", path.display()))
        }
        None => match ENV_KEY.get() {
            Some(Some(value)) => (value.clone(), format!("${KEY_ENV}")),
            Some(None) => return Err(KeyError::Missing),
            None => match std::env::var_os(KEY_ENV) {
                // Raw bytes, so a key need not be UTF-8.
                Some(value) => (value.into_encoded_bytes(), format!("${KEY_ENV}")),
                None => return Err(KeyError::Missing),
            },
        },
    };
    if key.is_empty() {
        return Err(KeyError::Empty(source));
    }
    Ok(key)
}

fn strip_one_newline(bytes: &mut Vec<u8>) {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.pop();
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length (long keys are hashed, short ones padded),
    // so this cannot fail whatever the input.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The answer to `nonce`: HMAC-SHA256(key, nonce).
pub fn digest(key: &[u8], nonce: &[u8; NONCE_LEN]) -> [u8; DIGEST_LEN] {
    let mut mac = mac(key);
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// The client side of the handshake: reads the nonce, sends the digest, reads the
/// verdict. `Ok(true)` = accepted (the stream now speaks the inner protocol),
/// `Ok(false)` = rejected. Unbounded: wrap it in a timeout.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
) -> Result<bool, io::Error> {
    let mut nonce = [0u8; NONCE_LEN];
    stream.read_exact(&mut nonce).await?;
    stream.write_all(&digest(key, &nonce)).await?;
    stream.flush().await?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict).await?;
    match verdict[0] {
        ACCEPTED => Ok(true),
        REJECTED => Ok(false),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("auth verdict byte {other}, expected 0 or 1"),
        )),
    }
}

/// Serves auth on `listener` until `shutdown` resolves.
///
/// Deliberately no loopback check: the handshake is what makes exposing exec and file
/// acceptable.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // Refuse configs that would make every handshake fail, rather than serve uselessly.
    if config.key.is_empty() {
        return Err(ServerError::Config("the auth key is empty".into()));
    }
    if config.handshake_timeout.is_zero() {
        return Err(ServerError::Config(
            "handshake timeout must be above zero".into(),
        ));
    }
    // The inner file server gets the same start-up checks as a standalone one.
    if let Inner::File(inner) = &config.inner {
        file::prepare_root(&inner.root).await?;
    }
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

/// Runs the handshake on one connection, then the inner protocol if it succeeded.
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    config: &Config,
) -> Result<(), ConnError> {
    let limit = config.handshake_timeout;
    // One deadline for the whole exchange: a client trickling one byte per second must
    // not keep the slot longer than one that sends nothing.
    tokio::time::timeout(limit, handshake(&mut stream, &config.key))
        .await
        .map_err(|_| ConnError::HandshakeTimeout(limit))??;
    match &config.inner {
        Inner::Echo(inner) => echo::serve_conn(stream, inner).await,
        Inner::Exec(inner) => exec::serve_conn(stream, inner).await,
        Inner::File(inner) => file::serve_conn(stream, inner).await,
    }
}

/// Nonce out, digest in, verdict out. `Ok` only if the digest matched.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
) -> Result<(), ConnError> {
    let mut nonce = [0u8; NONCE_LEN];
    // Straight from the OS: no user-space generator state to seed or fork badly, and a
    // failure is an error for this connection rather than a panic.
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| ConnError::Io(io::Error::other(format!("no random nonce: {e}"))))?;
    stream.write_all(&nonce).await?;
    stream.flush().await?;

    let answer = read_digest(stream).await?;
    let mut mac = mac(key);
    mac.update(&nonce);
    // verify_slice compares in constant time, so response timing leaks nothing about
    // how many leading bytes of a guess were right.
    if mac.verify_slice(&answer).is_ok() {
        stream.write_all(&[ACCEPTED]).await?;
        stream.flush().await?;
        Ok(())
    } else {
        // Best effort: the client may already be gone, and it is rejected either way.
        let _ = stream.write_all(&[REJECTED]).await;
        let _ = stream.shutdown().await;
        Err(ConnError::AuthRejected)
    }
}

/// Reads exactly the digest, however it is split across segments, and not one byte
/// more: anything after it belongs to the inner protocol.
async fn read_digest<S: AsyncRead + Unpin>(stream: &mut S) -> Result<[u8; DIGEST_LEN], ConnError> {
    let mut answer = [0u8; DIGEST_LEN];
    let mut received = 0;
    while received < DIGEST_LEN {
        match stream.read(&mut answer[received..]).await? {
            0 => return Err(ConnError::Wire(WireError::Truncated { received })),
            n => received += n,
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_config(key: &[u8]) -> Config {
        Config::new(key.to_vec(), Inner::Echo(echo::Config::default()))
    }

    #[test]
    fn digest_matches_an_independent_hmac_sha256() {
        // python3: hmac.new(b"chopstick", bytes(range(32)), hashlib.sha256).hexdigest()
        let nonce: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(digest(b"chopstick", &nonce)),
            "b242afd00352f3b03bfe6ade25ea801add0dab138832240e83a9a26d87177330"
        );
    }

    #[test]
    fn only_one_trailing_newline_is_stripped() {
        for (input, want) in [
            (&b"k\n"[..], &b"k"[..]),
            (b"k\r\n", b"k"),
            (b"k\n\n", b"k\n"),
            (b"k\r", b"k\r"),
            (b"k", b"k"),
            (b"\n", b""),
        ] {
            let mut bytes = input.to_vec();
            strip_one_newline(&mut bytes);
            assert_eq!(bytes, want, "input {input:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let shown = format!("{:?}", echo_config(b"hunter2-secret"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[tokio::test]
    async fn handshake_over_an_in_memory_pipe() {
        let config = echo_config(b"k");
        for (key, want) in [(&b"k"[..], true), (b"wrong", false)] {
            let (mut client, server) = tokio::io::duplex(64);
            let served = tokio::spawn({
                let config = config.clone();
                async move { serve_conn(server, &config).await }
            });
            let verdict =
                tokio::time::timeout(Duration::from_secs(10), client_handshake(&mut client, key))
                    .await
                    .expect("handshake timed out")
                    .expect("handshake i/o");
            assert_eq!(verdict, want);
            drop(client);
            let result = served.await.expect("server task");
            match (want, result) {
                (true, Ok(())) | (false, Err(ConnError::AuthRejected)) => {}
                (_, other) => panic!("key {key:?}: unexpected result {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn eof_inside_the_digest_is_truncated_not_a_panic() {
        let (mut client, server) = tokio::io::duplex(64);
        let config = echo_config(b"k");
        let served = tokio::spawn(async move { serve_conn(server, &config).await });
        let mut nonce = [0u8; NONCE_LEN];
        client.read_exact(&mut nonce).await.unwrap();
        client.write_all(&[0u8; 31]).await.unwrap();
        drop(client);
        match served.await.expect("server task") {
            Err(ConnError::Wire(WireError::Truncated { received: 31 })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
