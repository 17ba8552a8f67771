//! The chaos proxy and the TCP plan executor over real loopback sockets.
//!
//! Peers are independent of the code under test: plain `std::net` blocking sockets on
//! their own threads, reading with a 1 MiB buffer so that what one read returns is
//! what the kernel had queued — the thing a split or coalescing fault changes. Every
//! wait is bounded (socket timeouts, `DEADLINE`); nothing asserts on timing.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chopstick::chaos::tcp::{read_plan, write_plan, ExecError, ExecOptions, PlanWriter};
use chopstick::chaos::{Ending, Plan, Step};
use chopstick::proxy::{FaultDirection, Hold, PlanSource, ProxyConfig, ProxyHandle};
use chopstick_targets::wire::{FrameLayout, Framing};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Upper bound for any single wait in these tests; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(10);

/// The fd-leak test counts this process's open files and the 256 MiB test saturates
/// the CPUs (a starved reader merges pieces), so those run alone: they take the gate
/// exclusively, every other test shares it.
static GATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|e| e.into_inner())
}

/// Each test builds its runtime after taking the gate: a runtime's own fds (epoll,
/// eventfd) must not appear in the middle of the fd-leak test.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn listener() -> tokio::net::TcpListener {
    chopstick_targets::server::bind("127.0.0.1:0".parse().unwrap(), 128).expect("bind loopback")
}

fn proxy(upstream: SocketAddr, setup: impl FnOnce(&mut ProxyConfig)) -> ProxyHandle {
    let mut config = ProxyConfig::new(upstream);
    setup(&mut config);
    ProxyHandle::spawn(listener(), config).expect("spawn proxy")
}

/// How a peer's reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
    Other(io::ErrorKind),
}

/// Everything a peer read: the bytes, each read's size, and how it ended.
#[derive(Debug)]
struct Reads {
    data: Vec<u8>,
    sizes: Vec<usize>,
    end: End,
}

/// Reads until EOF or error with a 1 MiB buffer; each read waits at most `DEADLINE`.
fn read_all(stream: &mut std::net::TcpStream) -> Reads {
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let mut buf = vec![0u8; 1 << 20];
    let mut reads = Reads {
        data: Vec::new(),
        sizes: Vec::new(),
        end: End::Eof,
    };
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return reads,
            Ok(n) => {
                reads.data.extend_from_slice(&buf[..n]);
                reads.sizes.push(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                reads.end = match e.kind() {
                    io::ErrorKind::ConnectionReset => End::Reset,
                    kind => End::Other(kind),
                };
                return reads;
            }
        }
    }
}

fn connect(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    // A socket the proxy already reset fails these with ECONNRESET; reads will tell.
    let _ = s.set_nodelay(true);
    let _ = s.set_write_timeout(Some(DEADLINE));
    s
}

/// A one-connection upstream on its own thread running `serve`; accepting is bounded.
fn upstream<T: Send + 'static>(
    serve: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<Option<T>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_nodelay(true).unwrap();
                    s.set_write_timeout(Some(DEADLINE)).unwrap();
                    return Some(serve(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    });
    (addr, thread)
}

/// Runs blocking peer code off the runtime, failing the test if it takes too long.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(4 * DEADLINE, tokio::task::spawn_blocking(f))
        .await
        .expect("peer timed out")
        .expect("peer panicked")
}

/// Joins a peer thread from async code, bounded.
async fn join<T: Send + 'static>(thread: JoinHandle<T>) -> T {
    blocking(move || thread.join().expect("peer thread panicked")).await
}

fn reset(stream: std::net::TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; n];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// A plan source that cuts each batch into random chunks of 1..=max bytes.
fn split_plans(max: usize) -> PlanSource {
    PlanSource::new(move |len, _frames, rng| {
        let mut steps = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = rng.random_range(1..=max.min(left));
            steps.push(Step::Write(n));
            left -= n;
        }
        Plan::new(steps)
    })
}

