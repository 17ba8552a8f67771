//! The UDP echo and time servers over real loopback sockets, the way `nc -u` talks to
//! them: one datagram in, one datagram out.

use std::net::SocketAddr;
use std::time::Duration;

use chopstick_targets::echo::Transform;
use chopstick_targets::udp::{self, strftime, Config, Mode, UdpHandle};
use tokio::net::UdpSocket;

/// Upper bound for any single wait; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(10);

fn start(config: Config) -> UdpHandle {
    let socket = udp::bind("127.0.0.1:0".parse().unwrap()).expect("bind loopback");
    UdpHandle::spawn(socket, config).unwrap()
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends one datagram and waits for one reply from `server`.
async fn ask(sock: &UdpSocket, server: SocketAddr, request: &[u8]) -> Vec<u8> {
    sock.send_to(request, server).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf))
        .await
        .expect("reply timed out")
        .unwrap();
    assert_eq!(from, server, "reply comes from the server's address");
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn echo_answers_each_datagram_with_the_same_bytes() {
    let server = start(Config::default());
    let sock = client().await;
    assert_eq!(ask(&sock, server.addr, b"hello\n").await, b"hello\n");
    assert_eq!(
        ask(&sock, server.addr, b"").await,
        b"",
        "empty datagram, empty reply"
    );
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(ask(&sock, server.addr, &big).await, big);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn echo_upper_transform_upper_cases_ascii_only() {
    let server = start(Config {
        transform: Transform::Upper,
        ..Config::default()
    });
    let sock = client().await;
    assert_eq!(
        ask(&sock, server.addr, b"abc-xyz \xe9").await,
        b"ABC-XYZ \xe9"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_request_is_reported_as_truncated_and_counted() {
    let config = Config {
        max_datagram: 100,
        ..Config::default()
    };
    let counters = config.counters.clone();
    let server = start(config);
    let sock = client().await;
    let exact = vec![b'a'; 100];
    assert_eq!(
        ask(&sock, server.addr, &exact).await,
        exact,
        "exactly max is served"
    );
    let over = vec![b'b'; 5000];
    let reply = ask(&sock, server.addr, &over).await;
    assert!(
        reply.starts_with(b"!truncated max=100 head=bbbb"),
        "got {:?}",
        String::from_utf8_lossy(&reply)
    );
    let snap = counters
        .wait_until(DEADLINE, |s| s.replies_out == 2)
        .await
        .unwrap();
    assert_eq!((snap.datagrams_in, snap.truncated), (2, 1));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_with_empty_request_returns_default_format_near_now() {
    let server = start(Config {
        mode: Mode::Time,
        ..Config::default()
    });
    let sock = client().await;
    let before = strftime::unix_now();
    let reply = ask(&sock, server.addr, b"").await;
    let after = strftime::unix_now();
    let reply = String::from_utf8(reply).unwrap();
    let matches = (before - 1..=after + 1).any(|t| {
        strftime::format(
            strftime::DEFAULT_FORMAT.as_bytes(),
            &strftime::UtcTime::from_unix(t),
            64,
        )
        .unwrap()
            == reply.as_bytes()
    });
    assert!(matches, "{reply:?} is not %Y-%m-%d %H:%M:%S near now");
    assert_eq!(reply.len(), "2024-01-01 00:00:00".len());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_formats_the_requested_subset() {
    let server = start(Config {
        mode: Mode::Time,
        ..Config::default()
    });
    let sock = client().await;
    let before = strftime::unix_now();
    let reply = ask(&sock, server.addr, b"id=7 %s %Z %%").await;
    let after = strftime::unix_now();
    let text = String::from_utf8(reply).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], "id=7");
    let secs: i64 = parts[1].parse().unwrap();
    assert!(
        (before..=after).contains(&secs),
        "{secs} not in {before}..={after}"
    );
    assert_eq!(&parts[2..], ["UTC", "%"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn many_peers_are_served_independently() {
    let server = start(Config::default());
    let mut socks = Vec::new();
    for _ in 0..8 {
        socks.push(client().await);
    }
    for (i, s) in socks.iter().enumerate() {
        let msg = format!("peer {i}");
        assert_eq!(ask(s, server.addr, msg.as_bytes()).await, msg.as_bytes());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_port_works_at_once() {
    let server = start(Config::default());
    let addr = server.addr;
    server.shutdown().await.unwrap();
    let again = UdpHandle::spawn(udp::bind(addr).unwrap(), Config::default()).unwrap();
    let sock = client().await;
    assert_eq!(ask(&sock, addr, b"again").await, b"again");
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_config_ends_run_with_config_error() {
    let socket = udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let bad = Config {
        max_datagram: 0,
        ..Config::default()
    };
    let result = udp::run(socket, bad, std::future::pending()).await;
    assert!(matches!(
        result,
        Err(chopstick_targets::server::ServerError::Config(_))
    ));
}
