//! The auth server: HMAC-SHA256 challenge-response, then an inner protocol.
//! STUB: to be implemented (issue 2). Signatures are final.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::server::{Common, ConnError, ServerError};
use crate::{echo, exec, file};

/// The protocol spoken after a successful handshake.
#[derive(Debug, Clone)]
pub enum Inner {
    Echo(echo::Config),
    Exec(exec::Config),
    File(file::Config),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// The shared HMAC key (never from the command line: see `load_key`).
    pub key: Vec<u8>,
    /// A client that has not sent its 32-byte digest by then is dropped.
    pub handshake_timeout: Duration,
    pub inner: Inner,
}

pub async fn run(
    _listener: TcpListener,
    _config: Config,
    _shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    todo!()
}

pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    _stream: S,
    _config: &Config,
) -> Result<(), ConnError> {
    todo!()
}

/// STUB: reads the key from `key_file` or `CHOPSTICK_KEY`.
pub fn load_key(_key_file: Option<&std::path::Path>) -> Result<Vec<u8>, std::io::Error> {
    todo!()
}