/// A plan source that delivers the stream up to absolute offset `at`, then ends it.
fn cut_at(at: usize, ending: Ending) -> PlanSource {
    let offset = AtomicUsize::new(0);
    PlanSource::new(move |len, _frames, _rng| {
        let before = offset.fetch_add(len, Ordering::SeqCst);
        if before + len <= at {
            return Plan::passthrough(len);
        }
        let end = match ending {
            Ending::Close => Step::Close,
            Ending::Reset => Step::Reset,
        };
        Plan::new(vec![Step::Write(at.saturating_sub(before)), end])
    })
}

async fn wait_idle(handle: &ProxyHandle) {
    let idle = handle
        .counters()
        .wait_until(DEADLINE, |s| s.active == 0)
        .await;
    assert!(idle.is_ok(), "connections left active: {idle:?}");
}

#[test]
fn split_plan_delivers_reads_of_at_most_64_bytes_byte_exact() {
    let _gate = shared();
    runtime().block_on(async {
        const LEN: usize = 1024;
        let data = random_bytes(LEN, 1);
        let sent = data.clone();
        let (up, server) = upstream(move |mut s| {
            s.write_all(&sent).unwrap();
        });
        let proxy = proxy(up, |c| {
            c.plans = Some(split_plans(64));
            c.direction = FaultDirection::Down;
            // The gap must outlast the reader's wake-up latency, or the kernel queues two
            // pieces and one read takes both. 1 ms (the default) suffices on an idle
            // machine; 20 ms survived two busy loops on both cores, 50 ms leaves margin.
            c.min_pause = Duration::from_millis(50);
        });
        let addr = proxy.addr;
        let reads = blocking(move || read_all(&mut connect(addr))).await;
        join(server).await.expect("upstream served");
        assert_eq!(reads.end, End::Eof);
        assert_eq!(reads.data, data, "bytes differ");
        let largest = reads.sizes.iter().max().copied().unwrap_or(0);
        assert!(largest <= 64, "a read returned {largest} bytes");
        assert!(reads.sizes.len() >= LEN / 64);
        wait_idle(&proxy).await;
        proxy.shutdown().await.unwrap();
    })
}

#[test]
fn holding_whole_frames_coalesces_separately_written_frames_into_one_read() {
    let _gate = shared();
    runtime().block_on(async {
        let framing: Framing = "u32be".parse().unwrap();
        let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 10]).collect();
        let (stream, _) = framing.encode_all(&payloads).unwrap();
        let frame_len = stream.len() / payloads.len();
        let (up, server) = upstream(|mut s| read_all(&mut s));
        let batches = Arc::new(Mutex::new(Vec::<Vec<FrameLayout>>::new()));
        let seen = batches.clone();
        let proxy = proxy(up, |c| {
            c.framing = Some(framing);
            c.direction = FaultDirection::Up;
            c.hold = Hold {
                frames: 4,
                max_bytes: 1 << 20,
                // Long enough that the client's pauses never force a partial batch.
                max_wait: Duration::from_secs(2),
                gap: Duration::ZERO,
            };
            c.plans = Some(PlanSource::new(move |len, frames, _rng| {
                seen.lock().unwrap().push(frames.to_vec());
                Plan::passthrough(len)
            }));
        });
        let addr = proxy.addr;
        let sent = stream.clone();
        blocking(move || {
            let mut client = connect(addr);
            for frame in sent.chunks(frame_len) {
                client.write_all(frame).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            client.shutdown(Shutdown::Write).unwrap();
            // Wait for the proxy to pass the FIN on and close.
            read_all(&mut client)
        })
        .await;
        let reads = join(server).await.expect("upstream served");
        assert_eq!(reads.end, End::Eof);
        assert_eq!(reads.data, &stream[..]);
        let largest = reads.sizes.iter().max().copied().unwrap_or(0);
        assert!(
            largest >= 4 * frame_len,
            "no read held 4 frames: {:?}",
            reads.sizes
        );
        let batches = std::mem::take(&mut *batches.lock().unwrap());
        assert_eq!(batches.len(), 2, "{batches:?}");
        for frames in batches.iter() {
            assert_eq!(frames.len(), 4);
            assert_eq!(frames[0].start, 0);
            assert!(frames.iter().all(|f| f.body.len() == 10));
        }
        proxy.shutdown().await.unwrap();
    })
}

