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
