//! The echo server: every request frame is answered by one frame with the same payload
//! (or its ASCII upper-case), in order. Any framing; pipelining and empty frames allowed.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::memory::Budgeted;
use crate::server::{self, Common, ConnError, ServerError, Tracked};
use crate::wire::Framing;

/// What echo does to a payload before sending it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transform {
    #[default]
    None,
    /// ASCII a-z become A-Z; every other byte is unchanged.
    Upper,
}

impl Transform {
    pub fn apply(self, payload: Bytes) -> Bytes {
        match self {
            Transform::None => payload,
            Transform::Upper => payload.to_ascii_uppercase().into(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub common: Common,
    pub framing: Framing,
    pub transform: Transform,
}

/// Serves echo on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
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

/// Speaks echo on one connection (any byte stream: a socket, or auth's inner stream).
pub async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    config: &Config,
) -> Result<(), ConnError> {
    let framing = match config.common.max_frame {
        Some(max) => config.framing.with_max(max),
        None => config.framing,
    };
    let counters = &config.common.counters;
    let common = &config.common;
    let (stream, activity) = Tracked::new(stream);
    let mut frames = Framed::new(stream, Budgeted::new(framing.codec(), &common.memory));
    server::until_idle(&activity, common.idle_timeout, async {
        while let Some(payload) = server::next_frame(&mut frames, &activity, common).await? {
            counters.frame_in();
            // Held until the reply is written; waiting here stops reading (backpressure).
            let _held = common.memory.reserve(payload.len()).await;
            server::send_frame(&mut frames, config.transform.apply(payload), counters).await?;
        }
        Ok(())
    })
    .await
}
