//! Capture: what `chopstick proxy --record FILE` keeps of the connections it relays.
//!
//! The proxy gives each connection a [`ConnRecorder`] and shows it every piece it reads
//! from either peer, before faults (the real client's and server's bytes), and how
//! each direction ended. The connection recorder decodes each direction with its
//! framing and appends whole frames to the shared [`Recorder`]; a reply frame notes
//! how many requests that connection had sent when it was complete. A stream that does
//! not decode ends that direction's recording with an error entry; bytes left inside a
//! frame at the end are a `truncated` error. Nothing is dropped silently.
//!
//! The recording lives in memory, bounded by [`RecordConfig::max_bytes`] (roughly
//! the file's size; past it, frames are no longer kept and the file says `truncated`),
//! plus one partial frame per direction per live connection (at most the framing's
//! `max`). [`Recorder::flush`] writes it atomically when it changed; the proxy calls
//! it every [`FLUSH_INTERVAL`] and [`Recorder::finish`] at shutdown, so a crash loses at
//! most the last interval and never leaves a half-written file.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{FrameCodec, Framing, WireError};
use tokio_util::codec::Decoder;

use super::file::{write, Connection, Ended, RecordedError, Reply, TrafficError, TrafficFile};
use super::Payload;
use crate::chaos::Direction;

/// How often a recording with news is written while the proxy runs: what a crash
/// loses at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// `--record-max` when none is given: 64 MiB of file.
pub const DEFAULT_RECORD_MAX: usize = 64 << 20;
/// What a connection's entry costs in the file besides its frames (for `max_bytes`).
const CONN_OVERHEAD: usize = 160;
/// What an error entry costs in the file besides its message.
const ERROR_OVERHEAD: usize = 96;

/// What to record and where.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    /// The traffic file (`--record`).
    pub path: PathBuf,
    /// Decodes client -> server bytes (`--framing`).
    pub framing: Framing,
    /// Decodes server -> client bytes (the same as `framing` unless told otherwise).
    pub reply_framing: Framing,
    /// Bound on the recording, roughly its file size in bytes (`--record-max`).
    pub max_bytes: usize,
    /// Written into the file, for whoever reads it later.
    pub upstream: String,
}

/// The recording shared by every connection of one proxy.
#[derive(Debug)]
pub struct Recorder {
    config: RecordConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: TrafficFile,
    /// Estimated file bytes so far.
    bytes: usize,
    /// Changed since the last write.
    dirty: bool,
}