#[test]
fn frame_aware_plans_see_frames_relative_to_each_batch_even_when_they_straddle() {
    let _gate = shared();
    runtime().block_on(async {
        let framing: Framing = "u16le".parse().unwrap();
        let payloads: Vec<Vec<u8>> = vec![vec![1; 5], vec![2; 60_000], vec![], vec![3; 7]];
        let (stream, _) = framing.encode_all(&payloads).unwrap();
        let (up, server) = upstream(|mut s| read_all(&mut s));
        let batches = Arc::new(Mutex::new(Vec::<(usize, Vec<FrameLayout>)>::new()));
        let seen = batches.clone();
        let proxy = proxy(up, |c| {
            c.framing = Some(framing);
            c.direction = FaultDirection::Up;
            // Smaller than the big frame: it must go on in clipped pieces.
            c.hold.max_bytes = 16 * 1024;
            c.read_buffer = 4 * 1024;
            c.plans = Some(PlanSource::new(move |len, frames, _rng| {
                seen.lock().unwrap().push((len, frames.to_vec()));
                // Cut right after every length field: where naive receivers break.
                let mut steps = Vec::new();
                let mut at = 0;
                for f in frames {
                    if f.length_field.end > at {
                        steps.push(Step::Write(f.length_field.end - at));
                        at = f.length_field.end;
                    }
                }
                steps.push(Step::Write(len - at));
                Plan::new(steps)
            }));
        });
        let addr = proxy.addr;
        let sent = stream.clone();
        blocking(move || {
            let mut client = connect(addr);
            client.write_all(&sent).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            read_all(&mut client)
        })
        .await;
        let reads = join(server).await.expect("upstream served");
        assert_eq!(reads.data, &stream[..]);
        // Every batch's layouts lie within it, and their bodies add up to the payloads.
        let batches = std::mem::take(&mut *batches.lock().unwrap());
        let mut body_bytes = 0;
        let mut whole_frames = 0;
        for (len, frames) in batches.iter() {
            for f in frames {
                assert!(f.start <= f.length_field.start && f.body.end <= f.end && f.end <= *len);
                body_bytes += f.body.len();
                whole_frames += usize::from(f.length_field.len() == 2 && f.end > f.body.end - 1);
            }
        }
        assert_eq!(body_bytes, payloads.iter().map(Vec::len).sum::<usize>());
        assert!(batches.len() > 1, "the big frame was never clipped");
        assert_eq!(whole_frames, payloads.len(), "each length field seen once");
        proxy.shutdown().await.unwrap();
    })
}

/// Upstream sends 1000 bytes at once and waits for the proxy to end the connection;
/// the proxy cuts the stream at 100 bytes with `ending`. Returns what the client read.
async fn cut_after_100_bytes(ending: Ending) -> (Reads, chopstick::proxy::ProxySnapshot) {
    let data = random_bytes(1000, 2);
    let sent = data.clone();
    let (up, server) = upstream(move |mut s| {
        s.write_all(&sent).unwrap();
        read_all(&mut s)
    });
    let proxy = proxy(up, |c| {
        c.plans = Some(cut_at(100, ending));
        c.direction = FaultDirection::Down;
    });
    let addr = proxy.addr;
    let reads = blocking(move || read_all(&mut connect(addr))).await;
    assert_eq!(reads.data, &data[..100]);
    let upstream_saw = join(server).await.expect("upstream served");
    let expected_upstream_end = match ending {
        Ending::Close => End::Eof,
        Ending::Reset => End::Reset,
    };
    assert_eq!(
        upstream_saw.end, expected_upstream_end,
        "the connection ends both ways"
    );
    wait_idle(&proxy).await;
    let counters = proxy.counters().snapshot();
    proxy.shutdown().await.unwrap();
    (reads, counters)
}

