//! Replayability: one seed and one set of arguments give byte-identical messages and
//! plans; other connection indexes give other plans.

use std::collections::BTreeSet;

use chopstick::chaos::{conn_rng, purpose_rng, Direction, FaultSet, Plan};
use chopstick::codec::seeded_messages;
use chopstick_targets::wire::Framing;

const SETS: &[&str] = &[
    "split",
    "boundary",
    "coalesce",
    "disconnect:mode=any",
    "slow:max=4",
    "mixed",
    "split:max=8,coalesce,disconnect:at=mid-body:p=0.5",
];

fn run(seed: u64, conn: u64, set: &FaultSet) -> (Vec<Vec<u8>>, Plan) {
    let framing: Framing = "hjson".parse().unwrap();
    let msgs = seeded_messages(&mut purpose_rng(seed, "messages"), &framing, 12, 300);
    let (stream, frames) = framing.encode_all(&msgs).unwrap();
    let plan = set.plan(
        stream.len(),
        &frames,
        &mut conn_rng(seed, conn, Direction::Up),
    );
    (msgs, plan)
}

#[test]
fn the_same_seed_gives_identical_messages_and_plans() {
    for spec in SETS {
        let set: FaultSet = spec.parse().unwrap();
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(run(seed, 3, &set), run(seed, 3, &set), "{spec} seed {seed}");
            // Through the printed and parsed fault list too, as a reproducer would.
            let reparsed: FaultSet = set.to_string().parse().unwrap();
            assert_eq!(run(seed, 3, &set), run(seed, 3, &reparsed), "{spec}");
        }
    }
}

#[test]
fn different_connection_indexes_give_different_plans() {
    for spec in SETS {
        let set: FaultSet = spec.parse().unwrap();
        let plans: BTreeSet<String> = (0..16)
            .map(|conn| run(5, conn, &set).1.to_string())
            .collect();
        // Messages come from the seed alone, so only the plan varies; a few collisions
        // are possible for coarse faults, identical plans everywhere are not.
        assert!(plans.len() >= 12, "{spec}: {plans:?}");
    }
}

#[test]
fn different_seeds_give_different_messages() {
    let framing = Framing::default();
    let a = seeded_messages(&mut purpose_rng(1, "messages"), &framing, 8, 64);
    let b = seeded_messages(&mut purpose_rng(2, "messages"), &framing, 8, 64);
    assert_ne!(a, b);
}
