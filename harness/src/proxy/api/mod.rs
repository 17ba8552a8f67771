//! `chopstick proxy --api ADDR`: Toxiproxy's HTTP API, so existing Toxiproxy clients
//! (toxiproxy-python, toxiproxy-node-client, the Go and Ruby clients, Testcontainers)
//! drive chopstick, and can ask for frame-aware faults too.
//!
//! # Endpoints (as Toxiproxy documents them)
//!
//! | method and path                          | does                                   | answers |
//! |------------------------------------------|----------------------------------------|---------|
//! | `GET /version`                           | `{"version": ...}`                     | 200 |
//! | `GET /proxies`                           | every proxy with its toxics, by name   | 200 |
//! | `POST /proxies`                          | creates `{name, listen, upstream, enabled}` | 201, 409 if the name is taken |
//! | `POST /populate`                         | creates or replaces a list of proxies  | 201 `{"proxies": [...]}` |
//! | `GET /proxies/{name}`                    | one proxy                              | 200, 404 |
//! | `POST`/`PATCH /proxies/{name}`           | changes listen, upstream, enabled      | 200, 404 |
//! | `DELETE /proxies/{name}`                 | stops it, cuts its connections         | 204, 404 |
//! | `POST /reset`                            | enables every proxy, removes every toxic | 204 |
//! | `GET /proxies/{name}/toxics`             | its toxics                             | 200 |
//! | `POST /proxies/{name}/toxics`            | adds `{name, type, stream, toxicity, attributes}` | 200, 409 |
//! | `GET /proxies/{name}/toxics/{toxic}`     | one toxic                              | 200, 404 |
//! | `POST`/`PATCH /proxies/{name}/toxics/{toxic}` | changes attributes and toxicity   | 200, 404 |
//! | `DELETE /proxies/{name}/toxics/{toxic}`  | removes it                             | 204, 404 |
//!
//! Errors are Toxiproxy's: `{"error": "proxy not found", "status": 404}`, with its
//! messages (`proxy already exists`, `toxic not found`, `bad request body: ...`,
//! `missing required field: name`, `invalid toxic type`, ...). A body that is not
//! JSON, or misses a field, is a 400. Like Toxiproxy, requests from browsers
//! (`User-Agent: Mozilla/...`) get a 403, so a web page cannot drive the API.
//!
//! Toxics change live: adding, updating or removing one applies to the connections
//! already open, from their next chunk on (see `link.rs` for each toxic's behaviour).
//!
//! # Bounds
//!
//! The API listens on loopback only, and so do its proxies; upstreams must be on
//! loopback too (as for `chopstick proxy --upstream`). At most
//! [`ApiSettings::max_proxies`] proxies, [`ApiSettings::max_toxics`] toxics each,
//! [`ApiSettings::max_conns`] connections per proxy, request bodies of
//! [`MAX_BODY_BYTES`]; per connection, [`ApiSettings::chunk_queue`] chunks of at most
//! [`ApiSettings::read_buffer`] bytes in flight each way, an upstream connect timeout,
//! an idle timeout and a stall timeout.

mod link;
mod registry;
mod routes;
pub mod toxic;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use registry::{ProxySpec, Registry};

/// Largest request body (1 MiB): a `populate` list of thousands of proxies fits.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What `chopstick proxy --api` reports as its version.
pub const VERSION: &str = concat!("chopstick-", env!("CARGO_PKG_VERSION"));

/// Limits and knobs of an API server and of the proxies it runs.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Seeds chopstick's toxics that name no seed (each gets one derived from this,
    /// its proxy's name and its own; shown back in its attributes).
    pub seed: u64,
    pub max_proxies: usize,
    pub max_toxics: usize,
    /// Connections relayed at once per proxy; more wait in the listen queue.
    pub max_conns: usize,
    /// Bytes read from a peer at once.
    pub read_buffer: usize,
    /// Chunks read ahead of the toxics per direction (backpressure beyond that).
    pub chunk_queue: usize,
    pub connect_timeout: Duration,
    /// A connection with no byte either way for this long is closed. Long by default:
    /// a Toxiproxy user's idle database connection should not be cut by the proxy.
    pub idle_timeout: Duration,
    /// A write to a peer that makes no progress for this long resets the connection.
    pub stall_timeout: Duration,
    /// Smallest gap between the pieces of a chunk cut by chopstick's toxics, so they
    /// arrive as separate reads (see [`crate::chaos::tcp`]); Toxiproxy's slicer only
    /// waits its own `delay`.
    pub min_pause: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            seed: 0,
            max_proxies: 256,
            max_toxics: 64,
            max_conns: 1024,
            read_buffer: 64 * 1024,
            chunk_queue: 8,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(30),
            min_pause: crate::chaos::tcp::DEFAULT_MIN_PAUSE,
        }
    }
}

