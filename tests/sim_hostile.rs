//! Hardening that holds with or without a cluster key: a repair request is answered only at
//! the known unicast address of a member of the region it names, never at the datagram's
//! source address (which a spoofer chooses), and a request from a non-member is refused and
//! counted. `SIM_SEED=<n>` replays a seed.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_sim::{replay_hint, seed_from_env, EventKind, NodeIndex, Sim, SimConfig};
use qs_transport::wire::{self, DataPacket, Header, PacketKind, HEADER_LEN};
use qs_transport::{Driven, NodeId, RegionId, Seq, TopicId, TrafficClass};
use quicksilver::core::{CoreConfig, NodeCore};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 0, i as u8 + 1),
        9000,
    ))
}

fn topic() -> TopicId {
    TopicId::from_name("hostile")
}

fn cluster(seed: u64) -> (Sim<NodeCore>, Vec<NodeIndex>) {
    let mut sim = Sim::new(SimConfig::with_seed(seed));
    let idx = (0..3)
        .map(|i| {
            let SocketAddr::V4(a) = addr(i) else {
                unreachable!()
            };
            let mut c = CoreConfig::new(NodeId(100 + i as u64), a);
            c.seed = seed ^ i as u64;
            let mut n = NodeCore::new(c, qs_transport::Instant::ZERO);
            if i > 0 {
                n.subscribe(qs_transport::Instant::ZERO, topic());
            }
            sim.add_node(addr(i), n)
        })
        .collect();
    (sim, idx)
}

/// A repair request for the publisher's packets `0..1000` of `(region, epoch)`, from `who`.
fn request(sim: &Sim<NodeCore>, at: NodeIndex, who: NodeId, region: RegionId, epoch: u64) -> Bytes {
    common::repair_request(sim.node(at).config().cluster, who, region, epoch)
}

#[test]
fn a_spoofed_source_repair_request_is_answered_only_at_the_members_known_address() {
    let seed = seed_from_env(31);
    let hint = replay_hint(seed, "--release --test sim_hostile");
    let (mut sim, idx) = cluster(seed);
    let mut stream = None;
    let mut observe = |o: &mut qs_sim::Observation<'_, NodeCore>| {
        if let EventKind::Delivered { datagram, .. } = &o.event {
            if Header::peek(datagram).is_ok_and(|h| h.kind == PacketKind::Data) {
                if let Ok(p) = DataPacket::parse(datagram.slice(HEADER_LEN..datagram.len())) {
                    stream = Some((p.region, p.epoch));
                }
            }
        }
        while o.node.poll_event().is_some() {}
    };
    sim.run_for(Duration::from_secs(2), &mut observe);
    for s in 0..200u32 {
        let _ = sim
            .node_mut(idx[0])
            .publish(topic(), Bytes::from(s.to_be_bytes().to_vec()));
    }
    sim.poke(idx[0]);
    // Long enough for the data to reach the subscribers, too short for the region to
    // acknowledge it: the publisher still holds the packets.
    sim.run_for(Duration::from_micros(150), &mut observe);
    let (region, epoch) = stream.expect("data reached a subscriber");
    let victim = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 53));
    let now = sim.now();
    let mut buf = vec![0u8; 2048];
    let mut drain = |sim: &mut Sim<NodeCore>| {
        let core = sim.node_mut(idx[0]);
        let mut repairs = Vec::new();
        while let Some(t) = core.poll_transmit(now, &mut buf) {
            if t.class == TrafficClass::Repair {
                repairs.push(t.destination);
            }
        }
        repairs
    };
    drain(&mut sim);

    // A member's id with a victim's source address: served, but at the member's address.
    let served_before = sim.node(idx[0]).stats().repairs_served;
    let d = request(&sim, idx[0], NodeId(101), region, epoch);
    sim.node_mut(idx[0]).handle_datagram(now, victim, d);
    let repairs = drain(&mut sim);
    assert!(!repairs.is_empty(), "the request was served; {hint}");
    assert!(
        repairs.iter().all(|a| *a == addr(1)),
        "repairs went to {repairs:?}, not only to the member's address; {hint}"
    );
    assert!(sim.node(idx[0]).stats().repairs_served > served_before);

    // An id that is no member of the region: refused, counted, nothing sent.
    let refused = sim.node(idx[0]).stats().drops.not_member;
    let d = request(&sim, idx[0], NodeId(999), region, epoch);
    sim.node_mut(idx[0]).handle_datagram(now, victim, d);
    assert_eq!(drain(&mut sim), Vec::<SocketAddr>::new(), "{hint}");
    assert_eq!(sim.node(idx[0]).stats().drops.not_member, refused + 1);
    sim.node(idx[0]).check_invariants();
}

