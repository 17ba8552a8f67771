//! noxious behind Toxiproxy's HTTP API, so the `proxy_api` bench drives noxious the way a
//! Toxiproxy client does, as it drives `chopstick proxy --api`: `POST /proxies` creates
//! the proxy, toxics are added and removed over HTTP while connections are open.
//!
//! noxious's own API server (`noxious-server`) is not published on crates.io (its
//! manifest says `publish = false`; only the core crate `noxious` and a client are), so
//! this front does what that server's handlers do, with noxious's own pieces: request
//! bodies are parsed into noxious's serde types ([`ProxyConfig`], [`Toxic`]), a proxy is
//! started with noxious's [`ProxyRunner`], and a toxic change goes to the running proxy
//! as a [`ToxicEvent`] on its event channel. noxious answers that event once it has
//! rebuilt the links of every open connection (as Toxiproxy does), and the HTTP reply
//! waits for the answer, as noxious-server's does. The HTTP layer is axum on the bench's
//! runtime, as for `chopstick proxy --api`, so both pay the same for HTTP.
//!
//! Only the routes the bench uses, with Toxiproxy's codes:
//!
//! | route | answers |
//! |---|---|
//! | `POST /proxies` | 201 with the proxy; 409 name taken; 400 bad body |
//! | `POST /proxies/{name}/toxics` | 200 with the toxic; 404 no such proxy; 400 bad body |
//! | `DELETE /proxies/{name}/toxics/{toxic}` | 204; 404 no such proxy or toxic |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use bmrng::RequestSender;
use noxious::proxy::{ProxyConfig, ProxyRunner, ProxyWithToxics, Runner, Toxics};
use noxious::signal::{Close, Stop, Stopper};
use noxious::socket::TcpListener;
use noxious::toxic::{Toxic, ToxicEvent, ToxicEventKind, ToxicEventResult};

/// Toxic events queued per proxy (noxious-server queues 2 as well).
const EVENT_BUFFER: usize = 2;

/// One proxy started through the API.
struct Running {
    events: RequestSender<ToxicEvent, ToxicEventResult>,
    stopper: Stopper,
}

type Proxies = Arc<Mutex<HashMap<String, Running>>>;

/// A running noxious API server; it and its proxies stop when dropped.
pub struct NoxiousApi {
    /// Where the API listens.
    pub addr: SocketAddr,
    proxies: Proxies,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for NoxiousApi {
    fn drop(&mut self) {
        self.server.abort();
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        for (_, p) in proxies.drain() {
            p.stopper.stop();
        }
    }
}

/// Starts the API on a free loopback port, on the current runtime.
pub async fn spawn() -> NoxiousApi {
    let proxies: Proxies = Arc::default();
    let app = Router::new()
        .route("/proxies", post(create))
        .route("/proxies/{proxy}/toxics", post(add_toxic))
        .route("/proxies/{proxy}/toxics/{toxic}", delete(remove_toxic))
        .with_state(proxies.clone());
    let listener = crate::listen().await;
    let addr = listener.local_addr().expect("api address");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    NoxiousApi {
        addr,
        proxies,
        server,
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Toxiproxy's error body.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "status": status.as_u16()});
    json(status, body.to_string())
}

fn events_of(proxies: &Proxies, name: &str) -> Option<RequestSender<ToxicEvent, ToxicEventResult>> {
    let proxies = proxies.lock().unwrap_or_else(|e| e.into_inner());
    proxies.get(name).map(|p| p.events.clone())
}

async fn create(State(proxies): State<Proxies>, body: Bytes) -> Response {
    let mut config: ProxyConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    if let Err(e) = config.validate() {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    if events_of(&proxies, &config.name).is_some() {
        return error(StatusCode::CONFLICT, "proxy already exists");
    }
    // noxious binds the address as given and reports it back as given; a client asking
    // for port 0 needs the real one, as Toxiproxy reports it.
    if let Some(host) = config.listen.strip_suffix(":0") {
        config.listen = format!("{host}:{}", crate::free_port());
    }
    let (listener, info) =
        match ProxyRunner::initialize_proxy::<TcpListener>(config.clone(), Toxics::empty()).await {
            Ok(bound) => bound,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    let (events, receiver) = bmrng::channel(EVENT_BUFFER);
    let (stop, stopper) = Stop::new();
    let (_close, closer) = Close::new();
    tokio::spawn(async move {
        let _ = ProxyRunner::run_proxy(listener, info, receiver, stop, closer).await;
    });
    let shown = serde_json::to_string(&ProxyWithToxics::from_proxy_config(config.clone()))
        .expect("a proxy serialises");
    let mut all = proxies.lock().unwrap_or_else(|e| e.into_inner());
    all.insert(config.name, Running { events, stopper });
    json(StatusCode::CREATED, shown)
}

async fn add_toxic(
    State(proxies): State<Proxies>,
    Path(proxy): Path<String>,
    body: Bytes,
) -> Response {
    let mut toxic: Toxic = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
    };
    toxic.set_default_name();
    let Some(events) = events_of(&proxies, &proxy) else {
        return error(StatusCode::NOT_FOUND, "proxy not found");
    };
    let event = ToxicEvent::new(proxy, ToxicEventKind::AddToxic(toxic.clone()));
    match events.send_receive(event).await {
        Ok(Ok(())) => json(
            StatusCode::OK,
            serde_json::to_string(&toxic).expect("a toxic serialises"),
        ),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "proxy stopped"),
    }
}

async fn remove_toxic(
    State(proxies): State<Proxies>,
    Path((proxy, toxic)): Path<(String, String)>,
) -> Response {
    let Some(events) = events_of(&proxies, &proxy) else {
        return error(StatusCode::NOT_FOUND, "proxy not found");
    };
    let event = ToxicEvent::new(proxy, ToxicEventKind::RemoveToxic(toxic));
    match events.send_receive(event).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(_)) => error(StatusCode::NOT_FOUND, "toxic not found"),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "proxy stopped"),
    }
}
