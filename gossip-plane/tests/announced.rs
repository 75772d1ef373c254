#![allow(missing_docs)]
//! Subscription records that only multicast announcements vouch for: once forgotten (by the
//! owner's `left_unknown` or by the orphan sweep) they stay forgotten until membership vouches
//! for their node or `unvouched_hold` passes, instead of coming back with every announcement.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use qs_gossip::{GossipEvent, GossipNode, SubscriptionRecord};
use qs_sim::{Sim, SimConfig};
use qs_transport::{Instant, NodeId, TopicId};

const HOLD: Duration = Duration::from_secs(30);

fn record(version: u32) -> SubscriptionRecord {
    SubscriptionRecord {
        version,
        key_epoch: 0,
        departing: None,
        topics: Arc::from(&[TopicId(4), TopicId(9)][..]),
    }
}

fn changes(node: &mut GossipNode, id: NodeId) -> usize {
    std::iter::from_fn(|| node.poll_event())
        .filter(|e| *e == GossipEvent::SubscriptionsChanged(id))
        .count()
}

#[test]
fn a_node_forgotten_unvouched_is_refused_until_the_hold_ends() {
    let seed = qs_sim::seed_from_env(41);
    let hint = qs_sim::replay_hint(
        seed,
        "a_node_forgotten_unvouched_is_refused_until_the_hold_ends",
    );
    let mut c = config(0, seed);
    c.membership.seeds.clear();
    c.unvouched_hold = HOLD;
    let t0 = Instant::ZERO + Duration::from_secs(1);
    let mut node = GossipNode::new(c, t0);
    let x = node_id(1);

    node.learn_subscriptions(x, record(1));
    assert!(node.subscriptions().record(x).is_some(), "{hint}");
    assert_eq!(changes(&mut node, x), 1, "{hint}");
    node.left_unknown(x);
    assert!(node.subscriptions().record(x).is_none(), "{hint}");
    assert_eq!(changes(&mut node, x), 1, "{hint}");

    // The next announcement, and the last one within the hold, are refused: no flap.
    node.learn_subscriptions(x, record(2));
    node.handle_timeout(t0 + HOLD - Duration::from_millis(1));
    node.learn_subscriptions(x, record(3));
    assert!(node.subscriptions().record(x).is_none(), "{hint}");
    assert_eq!(node.stats().unvouched_refused, 2, "{hint}");
    assert_eq!(changes(&mut node, x), 0, "{hint}");

    // Once the hold has passed, an announcement counts again.
    node.handle_timeout(t0 + HOLD);
    node.learn_subscriptions(x, record(4));
    assert_eq!(
        node.subscriptions().record(x).map(|r| r.version),
        Some(4),
        "{hint}"
    );
    assert_eq!(node.stats().unvouched_refused, 2, "{hint}");
    assert_eq!(changes(&mut node, x), 1, "{hint}");
}

#[test]
fn an_orphan_swept_away_is_not_brought_back_by_the_next_announcement() {
    let seed = qs_sim::seed_from_env(42);
    let hint = qs_sim::replay_hint(
        seed,
        "an_orphan_swept_away_is_not_brought_back_by_the_next_announcement",
    );
    let mut c = config(0, seed);
    c.membership.seeds.clear();
    c.unvouched_hold = HOLD;
    let mut now = Instant::ZERO;
    let mut node = GossipNode::new(c, now);
    let x = node_id(1);
    node.learn_subscriptions(x, record(1));
    // No member vouches for it: the sweep drops it once `orphan_after` has passed, not
    // before (membership may take a while to know a node its announcement brought).
    let after = GossipNode::new(config(0, seed), Instant::ZERO)
        .config()
        .orphan_after;
    let start = now;
    while now < start + after + ROUND * 4 {
        now = now + ROUND;
        node.handle_timeout(now);
        if node.subscriptions().record(x).is_none() {
            break;
        }
        assert!(now < start + after + ROUND * 3, "kept too long; {hint}");
    }
    assert!(
        now >= start + after,
        "swept after {:?}, before orphan_after; {hint}",
        now.saturating_duration_since(start)
    );
    assert!(node.subscriptions().record(x).is_none(), "{hint}");
    assert_eq!(node.stats().orphan_records, 1, "{hint}");
    node.learn_subscriptions(x, record(2));
    assert!(node.subscriptions().record(x).is_none(), "{hint}");
    assert_eq!(node.stats().unvouched_refused, 1, "{hint}");
}

#[test]
fn a_node_forgotten_unvouched_counts_again_once_membership_vouches_for_it() {
    let seed = qs_sim::seed_from_env(43);
    let hint = qs_sim::replay_hint(
        seed,
        "a_node_forgotten_unvouched_counts_again_once_membership_vouches_for_it",
    );
    let mut sim: Sim<GossipNode> = Sim::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let mut c = config(0, seed);
    c.membership.seeds.clear();
    c.unvouched_hold = HOLD;
    let a = sim.add_node(addr(0), GossipNode::new(c, sim.now()));
    let x = node_id(1);
    sim.node_mut(a).learn_subscriptions(x, record(1));
    sim.node_mut(a).left_unknown(x);
    sim.node_mut(a).learn_subscriptions(x, record(2));
    assert!(sim.node(a).subscriptions().record(x).is_none(), "{hint}");
    assert_eq!(sim.node(a).stats().unvouched_refused, 1, "{hint}");

    // The node itself turns up through gossip, well within the hold.
    let mut cx = config(1, seed);
    cx.membership.seeds = vec![addr(0)];
    let b = sim.add_node(addr(1), GossipNode::new(cx, sim.now()));
    let mut tally = Tally::default();
    let took = run_until(&mut sim, Duration::from_secs(5), &mut tally, |s| {
        s.node(a).is_live_member(x)
    });
    assert!(took.is_some(), "membership never vouched; {hint}");
    let version = sim
        .node(b)
        .subscriptions()
        .record(x)
        .map_or(0, |r| r.version);
    sim.node_mut(a).learn_subscriptions(x, record(version + 1));
    assert_eq!(
        sim.node(a).subscriptions().record(x).map(|r| r.version),
        Some(version + 1),
        "{hint}"
    );
    assert_eq!(sim.node(a).stats().unvouched_refused, 1, "{hint}");
}
