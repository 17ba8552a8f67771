//! Acceptance tests for the faults: plans conserve bytes (checked by playing them through
//! a ChaosStream writer), `boundary` covers every listed cut, `disconnect` lands in its
//! region, and frame-aware faults degrade to random offsets without layouts.

use std::collections::BTreeSet;

use bytes::Bytes;
use chopstick::chaos::faults::{boundary, CutKind};
use chopstick::chaos::{conn_rng, ChaosStream, Direction, Ending, FaultSet, Plan, Step};
use chopstick::codec::seeded_messages;
use chopstick_targets::wire::{FrameLayout, Framing};
use tokio::io::AsyncWriteExt;

const FRAMINGS: &[&str] = &[
    "u8",
    "u16be",
    "u16le",
    "u32be",
    "i32le",
    "u64be",
    "u16be,offset=3,adjust=-2",
    "u32be,offset=8,adjust=12,keep",
    "line",
    "hjson",
];

const FAULTS: &[&str] = &[
    "split",
    "split:max=1",
    "boundary",
    "boundary:all=true",
    "coalesce",
    "coalesce:max=1:partial=1",
    "disconnect",
    "disconnect:mode=any:at=mid-header",
    "disconnect:at=after-header",
    "disconnect:mode=reset:at=mid-body",
    "disconnect:at=boundary",
    "disconnect:at=7",
    "latency:jitter_us=100",
    "bandwidth:rate=3000",
    "slow",
    "slow:max=3:limit=all",
    "split:max=5,coalesce,disconnect:at=mid-body:p=0.5,latency",
    "mixed",
    "none",
];

fn stream_for(framing: &Framing, seed: u64) -> (Bytes, Vec<FrameLayout>) {
    let mut rng = chopstick::chaos::purpose_rng(seed, "messages");
    let count = (seed % 6) as usize;
    let msgs = seeded_messages(&mut rng, framing, count, 40);
    framing.encode_all(&msgs).unwrap()
}

/// Plays `plan` through a ChaosStream writer into memory; returns what arrived and the
/// error, if any.
fn play(plan: &Plan, data: &[u8]) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut w = ChaosStream::writer(Vec::new(), plan.clone());
    let err = futures::executor::block_on(w.write_all(data))
        .err()
        .map(|e| e.kind());
    (w.into_inner(), err)
}

#[test]
fn every_fault_plan_conserves_bytes_or_delivers_a_prefix_before_its_ending() {
    for spec in FRAMINGS {
        let framing: Framing = spec.parse().unwrap();
        for faults in FAULTS {
            let set: FaultSet = faults.parse().unwrap();
            for seed in 0..30 {
                let (stream, frames) = stream_for(&framing, seed);
                let plan = set.plan(stream.len(), &frames, &mut conn_rng(seed, 0, Direction::Up));
                let ctx = format!("{spec} / {faults} / seed {seed}: {plan}");
                assert!(!plan.steps.contains(&Step::Write(0)), "{ctx}");
                let (arrived, err) = play(&plan, &stream);
                match plan.ending() {
                    None => {
                        assert_eq!(err, None, "{ctx}");
                        assert_eq!(arrived, stream, "{ctx}");
                        assert_eq!(plan.bytes_written(), stream.len(), "{ctx}");
                    }
                    Some((how, at)) => {
                        assert!(at <= stream.len(), "{ctx}");
                        assert_eq!(arrived, stream[..at], "{ctx}");
                        let kind = match how {
                            Ending::Close => std::io::ErrorKind::BrokenPipe,
                            Ending::Reset => std::io::ErrorKind::ConnectionReset,
                        };
                        // A write_all that ends exactly at the ending never reaches it.
                        if at < stream.len() {
                            assert_eq!(err, Some(kind), "{ctx}");
                        }
                    }
                }
            }
        }
    }
}

/// The offsets where `plan` ends a write, strictly inside the stream.
fn cut_offsets(plan: &Plan, len: usize) -> BTreeSet<usize> {
    let mut at = 0;
    let mut out = BTreeSet::new();
    for step in &plan.steps {
        if let Step::Write(n) = step {
            at += n;
            if at < len {
                out.insert(at);
            }
        }
    }
    out
}