impl Recorder {
    /// Starts a recording and writes it (empty) at once, so a path that cannot be
    /// written fails now rather than seconds into the traffic.
    pub fn create(config: RecordConfig) -> Result<Arc<Recorder>, TrafficError> {
        let file = TrafficFile::new(
            config.framing.to_string(),
            config.reply_framing.to_string(),
            config.upstream.clone(),
        );
        write(&config.path, &file)?;
        Ok(Arc::new(Recorder {
            config,
            state: Mutex::new(State {
                file,
                bytes: 0,
                dirty: false,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a consistent recording
        // (every change is one push): keep recording.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A recorder for accepted connection `conn`.
    pub fn open(self: &Arc<Self>, conn: u64, peer: SocketAddr) -> ConnRecorder {
        let index = {
            let mut s = self.lock();
            let index = s.reserve(CONN_OVERHEAD, self.config.max_bytes).then(|| {
                s.file.connections.push(Connection {
                    conn,
                    peer: peer.to_string(),
                    ..Connection::default()
                });
                s.file.connections.len() - 1
            });
            s.dirty = true;
            index
        };
        ConnRecorder {
            recorder: self.clone(),
            index,
            taps: Mutex::new(Taps {
                up: Tap::new(self.config.framing),
                down: Tap::new(self.config.reply_framing),
                requests: 0,
            }),
        }
    }

    /// The recording as it stands.
    pub fn snapshot(&self) -> TrafficFile {
        self.lock().file.clone()
    }

    /// Writes the recording if it changed since the last write; whether it wrote.
    pub fn flush(&self) -> Result<bool, TrafficError> {
        let file = {
            let mut s = self.lock();
            if !s.dirty {
                return Ok(false);
            }
            s.dirty = false;
            s.file.clone()
        };
        if let Err(e) = write(&self.config.path, &file) {
            self.lock().dirty = true;
            return Err(e);
        }
        Ok(true)
    }

    /// Marks the recording complete and writes it (at shutdown).
    pub fn finish(&self) -> Result<(), TrafficError> {
        {
            let mut s = self.lock();
            s.file.complete = true;
            s.dirty = true;
        }
        self.flush().map(|_| ())
    }

    /// Flushes every `interval` until `stop` resolves; a failed write is logged and
    /// tried again at the next tick (the recording stays in memory).
    pub async fn flush_every(&self, interval: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {
                    if let Err(e) = self.flush() {
                        tracing::warn!("recording not written: {e}");
                    }
                }
            }
        }
    }
}

impl State {
    /// Counts `n` more file bytes if they fit under `max`; past it the recording is
    /// marked truncated and takes nothing more.
    fn reserve(&mut self, n: usize, max: usize) -> bool {
        if self.file.truncated || self.bytes + n > max {
            self.file.truncated = true;
            return false;
        }
        self.bytes += n;
        true
    }
}

/// One direction's decoder.
#[derive(Debug)]
struct Tap {
    codec: FrameCodec,
    buf: BytesMut,
    frames: u64,
    /// The stream did not decode; the rest of it is not looked at.
    failed: bool,
}

impl Tap {
    fn new(framing: Framing) -> Tap {
        Tap {
            codec: framing.codec(),
            buf: BytesMut::new(),
            frames: 0,
            failed: false,
        }
    }

    /// Decodes what `buf` holds: the whole frames, and the error that stopped it.
    fn decode(&mut self, eof: bool) -> (Vec<Bytes>, Option<WireError>) {
        let mut frames = Vec::new();
        if self.failed {
            return (frames, None);
        }
        // Every turn takes a frame out of `buf` (or ends): bounded by its length.
        loop {
            let got = if eof {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match got {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => {
                    self.failed = true;
                    self.buf = BytesMut::new();
                    return (frames, Some(e));
                }
            }
        }
    }
}

#[derive(Debug)]
struct Taps {
    up: Tap,
    down: Tap,
    /// Requests decoded on this connection so far.
    requests: u64,
}

/// Records one connection; see the module docs. Shared by its two relay directions.
#[derive(Debug)]
pub struct ConnRecorder {
    recorder: Arc<Recorder>,
    /// Where this connection is in the file (`None`: it came after `max_bytes`).
    index: Option<usize>,
    taps: Mutex<Taps>,
}

impl ConnRecorder {
    /// `bytes` were just read from the peer that sends `dir`.
    pub fn read(&self, dir: Direction, bytes: &[u8]) {
        if self.index.is_none() {
            return;
        }
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        let tap = taps.tap(dir);
        if tap.failed {
            return;
        }
        tap.buf.extend_from_slice(bytes);
        let (frames, error) = tap.decode(false);
        self.push(&mut taps, dir, frames, error, None);
    }

    /// The direction `dir` ended, `how` (a label such as `eof` or `reset`).
    pub fn ended(&self, dir: Direction, how: &'static str) {
        if self.index.is_none() {
            return;
        }
        let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
        let (frames, error) = taps.tap(dir).decode(true);
        self.push(&mut taps, dir, frames, error, Some(how));
    }

    /// Appends what a tap decoded to the recording (under both locks: taps first).
    fn push(
        &self,
        taps: &mut Taps,
        dir: Direction,
        frames: Vec<Bytes>,
        error: Option<WireError>,
        ended: Option<&'static str>,
    ) {
        if frames.is_empty() && error.is_none() && ended.is_none() {
            return;
        }
        let Some(index) = self.index else { return };
        let max = self.recorder.config.max_bytes;
        let mut s = self.recorder.lock();
        s.dirty = true;
        for frame in frames {
            let payload = Payload::new(&frame);
            let keep = s.reserve(payload.file_len(), max);
            let c = &mut s.file.connections[index];
            match dir {
                Direction::Up => {
                    taps.requests += 1;
                    taps.up.frames += 1;
                    if keep {
                        c.requests.push(payload);
                    }
                }
                Direction::Down => {
                    taps.down.frames += 1;
                    if keep {
                        c.replies.push(Reply {
                            after: taps.requests,
                            payload,
                        });
                    }
                }
            }
        }
        if let Some(e) = error {
            let message = match ended {
                Some(how) if e.kind() == "truncated" => format!("{e} (the direction ended: {how})"),
                _ => e.to_string(),
            };
            if s.reserve(ERROR_OVERHEAD + message.len(), max) {
                let after = taps.tap(dir).frames;
                s.file.connections[index].errors.push(RecordedError {
                    dir: match dir {
                        Direction::Up => "request",
                        Direction::Down => "reply",
                    }
                    .to_string(),
                    after,
                    kind: e.kind().to_string(),
                    message,
                });
            }
        }
        if let Some(how) = ended {
            let c = &mut s.file.connections[index];
            let ended = c.ended.get_or_insert_with(Ended::default);
            let slot = match dir {
                Direction::Up => &mut ended.up,
                Direction::Down => &mut ended.down,
            };
            *slot = Some(how.to_string());
        }
    }
}

impl Taps {
    fn tap(&mut self, dir: Direction) -> &mut Tap {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(dir: &std::path::Path, framing: &str, max_bytes: usize) -> Arc<Recorder> {
        let framing: Framing = framing.parse().unwrap();
        Recorder::create(RecordConfig {
            path: dir.join("traffic.json"),
            framing,
            reply_framing: framing,
            max_bytes,
            upstream: "127.0.0.1:1".into(),
        })
        .unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn frames_split_across_reads_are_recorded_once_with_the_requests_before_each_reply() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(dir.path(), "netstring", DEFAULT_RECORD_MAX);
        let c = rec.open(0, peer());
        c.read(Direction::Up, b"3:a");
        c.read(Direction::Up, b"bc,1:x,");
        c.read(Direction::Down, b"2:o");
        c.read(Direction::Up, b"0:,");
        c.read(Direction::Down, b"k,");
        c.ended(Direction::Up, "eof");
        c.ended(Direction::Down, "eof");
        let file = rec.snapshot();
        let conn = &file.connections[0];
        let texts: Vec<_> = conn.requests.iter().map(|p| p.bytes().unwrap()).collect();
        assert_eq!(texts, [&b"abc"[..], b"x", b""]);
        assert_eq!(conn.replies.len(), 1);
        assert_eq!(conn.replies[0].after, 3);
        assert!(conn.errors.is_empty());
        assert_eq!(conn.ended.as_ref().unwrap().down.as_deref(), Some("eof"));
    }

    #[test]
    fn an_undecodable_stream_and_a_cut_frame_are_recorded_as_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(dir.path(), "netstring", DEFAULT_RECORD_MAX);
        let c = rec.open(0, peer());
        c.read(Direction::Up, b"1:a,x");
        c.read(Direction::Up, b"1:b,");
        c.read(Direction::Down, b"5:ab");
        c.ended(Direction::Down, "reset");
        let conn = rec.snapshot().connections.remove(0);
        assert_eq!(conn.requests.len(), 1);
        let kinds: Vec<_> = conn
            .errors
            .iter()
            .map(|e| (&e.dir[..], &e.kind[..], e.after))
            .collect();
        assert_eq!(
            kinds,
            [
                ("request", "malformed_length", 1),
                ("reply", "truncated", 0)
            ]
        );
        assert!(conn.errors[1].message.contains("reset"));
    }

    #[test]
    fn past_the_size_bound_nothing_more_is_kept_and_the_file_says_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(dir.path(), "line", CONN_OVERHEAD + 2 * 40);
        let c = rec.open(0, peer());
        c.read(Direction::Up, b"one\ntwo\nthree\n");
        let file = rec.snapshot();
        assert!(file.truncated);
        assert_eq!(file.connections[0].requests.len(), 2);
        rec.open(1, peer()).read(Direction::Up, b"four\n");
        assert_eq!(rec.snapshot().connections.len(), 1);
    }

    #[test]
    fn flush_writes_only_news_and_finish_marks_the_file_complete() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(dir.path(), "u8", DEFAULT_RECORD_MAX);
        let path = dir.path().join("traffic.json");
        assert!(!super::super::read(&path).unwrap().complete);
        assert!(!rec.flush().unwrap());
        rec.open(0, peer()).read(Direction::Up, b"\x01a");
        assert!(rec.flush().unwrap());
        assert!(!rec.flush().unwrap());
        assert_eq!(
            super::super::load_traffic(&path).unwrap(),
            vec![vec![&b"a"[..]]]
        );
        rec.finish().unwrap();
        assert!(super::super::read(&path).unwrap().complete);
    }
}
