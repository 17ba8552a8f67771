//! Grammar, canonical printing and composition of fault lists.

use super::*;

fn parse(s: &str) -> FaultSet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn the_example_list_parses_into_three_entries() {
    let set = parse("split:max=64:pause_us=1000,disconnect:mode=reset:at=mid-body,coalesce:p=0.5");
    let e = set.entries();
    assert_eq!(e.len(), 3);
    assert_eq!(
        e[0].spec,
        FaultSpec::Split(Split {
            max: 64,
            pause_us: 1000,
            ..Split::default()
        })
    );
    assert_eq!(
        e[1].spec,
        FaultSpec::Disconnect(Disconnect {
            mode: DisconnectMode::Reset,
            at: DisconnectAt::MidBody
        })
    );
    assert_eq!(e[2].p, 0.5);
}

#[test]
fn display_is_canonical_and_parses_back() {
    for (input, canonical) in [
        ("split:max=64:pause_us=0", "split:max=64"),
        ("disconnect:at=17:mode=reset", "disconnect:mode=reset:at=17"),
        ("coalesce:p=0.5", "coalesce:p=0.5"),
        (
            "boundary:all=true, latency:us=5:jitter_us=2",
            "boundary:all=true,latency:us=5:jitter_us=2",
        ),
        (
            "bandwidth:rate=1KiB,slow:limit=all",
            "bandwidth:rate=1024,slow:limit=all",
        ),
        ("mixed", "mixed"),
        ("", "none"),
        ("none", "none"),
    ] {
        let set = parse(input);
        assert_eq!(set.to_string(), canonical, "{input}");
        assert_eq!(parse(canonical), set, "{input}");
    }
}

