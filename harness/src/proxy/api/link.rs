//! One connection of an API-managed proxy: two directions. While no toxic of a
//! direction's stream (`upstream` = client to server) applies, it is a plain relay, each
//! read written at once; while one does, a reader queues timestamped chunks and a writer
//! passes them through the toxics, read afresh for every chunk so changes apply live.
//!
//! Per chunk, in this order (a toxic's `toxicity` is drawn once per connection, and
//! again when the toxic is updated):
//! - `reset_peer`: the chunk is dropped and the connection reset `timeout` ms after the
//!   first chunk that met the toxic (0 = at once);
//! - `timeout`: the chunk is dropped; the connection closes `timeout` ms after the
//!   last chunk (or after the toxic appeared); 0 = data is dropped for as long as the
//!   toxic stays, bounded by the connection's idle timeout;
//! - `limit_data`: the connection closes once `bytes` have passed this way;
//! - `latency`: the chunk goes on `latency ± jitter` ms after it was read (measured from
//!   its arrival, so a stream is delayed, not slowed; several latency toxics: the
//!   largest delay, as in Toxiproxy);
//! - `coalesce` (chopstick's): chunks that follow each other within `hold_ms` are
//!   gathered first (at most `max * hold_ms`), so there are frames to merge;
//! - cuts: `slicer` (bisection into slices of about `average_size`, `delay` µs apart)
//!   and chopstick's `split`/`boundary`/`coalesce`/`disconnect` plans (frame-aware with
//!   `framing`; a toxic added mid-stream follows frames from its first chunk, and
//!   falls back to unframed cuts if that is not a frame start) are merged into one plan;
//! - `bandwidth`: every write is paced at `rate` KB/s, in pieces of at most 100 ms;
//! - `slow_close`: the FIN passed on at the end waits `delay` ms.
//!
//! Endings are the plain relay's: FIN is passed on as FIN (half-close: the other way
//! keeps flowing), RST as RST; a toxic's close sends FINs both ways, a reset RSTs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use socket2::SockRef;
use std::collections::VecDeque;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::registry::{toxic_seed, ToxicList};
use super::toxic::{Kind, Toxic};
use super::ApiSettings;
use crate::chaos::faults::{Events, FaultSpec};
use crate::chaos::tcp::{drain_unsent, ExecOptions, PlanWriter};
use crate::chaos::{conn_rng, Direction, Ending, Plan, Step};
use crate::proxy::{Chaos, Hold};
use chopstick_targets::wire::FrameScanner;

/// What every connection of one proxy shares.
pub(crate) struct LinkCtx {
    pub proxy: String,
    pub upstream: SocketAddr,
    pub toxics: watch::Receiver<ToxicList>,
    pub settings: ApiSettings,
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// FIN passed on; the other direction may go on.
    Eof,
    /// The whole connection closes (FIN both ways).
    Close,
    /// The whole connection resets.
    Reset,
}

/// What the reader hands the writer.
enum Input {
    Data(Instant, Bytes),
    Eof,
    Failed,
}

/// Milliseconds since the connection started at its last byte read either way.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Relays one accepted connection until both directions end or one ends it.
pub(crate) async fn serve(client: TcpStream, conn: u64, ctx: &LinkCtx) {
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(
        ctx.settings.connect_timeout,
        TcpStream::connect(ctx.upstream),
    );
    let mut upstream = match connect.await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::info!(proxy = %ctx.proxy, conn, upstream = %ctx.upstream, "upstream unreachable, resetting client");
            let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = client;
    let activity = Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let idle = ctx.settings.idle_timeout;
    let teardown = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = direction(&mut cr, &mut uw, Direction::Up, conn, ctx, &activity);
        let down = direction(&mut ur, &mut cw, Direction::Down, conn, ctx, &activity);
        tokio::pin!(up, down);
        let (mut up_end, mut down_end) = (None, None);
        loop {
            let wake = idle
                .saturating_sub(activity.idle_for())
                .max(Duration::from_millis(1));
            tokio::select! {
                end = &mut up, if up_end.is_none() => up_end = Some(end),
                end = &mut down, if down_end.is_none() => down_end = Some(end),
                () = tokio::time::sleep(wake) => if activity.idle_for() >= idle {
                    break Some(End::Close);
                },
            }
            let decided = [up_end, down_end]
                .into_iter()
                .flatten()
                .find(|e| *e != End::Eof);
            if decided.is_some() || (up_end.is_some() && down_end.is_some()) {
                break decided;
            }
        }
    };
    match teardown {
        Some(End::Close) => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                futures::future::join(
                    super::super::discard(&mut client),
                    super::super::discard(&mut upstream),
                ),
            )
            .await;
        }
        Some(End::Reset) => {
            for s in [&client, &upstream] {
                let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
        _ => {}
    }
}

