//! The file server (hjson both ways): put/get/list/delete under a root directory.
//! STUB: to be implemented (issue 2). Signatures are final.

use std::future::Future;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::server::{Common, ConnError, ServerError};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Every name is resolved inside this directory.
    pub root: PathBuf,
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
