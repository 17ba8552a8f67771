//! The proxies an API server runs, by name: creating, changing, enabling and removing
//! them, with Toxiproxy's rules (a new proxy starts enabled; `populate` keeps a proxy
//! that is already there with the same listen and upstream, and replaces one that
//! differs; `reset` enables every proxy and removes every toxic).
//!
//! Each enabled proxy owns a listener and an accept loop; its toxics live in a watch
//! channel the connections read, so a change reaches open connections at once.
//! Disabling or removing a proxy closes its listener and cuts its connections before
//! the request is answered.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::link::{self, LinkCtx};
use super::toxic::Toxic;
use super::{ApiError, ApiSettings};

/// A proxy as `POST /proxies` and `POST /populate` describe it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProxySpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub upstream: String,
    pub enabled: Option<bool>,
}

/// The toxics of one proxy, as connections see them.
pub(super) type ToxicList = Arc<Vec<Toxic>>;

/// Where a stopped proxy's accept loop is told to end, and how long it may take.
const STOP_WAIT: Duration = Duration::from_secs(2);

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Managed {
    name: String,
    /// The address asked for, or the one bound once the proxy ran (so re-enabling a
    /// proxy that listened on port 0 gets the same port back, as in Toxiproxy).
    listen: String,
    upstream: String,
    upstream_addr: SocketAddr,
    toxics: watch::Sender<ToxicList>,
    running: Option<Running>,
}

impl Managed {
    fn enabled(&self) -> bool {
        self.running.is_some()
    }

    fn toxic_list(&self) -> ToxicList {
        self.toxics.borrow().clone()
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled(),
            "toxics": self.toxic_list().iter().map(Toxic::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Every proxy of one API server.
pub struct Registry {
    settings: ApiSettings,
    proxies: Mutex<BTreeMap<String, Managed>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The seed of toxic `toxic` of proxy `proxy` under master seed `master` (FNV-1a of
/// the names mixed in): stable, so the same names and `--seed` replay the same chaos.
pub(super) fn toxic_seed(master: u64, proxy: &str, toxic: &str) -> u64 {
    let fnv = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    let h = proxy.bytes().fold(0xcbf2_9ce4_8422_2325u64, fnv);
    let h = fnv(h, b'/');
    master ^ toxic.bytes().fold(h, fnv)
}

/// Resolves `addr` (`host:port`) to a loopback address, or says why not.
fn loopback(addr: &str, what: &str) -> Result<SocketAddr, ApiError> {
    let resolved: Vec<SocketAddr> = match addr.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => addr
            .to_socket_addrs()
            .map_err(|e| ApiError::bad_body(format!("{what} `{addr}`: {e}")))?
            .collect(),
    };
    resolved
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            ApiError::bad_body(format!(
                "{what} `{addr}` is not a loopback address; chopstick only listens and sends on this machine"
            ))
        })
}

impl Registry {
    pub fn new(settings: ApiSettings) -> Registry {
        Registry {
            settings,
            proxies: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }

    /// `GET /proxies`: every proxy by name.
    pub async fn list(&self) -> Value {
        let proxies = self.proxies.lock().await;
        Value::Object(
            proxies
                .iter()
                .map(|(name, p)| (name.clone(), p.to_json()))
                .collect(),
        )
    }

    /// `GET /proxies/{name}`.
    pub async fn get(&self, name: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        proxies
            .get(name)
            .map(Managed::to_json)
            .ok_or_else(ApiError::proxy_not_found)
    }

    /// `POST /proxies`.
    pub async fn create(&self, body: &[u8]) -> Result<Value, ApiError> {
        let spec: ProxySpec = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
        if spec.name.is_empty() {
            return Err(ApiError::missing_field("name"));
        }
        if spec.upstream.is_empty() {
            return Err(ApiError::missing_field("upstream"));
        }
        let mut proxies = self.proxies.lock().await;
        if proxies.contains_key(&spec.name) {
            return Err(ApiError::proxy_exists());
        }
        if proxies.len() >= self.settings.max_proxies {
            return Err(ApiError::limit("proxies"));
        }
        let managed = self.build(&spec)?;
        let managed = self.insert(&mut proxies, managed, spec.enabled.unwrap_or(true))?;
        Ok(managed.to_json())
    }

    fn build(&self, spec: &ProxySpec) -> Result<Managed, ApiError> {
        let listen = if spec.listen.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            spec.listen.clone()
        };
        loopback(&listen, "listen")?;
        let upstream_addr = loopback(&spec.upstream, "upstream")?;
        Ok(Managed {
            name: spec.name.clone(),
            listen,
            upstream: spec.upstream.clone(),
            upstream_addr,
            toxics: watch::Sender::new(Arc::default()),
            running: None,
        })
    }

    fn insert<'a>(
        &self,
        proxies: &'a mut BTreeMap<String, Managed>,
        mut managed: Managed,
        enabled: bool,
    ) -> Result<&'a Managed, ApiError> {
        if enabled {
            self.start(&mut managed)?;
        }
        let name = managed.name.clone();
        proxies.insert(name.clone(), managed);
        Ok(&proxies[&name])
    }