/// A stream state of the publisher's stream, claiming `highest`, into node `at`'s view.
fn stream_state(
    sim: &Sim<NodeCore>,
    at: NodeIndex,
    region: RegionId,
    epoch: u64,
    floor: Seq,
    highest: Seq,
) -> Bytes {
    let cluster = sim.node(at).config().cluster;
    let mut buf = vec![0u8; 256];
    Header::new(PacketKind::StreamState, cluster, NodeId(100))
        .write(&mut buf)
        .unwrap();
    let state = wire::StreamState {
        region,
        epoch,
        highest,
        floor,
    };
    let n = HEADER_LEN + state.write(&mut buf[HEADER_LEN..]).unwrap();
    let n = wire::Seal::new().seal(&mut buf, n).unwrap();
    Bytes::copy_from_slice(&buf[..n])
}

#[test]
fn a_stream_state_beyond_the_windows_is_refused_and_one_at_the_bound_is_not() {
    let seed = seed_from_env(32);
    let hint = replay_hint(seed, "--release --test sim_hostile");
    let (mut sim, idx) = cluster(seed);
    let mut stream = None;
    let mut top = Seq(0);
    let mut observe = |o: &mut qs_sim::Observation<'_, NodeCore>| {
        if let EventKind::Delivered { datagram, .. } = &o.event {
            if Header::peek(datagram).is_ok_and(|h| h.kind == PacketKind::Data) {
                if let Ok(p) = DataPacket::parse(datagram.slice(HEADER_LEN..datagram.len())) {
                    stream = Some((p.region, p.epoch));
                    top = Seq(top.0.max(p.seq.0));
                }
            }
        }
        while o.node.poll_event().is_some() {}
    };
    sim.run_for(Duration::from_secs(2), &mut observe);
    for s in 0..200u32 {
        let _ = sim
            .node_mut(idx[0])
            .publish(topic(), Bytes::from(s.to_be_bytes().to_vec()));
    }
    sim.poke(idx[0]);
    sim.run_for(Duration::from_secs(2), &mut observe);
    let (region, epoch) = stream.expect("data reached a subscriber");
    let c = sim.node(idx[1]).config().clone();
    let bound = (c.send_window_packets + c.reorder_window_packets) as u32;
    let next = top.0 + 1;
    let now = sim.now();
    let gaps = sim.node(idx[1]).stats().gaps;
    // One past the bound: refused, counted, nothing skipped or reported lost.
    let d = stream_state(&sim, idx[1], region, epoch, top, Seq(next + bound + 1));
    sim.node_mut(idx[1]).handle_datagram(now, addr(0), d);
    let s = sim.node(idx[1]).stats();
    assert_eq!(s.drops.out_of_bounds, 1, "{hint}");
    assert_eq!(s.gaps, gaps);
    // A floor far ahead (the forgery that skipped 25,000 messages): refused too.
    let d = stream_state(
        &sim,
        idx[1],
        region,
        epoch,
        Seq(next + 25_000),
        Seq(next + 25_000),
    );
    sim.node_mut(idx[1]).handle_datagram(now, addr(0), d);
    assert_eq!(sim.node(idx[1]).stats().drops.out_of_bounds, 2, "{hint}");
    // Exactly at the bound: taken (a lagging member may be that far behind).
    let d = stream_state(&sim, idx[1], region, epoch, top, Seq(next + bound));
    sim.node_mut(idx[1]).handle_datagram(now, addr(0), d);
    assert_eq!(sim.node(idx[1]).stats().drops.out_of_bounds, 2, "{hint}");
    sim.node(idx[1]).check_invariants();
}
