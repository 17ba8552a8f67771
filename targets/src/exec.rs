//! The exec server (hjson both ways): runs an allow-listed program without a shell.
//! STUB: to be implemented (issue 2). Signatures are final.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::server::{Common, ConnError, ServerError};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Program names that may run (argv[0], matched exactly).
    pub allow: Vec<String>,
    /// A command running longer is killed and reported `timed_out`.
    pub timeout: Duration,
    /// Most stdout+stderr bytes returned; beyond it the child is killed and `truncated` set.
    pub output_cap: usize,
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