    /// Binds the proxy's listener and starts its accept loop (no-op if running).
    fn start(&self, p: &mut Managed) -> Result<(), ApiError> {
        if p.running.is_some() {
            return Ok(());
        }
        let addr = loopback(&p.listen, "listen")?;
        let std_listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| ApiError::listen(format!("listen tcp {addr}: {e}")))?;
        let listener = TcpListener::from_std(std_listener).map_err(ApiError::listen)?;
        let bound = listener.local_addr().map_err(ApiError::listen)?;
        p.listen = bound.to_string();
        let ctx = Arc::new(LinkCtx {
            proxy: p.name.clone(),
            upstream: p.upstream_addr,
            toxics: p.toxics.subscribe(),
            settings: self.settings.clone(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, ctx, stop.clone()));
        tracing::info!(proxy = %p.name, listen = %bound, upstream = %p.upstream, "proxy enabled");
        p.running = Some(Running { stop, task });
        Ok(())
    }

    /// Closes the listener and cuts every connection, then returns.
    async fn stop(p: &mut Managed) {
        if let Some(running) = p.running.take() {
            running.stop.cancel();
            let mut task = running.task;
            if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                task.abort();
            }
            tracing::info!(proxy = %p.name, "proxy disabled");
        }
    }

    /// `POST|PATCH /proxies/{name}`: the fields given replace the proxy's.
    pub async fn update(&self, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        let mut proxies = self.proxies.lock().await;
        let p = proxies
            .get_mut(name)
            .ok_or_else(ApiError::proxy_not_found)?;
        let given: ProxySpec = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
        let listen = if given.listen.is_empty() {
            p.listen.clone()
        } else {
            given.listen
        };
        let upstream = if given.upstream.is_empty() {
            p.upstream.clone()
        } else {
            given.upstream
        };
        let enabled = given.enabled.unwrap_or(p.enabled());
        if listen != p.listen || upstream != p.upstream {
            loopback(&listen, "listen")?;
            let upstream_addr = loopback(&upstream, "upstream")?;
            Self::stop(p).await;
            p.listen = listen;
            p.upstream = upstream;
            p.upstream_addr = upstream_addr;
        }
        if enabled {
            self.start(p)?;
        } else {
            Self::stop(p).await;
        }
        Ok(p.to_json())
    }

    /// `DELETE /proxies/{name}`.
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        let mut p = proxies.remove(name).ok_or_else(ApiError::proxy_not_found)?;
        Self::stop(&mut p).await;
        Ok(())
    }

    /// `POST /populate` (and `--config`): the proxies it created, kept or replaced;
    /// on an error, the error and those done before it.
    pub async fn populate(&self, body: &[u8]) -> Result<Vec<Value>, (ApiError, Vec<Value>)> {
        let specs: Vec<ProxySpec> =
            serde_json::from_slice(body).map_err(|e| (ApiError::bad_body(e), vec![]))?;
        for (i, spec) in specs.iter().enumerate() {
            if spec.name.is_empty() {
                let what = format!("name at proxy {}", i + 1);
                return Err((ApiError::missing_field(&what), vec![]));
            }
            if spec.upstream.is_empty() {
                let what = format!("upstream at proxy {}", i + 1);
                return Err((ApiError::missing_field(&what), vec![]));
            }
        }
        let mut proxies = self.proxies.lock().await;
        let mut done = Vec::new();
        for spec in &specs {
            let fresh = match self.build(spec) {
                Ok(m) => m,
                Err(e) => return Err((e, done)),
            };
            if let Some(existing) = proxies.get_mut(&spec.name) {
                let same_listen = loopback(&existing.listen, "listen").ok()
                    == loopback(&fresh.listen, "listen").ok()
                    && !fresh.listen.ends_with(":0");
                if same_listen && existing.upstream == fresh.upstream {
                    done.push(existing.to_json());
                    continue;
                }
                Self::stop(existing).await;
                proxies.remove(&spec.name);
            } else if proxies.len() >= self.settings.max_proxies {
                return Err((ApiError::limit("proxies"), done));
            }
            match self.insert(&mut proxies, fresh, spec.enabled.unwrap_or(true)) {
                Ok(m) => done.push(m.to_json()),
                Err(e) => return Err((e, done)),
            }
        }
        Ok(done)
    }

    /// `POST /reset`: every proxy enabled, every toxic removed.
    pub async fn reset(&self) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        for p in proxies.values_mut() {
            p.toxics.send_replace(Arc::default());
            self.start(p)?;
        }
        Ok(())
    }

    /// Stops every proxy (server shutdown).
    pub async fn stop_all(&self) {
        let mut proxies = self.proxies.lock().await;
        for p in proxies.values_mut() {
            Self::stop(p).await;
        }
    }

    /// `GET /proxies/{name}/toxics`.
    pub async fn toxics(&self, name: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let p = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        Ok(Value::Array(
            p.toxic_list().iter().map(Toxic::to_json).collect(),
        ))
    }

    /// `GET /proxies/{name}/toxics/{toxic}`.
    pub async fn toxic(&self, name: &str, toxic: &str) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let p = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        let list = p.toxic_list();
        list.iter()
            .find(|t| t.name == toxic)
            .map(Toxic::to_json)
            .ok_or_else(ApiError::toxic_not_found)
    }

    /// `POST /proxies/{name}/toxics`: reaches open connections before it returns.
    pub async fn add_toxic(&self, name: &str, body: &[u8]) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let p = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        let master = self.settings.seed;
        let toxic = Toxic::from_json(body, |t| toxic_seed(master, name, t))?;
        let list = p.toxic_list();
        if list.iter().any(|t| t.name == toxic.name) {
            return Err(ApiError::toxic_exists());
        }
        if list.len() >= self.settings.max_toxics {
            return Err(ApiError::limit("toxics"));
        }
        let shown = toxic.to_json();
        tracing::info!(proxy = name, toxic = %shown, "toxic added");
        p.toxics.send_modify(|l| Arc::make_mut(l).push(toxic));
        Ok(shown)
    }

    /// `POST|PATCH /proxies/{name}/toxics/{toxic}`.
    pub async fn update_toxic(
        &self,
        name: &str,
        toxic: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let proxies = self.proxies.lock().await;
        let p = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        let list = p.toxic_list();
        let i = list
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let new = list[i].updated(body)?;
        let shown = new.to_json();
        tracing::info!(proxy = name, toxic = %shown, "toxic updated");
        p.toxics.send_modify(|l| Arc::make_mut(l)[i] = new);
        Ok(shown)
    }

    /// `DELETE /proxies/{name}/toxics/{toxic}`.
    pub async fn remove_toxic(&self, name: &str, toxic: &str) -> Result<(), ApiError> {
        let proxies = self.proxies.lock().await;
        let p = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        if !p.toxic_list().iter().any(|t| t.name == toxic) {
            return Err(ApiError::toxic_not_found());
        }
        tracing::info!(proxy = name, toxic, "toxic removed");
        p.toxics
            .send_modify(|l| Arc::make_mut(l).retain(|t| t.name != toxic));
        Ok(())
    }
}

/// Accepts until `stop`, one task per connection; on `stop` the listener closes and
/// every connection is cut.
async fn accept_loop(listener: TcpListener, ctx: Arc<LinkCtx>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.settings.max_conns));
    let mut tasks = JoinSet::new();
    let mut next_conn = 0u64;
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let client = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(proxy = %ctx.proxy, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let conn = next_conn;
        next_conn += 1;
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let _permit = permit;
            link::serve(client, conn, &ctx).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    tasks.shutdown().await;
}