#[test]
fn boundary_all_cuts_at_every_listed_offset_for_every_field_width_and_text_framings() {
    for spec in [
        "u8",
        "u16be",
        "u32le",
        "u64be",
        "u16be,offset=3",
        "line",
        "hjson",
    ] {
        let framing: Framing = spec.parse().unwrap();
        let msgs: Vec<Vec<u8>> = [0usize, 1, 2, 5, 9, 200]
            .iter()
            .map(|&n| vec![b'x'; n])
            .collect();
        let (stream, frames) = framing.encode_all(&msgs).unwrap();
        let listed = boundary::cuts(&frames);
        let plan = "boundary:all=true".parse::<FaultSet>().unwrap().plan(
            stream.len(),
            &frames,
            &mut conn_rng(1, 0, Direction::Up),
        );
        let wanted: BTreeSet<usize> = listed.iter().map(|&(_, at)| at).collect();
        assert_eq!(cut_offsets(&plan, stream.len()), wanted, "{spec}");
        // Every byte position inside each length field is listed.
        for f in &frames {
            for byte in 1..f.length_field.len() {
                assert!(
                    listed
                        .contains(&(CutKind::InLengthField { byte }, f.length_field.start + byte)),
                    "{spec}: byte {byte} of the length field at {}",
                    f.start
                );
            }
        }
    }
}

#[test]
fn boundary_lists_each_kind_of_cut_for_a_u32be_frame_pair() {
    let framing = Framing::default();
    let (_, frames) = framing.encode_all(&[&b"abcd"[..], b"ef"]).unwrap();
    let cuts = boundary::cuts(&frames);
    let kinds_at =
        |at: usize| -> Vec<CutKind> { cuts.iter().filter(|c| c.1 == at).map(|c| c.0).collect() };
    assert_eq!(kinds_at(1), [CutKind::InLengthField { byte: 1 }]);
    assert_eq!(kinds_at(3), [CutKind::InLengthField { byte: 3 }]);
    assert_eq!(kinds_at(4), [CutKind::HeaderEnd]);
    assert_eq!(kinds_at(5), [CutKind::InBody]);
    assert_eq!(kinds_at(8), [CutKind::FrameEnd]);
    assert_eq!(
        kinds_at(9),
        [CutKind::InLengthField { byte: 1 }, CutKind::IntoNextFrame]
    );
    assert!(cuts.iter().all(|&(_, at)| at > 0 && at < 14));
}

#[test]
fn boundary_lists_json_header_and_newline_cuts() {
    let hjson: Framing = "hjson".parse().unwrap();
    let (_, frames) = hjson.encode_all(&[b"abc"]).unwrap();
    let kinds: Vec<CutKind> = boundary::cuts(&frames).iter().map(|c| c.0).collect();
    assert!(kinds.contains(&CutKind::LengthFieldEnd));
    assert!(kinds.contains(&CutKind::InHeader));
    assert!(kinds.contains(&CutKind::HeaderEnd));
    let line: Framing = "line".parse().unwrap();
    let (_, frames) = line.encode_all(&[b"abc"]).unwrap();
    assert!(boundary::cuts(&frames).contains(&(CutKind::BodyEnd, 3)));
}

#[test]
fn boundary_without_frames_degrades_to_random_cuts() {
    let set: FaultSet = "boundary:all=true".parse().unwrap();
    let plan = set.plan(100, &[], &mut conn_rng(3, 0, Direction::Up));
    assert!(plan.writes() > 1, "{plan}");
    assert_eq!(plan.bytes_written(), 100);
}

