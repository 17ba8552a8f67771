//! Shared pieces of chopstick's criterion benchmarks (see BENCHMARKS.md).
//!
//! Every group compares chopstick against a peer measured in the same run: the machines
//! this runs on are shared and noisy, so absolute numbers drift while ratios hold.
//! This crate holds the servers, clients and relays the bench binaries share; the
//! `bench-report` binary turns criterion's estimates into the ratio tables.

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod nox_api;

/// Whether the bench binary runs in criterion's `--test` mode (every benchmark once).
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Deterministic filler bytes (the content never matters to a relay or a codec).
pub fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// A multi-threaded runtime with two workers (the benchmark machine has two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A loopback listener on a free port.
pub async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// A free loopback port, for relays that insist on binding their own listener.
/// (Racy in theory: another process could take it before the relay binds.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Connects with NODELAY, retrying briefly while a freshly started relay comes up.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true).expect("nodelay");
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// The sink server of the bulk benchmarks: each connection reads announced transfers
/// and answers each with one byte once it has all of it. The announcement is a `u32be`
/// frame holding the transfer length as a `u64` (12 bytes), so a bulk of `u32be` frames
/// ([`bulk_data`]) is a valid `u32be` stream for a frame-aware relay.
pub async fn spawn_sink() -> SocketAddr {
    spawn_server(|mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len: [u8; 8] = head[4..].try_into().expect("8 bytes");
            let mut left = u64::from_be_bytes(len) as usize;
            while left > 0 {
                let want = left.min(buf.len());
                match s.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
            if s.write_all(&[1]).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A loopback server running `serve` on every accepted connection (NODELAY set), in
/// tasks on the current runtime; returns its address.
async fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = listen().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// `len` bytes (rounded down to whole frames) of `u32be` frames of 16 KiB.
pub fn bulk_data(len: usize) -> Vec<u8> {
    let frame = 16 * 1024;
    let payload = filler(frame - 4);
    let framing: chopstick_targets::wire::Framing = "u32be".parse().expect("u32be");
    let payloads = vec![payload; (len / frame).max(1)];
    framing.encode_all(&payloads).expect("encode").0.to_vec()
}

/// One bulk transfer to a [`spawn_sink`] server: announce, write `data` in writes of at
/// most 64 KiB, wait for the one-byte ack.
pub async fn bulk_once(s: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 12];
    head[3] = 8;
    head[4..].copy_from_slice(&(data.len() as u64).to_be_bytes());
    s.write_all(&head).await?;
    for chunk in data.chunks(64 * 1024) {
        s.write_all(chunk).await?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    Ok(())
}

/// A plain echo server (no framing: bytes back as they come), for the ping-pong benchmarks.
pub async fn spawn_byte_echo() -> SocketAddr {
    spawn_server(|mut s| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

/// One ping-pong round trip of `msg` through an echo.
pub async fn ping_once(s: &mut TcpStream, msg: &[u8], back: &mut [u8]) -> io::Result<()> {
    s.write_all(msg).await?;
    s.read_exact(&mut back[..msg.len()]).await?;
    Ok(())
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read one rlimit struct that lives on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The chopstick proxy on the current runtime: a plain relay unless `faults` is given.
pub async fn spawn_chopstick_proxy(
    upstream: SocketAddr,
    faults: &str,
    framing: Option<&str>,
) -> chopstick::proxy::ProxyHandle {
    let mut config = chopstick::proxy::ProxyConfig::new(upstream);
    config.faults = faults.parse().expect("fault list");
    config.framing = framing.map(|f| f.parse().expect("framing"));
    // No artificial gap between faulted writes: these benchmarks measure the relay.
    config.min_pause = Duration::ZERO;
    chopstick::proxy::ProxyHandle::spawn(listen().await, config).expect("spawn proxy")
}

/// A relay in a process of its own: the bench binary re-executed with
/// `BENCH_RELAY=chopstick|noxious` (see [`relay_child`]), relaying a free loopback port
/// to `upstream`, the way `chopstick proxy` runs. Its runtime is the CLI's (two workers
/// on this machine) and holds nothing but the relay, so the bench's clients and servers
/// do not compete with it for the same worker threads. Stops when dropped.
pub struct RelayProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl RelayProcess {
    pub fn spawn(role: &str, upstream: SocketAddr) -> RelayProcess {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env("BENCH_RELAY", role)
            .env("BENCH_RELAY_UPSTREAM", upstream.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn relay process");
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("child stdout"))
            .read_line(&mut line)
            .expect("relay process announces its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("relay process said {line:?}"));
        RelayProcess { addr, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // Closing stdin asks it to stop; the kill covers a child that does not listen.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Call first in a bench binary's `main`: when this process is a [`RelayProcess`],
/// runs the relay until stdin closes and returns `true` (then return from `main`).
pub fn relay_child() -> bool {
    let Ok(role) = std::env::var("BENCH_RELAY") else {
        return false;
    };
    raise_nofile();
    let upstream: SocketAddr = std::env::var("BENCH_RELAY_UPSTREAM")
        .expect("BENCH_RELAY_UPSTREAM")
        .parse()
        .expect("upstream address");
    runtime().block_on(async {
        let (addr, keep): (SocketAddr, Box<dyn std::any::Any>) = match role.as_str() {
            "chopstick" => {
                let mut config = chopstick::proxy::ProxyConfig::new(upstream);
                config.max_conns = 4096;
                let listener =
                    chopstick_targets::server::bind("127.0.0.1:0".parse().unwrap(), 4096)
                        .expect("bind relay");
                let h = chopstick::proxy::ProxyHandle::spawn(listener, config).expect("proxy");
                (h.addr, Box::new(h))
            }
            "noxious" => {
                let n = nox::spawn(upstream, vec![]).await;
                (n.addr, Box::new(n))
            }
            _ => panic!("unknown relay {role}"),
        };
        println!("listening on {addr}");
        // Until the parent closes our stdin (or dies).
        let mut b = [0u8; 1];
        let _ = tokio::io::stdin().read(&mut b).await;
        drop(keep);
    });
    true
}

/// socat, if installed, relaying a free loopback port to `upstream` (64 KiB buffer,
/// NODELAY both sides, a forked child per connection). `None` with a message otherwise.
pub struct Socat {
    pub addr: SocketAddr,
    child: Child,
}

impl Socat {
    pub fn spawn(upstream: SocketAddr) -> Option<Socat> {
        let port = free_port();
        let child = Command::new("socat")
            .args([
                "-b65536".to_string(),
                format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay"),
                format!("TCP:{upstream},nodelay"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Socat {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
            }),
            Err(e) => {
                eprintln!(
                    "socat not runnable ({e}); skipping the socat peer (apt-get install -y socat)"
                );
                None
            }
        }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// noxious (the Rust port of Toxiproxy) as a library on the current runtime.
pub mod nox {
    use std::net::SocketAddr;

    use noxious::proxy::{ProxyConfig, ProxyRunner, Runner, Toxics};
    use noxious::signal::{Close, Stop, Stopper};
    use noxious::socket::TcpListener;
    use noxious::toxic::{StreamDirection, Toxic, ToxicKind};

    /// A running noxious proxy; stops when dropped.
    pub struct Noxious {
        pub addr: SocketAddr,
        stopper: Option<Stopper>,
        // Kept alive so the proxy's toxic-event task does not see a closed channel.
        _events: Box<dyn std::any::Any + Send>,
    }

    impl Drop for Noxious {
        fn drop(&mut self) {
            if let Some(s) = self.stopper.take() {
                s.stop();
            }
        }
    }

    /// The slicer toxic on the client-to-upstream direction: `average` bytes per piece,
    /// no variation, no delay.
    pub fn slicer(average: u64) -> Toxic {
        Toxic {
            kind: ToxicKind::Slicer {
                average_size: average,
                size_variation: 0,
                delay: 0,
            },
            name: "slicer".into(),
            toxicity: 1.0,
            direction: StreamDirection::Upstream,
        }
    }

    pub async fn spawn(upstream: SocketAddr, upstream_toxics: Vec<Toxic>) -> Noxious {
        let port = super::free_port();
        let config = ProxyConfig {
            name: "bench".into(),
            listen: format!("127.0.0.1:{port}"),
            upstream: upstream.to_string(),
            enabled: true,
            rand_seed: Some(1),
        };
        let toxics = Toxics {
            upstream: upstream_toxics,
            downstream: Vec::new(),
        };
        let (listener, info) = ProxyRunner::initialize_proxy::<TcpListener>(config, toxics)
            .await
            .expect("noxious bind");
        let (events, receiver) = bmrng::channel(1);
        let (stop, stopper) = Stop::new();
        let (_close, closer) = Close::new();
        tokio::spawn(async move {
            let _ = ProxyRunner::run_proxy(listener, info, receiver, stop, closer).await;
        });
        Noxious {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stopper: Some(stopper),
            _events: Box::new(events),
        }
    }
}
