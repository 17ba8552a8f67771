//! decode: chopstick's `chopstick_targets::wire` decoders vs bare `LengthDelimitedCodec`.
//!
//! The same pre-encoded stream (about 256 KiB of `u32be` frames of one size) is fed to
//! each decoder in chunks of a fixed size, the way `FramedRead` feeds it: append the
//! chunk to a `BytesMut`, then call `decode` until it asks for more. The peer is tokio-util's
//! codec built for the same framing, so the ratio is the cost of chopstick's checks
//! (negative/oversized length before reserving, typed truncation errors). hjson frames
//! (`{"size":N}` header + body) are measured against the same bare codec on a `u32be`
//! stream of the same payloads: JSON parsing is the price of that framing, not a target.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use chopstick_targets::wire::Framing;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

const STREAM_BYTES: usize = 256 * 1024;
const FRAMES: [usize; 3] = [64, 1024, 64 * 1024];
const CHUNKS: [usize; 5] = [1, 7, 64, 1460, 65536];

fn stream(framing: &Framing, frame: usize) -> (Vec<u8>, usize) {
    let count = (STREAM_BYTES / frame).max(4);
    let payload = benches::filler(frame);
    let payloads = vec![payload; count];
    let (bytes, _) = framing.encode_all(&payloads).expect("encode");
    (bytes.to_vec(), count)
}

/// Feeds `data` to `decoder` in `chunk`-byte pieces; returns the frames decoded.
fn feed<D: Decoder>(decoder: &mut D, data: &[u8], chunk: usize) -> usize
where
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::with_capacity(chunk.max(8 * 1024));
    let mut frames = 0;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
            black_box(frame);
            frames += 1;
        }
    }
    frames
}

fn decode(c: &mut Criterion) {
    let u32be: Framing = "u32be".parse().unwrap();
    let hjson: Framing = "hjson".parse().unwrap();
    let mut group = c.benchmark_group("decode");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for frame in FRAMES {
        let (plain, count) = stream(&u32be, frame);
        let (hj, hj_count) = stream(&hjson, frame);
        for chunk in CHUNKS {
            let param = format!("{frame}B/chunk{chunk}");
            group.throughput(Throughput::Bytes(plain.len() as u64));
            group.bench_with_input(BenchmarkId::new("bare_ldc", &param), &chunk, |b, &chunk| {
                b.iter(|| {
                    let mut codec = LengthDelimitedCodec::builder()
                        .length_field_length(4)
                        .max_frame_length(chopstick_targets::wire::DEFAULT_MAX)
                        .new_codec();
                    assert_eq!(feed(&mut codec, &plain, chunk), count);
                })
            });
            group.bench_with_input(
                BenchmarkId::new("chopstick", &param),
                &chunk,
                |b, &chunk| {
                    b.iter(|| {
                        let mut codec = u32be.codec();
                        assert_eq!(feed(&mut codec, &plain, chunk), count);
                    })
                },
            );
            group.throughput(Throughput::Bytes(hj.len() as u64));
            group.bench_with_input(
                BenchmarkId::new("chopstick_hjson", &param),
                &chunk,
                |b, &chunk| {
                    b.iter(|| {
                        let mut codec = hjson.codec();
                        assert_eq!(feed(&mut codec, &hj, chunk), hj_count);
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