#[test]
fn plan_w_n_reset_gives_exactly_n_bytes_then_econnreset() {
    let _gate = shared();
    runtime().block_on(async {
        let (reads, counters) = cut_after_100_bytes(Ending::Reset).await;
        assert_eq!(reads.data.len(), 100);
        assert_eq!(reads.end, End::Reset);
        assert_eq!(counters.fault_resets, 1);
    })
}

#[test]
fn plan_w_n_close_gives_exactly_n_bytes_then_eof() {
    let _gate = shared();
    runtime().block_on(async {
        let (reads, counters) = cut_after_100_bytes(Ending::Close).await;
        assert_eq!(reads.data.len(), 100);
        assert_eq!(reads.end, End::Eof);
        assert_eq!(counters.fault_closes, 1);
    })
}

#[test]
fn write_plan_over_a_socket_delivers_its_chunks_then_resets() {
    let _gate = shared();
    runtime().block_on(async {
        let data = random_bytes(300, 3);
        let (addr, peer) = upstream(|mut s| read_all(&mut s));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let plan: Plan = "w10 p2000 w20 w70 reset w200".parse().unwrap();
        let (done, stream) = write_plan(stream, &data, &plan, ExecOptions::default())
            .await
            .unwrap();
        assert!(stream.is_none(), "a reset consumes the stream");
        assert_eq!((done.bytes, done.writes), (100, 3));
        assert_eq!(done.ending, Some(Ending::Reset));
        let reads = join(peer).await.expect("peer connected");
        assert_eq!(reads.data, &data[..100]);
        assert_eq!(reads.end, End::Reset);
    })
}

#[test]
fn plan_writer_refuses_reader_steps_and_tops_up_a_short_plan() {
    let _gate = shared();
    runtime().block_on(async {
        let data = random_bytes(50, 4);
        let (addr, peer) = upstream(|mut s| read_all(&mut s));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut writer = PlanWriter::new(ExecOptions::default());
        let refused = writer
            .run(&mut stream, &data, &"w10 r5".parse().unwrap())
            .await;
        assert!(
            matches!(refused, Err(ExecError::UnexpectedStep { .. })),
            "{refused:?}"
        );
        let done = writer
            .run(&mut stream, &data, &"w10 p100".parse().unwrap())
            .await
            .unwrap();
        assert_eq!((done.bytes, done.writes, done.topped_up), (50, 2, true));
        drop(stream);
        let reads = join(peer).await.expect("peer connected");
        assert_eq!(reads.data, data, "nothing written by the refused plan");
        assert_eq!(reads.end, End::Eof);
    })
}

#[test]
fn read_plan_takes_at_most_n_bytes_per_read_until_eof() {
    let _gate = shared();
    runtime().block_on(async {
        let data = random_bytes(100, 5);
        let sent = data.clone();
        let (addr, peer) = upstream(move |mut s| s.write_all(&sent).unwrap());
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        join(peer).await.expect("peer connected");
        let plan: Plan = "r10 s1000 r30 r1000 r10 r10".parse().unwrap();
        let mut out = Vec::new();
        let got = read_plan(&mut stream, &plan, &mut out, ExecOptions::default())
            .await
            .unwrap();
        assert_eq!(out, data);
        assert_eq!((got.bytes, got.reads, got.eof), (100, 3, true));
    })
}

/// A deterministic stream of any length, checkable piece by piece without keeping it:
/// a random 1 MiB block repeated, each copy stamped with its index (so swapped or
/// repeated blocks are caught too).
#[derive(Clone)]
struct Pattern(Arc<Vec<u8>>);

impl Pattern {
    const BLOCK: u64 = 1 << 20;

    fn new(seed: u64) -> Pattern {
        Pattern(Arc::new(random_bytes(Self::BLOCK as usize, seed)))
    }

    /// Fills `out` with the stream's bytes at `pos..pos + out.len()`.
    fn fill(&self, mut pos: u64, mut out: &mut [u8]) {
        while !out.is_empty() {
            let (index, off) = (pos / Self::BLOCK, (pos % Self::BLOCK) as usize);
            let n = out.len().min(Self::BLOCK as usize - off);
            out[..n].copy_from_slice(&self.0[off..off + n]);
            let stamp = index.to_le_bytes();
            for (i, b) in out[..n]
                .iter_mut()
                .enumerate()
                .take(8usize.saturating_sub(off))
            {
                *b = stamp[off + i];
            }
            pos += n as u64;
            out = &mut out[n..];
        }
    }

