//! The verdict logic on hand-made decoder outputs, and the checker on the reference codecs.

use super::*;

fn msgs() -> Vec<Vec<u8>> {
    vec![b"aa".to_vec(), b"bbb".to_vec(), b"c".to_vec()]
}

fn frames(v: &[&[u8]]) -> Vec<Vec<u8>> {
    v.iter().map(|f| f.to_vec()).collect()
}

#[test]
fn all_frames_and_a_clean_end_pass() {
    let got = frames(&[b"aa", b"bbb", b"c"]);
    assert_eq!(judge(&msgs(), 3, false, &got, End::Clean), Verdict::Pass);
}

#[test]
fn a_missing_last_frame_is_lost() {
    let got = frames(&[b"aa", b"bbb"]);
    assert_eq!(
        judge(&msgs(), 3, false, &got, End::Clean),
        Verdict::Lost {
            expected: 3,
            got: 2
        }
    );
}

#[test]
fn a_skipped_frame_is_lost_and_a_swapped_one_reordered() {
    let skipped = frames(&[b"aa", b"c"]);
    assert!(matches!(
        judge(&msgs(), 3, false, &skipped, End::Clean),
        Verdict::Lost { .. }
    ));
    let swapped = frames(&[b"aa", b"c", b"bbb"]);
    assert_eq!(
        judge(&msgs(), 3, false, &swapped, End::Clean),
        Verdict::Reordered { index: 1, of: 2 }
    );
}

#[test]
fn a_repeated_frame_is_duplicated() {
    let got = frames(&[b"aa", b"aa", b"bbb", b"c"]);
    assert_eq!(
        judge(&msgs(), 3, false, &got, End::Clean),
        Verdict::Duplicated { index: 1, of: 0 }
    );
}

#[test]
fn a_short_middle_frame_is_corrupted() {
    let got = frames(&[b"aa", b"bb", b"c"]);
    assert_eq!(
        judge(&msgs(), 3, false, &got, End::Clean),
        Verdict::Corrupted {
            index: 1,
            expected_len: 3,
            got_len: 2,
            first_diff: None
        }
    );
}

#[test]
fn a_prefix_of_the_cut_frame_at_eof_is_truncated_and_anything_else_phantom() {
    let got = frames(&[b"aa", b"b"]);
    assert!(matches!(
        judge(&msgs(), 1, true, &got, End::Clean),
        Verdict::TruncatedAtEof { index: 1, .. }
    ));
    let got = frames(&[b"aa", b"bbb", b"c", b""]);
    assert!(matches!(
        judge(&msgs(), 3, false, &got, End::Clean),
        Verdict::PhantomFrame { index: 3, .. }
    ));
}

#[test]
fn an_error_is_only_right_when_due() {
    let got = frames(&[b"aa"]);
    let err = || End::Error("boom".into());
    assert_eq!(judge(&msgs(), 1, true, &got, err()), Verdict::Pass);
    assert!(matches!(
        judge(&msgs(), 1, false, &got, err()),
        Verdict::UnexpectedError { frames: 1, .. }
    ));
    assert!(matches!(
        judge(&msgs(), 2, true, &got, err()),
        Verdict::UnexpectedError { .. }
    ));
    assert_eq!(
        judge(&msgs(), 1, true, &got, End::Clean),
        Verdict::MissingError { frames: 1 }
    );
}

#[test]
fn equal_messages_are_not_mistaken_for_duplicates() {
    let same = vec![b"x".to_vec(), b"x".to_vec()];
    let got = frames(&[b"x", b"x"]);
    assert_eq!(judge(&same, 2, false, &got, End::Clean), Verdict::Pass);
}

#[test]
fn the_reference_codecs_pass_a_cut_inside_and_a_cut_between_frames() {
    for spec in ["u32be", "u8", "line", "hjson"] {
        let framing: Framing = spec.parse().unwrap();
        let m = msgs();
        let (stream, layouts) = framing.encode_all(&m).unwrap();
        for plan in [
            "w1 w1 w1 w1 w1".to_string(),
            format!("w{} close", layouts[0].end),
            format!("w{} close", layouts[1].body.start + 1),
            format!("w{} reset", layouts[1].end),
            format!("w{} close", stream.len() - 1),
        ] {
            let plan: Plan = plan.parse().unwrap();
            let verdict = check_framing(&framing, || framing.codec(), &m, &plan);
            assert_eq!(verdict, Verdict::Pass, "{spec} {plan}");
        }
    }
}

