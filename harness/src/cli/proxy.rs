//! `chopstick proxy`: a TCP (or, with `--udp`, datagram) relay applying faults to what
//! it passes on; loopback upstreams only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use chopstick::proxy::FaultDirection;
use chopstick::traffic::{RecordConfig, Recorder, FLUSH_INTERVAL};
use chopstick_targets::server;
use chopstick_targets::wire::Framing;
use clap::Args;

use super::{secs, shutdown_signal, size_arg};

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
    /// Record every connection's request and reply frames into this traffic file
    /// (needs --framing; written every 2 s and at exit; see README "Real traffic").
    #[arg(long)]
    record: Option<PathBuf>,
    /// Bound on the recording (roughly its file size); later frames are left out and
    /// the file says `"truncated": true`.
    #[arg(long, value_parser = size_arg, default_value = "64MiB")]
    record_max: usize,
    /// Framing of the server's replies, when it is not --framing's (for --record).
    #[arg(long)]
    reply_framing: Option<Framing>,
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
    if args.udp && args.record.is_some() {
        bail!("--record records TCP connections; it does not work with --udp");
    }
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
    let Some(path) = args.record else {
        println!("listening on {}", listener.local_addr()?);
        chopstick::proxy::run(listener, config, shutdown_signal()).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(framing) = args.framing else {
        bail!("--record needs --framing: frames are what a recording holds");
    };
    let recorder = Recorder::create(RecordConfig {
        path: path.clone(),
        framing,
        reply_framing: args.reply_framing.unwrap_or(framing),
        max_bytes: args.record_max,
        upstream: args.upstream.to_string(),
    })?;
    config.recorder = Some(recorder.clone());
    println!("listening on {}", listener.local_addr()?);
    eprintln!("recording to {}", path.display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flusher = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            recorder
                .flush_every(FLUSH_INTERVAL, async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let ran = chopstick::proxy::run(listener, config, shutdown_signal()).await;
    let _ = stop.send(());
    let _ = flusher.await;
    // The last write happens whatever the relay's fate: it holds the frames so far.
    recorder.finish()?;
    let file = recorder.snapshot();
    eprintln!(
        "recorded {} connection(s) to {}{}",
        file.connections.len(),
        path.display(),
        if file.truncated {
            " (truncated at --record-max)"
        } else {
            ""
        }
    );
    ran?;
    Ok(ExitCode::SUCCESS)
}