#[test]
fn serde_stores_the_canonical_string() {
    let set = parse("split:max=3,disconnect:at=mid-header:p=0.25");
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(json, r#""split:max=3,disconnect:at=mid-header:p=0.25""#);
    assert_eq!(serde_json::from_str::<FaultSet>(&json).unwrap(), set);
    assert!(serde_json::from_str::<FaultSet>(r#""nosuch""#).is_err());
}

#[test]
fn bad_lists_get_errors_naming_the_culprit() {
    let err = |s: &str| s.parse::<FaultSet>().unwrap_err();
    assert_eq!(err("jitter"), FaultSpecError::Unknown("jitter".into()));
    assert!(
        matches!(err("split:size=3"), FaultSpecError::UnknownKey { fault, key } if fault == "split" && key == "size")
    );
    assert!(matches!(
        err("split:max"),
        FaultSpecError::MalformedOption { .. }
    ));
    assert!(matches!(
        err("split:max=1:max=2"),
        FaultSpecError::DuplicateKey { .. }
    ));
    assert!(matches!(err("split:max=0"), FaultSpecError::BadValue { key, .. } if key == "max"));
    assert!(matches!(
        err("split:max=x"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(err("coalesce:p=1.5"), FaultSpecError::BadValue { key, .. } if key == "p"));
    assert!(matches!(
        err("coalesce:p=NaN"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(
        err("disconnect:at=middle"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(
        err("disconnect:mode=fin"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(
        err("latency:us=99999999999"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(
        err("bandwidth:rate=0"),
        FaultSpecError::BadValue { .. }
    ));
    assert!(matches!(
        err("mixed:max=2"),
        FaultSpecError::UnknownKey { .. }
    ));
    assert!(err("split:max=0").to_string().contains("split:max"));
}

#[test]
fn merge_takes_the_union_of_cuts_and_keeps_pauses_at_their_offsets() {
    let a: Plan = "w3 p10 w7".parse().unwrap();
    let b: Plan = "p5 w5 p20 w5".parse().unwrap();
    assert_eq!(merge(10, &[a, b]).to_string(), "p5 w3 p10 w2 p20 w5");
}

#[test]
fn merge_pauses_at_one_offset_add_up() {
    let a: Plan = "w4 p10 w4".parse().unwrap();
    let b: Plan = "w4 p1 w4".parse().unwrap();
    assert_eq!(merge(8, &[a, b]).to_string(), "w4 p11 w4");
}

#[test]
fn merge_the_earliest_ending_wins_and_reset_beats_close_at_a_tie() {
    let split: Plan = "w2 p1 w2 p1 w2 p1 w2".parse().unwrap();
    let close: Plan = "w5 close".parse().unwrap();
    let reset: Plan = "w3 reset".parse().unwrap();
    assert_eq!(
        merge(8, &[split.clone(), close.clone()]).to_string(),
        "w2 p1 w2 p1 w1 close"
    );
    assert_eq!(
        merge(8, &[close.clone(), reset, split]).to_string(),
        "w2 p1 w1 reset"
    );
    let tie: Plan = "w5 reset".parse().unwrap();
    assert_eq!(merge(8, &[close, tie]).to_string(), "w5 reset");
}

#[test]
fn merge_with_an_ending_at_zero_writes_nothing() {
    let split: Plan = "w2 p1 w2".parse().unwrap();
    let close: Plan = "close".parse().unwrap();
    assert_eq!(merge(4, &[split, close]).to_string(), "close");
}

#[test]
fn merge_of_one_plan_is_that_plan() {
    for plan in ["w3 p10 w7", "p5 w10", "w4 close", "reset", "w10 p3"] {
        let plan: Plan = plan.parse().unwrap();
        assert_eq!(merge(10, std::slice::from_ref(&plan)), plan);
    }
}

#[test]
fn a_gate_of_zero_never_applies_and_one_always_does() {
    let never = parse("disconnect:at=0:p=0");
    let always = parse("disconnect:at=0");
    for seed in 0..20 {
        let mut rng = crate::chaos::conn_rng(seed, 0, crate::chaos::Direction::Up);
        assert_eq!(never.plan(10, &[], &mut rng), Plan::passthrough(10));
        assert_eq!(always.plan(10, &[], &mut rng).to_string(), "close");
    }
}

#[test]
fn mixed_picks_different_faults_for_different_streams() {
    let mixed = FaultSet::mixed();
    let plans: BTreeSet<String> = (0..50)
        .map(|conn| {
            let mut rng = crate::chaos::conn_rng(7, conn, crate::chaos::Direction::Up);
            mixed.plan(100, &[], &mut rng).to_string()
        })
        .collect();
    assert!(plans.len() > 10, "{plans:?}");
    assert!(mixed.may_disconnect());
    assert!(!parse("split").may_disconnect());
}

#[test]
fn every_fault_config_round_trips_through_serde() {
    let mut specs = FaultSpec::roster();
    specs.push(FaultSpec::Mixed);
    specs.push(FaultSpec::Disconnect(Disconnect {
        mode: DisconnectMode::Reset,
        at: DisconnectAt::Offset(17),
    }));
    for spec in specs {
        let entry = FaultEntry { spec, p: 0.25 };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            serde_json::from_str::<FaultEntry>(&json).unwrap(),
            entry,
            "{json}"
        );
    }
}

#[test]
fn a_huge_chunk_limit_does_not_overflow() {
    let set = parse("split:max=18446744073709551615,slow:max=18446744073709551615:limit=all");
    let mut rng = crate::chaos::conn_rng(1, 0, crate::chaos::Direction::Up);
    assert_eq!(set.plan(10, &[], &mut rng).bytes_written(), 10);
}

#[test]
fn split_without_layouts_cuts_pieces_between_half_max_and_max() {
    let set = parse("split:max=16");
    let mut rng = crate::chaos::conn_rng(2, 0, crate::chaos::Direction::Up);
    let plan = set.plan(64 * 1024, &[], &mut rng);
    let writes: Vec<usize> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Write(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(writes.iter().sum::<usize>(), 64 * 1024);
    // Every piece but the last (the remainder) is 9..=16 bytes.
    let (last, rest) = writes.split_last().unwrap();
    assert!(rest.iter().all(|n| (9..=16).contains(n)), "{rest:?}");
    assert!(*last <= 16);
}

#[test]
fn coalesce_hold_ms_parses_prints_and_is_bounded() {
    assert_eq!(
        parse("coalesce:hold_ms=30").to_string(),
        "coalesce:hold_ms=30"
    );
    assert_eq!(parse("coalesce:hold_ms=12").to_string(), "coalesce");
    assert!("coalesce:hold_ms=5000".parse::<FaultSet>().is_err());
}