    /// Writes `len` bytes of the stream, then a FIN.
    fn send(&self, s: &mut std::net::TcpStream, len: u64) {
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            s.write_all(&buf[..n]).unwrap();
            pos += n as u64;
        }
        s.shutdown(Shutdown::Write).unwrap();
    }

    /// Reads to EOF, checking every byte; returns the length, or where it first differed.
    fn check(&self, s: &mut std::net::TcpStream) -> Result<u64, String> {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut expected = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("at {pos}: {e}"))?;
            if n == 0 {
                return Ok(pos);
            }
            self.fill(pos, &mut expected[..n]);
            if buf[..n] != expected[..n] {
                let i = (0..n).find(|&i| buf[i] != expected[i]).unwrap_or(0);
                return Err(format!("byte {} differs", pos + i as u64));
            }
            pos += n as u64;
        }
    }
}

#[test]
fn no_faults_relays_256_mib_each_way_byte_exact() {
    // Alone: it saturates the CPUs, and a starved reader merges other tests' pieces.
    let _gate = exclusive();
    runtime().block_on(async {
        const LEN: u64 = 256 << 20;
        let (up_pattern, down_pattern) = (Pattern::new(10), Pattern::new(11));
        let (p_up, p_down) = (up_pattern.clone(), down_pattern.clone());
        let (up, server) = upstream(move |mut s| {
            let mut writer = s.try_clone().unwrap();
            let sending = std::thread::spawn(move || p_down.send(&mut writer, LEN));
            let got = p_up.check(&mut s);
            sending.join().unwrap();
            got
        });
        let proxy = proxy(up, |_| {});
        let addr = proxy.addr;
        let started = Instant::now();
        let client_got = blocking(move || {
            let mut client = connect(addr);
            let mut writer = client.try_clone().unwrap();
            let sending = std::thread::spawn(move || up_pattern.send(&mut writer, LEN));
            let got = down_pattern.check(&mut client);
            sending.join().unwrap();
            got
        })
        .await;
        let server_got = join(server).await.expect("upstream served");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(server_got, Ok(LEN), "client to upstream");
        assert_eq!(client_got, Ok(LEN), "upstream to client");
        eprintln!(
            "256 MiB each way in {secs:.2} s: {:.0} MiB/s per direction",
            256.0 / secs
        );
        let counters = proxy.counters().snapshot();
        assert_eq!((counters.bytes_up, counters.bytes_down), (LEN, LEN));
        wait_idle(&proxy).await;
        proxy.shutdown().await.unwrap();
    })
}

#[test]
fn half_closed_client_still_receives_the_reply() {
    let _gate = shared();
    runtime().block_on(async {
        let framing: Framing = "u32be".parse().unwrap();
        let plain: fn(&mut ProxyConfig) = |_| {};
        let split_both_ways = move |c: &mut ProxyConfig| {
            c.framing = Some(framing);
            c.plans = Some(split_plans(7));
            c.direction = FaultDirection::Both;
        };
        let setups: [&dyn Fn(&mut ProxyConfig); 2] = [&plain, &split_both_ways];
        for setup in setups {
            let request = framing.encode_all(&[vec![7u8; 300]]).unwrap().0;
            let reply = framing.encode_all(&[b"thanks".to_vec()]).unwrap().0;
            let (sent_reply, expected_request) = (reply.clone(), request.clone());
            // Replies only after the client's FIN: the reply can only arrive if the proxy
            // passed the FIN on and kept the other direction open.
            let (up, server) = upstream(move |mut s| {
                let got = read_all(&mut s);
                s.write_all(&sent_reply).unwrap();
                got
            });
            let proxy = proxy(up, setup);
            let addr = proxy.addr;
            let client_got = blocking(move || {
                let mut client = connect(addr);
                client.write_all(&request).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
                read_all(&mut client)
            })
            .await;
            let server_got = join(server).await.expect("upstream served");
            assert_eq!(server_got.end, End::Eof);
            assert_eq!(server_got.data, expected_request);
            assert_eq!(client_got.end, End::Eof);
            assert_eq!(client_got.data, reply);
            wait_idle(&proxy).await;
            proxy.shutdown().await.unwrap();
        }
    })
}