async fn direction(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    dir: Direction,
    conn: u64,
    ctx: &LinkCtx,
    activity: &Activity,
) -> End {
    let mut writer = Writer {
        dir,
        conn,
        ctx,
        watch: ctx.toxics.clone(),
        watching: true,
        toxics: Vec::new(),
        reset_at: None,
        timeout_at: None,
        next_free: None,
    };
    let list = writer.watch.borrow_and_update().clone();
    writer.sync(&list);
    let read_buffer = ctx.settings.read_buffer.max(1);
    loop {
        if writer.quiet() {
            match writer.relay(src, dst, read_buffer, activity).await {
                Mode::Ended(end) => return end,
                Mode::Toxic | Mode::Quiet => {}
            }
        }
        // A toxic applies: a reader queues timestamped chunks while the writer sleeps,
        // paces or gathers, until the toxics are gone and the queue is empty.
        let (tx, rx) = mpsc::channel(ctx.settings.chunk_queue.max(1));
        let reader = async {
            read_loop(src, tx, read_buffer, activity).await;
            std::future::pending::<End>().await
        };
        tokio::select! {
            biased;
            mode = writer.run(rx, dst) => match mode {
                Mode::Ended(end) => return end,
                Mode::Quiet | Mode::Toxic => {}
            },
            end = reader => return end,
        }
    }
}

/// Why the plain relay or the toxic path handed over.
enum Mode {
    /// The direction ended.
    Ended(End),
    /// A toxic now applies: chunks go through the queue.
    Toxic,
    /// No toxic applies and nothing is queued: back to the plain relay.
    Quiet,
}

/// Reads and queues chunks until the end of the stream or until the writer is gone.
/// Dropping it at any await loses nothing: a chunk is read only once there is room to
/// queue it, and queued in the same step.
async fn read_loop(
    src: &mut ReadHalf<'_>,
    tx: mpsc::Sender<Input>,
    read_buffer: usize,
    activity: &Activity,
) {
    let mut buf = BytesMut::new();
    loop {
        let Ok(room) = tx.reserve().await else {
            return;
        };
        buf.reserve(read_buffer);
        let input = match src.read_buf(&mut buf).await {
            Ok(0) => Input::Eof,
            Ok(_) => {
                activity.touch();
                Input::Data(Instant::now(), buf.split().freeze())
            }
            Err(_) => Input::Failed,
        };
        let last = !matches!(input, Input::Data(..));
        room.send(input);
        if last {
            return;
        }
    }
}

/// A toxic as one connection runs it.
struct Live {
    toxic: Toxic,
    applies: bool,
    rng: ChaCha8Rng,
    /// Bytes passed so far (`limit_data`).
    sent: u64,
    /// Frame tracking and plan RNG (chopstick's toxics).
    chaos: Option<Box<Chaos>>,
}

struct Writer<'a> {
    dir: Direction,
    conn: u64,
    ctx: &'a LinkCtx,
    /// The proxy's toxic list, re-read whenever it changes.
    watch: watch::Receiver<ToxicList>,
    /// False once the proxy is gone (no more changes).
    watching: bool,
    toxics: Vec<Live>,
    reset_at: Option<tokio::time::Instant>,
    timeout_at: Option<tokio::time::Instant>,
    /// `bandwidth`: when the link is free for the next byte.
    next_free: Option<tokio::time::Instant>,
}