/// An API error as Toxiproxy sends it: `{"error": message, "status": code}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({status})")]
#[non_exhaustive]
pub struct ApiError {
    pub message: String,
    pub status: u16,
}

impl ApiError {
    fn new(message: impl Into<String>, status: u16) -> ApiError {
        ApiError {
            message: message.into(),
            status,
        }
    }

    pub(crate) fn bad_body(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(format!("bad request body: {why}"), 400)
    }

    fn missing_field(what: &str) -> ApiError {
        ApiError::new(format!("missing required field: {what}"), 400)
    }

    fn proxy_not_found() -> ApiError {
        ApiError::new("proxy not found", 404)
    }

    fn proxy_exists() -> ApiError {
        ApiError::new("proxy already exists", 409)
    }

    pub(crate) fn invalid_stream() -> ApiError {
        ApiError::new(
            "stream was invalid, can be either upstream or downstream",
            400,
        )
    }

    pub(crate) fn invalid_toxic_type() -> ApiError {
        ApiError::new("invalid toxic type", 400)
    }

    fn toxic_exists() -> ApiError {
        ApiError::new("toxic already exists", 409)
    }

    fn toxic_not_found() -> ApiError {
        ApiError::new("toxic not found", 404)
    }

    fn limit(what: &str) -> ApiError {
        ApiError::new(format!("too many {what}"), 400)
    }

    /// A proxy that cannot listen (address in use, not loopback): Toxiproxy's 500.
    fn listen(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(e.to_string(), 500)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": self.message, "status": self.status})
    }
}

/// Why the API server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiServerError {
    #[error("the API listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("config file {path}: {why}")]
    Config { path: String, why: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Loads a Toxiproxy config file (the `populate` format: a JSON list of
/// `{name, listen, upstream, enabled}`) into `registry`.
pub async fn load_config(
    registry: &Registry,
    path: &std::path::Path,
) -> Result<usize, ApiServerError> {
    let config_err = |why: String| ApiServerError::Config {
        path: path.display().to_string(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| config_err(e.to_string()))?;
    if meta.len() > MAX_BODY_BYTES as u64 {
        return Err(config_err(format!("larger than {MAX_BODY_BYTES} bytes")));
    }
    let body = std::fs::read(path).map_err(|e| config_err(e.to_string()))?;
    registry
        .populate(&body)
        .await
        .map(|p| p.len())
        .map_err(|(e, _)| config_err(e.message))
}

/// Serves the API on `listener` until `shutdown` resolves; then stops every proxy.
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        return Err(ApiServerError::NotLoopback(addr));
    }
    tracing::info!(%addr, seed = registry.settings().seed, "Toxiproxy API listening");
    let app = routes::router(registry.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    registry.stop_all().await;
    served?;
    Ok(())
}

/// An API server on a background task; for tests and in-process use.
#[derive(Debug)]
pub struct ApiHandle {
    /// Where the API listens.
    pub addr: SocketAddr,
    registry: Arc<Registry>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ApiServerError>>,
}

impl ApiHandle {
    /// Spawns [`run`] on the current runtime with a fresh registry.
    pub fn spawn(listener: TcpListener, settings: ApiSettings) -> io::Result<ApiHandle> {
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(settings));
        let stop = tokio_util::sync::CancellationToken::new();
        let cancelled = stop.clone().cancelled_owned();
        let task = tokio::spawn(run(listener, registry.clone(), cancelled));
        Ok(ApiHandle {
            addr,
            registry,
            stop,
            task,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops the server and every proxy, and waits (bounded) for it.
    pub async fn shutdown(self) -> Result<(), ApiServerError> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(io::Error::other(e).into()),
            Err(_) => Err(io::Error::other("API server did not stop within 5 s").into()),
        }
    }
}
