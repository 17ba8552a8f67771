//! `chopstick proxy`: a TCP (or, with `--udp`, datagram) relay applying faults to what
//! it passes on; loopback upstreams only.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use chopstick::proxy::FaultDirection;
use chopstick_targets::server;
use chopstick_targets::wire::Framing;
use clap::Args;

use super::{secs, shutdown_signal};

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server to relay to (loopback only).
    #[arg(long)]
    upstream: SocketAddr,
    /// Framing of the relayed stream, so faults cut at frame boundaries (TCP only).
    #[arg(long)]
    framing: Option<Framing>,
    /// Faults: TCP `split`, `boundary`, `coalesce`, `disconnect`, `latency`, `bandwidth`,
    /// `slow`, `mixed` (comma-separated, combined); with --udp `loss:p=0.1`, `dup:p=0.05`,
    /// `reorder:window=4:p=0.2`, `delay:us=1000:jitter_us=500`, `truncate:size=512`.
    #[arg(long, default_value = "")]
    faults: String,
    /// Which way faults apply: up (client to server), down, or both.
    #[arg(long, default_value = "both")]
    direction: FaultDirection,
    /// Master seed (default: random, printed); connection i uses a seed derived from it.
    #[arg(long)]
    seed: Option<u64>,
    /// Relay datagrams instead of a byte stream.
    #[arg(long)]
    udp: bool,
    /// Minimum pause between the pieces of a split write, in milliseconds (shorter
    /// pauses let the kernel merge pieces again on loopback).
    #[arg(long, default_value_t = 1.0)]
    min_pause_ms: f64,
}

pub async fn exec(args: ProxyArgs) -> Result<ExitCode> {
    if !args.upstream.ip().is_loopback() {
        bail!(
            "--upstream {} is not loopback; chopstick only sends traffic to this machine",
            args.upstream
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chopstick proxy: seed {seed}");
    if args.udp {
        let socket = tokio::net::UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut config = chopstick::udp::RelayConfig::new(args.upstream);
        config.faults = args.faults.parse().context("--faults")?;
        config.seed = seed;
        config.direction = args.direction;
        println!("listening on {}", socket.local_addr()?);
        let stats = chopstick::udp::relay::run(socket, config, shutdown_signal()).await?;
        eprintln!("{stats:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let listener = server::bind(args.listen, 1024)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = chopstick::proxy::ProxyConfig::new(args.upstream);
    config.framing = args.framing;
    config.faults = args.faults.replace('+', ",").parse().context("--faults")?;
    config.direction = args.direction;
    config.seed = seed;
    config.min_pause = secs(args.min_pause_ms / 1000.0, "min-pause-ms")?;
    // `coalesce` can only merge frames the relay holds back; hold a few when it is asked for.
    if args.faults.contains("coalesce") || args.faults.contains("mixed") {
        config.hold.frames = config.hold.frames.max(4);
    }
    println!("listening on {}", listener.local_addr()?);
    chopstick::proxy::run(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
