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
    /// The server to relay to (loopback only). Required unless --api.
    #[arg(long, required_unless_present = "api")]
    upstream: Option<SocketAddr>,
    /// Serve Toxiproxy's HTTP API on this loopback address (default 127.0.0.1:8474):
    /// proxies and toxics are then created and changed at run time by any Toxiproxy
    /// client; --listen/--upstream/--faults do not apply.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8474", conflicts_with_all = ["upstream", "udp", "faults", "framing"])]
    api: Option<SocketAddr>,
    /// With --api: a Toxiproxy config file (a JSON list of {name, listen, upstream,
    /// enabled}) whose proxies are created at start.
    #[arg(long, requires = "api")]
    config: Option<std::path::PathBuf>,
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
    /// Allow a non-loopback --listen. The proxy authenticates nobody: whoever reaches
    /// it reaches the upstream (an exec or file server trusts loopback only), so
    /// exposing it must be a deliberate choice.
    #[arg(long)]
    allow_remote: bool,
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
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chopstick proxy: seed {seed}");
    if args.udp && args.record.is_some() {
        bail!("--record records TCP connections; it does not work with --udp");
    }
    let upstream = match (args.api, args.upstream) {
        (Some(api), _) => return serve_api(api, args.config.as_deref(), seed).await,
        (None, Some(upstream)) => upstream,
        (None, None) => bail!("--upstream is required without --api"),
    };
    if !upstream.ip().is_loopback() {
        bail!(
            "--upstream {upstream} is not loopback; chopstick only sends traffic to this machine"
        );
    }
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        bail!(
            "--listen {} is not loopback and the proxy authenticates nobody: anyone who \
             reaches it reaches {upstream}; pass --allow-remote to expose it anyway",
            args.listen
        );
    }
    if args.udp {
        let socket = tokio::net::UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut config = chopstick::udp::RelayConfig::new(upstream);
        config.faults = args.faults.parse().context("--faults")?;
        config.seed = seed;
        config.direction = args.direction;
        let shutdown = shutdown_signal();
        println!("listening on {}", socket.local_addr()?);
        let stats = chopstick::udp::relay::run(socket, config, shutdown).await?;
        eprintln!("{stats:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let listener = server::bind(args.listen, 1024)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = chopstick::proxy::ProxyConfig::new(upstream);
    config.framing = args.framing;
    config.faults = args.faults.replace('+', ",").parse().context("--faults")?;
    config.direction = args.direction;
    config.seed = seed;
    config.min_pause = secs(args.min_pause_ms / 1000.0, "min-pause-ms")?;
    // `coalesce` can only merge frames the relay holds back (its `hold_ms`).
    config.hold = chopstick::proxy::Hold::for_faults(&config.faults);
    let shutdown = shutdown_signal();
    let Some(path) = args.record else {
        println!("listening on {}", listener.local_addr()?);
        chopstick::proxy::run(listener, config, shutdown).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(framing) = args.framing else {
        bail!("--record needs --framing: frames are what a recording holds");
    };
    let reply_framing = args.reply_framing.unwrap_or(framing);
    for (flag, f) in [("--framing", framing), ("--reply-framing", reply_framing)] {
        if matches!(f, Framing::Length(l) if l.offset > 0 && !l.keep) {
            // The bytes before the length field would be replayed as zeros.
            eprintln!(
                "chopstick proxy: warning: {flag} {f} records only what follows the length \
                 field; add `,keep` to record whole frames (e.g. memcached's header)"
            );
        }
    }
    let recorder = Recorder::create(RecordConfig {
        path: path.clone(),
        framing,
        reply_framing,
        max_bytes: args.record_max,
        upstream: upstream.to_string(),
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
    let ran = chopstick::proxy::run(listener, config, shutdown).await;
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

/// `--api`: Toxiproxy's HTTP API until Ctrl-C.
async fn serve_api(
    api: SocketAddr,
    config: Option<&std::path::Path>,
    seed: u64,
) -> Result<ExitCode> {
    use chopstick::proxy::api::{self, ApiSettings, Registry};
    if !api.ip().is_loopback() {
        bail!("--api {api} is not loopback; the API has no authentication");
    }
    let listener = server::bind(api, 1024).with_context(|| format!("cannot listen on {api}"))?;
    let registry = std::sync::Arc::new(Registry::new(ApiSettings {
        seed,
        ..ApiSettings::default()
    }));
    if let Some(path) = config {
        let n = api::load_config(&registry, path).await?;
        eprintln!("chopstick proxy: {n} proxies from {}", path.display());
    }
    let shutdown = shutdown_signal();
    println!("api listening on {}", listener.local_addr()?);
    api::run(listener, registry, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