/// A connection that goes quiet after its first bytes is closed (FIN both ways) once
/// `idle_timeout` passes, by the plain relay and by the faulted one alike.
#[test]
fn quiet_connection_is_closed_with_fins_after_the_idle_timeout() {
    let _gate = shared();
    runtime().block_on(async {
        for faulted in [false, true] {
            let (up, server) = upstream(|mut s| {
                s.write_all(b"hello").unwrap();
                read_all(&mut s)
            });
            let proxy = proxy(up, |c| {
                c.idle_timeout = Duration::from_millis(300);
                if faulted {
                    c.plans = Some(split_plans(2));
                }
            });
            let addr = proxy.addr;
            let client_got = blocking(move || {
                let mut client = connect(addr);
                client.write_all(b"ping").unwrap();
                // No FIN from here: only the idle limit can end this connection.
                read_all(&mut client)
            })
            .await;
            let server_got = join(server).await.expect("upstream served");
            assert_eq!(client_got.data, b"hello", "faulted={faulted}");
            assert_eq!(client_got.end, End::Eof, "faulted={faulted}");
            assert_eq!(server_got.data, b"ping", "faulted={faulted}");
            assert_eq!(server_got.end, End::Eof, "faulted={faulted}");
            wait_idle(&proxy).await;
            proxy.shutdown().await.unwrap();
        }
    })
}

/// A proxy listener whose accepted sockets (the proxy's side towards the client) have a
/// small send buffer, so a client that does not read fills the path quickly.
fn small_sndbuf_listener() -> tokio::net::TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_send_buffer_size(4096).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(16).unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(s.into()).unwrap()
}

