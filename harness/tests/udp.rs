//! The UDP check, relay and reproducers over real loopback sockets: each datagram fault
//! against the reference servers, a broken and a correct Python receiver, and the
//! relay's measured fault rates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chopstick::chaos::Direction;
use chopstick::udp::check::{FailureKind, UdpCheckConfig, UdpOracle};
use chopstick::udp::relay::{self, FaultDirection, RelayConfig, RelayStats};
use chopstick::udp::{replay, run_check, DatagramFaults, UdpReproducer, UdpTarget, UdpTargetError};
use chopstick_targets::echo::Transform;
use chopstick_targets::udp::{self as server, Mode, UdpHandle};
use tokio::net::UdpSocket;

/// Upper bound for any single wait; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(20);
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

fn zoo(file: &str) -> String {
    format!(
        "python3 {}/tests/zoo/{file} {{port}}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn reference(mode: Mode, transform: Transform, max_datagram: usize) -> UdpHandle {
    let socket = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = server::Config {
        mode,
        transform,
        max_datagram,
        ..server::Config::default()
    };
    UdpHandle::spawn(socket, config).unwrap()
}

fn check_config(target: UdpTarget, oracle: UdpOracle, faults: &str, seed: u64) -> UdpCheckConfig {
    let mut c = UdpCheckConfig::new(target, oracle);
    c.faults = faults.parse().unwrap();
    c.seed = seed;
    c.datagrams = 200;
    c
}

/// Runs the check against the in-process echo server with one fault; the report must
/// have no failure, and returns it for fault-specific assertions.
async fn echo_with_fault(faults: &str) -> chopstick::udp::UdpCheckReport {
    let server = reference(Mode::Echo, Transform::None, server::MAX_UDP_PAYLOAD);
    let config = check_config(UdpTarget::Connect(server.addr), UdpOracle::Echo, faults, 11);
    let report = run_check(&config).await.unwrap();
    println!("{}", report.summary());
    assert!(report.passed(), "{:#?}", report.failures);
    server.shutdown().await.unwrap();
    report
}

#[tokio::test]
async fn loss_fault_is_observed_as_exactly_the_injected_losses() {
    let r = echo_with_fault("loss:p=0.2").await;
    assert!(r.injected.lost > 10);
    assert_eq!(r.observed.lost, r.injected.lost);
}

#[tokio::test]
async fn dup_fault_is_observed_as_exactly_the_injected_duplicates() {
    let r = echo_with_fault("dup:p=0.2").await;
    assert!(r.injected.duplicated > 10);
    assert_eq!(r.observed.duplicated, r.injected.duplicated);
    assert_eq!(r.replies, 200 + r.injected.duplicated);
}

#[tokio::test]
async fn reorder_fault_shows_up_as_reordered_replies() {
    let r = echo_with_fault("reorder:window=4:p=0.3").await;
    assert!(r.injected.reordered > 20);
    assert!(r.observed.reordered > 0, "{}", r.summary());
    assert_eq!(r.observed.lost, 0);
}

#[tokio::test]
async fn delay_fault_delays_every_datagram_without_failures() {
    let r = echo_with_fault("delay:us=2000:jitter_us=1000").await;
    assert!(r.injected.delayed > 190);
    assert_eq!(r.observed.lost, 0);
}

#[tokio::test]
async fn truncate_fault_is_observed_and_not_blamed_on_the_receiver() {
    let r = echo_with_fault("truncate:size=512").await;
    assert!(r.injected.truncated > 50);
    assert_eq!(r.observed.truncated, r.injected.truncated);
}

#[tokio::test]
async fn all_faults_at_once_against_upper_and_time_servers_pass() {
    let faults = "loss:p=0.1,dup:p=0.1,reorder:window=4:p=0.2,delay:us=500:jitter_us=500";
    let upper = reference(Mode::Echo, Transform::Upper, server::MAX_UDP_PAYLOAD);
    let r = run_check(&check_config(
        UdpTarget::Connect(upper.addr),
        UdpOracle::Upper,
        faults,
        3,
    ))
    .await
    .unwrap();
    assert!(r.passed(), "{}: {:#?}", r.summary(), r.failures);
    let time = reference(Mode::Time, Transform::None, server::MAX_UDP_PAYLOAD);
    let r = run_check(&check_config(
        UdpTarget::Connect(time.addr),
        UdpOracle::Time,
        faults,
        3,
    ))
    .await
    .unwrap();
    assert!(r.passed(), "{}: {:#?}", r.summary(), r.failures);
    assert!(r.replies > 150);
}

#[tokio::test]
async fn server_with_small_limit_reports_truncation_and_passes() {
    let server = reference(Mode::Echo, Transform::None, 1000);
    let r = run_check(&check_config(
        UdpTarget::Connect(server.addr),
        UdpOracle::Echo,
        "",
        4,
    ))
    .await
    .unwrap();
    assert!(r.passed(), "{:#?}", r.failures);
    assert!(r.truncation_reported > 20, "{}", r.summary());
    assert_eq!(
        r.observed.lost, 0,
        "a truncation report answers its request"
    );
}

#[tokio::test]
async fn wrong_oracle_is_caught_as_corruption() {
    let server = reference(Mode::Echo, Transform::None, server::MAX_UDP_PAYLOAD);
    let r = run_check(&check_config(
        UdpTarget::Connect(server.addr),
        UdpOracle::Upper,
        "",
        5,
    ))
    .await
    .unwrap();
    assert!(r.failures.iter().any(|f| f.kind == FailureKind::Corrupted));
}

#[tokio::test]
async fn correct_python_receiver_has_zero_failures_over_five_seeds() {
    for seed in SEEDS {
        let config = check_config(
            UdpTarget::Spawn(zoo("udp_correct.py")),
            UdpOracle::Echo,
            "loss:p=0.05,dup:p=0.05,reorder:window=4:p=0.1",
            seed,
        );
        let r = run_check(&config).await.unwrap();
        println!("{}", r.summary());
        assert!(r.passed(), "seed {seed}: {:#?}", r.failures);
        assert!(r.replies > 150);
    }
}

#[tokio::test]
async fn broken_python_receiver_is_caught_for_truncation_with_replayable_reproducer() {
    let dir = tempfile::tempdir().unwrap();
    for seed in SEEDS {
        let mut config = check_config(
            UdpTarget::Spawn(zoo("udp_broken.py")),
            UdpOracle::Echo,
            "",
            seed,
        );
        config.artifacts = Some(dir.path().to_path_buf());
        let r = run_check(&config).await.unwrap();
        println!("{}", r.summary());
        assert!(!r.passed(), "seed {seed}: broken receiver not caught");
        assert!(
            r.failures
                .iter()
                .all(|f| f.kind == FailureKind::SilentTruncation),
            "seed {seed}: {:#?}",
            r.failures
        );
        let path = r.reproducer.expect("a reproducer is written");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["seed"], seed);
        for field in ["target", "faults", "datagrams", "failures"] {
            assert!(json.get(field).is_some(), "reproducer lacks {field}");
        }
        let failure = &json["failures"][0];
        assert_eq!(failure["kind"], "silent_truncation");
        assert!(failure["expected"].is_string() || failure["expected"].is_object());
        assert!(failure["seen"].is_string() || failure["seen"].is_object());
        let repro = UdpReproducer::read(&path).unwrap();
        assert!(
            repro.datagrams.len() < repro.original_datagrams,
            "shrunk to the failing datagrams"
        );
        assert!(repro.datagrams.iter().all(|d| d.request.0.len() > 1024));
        let outcome = replay(&repro, 3).await.unwrap();
        assert!(
            outcome.confirmed,
            "seed {seed}: replay did not confirm: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn reproducer_of_correct_receiver_does_not_confirm() {
    // The replay compares, it does not rubber-stamp: the broken case replayed against
    // the correct receiver is not confirmed.
    let dir = tempfile::tempdir().unwrap();
    let mut config = check_config(
        UdpTarget::Spawn(zoo("udp_broken.py")),
        UdpOracle::Echo,
        "",
        1,
    );
    config.artifacts = Some(dir.path().to_path_buf());
    let r = run_check(&config).await.unwrap();
    let mut repro = UdpReproducer::read(&r.reproducer.unwrap()).unwrap();
    repro.target = UdpTarget::Spawn(zoo("udp_correct.py"));
    let outcome = replay(&repro, 1).await.unwrap();
    assert!(
        !outcome.confirmed && outcome.failures.is_empty(),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn non_loopback_target_is_refused() {
    let config = check_config(
        UdpTarget::Connect("192.0.2.7:9".parse().unwrap()),
        UdpOracle::Echo,
        "",
        1,
    );
    let err = run_check(&config).await.unwrap_err();
    assert!(matches!(
        err,
        chopstick::udp::UdpCheckError::Target(UdpTargetError::NotLoopback(_))
    ));
}

#[tokio::test]
async fn target_dying_at_start_is_reported_with_its_stderr() {
    let cmd =
        "python3 -c 'import sys; sys.stderr.write(\"no port for me\\n\"); sys.exit(3)' {port}";
    let config = check_config(UdpTarget::Spawn(cmd.into()), UdpOracle::Echo, "", 1);
    match run_check(&config).await.unwrap_err() {
        chopstick::udp::UdpCheckError::Target(UdpTargetError::DiedAtStart { stderr, .. }) => {
            assert!(stderr.contains("no port for me"), "{stderr}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

struct Relay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<relay::RelaySnapshot, relay::RelayError>>,
}

async fn start_relay(
    upstream: SocketAddr,
    faults: &str,
    seed: u64,
    direction: FaultDirection,
) -> Relay {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
    let addr = socket.local_addr().unwrap();
    let mut config = RelayConfig::new(upstream);
    config.faults = faults.parse().unwrap();
    config.seed = seed;
    config.direction = direction;
    let stats = config.stats.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay::run(socket, config, async move {
        let _ = stopped.await;
    }));
    Relay {
        addr,
        stats,
        stop,
        task,
    }
}

/// Sends `n` datagrams through the relay and collects the replies until quiet.
async fn through(relay: SocketAddr, n: usize, size: usize) -> Vec<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..n {
        let mut d = format!("#{i:08x}#").into_bytes();
        d.resize(size.max(10), b'x');
        sock.send_to(&d, relay).await.unwrap();
        // Paced: the replies must not overflow our receive buffer.
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    {
        out.push(buf[..len].to_vec());
    }
    out
}

#[tokio::test]
async fn relay_truncates_real_datagrams_to_the_configured_size() {
    let server = reference(Mode::Echo, Transform::None, server::MAX_UDP_PAYLOAD);
    let relay = start_relay(server.addr, "truncate:size=100", 1, FaultDirection::Up).await;
    let replies = through(relay.addr, 20, 1000).await;
    assert_eq!(replies.len(), 20);
    assert!(replies.iter().all(|r| r.len() == 100));
    assert_eq!(relay.stats.snapshot().up.truncated, 20);
    let _ = relay.stop.send(());
    relay.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn relay_applies_loss_and_duplication_to_replies_when_asked() {
    let server = reference(Mode::Echo, Transform::None, server::MAX_UDP_PAYLOAD);
    let relay = start_relay(server.addr, "loss:p=0.3,dup:p=0.3", 5, FaultDirection::Down).await;
    let replies = through(relay.addr, 100, 32).await;
    let snap = relay.stats.snapshot();
    assert_eq!(snap.up.lost + snap.up.duplicated, 0, "requests untouched");
    assert_eq!(snap.down.received, 100);
    assert_eq!(
        replies.len() as u64,
        100 - snap.down.lost + snap.down.duplicated
    );
    assert!(snap.down.lost > 0 && snap.down.duplicated > 0);
    let _ = relay.stop.send(());
    relay.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn relay_reorders_and_delays_within_the_window() {
    let server = reference(Mode::Echo, Transform::None, server::MAX_UDP_PAYLOAD);
    let relay = start_relay(
        server.addr,
        "reorder:window=3:p=0.3,delay:us=300:jitter_us=0",
        8,
        FaultDirection::Up,
    )
    .await;
    let replies = through(relay.addr, 100, 16).await;
    assert_eq!(replies.len(), 100, "reordering loses nothing");
    let seqs: Vec<u64> = replies
        .iter()
        .map(|r| u64::from_str_radix(std::str::from_utf8(&r[1..9]).unwrap(), 16).unwrap())
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(seqs, sorted, "something was reordered");
    let snap = relay.stats.snapshot();
    assert!(snap.up.reordered > 0);
    assert_eq!(snap.up.delayed, 100);
    let _ = relay.stop.send(());
    relay.task.await.unwrap().unwrap();
}

/// The relay's measured loss, duplication and reordering rates over 100 000 datagrams
/// match the configured rates.
///
/// Tolerance: each count is Binomial(n, p) (loss over all n received; duplication and
/// reordering over the n' datagrams that survived loss, as the fates draw them). We
/// allow 5 standard deviations, sqrt(n p (1-p)): for loss p=0.1, n=100 000 that is
/// 5 x 94.9 = 474 datagrams (0.47 percentage points); the chance of a correct
/// implementation landing outside is 5.7e-7 per count. And the test cannot flake: the
/// n-th datagram's fate is a pure function of (seed, n), so with this seed the counts
/// are always the same, and they are also checked to equal the fates computed directly.
#[tokio::test]
async fn relay_rates_over_100k_datagrams_match_configuration_within_5_sigma() {
    const N: u64 = 100_000;
    const SEED: u64 = 0x00c0_ffee;
    let faults = "loss:p=0.1,dup:p=0.05,reorder:window=4:p=0.2";
    println!("seed {SEED} faults {faults}");
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let sunk = Arc::new(AtomicU64::new(0));
    let counter = sunk.clone();
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while sink.recv_from(&mut buf).await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let relay = start_relay(sink_addr, faults, SEED, FaultDirection::Up).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Send in small batches and wait for the relay to take each in, so the kernel
    // never drops on the way to the relay; if it did, we simply send more (the fates
    // belong to the relay's receive index, so the counts are unaffected).
    let mut rounds = 0;
    loop {
        let received = relay.stats.snapshot().up.received;
        if received >= N {
            break;
        }
        rounds += 1;
        assert!(rounds < 20_000, "relay is not taking datagrams in");
        let batch = (N - received).min(64);
        for i in 0..batch {
            client
                .send_to(&(received + i).to_be_bytes(), relay.addr)
                .await
                .unwrap();
        }
        let _ = relay
            .stats
            .wait_until(DEADLINE, |s| s.up.received >= received + batch)
            .await;
    }
    let snap = relay.stats.snapshot().up;
    assert_eq!(snap.received, N);

    // The same counts, computed from the fates directly.
    let f: DatagramFaults = faults.parse().unwrap();
    let fates: Vec<_> = (0..N).map(|i| f.fate(SEED, Direction::Up, i)).collect();
    let count = |pred: &dyn Fn(&chopstick::udp::Fate) -> bool| {
        fates.iter().filter(|x| pred(x)).count() as u64
    };
    assert_eq!(snap.lost, count(&|x| x.copies == 0));
    assert_eq!(snap.duplicated, count(&|x| x.copies == 2));
    assert_eq!(snap.reordered, count(&|x| x.hold > 0));

    let within = |name: &str, observed: u64, n: u64, p: f64| {
        let (n, o) = (n as f64, observed as f64);
        let sigma = (n * p * (1.0 - p)).sqrt();
        let dev = (o - n * p).abs() / sigma;
        println!(
            "{name}: {observed}/{n} = {:.5} (configured {p}), {dev:.2} sigma, tolerance 5 sigma = +-{:.5}",
            o / n,
            5.0 * sigma / n
        );
        assert!(dev <= 5.0, "{name} rate off by {dev:.2} sigma");
    };
    let survivors = N - snap.lost;
    within("loss", snap.lost, N, 0.1);
    within("dup", snap.duplicated, survivors, 0.05);
    within("reorder", snap.reordered, survivors, 0.2);

    // Everything the relay sent reached the sink (paced, loopback): survivors + dups.
    let expected_out = survivors + snap.duplicated;
    let start = std::time::Instant::now();
    while sunk.load(Ordering::Relaxed) < expected_out && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap_all = relay.stats.snapshot();
    assert_eq!(
        snap_all.up.sent, expected_out,
        "relay sent survivors plus duplicates"
    );
    let _ = relay.stop.send(());
    relay.task.await.unwrap().unwrap();
    drain.abort();
}
