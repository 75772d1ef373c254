//! The LEC sweep model with the real `Lec` core: deterministic by seed, rebuilds most
//! Bernoulli losses at 1%, stagger and parity shards beat plain XOR under bursts, and nothing
//! is sent on a clean network with the adaptive rate.

use qs_sim::{replay_hint, seed_from_env};
use qs_testbed::sim_lec::{first_order, run, Loss, Model, Outcome, Scheme};

fn model(seed: u64) -> Model {
    Model {
        packets: 8_000,
        seed,
        check_every: 101,
        ..Model::default()
    }
}

fn case(seed: u64, scheme: &str, rate: f64, burst: u32) -> Outcome {
    run(
        &model(seed),
        &Scheme::parse(scheme).expect("scheme"),
        Loss { rate, burst },
    )
}

#[test]
fn the_same_seed_gives_the_same_outcome() {
    let seed = seed_from_env(11);
    let a = case(seed, "r8c3s2m2", 0.02, 3);
    let b = case(seed, "r8c3s2m2", 0.02, 3);
    assert_eq!(
        a,
        b,
        "{}",
        replay_hint(seed, "the_same_seed_gives_the_same_outcome")
    );
    assert!(a.lost > 0);
}

#[test]
fn one_percent_bernoulli_loss_is_mostly_rebuilt_laterally() {
    let seed = seed_from_env(12);
    let o = case(seed, "r8c3s1m1", 0.01, 1);
    let model = 100.0 * first_order(0.01, 8, 3);
    assert!(o.lost > 300, "{}", o.lost);
    assert!(
        o.lateral_pct() >= 90.0 && o.lateral_pct() >= model - 3.0,
        "{:.1}% rebuilt, model {model:.1}%: {}",
        o.lateral_pct(),
        replay_hint(
            seed,
            "one_percent_bernoulli_loss_is_mostly_rebuilt_laterally"
        )
    );
}

#[test]
fn a_clean_network_costs_no_repair_traffic_with_the_adaptive_rate_and_some_without() {
    let seed = seed_from_env(13);
    let adaptive = case(seed, "r8c3s1m1", 0.0, 1);
    let fixed = case(seed, "r8c3s1m1-fixed", 0.0, 1);
    let hint = replay_hint(seed, "a_clean_network_costs_no_repair_traffic");
    assert_eq!((adaptive.lost, adaptive.repairs), (0, 0), "{hint}");
    assert!(fixed.overhead() > 0.3, "{} {hint}", fixed.overhead());
}

#[test]
fn under_bursts_of_five_stagger_and_parity_rebuild_more_than_plain_xor() {
    let seed = seed_from_env(14);
    let hint = replay_hint(seed, "under_bursts_of_five_stagger_and_parity");
    let plain = case(seed, "r8c3s1m1", 0.01, 5);
    let stagger = case(seed, "r8c3s8m1", 0.01, 5);
    let parity = case(seed, "r8c3s2m3", 0.01, 5);
    assert!(
        stagger.lateral_pct() > plain.lateral_pct() + 20.0,
        "stagger {:.1}% vs {:.1}% {hint}",
        stagger.lateral_pct(),
        plain.lateral_pct()
    );
    assert!(
        parity.lateral_pct() > plain.lateral_pct() + 20.0,
        "parity {:.1}% vs {:.1}% {hint}",
        parity.lateral_pct(),
        plain.lateral_pct()
    );
}

#[test]
fn scheme_names_round_trip_and_nonsense_is_refused() {
    for s in ["r8c3s1m1", "r16c4s4m2-fixed", "r8c3s2m3p3"] {
        assert_eq!(Scheme::parse(s).map(|x| x.name()), Some(s.to_string()));
    }
    assert_eq!(
        Scheme::parse("r8c3").map(|x| x.name()),
        Some("r8c3s1m1".into())
    );
    for bad in ["", "r0c3", "x8", "r8c", "r8c3-fixedd"] {
        assert_eq!(Scheme::parse(bad), None, "{bad}");
    }
}