/// The stall limit counts from the write that made no progress, not from the last time
/// the relay's buffer was empty: bytes that arrive after a quiet spell, for a
/// destination still full from earlier ones, get the whole `stall_timeout` (as the
/// faulted relay gives them: a timeout around each write). The upstream sends small
/// chunks, each after a quiet spell longer than the stall limit, to a client that never
/// reads, until one chunk cannot be passed on; the reset must not come sooner than the
/// limit after that chunk.
#[test]
fn plain_relay_stall_counts_from_the_blocked_write_not_from_before_a_quiet_spell() {
    const STALL: Duration = Duration::from_millis(40);
    const GAP: Duration = Duration::from_millis(60);
    const CHUNK: usize = 256;
    let _gate = shared();
    runtime().block_on(async {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = ProxyConfig::new(up.local_addr().unwrap());
        config.stall_timeout = STALL;
        config.idle_timeout = Duration::from_secs(30);
        let proxy = ProxyHandle::spawn(small_sndbuf_listener(), config).unwrap();
        let counters = proxy.counters().clone();
        let addr = proxy.addr;
        let (chunk, stalled_after) = blocking(move || {
            let client =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            client.set_recv_buffer_size(2048).unwrap();
            client.connect(&addr.into()).unwrap();
            let (mut server, _) = up.accept().unwrap();
            server.set_nodelay(true).unwrap();
            let mut sent = 0u64;
            // A few dozen chunks fill the path; the bound is far beyond that.
            for i in 0..300 {
                std::thread::sleep(GAP);
                let before = counters.snapshot();
                assert_eq!(before.peer_resets, 0, "reset before chunk {i}");
                assert_eq!(before.bytes_down, sent, "bytes held before chunk {i}");
                let sent_at = Instant::now();
                server.write_all(&[7u8; CHUNK]).unwrap();
                sent += CHUNK as u64;
                // Passed on in full, or blocked: then wait for the stall limit.
                loop {
                    let s = counters.snapshot();
                    if s.bytes_down == sent {
                        break;
                    }
                    if s.peer_resets > 0 {
                        return (i, sent_at.elapsed());
                    }
                    assert!(sent_at.elapsed() < DEADLINE, "neither passed on nor stalled");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            panic!("the client's path never filled up");
        })
        .await;
        assert!(
            stalled_after >= STALL * 9 / 10,
            "chunk {chunk} reset as stalled {stalled_after:?} after it was sent; the limit is {STALL:?}"
        );
        proxy.shutdown().await.unwrap();
    })
}

/// This process's open file descriptors, where the OS lists them.
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// A proxy configured for the vanishing-peer scenarios: short limits so that the
/// slow paths (stalled peer, close linger, shutdown) finish quickly, and with
/// `faulted` a frame-aware split plan both ways, so the executor paths are exercised.
fn fragile_proxy(upstream: SocketAddr, faulted: bool) -> ProxyHandle {
    proxy(upstream, |c| {
        c.stall_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(5);
        c.close_linger = Duration::from_millis(200);
        c.shutdown_grace = Duration::from_millis(200);
        if faulted {
            c.framing = Some(Framing::default());
            c.plans = Some(split_plans(512));
            c.direction = FaultDirection::Both;
        }
    })
}

/// Waits until the proxy has no connection left, then shuts it down.
async fn finish(proxy: ProxyHandle, scenario: &str) {
    let idle = proxy
        .counters()
        .wait_until(DEADLINE, |s| s.active == 0)
        .await;
    assert!(
        idle.is_ok(),
        "{scenario}: connections left active: {idle:?}"
    );
    assert!(!proxy.is_finished(), "{scenario}: the proxy stopped");
    proxy.shutdown().await.unwrap();
}

/// Upstream streams until the proxy gives up on it; the client reads a little, resets.
async fn client_resets_mid_stream(faulted: bool) {
    let (up, server) = upstream(|mut s| {
        let chunk = [0x55u8; 16 * 1024];
        let started = Instant::now();
        while started.elapsed() < DEADLINE && s.write_all(&chunk).is_ok() {}
    });
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    blocking(move || {
        let mut client = connect(addr);
        let mut buf = [0u8; 4096];
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        assert!(client.read(&mut buf).unwrap() > 0);
        reset(client);
    })
    .await;
    join(server).await.expect("upstream served");
    finish(proxy, "client resets mid-stream").await;
}

/// Upstream sends a little, then resets; the client gets the bytes, then the reset.
async fn upstream_resets_mid_stream(faulted: bool) {
    let data = random_bytes(10_000, 6);
    let sent = data.clone();
    let (up, server) = upstream(move |mut s| {
        s.write_all(&sent).unwrap();
        reset(s);
    });
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    let reads = blocking(move || read_all(&mut connect(addr))).await;
    join(server).await.expect("upstream served");
    assert!(data.starts_with(&reads.data), "bytes differ");
    assert_eq!(reads.end, End::Reset, "the RST is passed on");
    finish(proxy, "upstream resets mid-stream").await;
}

/// Nothing listens upstream: the client is reset, the proxy counts it and goes on.
async fn upstream_refuses(faulted: bool) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = closed.local_addr().unwrap();
    drop(closed);
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    for _ in 0..3 {
        let reads = blocking(move || {
            let ended_before_any_byte = |e: io::Error| Reads {
                data: Vec::new(),
                sizes: Vec::new(),
                end: match e.kind() {
                    io::ErrorKind::ConnectionReset => End::Reset,
                    kind => End::Other(kind),
                },
            };
            // The proxy may reset the client before its connect() call has returned.
            match std::net::TcpStream::connect_timeout(&addr, DEADLINE) {
                // The RST may also land before the write, which then reports it (and a
                // read after it would see EOF).
                Ok(mut client) => match client.write_all(b"hello") {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                        ended_before_any_byte(e)
                    }
                    _ => read_all(&mut client),
                },
                Err(e) => ended_before_any_byte(e),
            }
        })
        .await;
        assert!(reads.data.is_empty());
        assert_eq!(reads.end, End::Reset);
    }
    assert_eq!(proxy.counters().snapshot().upstream_failures, 3);
    finish(proxy, "upstream refuses").await;
}

