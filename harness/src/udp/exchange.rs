//! One UDP exchange: the check's requests sent through the datagram faults (the same
//! [`Shaper`] the relay uses) to a target address, with a bounded window of requests in
//! flight, and what came back. Shared by the check ([`super::check`]) and replays
//! ([`super::repro`]), which import it and never each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::fault::{DatagramFaults, Fate};
use super::shaper::{Datagram, Shaper};
use crate::campaign::payload::Payload;
use chopstick_targets::udp::strftime;

/// Receive buffer for one reply: the largest datagram there is.
const RECV_BUF: usize = 65_536;
/// Socket receive buffer asked of the kernel, for a burst of replies.
const SOCKET_RECV_BUF_BYTES: usize = 4 << 20;

/// Counts per fault, injected by the check or observed in the replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FaultCounts {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub truncated: u64,
    pub corrupted: u64,
    pub delayed: u64,
}

/// One request as sent: its tag number, bytes and fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    pub request: Payload,
    pub fate: Fate,
}

/// What one exchange saw.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Per request (by position): what the target received (last copy) and how often.
    pub delivered: Vec<Option<Bytes>>,
    pub copies: Vec<u32>,
    pub sent_unix: Vec<Option<i64>>,
    /// Replies in arrival order, with the UTC second they arrived.
    pub replies: Vec<(Bytes, i64)>,
    pub injected: FaultCounts,
    pub sent: u64,
    pub timed_out: bool,
}

/// Knobs of the exchange, separate from the target so replays reuse them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub window: usize,
    pub reply_timeout: Duration,
    pub deadline: Duration,
}

impl Params {
    /// The exchange's knobs for a run with `faults`. A held datagram waits for up to
    /// `reorder window - 1` later ones; the send window must let that many through,
    /// or holds end by timeout instead of by reordering.
    pub(crate) fn new(
        window: usize,
        faults: &DatagramFaults,
        reply_timeout: Duration,
        deadline: Duration,
    ) -> Params {
        let reorder = faults.reorder.map_or(0, |(w, _)| w as usize);
        Params {
            window: window.max(reorder + 1),
            reply_timeout,
            deadline,
        }
    }
}

/// Sends `requests` to `addr` as their fates say and collects the replies.
pub(crate) async fn exchange(
    addr: SocketAddr,
    requests: &[Request],
    p: Params,
) -> std::io::Result<Exchange> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        "[::1]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    // Room for a burst of replies; the kernel may cap it, which only costs speed.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(SOCKET_RECV_BUF_BYTES);
    let n = requests.len();
    let mut x = Exchange {
        delivered: vec![None; n],
        copies: vec![0; n],
        sent_unix: vec![None; n],
        ..Exchange::default()
    };
    let index: HashMap<u64, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.seq, i))
        .collect();
    let mut shaper = Shaper::default();
    let mut buf = vec![0u8; RECV_BUF];
    let hard = Instant::now() + p.deadline;
    let (mut next, mut closed, mut written_off, mut pushed) = (0usize, false, 0u64, 0u64);
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if now >= hard {
            x.timed_out = true;
            break;
        }
        while let Some(Datagram { seq, bytes }) = shaper.pop_due(now) {
            let i = index[&seq];
            // A send error (ICMP from a dead target) is one lost datagram, not the end.
            if sock.send_to(&bytes, addr).await.is_ok() {
                x.copies[i] += 1;
                x.sent_unix[i].get_or_insert_with(strftime::unix_now);
                x.delivered[i] = Some(bytes);
                x.sent += 1;
            }
        }
        // Copies pushed into the shaper count as awaited from the moment they are
        // pushed, so delayed and held datagrams cannot sneak past the window as a burst.
        let awaited = pushed.saturating_sub(x.replies.len() as u64 + written_off);
        if next < n && (awaited as usize) < p.window.max(1) {
            let r = &requests[next];
            pushed += u64::from(r.fate.copies);
            let a = shaper.push(
                now,
                &r.fate,
                Datagram {
                    seq: r.seq,
                    bytes: r.request.0.clone(),
                },
            );
            let c = &mut x.injected;
            c.lost += u64::from(a.lost);
            c.duplicated += u64::from(a.duplicated);
            c.reordered += u64::from(a.reordered);
            c.truncated += u64::from(a.truncated);
            c.delayed += u64::from(a.delayed);
            next += 1;
            last_progress = now;
            continue;
        }
        if next == n && !closed {
            shaper.close(now);
            closed = true;
            continue;
        }
        let quiet = now.duration_since(last_progress) >= p.reply_timeout;
        if closed && shaper.is_empty() && (awaited == 0 || quiet) {
            break;
        }
        if quiet && next < n {
            // Stop waiting for replies that are not coming; they are judged lost later.
            written_off += awaited;
            last_progress = now;
            continue;
        }
        let mut wake = (last_progress + p.reply_timeout).min(hard);
        if let Some(w) = shaper.next_wake() {
            wake = wake.min(w);
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    if from == addr {
                        x.replies.push((Bytes::copy_from_slice(&buf[..len]), strftime::unix_now()));
                        last_progress = Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    Ok(x)
}