#[test]
fn an_unencodable_message_is_reported_not_checked() {
    let framing: Framing = "line".parse().unwrap();
    let verdict = check_framing(&framing, || framing.codec(), &[b"a\nb"], &Plan::default());
    assert!(matches!(verdict, Verdict::EncodeFailed { index: 0, .. }));
}

/// A `line` decoder that, at EOF, returns or drops the unterminated rest of the stream.
struct LineTail {
    inner: tokio_util::codec::LinesCodec,
    keep_tail: bool,
}

impl Decoder for LineTail {
    type Item = String;
    type Error = tokio_util::codec::LinesCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, Self::Error> {
        self.inner.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<String>, Self::Error> {
        if self.keep_tail {
            return self.inner.decode_eof(src);
        }
        let frame = self.inner.decode(src)?;
        if frame.is_none() {
            src.clear();
        }
        Ok(frame)
    }
}

#[test]
fn under_json_lines_rules_an_unterminated_last_line_must_come_out_as_a_frame() {
    let framing: Framing = "line".parse().unwrap();
    let m = ["ab", "cdef"];
    // "ab\ncd" then FIN: the last line is cut after two of its bytes.
    let cut: Plan = "w5 close".parse().unwrap();
    let keeps = || LineTail {
        inner: tokio_util::codec::LinesCodec::new(),
        keep_tail: true,
    };
    let drops = || LineTail {
        inner: tokio_util::codec::LinesCodec::new(),
        keep_tail: false,
    };
    let jsonl = Rules::json_lines();
    assert_eq!(
        check_framing_with(&framing, keeps, &m, &cut, jsonl),
        Verdict::Pass
    );
    assert!(matches!(
        check_framing_with(&framing, keeps, &m, &cut, Rules::strict()),
        Verdict::TruncatedAtEof { index: 1, .. }
    ));
    assert_eq!(
        check_framing_with(&framing, drops, &m, &cut, jsonl),
        Verdict::Lost {
            expected: 2,
            got: 1
        }
    );
    // A strict decoder's error is wrong where the rules say the tail is data.
    assert!(matches!(
        check_framing_with(&framing, || framing.codec(), &m, &cut, jsonl),
        Verdict::UnexpectedError { frames: 1, .. }
    ));
    // A reset is still an error, and a clean end between lines still a clean end.
    let reset: Plan = "w5 reset".parse().unwrap();
    assert_eq!(
        check_framing_with(&framing, || framing.codec(), &m, &reset, jsonl),
        Verdict::Pass
    );
    let between: Plan = "w3 close".parse().unwrap();
    assert_eq!(
        check_framing_with(&framing, keeps, &m, &between, jsonl),
        Verdict::Pass
    );
}

#[test]
fn a_text_codec_is_checked_through_its_str_encoder() {
    let plan: Plan = "w1 w1 w1 w1 w1 w1".parse().unwrap();
    assert_eq!(
        check_text(
            tokio_util::codec::LinesCodec::new,
            &["ab", "", "c"],
            &plan,
            Rules::strict()
        ),
        Verdict::Pass
    );
    assert!(matches!(
        check_text(
            tokio_util::codec::LinesCodec::new,
            &["a\nb"],
            &plan,
            Rules::strict()
        ),
        Verdict::Corrupted { .. } | Verdict::PhantomFrame { .. }
    ));
}

#[test]
fn a_payload_drawn_at_max_len_shrinks_in_size() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    const MAX_LEN: usize = 1000;
    const FAILS_FROM: usize = 100;
    let strategy = strategy::payload(4, MAX_LEN, false);
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    // Draw until the max_len branch comes up (1 in 8), then shrink as proptest does.
    let mut tree = (0..1000)
        .map(|_| strategy.new_tree(&mut runner).unwrap())
        .find(|t| t.current().len() == MAX_LEN)
        .expect("a max_len payload within 1000 draws");
    // proptest's loop: simplify while the case fails, complicate when it passes, keep
    // the last failing value. Bounded by the bisection's steps (about 2 x 10 bits).
    let mut smallest_failing = MAX_LEN;
    for _ in 0..10_000 {
        let len = tree.current().len();
        let moved = if len >= FAILS_FROM {
            smallest_failing = smallest_failing.min(len);
            tree.simplify()
        } else {
            tree.complicate()
        };
        if !moved {
            break;
        }
    }
    assert_eq!(smallest_failing, FAILS_FROM);
}