impl Writer<'_> {
    /// Brings the live toxics in line with `list`, keeping each one's state.
    fn sync(&mut self, list: &[Toxic]) {
        let mut old: Vec<Live> = std::mem::take(&mut self.toxics);
        for t in list.iter().filter(|t| t.dir == self.dir) {
            let live = match old.iter().position(|l| l.toxic.name == t.name) {
                Some(i) => {
                    let mut l = old.swap_remove(i);
                    if l.toxic.version != t.version || l.toxic.type_name != t.type_name {
                        l.applies = l.rng.random_bool(t.toxicity);
                        if matches!(t.kind, Kind::Chaos { .. }) {
                            l.chaos = Some(Box::new(self.new_chaos(t)));
                        }
                        l.toxic = t.clone();
                    }
                    l
                }
                None => {
                    let seed = toxic_seed(self.ctx.settings.seed, &self.ctx.proxy, &t.name);
                    let mut rng = conn_rng(seed, self.conn, self.dir);
                    let applies = rng.random_bool(t.toxicity);
                    if applies {
                        if let Kind::Timeout { timeout } = t.kind {
                            if !timeout.is_zero() {
                                self.timeout_at = Some(tokio::time::Instant::now() + timeout);
                            }
                        }
                    }
                    Live {
                        chaos: matches!(t.kind, Kind::Chaos { .. })
                            .then(|| Box::new(self.new_chaos(t))),
                        toxic: t.clone(),
                        applies,
                        rng,
                        sent: 0,
                    }
                }
            };
            self.toxics.push(live);
        }
        if !self.active(|k| matches!(k, Kind::Timeout { .. })) {
            self.timeout_at = None;
        }
        if !self.active(|k| matches!(k, Kind::ResetPeer { .. })) {
            self.reset_at = None;
        }
    }

    fn new_chaos(&self, t: &Toxic) -> Chaos {
        let Kind::Chaos { framing, seed, .. } = &t.kind else {
            unreachable!("only chopstick's toxics track frames")
        };
        Chaos {
            rng: conn_rng(*seed, self.conn, self.dir),
            writer: PlanWriter::new(ExecOptions::default()),
            scanner: framing.map(FrameScanner::new),
            frames: VecDeque::new(),
            base: 0,
        }
    }

    fn active(&self, pred: impl Fn(&Kind) -> bool) -> bool {
        self.toxics.iter().any(|l| l.applies && pred(&l.toxic.kind))
    }

    fn live(&mut self) -> impl Iterator<Item = &mut Live> {
        self.toxics.iter_mut().filter(|l| l.applies)
    }

    /// No toxic applies and no toxic timer runs.
    fn quiet(&self) -> bool {
        self.toxics.iter().all(|l| !l.applies)
            && self.reset_at.is_none()
            && self.timeout_at.is_none()
    }

    /// Re-reads the toxic list if it changed since the last look.
    fn resync(&mut self, changed: Result<(), watch::error::RecvError>) {
        match changed {
            Ok(()) => {
                let list = self.watch.borrow_and_update().clone();
                self.sync(&list);
            }
            Err(_) => self.watching = false,
        }
    }

    /// The plain relay while no toxic applies: each read written at once, in the same
    /// task step, as the fixed relay does (a hand-off through the queue costs a task
    /// wake-up per chunk: when it was always taken, most of an API proxy's added
    /// latency, 44 us per round trip against 9 us).
    async fn relay(
        &mut self,
        src: &mut ReadHalf<'_>,
        dst: &mut WriteHalf<'_>,
        read_buffer: usize,
        activity: &Activity,
    ) -> Mode {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(read_buffer);
            tokio::select! {
                biased;
                changed = self.watch.changed(), if self.watching => {
                    self.resync(changed);
                    if !self.quiet() {
                        return Mode::Toxic;
                    }
                }
                got = src.read_buf(&mut buf) => match got {
                    Ok(0) => {
                        let _ = dst.shutdown().await;
                        return Mode::Ended(End::Eof);
                    }
                    Ok(_) => {
                        activity.touch();
                        let data = buf.split();
                        if let Err(end) = self.write(dst, &data).await {
                            return Mode::Ended(end);
                        }
                    }
                    Err(_) => {
                        drain_unsent(dst.as_ref(), Duration::from_secs(1)).await;
                        return Mode::Ended(End::Reset);
                    }
                },
            }
        }
    }

    /// The toxic path: queued chunks through the live toxics, until the direction ends
    /// or the toxics are gone with nothing left queued.
    async fn run(&mut self, mut rx: mpsc::Receiver<Input>, dst: &mut WriteHalf<'_>) -> Mode {
        let mut stashed: Option<Input> = None;
        loop {
            if stashed.is_none() && rx.is_empty() && self.quiet() {
                return Mode::Quiet;
            }
            let input = match stashed.take() {
                Some(input) => input,
                None => {
                    let deadline = match (self.reset_at, self.timeout_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    tokio::select! {
                        biased;
                        changed = self.watch.changed(), if self.watching => {
                            self.resync(changed);
                            continue;
                        }
                        () = sleep_until_some(deadline) => {
                            let now = tokio::time::Instant::now();
                            if self.reset_at.is_some_and(|t| t <= now) {
                                return Mode::Ended(End::Reset);
                            }
                            return Mode::Ended(End::Close);
                        }
                        got = rx.recv() => got.unwrap_or(Input::Eof),
                    }
                }
            };
            let (at, data) = match input {
                Input::Data(at, data) => (at, data),
                Input::Eof => {
                    if self.active(|k| matches!(k, Kind::Timeout { .. })) {
                        return Mode::Ended(End::Close);
                    }
                    let delay = self
                        .live()
                        .filter_map(|l| match l.toxic.kind {
                            Kind::SlowClose { delay } => Some(delay),
                            _ => None,
                        })
                        .max();
                    if let Some(delay) = delay {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = dst.shutdown().await;
                    return Mode::Ended(End::Eof);
                }
                Input::Failed => {
                    drain_unsent(dst.as_ref(), Duration::from_secs(1)).await;
                    return Mode::Ended(End::Reset);
                }
            };
            let now = tokio::time::Instant::now();
            let reset_peer = self.live().find_map(|l| match l.toxic.kind {
                Kind::ResetPeer { timeout } => Some(timeout),
                _ => None,
            });
            if let Some(timeout) = reset_peer {
                if timeout.is_zero() {
                    return Mode::Ended(End::Reset);
                }
                self.reset_at.get_or_insert(now + timeout);
                continue;
            }
            let timeout = self.live().find_map(|l| match l.toxic.kind {
                Kind::Timeout { timeout } => Some(timeout),
                _ => None,
            });
            if let Some(timeout) = timeout {
                self.timeout_at = (!timeout.is_zero()).then(|| now + timeout);
                continue;
            }
            if self.toxics.iter().all(|l| !l.applies) {
                // No toxic: the plain relay's one write.
                match self.write(dst, &data).await {
                    Ok(()) => continue,
                    Err(end) => return Mode::Ended(end),
                }
            }
            let data = match self.gather(data, &mut rx, &mut stashed).await {
                Some(d) => d,
                None => return Mode::Ended(End::Close),
            };
            match self.deliver(at, &data, dst).await {
                Ok(None) => {}
                Ok(Some(Ending::Close)) => return Mode::Ended(End::Close),
                Ok(Some(Ending::Reset)) => return Mode::Ended(End::Reset),
                Err(end) => return Mode::Ended(end),
            }
        }
    }

    /// With a live `coalesce`, appends the chunks that follow within its hold window.
    /// `None` = nothing to deliver (cannot happen; kept total).
    async fn gather(
        &mut self,
        first: Bytes,
        rx: &mut mpsc::Receiver<Input>,
        stashed: &mut Option<Input>,
    ) -> Option<Bytes> {
        let hold = self
            .live()
            .filter_map(|l| match &l.toxic.kind {
                Kind::Chaos { faults, .. }
                    if faults
                        .entries()
                        .iter()
                        .any(|e| matches!(e.spec, FaultSpec::Coalesce(_))) =>
                {
                    Some(Hold::for_faults(faults))
                }
                _ => None,
            })
            .find(|h| !h.gap.is_zero());
        let Some(hold) = hold else {
            return Some(first);
        };
        let started = tokio::time::Instant::now();
        let cap = started + hold.max_wait;
        let mut held = BytesMut::from(&first[..]);
        while held.len() < hold.max_bytes {
            let until = cap.min(tokio::time::Instant::now() + hold.gap);
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(Input::Data(_, more))) => held.extend_from_slice(&more),
                Ok(Some(end)) => {
                    *stashed = Some(end);
                    break;
                }
                Ok(None) => {
                    *stashed = Some(Input::Eof);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(held.freeze())
    }

    /// Runs the chunk through latency, limits and cuts; the ending a toxic asked for.
    async fn deliver(
        &mut self,
        at: Instant,
        data: &[u8],
        dst: &mut WriteHalf<'_>,
    ) -> Result<Option<Ending>, End> {
        let len = data.len();
        let mut events = Events::new(len);
        let mut delay: Option<Duration> = None;
        let conn = self.conn;
        let dir = self.dir;
        for l in self.live() {
            match &l.toxic.kind {
                Kind::Latency { latency, jitter } => {
                    let mut d = *latency;
                    if !jitter.is_zero() {
                        let j = jitter.as_micros() as i64;
                        let off = l.rng.random_range(-j..=j);
                        d = Duration::from_micros((d.as_micros() as i64 + off).max(0) as u64);
                    }
                    delay = Some(delay.map_or(d, |x| x.max(d)));
                }
                Kind::LimitData { bytes } => {
                    let left = bytes.saturating_sub(l.sent);
                    if left <= len as u64 {
                        events.end(left as usize, Ending::Close);
                    }
                }
                Kind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                } => {
                    let mut cuts = Vec::new();
                    slices(
                        0,
                        len,
                        *average_size,
                        *size_variation,
                        &mut l.rng,
                        &mut cuts,
                    );
                    for c in cuts {
                        events.cut_with_pause(c, delay.as_micros() as u64);
                    }
                }
                Kind::Chaos { faults, .. } => {
                    if let Some(chaos) = l.chaos.as_deref_mut() {
                        chaos.scan(data, conn, dir);
                        let layouts = chaos.layouts(len);
                        let plan = faults.plan(len, &layouts, &mut chaos.rng);
                        chaos.released(len);
                        events.add_plan(&plan);
                    }
                }
                _ => {}
            }
        }
        if let Some(d) = delay {
            let due = at + d;
            tokio::time::sleep_until(due.into()).await;
        }
        let plan = events.into_plan();
        let (sent, ending) = self.execute(dst, data, &plan).await?;
        for l in self.live() {
            l.sent = l.sent.saturating_add(sent as u64);
        }
        Ok(ending)
    }

    /// Carries `plan` out over `data`; how many bytes went, and the ending.
    async fn execute(
        &mut self,
        dst: &mut WriteHalf<'_>,
        data: &[u8],
        plan: &Plan,
    ) -> Result<(usize, Option<Ending>), End> {
        let mut done = 0usize;
        let mut last_write: Option<Instant> = None;
        // chopstick's faults promise separate reads, which needs a gap between pieces
        // (see `chaos::tcp`); Toxiproxy's slicer promises only its own `delay`.
        let min_pause = if self.active(|k| matches!(k, Kind::Chaos { .. })) {
            self.ctx.settings.min_pause
        } else {
            Duration::ZERO
        };
        for step in &plan.steps {
            match *step {
                Step::Write(n) => {
                    let n = n.min(data.len() - done);
                    if n == 0 {
                        continue;
                    }
                    if let Some(last) = last_write {
                        let gap = min_pause.saturating_sub(last.elapsed());
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                    }
                    self.write(dst, &data[done..done + n]).await?;
                    last_write = Some(Instant::now());
                    done += n;
                }
                Step::Pause(us) | Step::Stall(us) => {
                    if us > 0 {
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                }
                Step::Close => return Ok((done, Some(Ending::Close))),
                Step::Reset => {
                    drain_unsent(dst.as_ref(), Duration::from_secs(1)).await;
                    return Ok((done, Some(Ending::Reset)));
                }
                Step::Read(_) => {}
            }
        }
        if done < data.len() {
            self.write(dst, &data[done..]).await?;
            done = data.len();
        }
        Ok((done, None))
    }

    /// One write, paced by a live `bandwidth` toxic; a stalled or gone peer resets.
    async fn write(&mut self, dst: &mut WriteHalf<'_>, data: &[u8]) -> Result<(), End> {
        let rate = self
            .live()
            .filter_map(|l| match l.toxic.kind {
                Kind::Bandwidth { rate } if rate > 0 => Some(rate),
                _ => None,
            })
            .min();
        let stall = self.ctx.settings.stall_timeout;
        // 100 ms worth of bytes per piece, as Toxiproxy paces.
        let piece = rate.map_or(data.len().max(1), |r| {
            (r as usize).saturating_mul(100).max(1)
        });
        let mut data = data;
        if rate.is_none() {
            // What the socket takes at once needs no stall timer (one fewer timer entry
            // per chunk on the round-trip path).
            while !data.is_empty() {
                match dst.as_ref().try_write(data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return Err(End::Reset),
                }
            }
        }
        for chunk in data.chunks(piece) {
            if let Some(rate) = rate {
                let now = tokio::time::Instant::now();
                let start = self.next_free.map_or(now, |t| t.max(now));
                let send_at = start + Duration::from_micros(chunk.len() as u64 * 1000 / rate);
                tokio::time::sleep_until(send_at).await;
                self.next_free = Some(send_at);
            }
            match tokio::time::timeout(stall, dst.write_all(chunk)).await {
                Ok(Ok(())) => {}
                _ => return Err(End::Reset),
            }
        }
        Ok(())
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Toxiproxy's slicer: bisects `start..end` until pieces are within `variation` of
/// `average`, moving each midpoint by up to ±`variation`; pushes the inner cut points.
fn slices(
    start: usize,
    end: usize,
    average: usize,
    variation: usize,
    rng: &mut ChaCha8Rng,
    cuts: &mut Vec<usize>,
) {
    let len = end - start;
    if len <= 1 || len.saturating_sub(average) <= variation {
        return;
    }
    let mut mid = start + len / 2;
    if variation > 0 {
        let v = variation as i64;
        let moved = mid as i64 + rng.random_range(-v..v);
        mid = (moved.max(start as i64 + 1) as usize).min(end - 1);
    }
    slices(start, mid, average, variation, rng, cuts);
    cuts.push(mid);
    slices(mid, end, average, variation, rng, cuts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn slicer_cuts_into_pieces_near_the_average() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut cuts = Vec::new();
        slices(0, 10_000, 100, 20, &mut rng, &mut cuts);
        let mut prev = 0;
        for &c in cuts.iter().chain([&10_000]) {
            assert!(c > prev, "cuts in order: {cuts:?}");
            let piece = c - prev;
            assert!((40..=200).contains(&piece), "piece of {piece}");
            prev = c;
        }
        assert!(cuts.len() >= 49, "{} cuts", cuts.len());
        // No variation, no average: every byte its own slice, and it ends.
        let mut cuts = Vec::new();
        slices(0, 64, 0, 0, &mut rng, &mut cuts);
        assert_eq!(cuts.len(), 63);
    }
}