#[test]
fn disconnect_lands_inside_the_requested_region() {
    let framing = Framing::default();
    let msgs: Vec<Vec<u8>> = [0usize, 3, 10, 1].iter().map(|&n| vec![7; n]).collect();
    let (stream, frames) = framing.encode_all(&msgs).unwrap();
    let ends: BTreeSet<usize> = frames.iter().map(|f| f.end).chain([0]).collect();
    for seed in 0..100 {
        let at = |spec: &str| {
            let set: FaultSet = spec.parse().unwrap();
            let plan = set.plan(stream.len(), &frames, &mut conn_rng(seed, 0, Direction::Up));
            plan.ending().expect("disconnect always ends").1
        };
        let o = at("disconnect:at=mid-header");
        assert!(
            frames.iter().any(|f| f.start < o && o < f.body.start),
            "{o}"
        );
        let o = at("disconnect:at=after-header");
        assert!(frames.iter().any(|f| o == f.body.start), "{o}");
        let o = at("disconnect:at=mid-body");
        assert!(frames.iter().any(|f| f.body.start < o && o < f.end), "{o}");
        assert!(ends.contains(&at("disconnect:at=boundary")));
        assert_eq!(at("disconnect:at=5"), 5);
        assert_eq!(at("disconnect:at=5000"), stream.len());
    }
}

#[test]
fn disconnect_mid_header_on_a_one_byte_header_degrades_to_a_random_offset() {
    let framing: Framing = "u8".parse().unwrap();
    let (stream, frames) = framing.encode_all(&[&b"abc"[..], b"de"]).unwrap();
    let set: FaultSet = "disconnect:at=mid-header".parse().unwrap();
    let plan = set.plan(stream.len(), &frames, &mut conn_rng(0, 0, Direction::Up));
    assert!(plan.ending().unwrap().1 <= stream.len());
}

#[test]
fn coalesce_puts_several_frames_in_one_write() {
    let framing = Framing::default();
    let msgs = vec![b"m".to_vec(); 12];
    let (stream, frames) = framing.encode_all(&msgs).unwrap();
    let set: FaultSet = "coalesce:max=3:partial=0".parse().unwrap();
    let plan = set.plan(stream.len(), &frames, &mut conn_rng(9, 0, Direction::Up));
    let ends: BTreeSet<usize> = frames.iter().map(|f| f.end).collect();
    // Every cut is at a frame end, and there are fewer writes than frames.
    assert!(cut_offsets(&plan, stream.len()).is_subset(&ends), "{plan}");
    assert!(plan.writes() < frames.len(), "{plan}");
    assert!(plan.writes() >= frames.len() / 3, "{plan}");
}

#[test]
fn coalesce_with_partial_carries_the_start_of_the_next_header() {
    let framing = Framing::default();
    let msgs = vec![b"mm".to_vec(); 12];
    let (stream, frames) = framing.encode_all(&msgs).unwrap();
    let set: FaultSet = "coalesce:partial=1".parse().unwrap();
    let plan = set.plan(stream.len(), &frames, &mut conn_rng(9, 0, Direction::Up));
    let inside_header = cut_offsets(&plan, stream.len())
        .into_iter()
        .filter(|&at| frames.iter().any(|f| f.start < at && at <= f.body.start))
        .count();
    assert!(inside_header > 0, "{plan}");
}

#[test]
fn split_pauses_at_least_a_millisecond_between_pieces_by_default() {
    let plan =
        "split"
            .parse::<FaultSet>()
            .unwrap()
            .plan(100, &[], &mut conn_rng(1, 1, Direction::Up));
    assert!(plan.writes() > 1);
    for step in &plan.steps {
        if let Step::Pause(us) = step {
            assert!(*us >= 1000, "{plan}");
        }
    }
}

#[test]
fn bandwidth_spreads_the_stream_at_its_rate() {
    let plan = "bandwidth:rate=2000".parse::<FaultSet>().unwrap().plan(
        10,
        &[],
        &mut conn_rng(1, 1, Direction::Up),
    );
    assert_eq!(plan.to_string(), "w2 p1000 w2 p1000 w2 p1000 w2 p1000 w2");
}

#[test]
fn slow_trickles_only_up_to_its_limit() {
    let plan = "slow:limit=4".parse::<FaultSet>().unwrap().plan(
        100,
        &[],
        &mut conn_rng(1, 1, Direction::Up),
    );
    assert_eq!(plan.to_string(), "w1 p2000 w1 p2000 w1 p2000 w1 p2000 w96");
}

#[test]
fn latency_pauses_before_the_first_write() {
    let plan = "latency:us=500".parse::<FaultSet>().unwrap().plan(
        10,
        &[],
        &mut conn_rng(1, 1, Direction::Up),
    );
    assert_eq!(plan.to_string(), "p500 w10");
}