/// The client connects and resets at once, maybe before the upstream is connected.
async fn client_resets_at_once(faulted: bool) {
    let (up, server) = upstream(|mut s| read_all(&mut s));
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    blocking(move || reset(connect(addr))).await;
    let upstream_saw = join(server).await;
    if let Some(reads) = upstream_saw {
        assert!(reads.data.is_empty());
    }
    finish(proxy, "client resets at once").await;
}

/// The upstream closes at once without reading the client's request.
async fn upstream_closes_at_once(faulted: bool) {
    let (up, server) = upstream(drop);
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    let reads = blocking(move || {
        let mut client = connect(addr);
        let _ = client.write_all(&[0, 0, 0, 3, 1, 2, 3]);
        read_all(&mut client)
    })
    .await;
    assert!(reads.data.is_empty());
    assert_ne!(
        reads.end,
        End::Other(io::ErrorKind::WouldBlock),
        "client hung"
    );
    join(server).await.expect("upstream served");
    finish(proxy, "upstream closes at once").await;
}

/// The upstream never reads; the client fills every buffer on the way, then resets.
/// Only the stall limit can notice: the relay is stuck writing to the upstream.
async fn client_floods_a_deaf_upstream_then_resets(faulted: bool) {
    let (up, server) = upstream(|mut s| {
        // Deaf for longer than the proxy's stall limit, then see how it ended.
        std::thread::sleep(Duration::from_millis(1500));
        let mut buf = vec![0u8; 1 << 20];
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    blocking(move || {
        let mut client = connect(addr);
        client.set_nonblocking(true).unwrap();
        let chunk = [0u8; 64 * 1024];
        // Bounded: the buffers on the way hold a few MiB at most.
        for _ in 0..1024 {
            match client.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        reset(client);
    })
    .await;
    join(server).await.expect("upstream served");
    finish(proxy, "client floods a deaf upstream").await;
}

/// A connection still open at shutdown is cut once the grace has passed.
async fn shutdown_cuts_a_live_connection(faulted: bool) {
    let (up, server) = upstream(|mut s| read_all(&mut s));
    let proxy = fragile_proxy(up, faulted);
    let addr = proxy.addr;
    let mut client = blocking(move || connect(addr)).await;
    let active = proxy
        .counters()
        .wait_until(DEADLINE, |s| s.active == 1)
        .await;
    assert!(active.is_ok(), "{active:?}");
    let counters = proxy.counters().clone();
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown is bounded")
        .unwrap();
    assert_eq!(counters.snapshot().active, 0);
    let reads = blocking(move || read_all(&mut client)).await;
    assert_ne!(
        reads.end,
        End::Other(io::ErrorKind::WouldBlock),
        "client hung"
    );
    join(server).await.expect("upstream served");
}

#[test]
fn proxy_survives_vanishing_peers_without_leaking_connections_or_fds() {
    let _gate = exclusive();
    runtime().block_on(async {
        let baseline = open_fds();
        for faulted in [false, true] {
            client_resets_mid_stream(faulted).await;
            upstream_resets_mid_stream(faulted).await;
            upstream_refuses(faulted).await;
            client_resets_at_once(faulted).await;
            upstream_closes_at_once(faulted).await;
            client_floods_a_deaf_upstream_then_resets(faulted).await;
            shutdown_cuts_a_live_connection(faulted).await;
        }
        let Some(baseline) = baseline else {
            eprintln!("no /proc/self/fd here: fd accounting skipped");
            return;
        };
        let started = Instant::now();
        let mut now = open_fds().unwrap_or(0);
        while now > baseline && started.elapsed() < DEADLINE {
            tokio::time::sleep(Duration::from_millis(20)).await;
            now = open_fds().unwrap_or(0);
        }
        assert!(now <= baseline, "{now} fds open, {baseline} before");
    })
}
