//! The send path: one [`SendStream`] per region this node publishes into. [`NodeCore::publish`]
//! only queues `(topic, payload)`; packets (headers, sequence numbers, packing of small
//! messages, fragments of large ones) are built in [`NodeCore::poll_data`] when the driver can
//! send (pull-based sending). Each stream's [`SendWindow`] keeps what the region has not
//! acknowledged, bounded by packets and by time (`send_window_time` at the region's
//! acknowledgement rate; a closed window stops the stream, and the queue then pushes back on
//! publishers), its [`Pacer`] follows the slowest member while the region falls behind, and a
//! stream that goes idle announces its tail ([`StreamState`]) so receivers see tail losses.
//!
//! Not here: what the region acknowledges and asks again arrives through the ring
//! (`recovery.rs` calls [`NodeCore::handle_sender_ack`]); every datagram is sealed by the core.

use std::collections::btree_map::Entry;
use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use qs_recovery::{PaceChange, Pacer, Resend, SendWindow};
use qs_transport::wire::{
    self, DataWriter, Fragment, PacketKind, SenderAck, StreamId, StreamState, HEADER_LEN,
    MESSAGE_OVERHEAD,
};
use qs_transport::{Instant, NodeId, RegionId, Seq, TopicId, TrafficClass, Transmit};

use super::out::Intent;
use super::{NodeCore, PublishRefused};

/// How long a re-multicast packet is not re-multicast again on a further nak.
const RESEND_HOLDOFF: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Outgoing {
    topic: TopicId,
    payload: Bytes,
}

#[derive(Debug, Clone, Copy)]
struct FragCursor {
    index: u16,
    count: u16,
}

/// This node's stream into one region.
#[derive(Debug)]
pub(super) struct SendStream {
    group: SocketAddrV4,
    queue: VecDeque<Outgoing>,
    frag: Option<FragCursor>,
    /// The stream's epoch: a new stream of this node into the region (after a restart, or
    /// after the region went away and came back) has a higher one.
    pub(super) epoch: u64,
    /// Sequence numbers, and the packets the region has not acknowledged (reliable mode).
    pub(super) window: SendWindow,
    /// Rate control, while the region lags.
    pub(super) pacer: Pacer,
    /// Every member of the region has everything up to here (the leader's last floor): what
    /// stream states tell receivers to start after.
    floor: qs_transport::Seq,
    /// When to send the next stream state, if one is due.
    state_at: Option<Instant>,
    state_repeats_left: u32,
    state_backoff: Duration,
    /// When the last stream state went out.
    state_sent: Option<Instant>,
    /// The region's members as this node sees them, as the tag its data packets carry
    /// ([`wire::view_tag`]; kept up to date with the region table).
    view: u16,
}

impl SendStream {
    fn new(group: SocketAddrV4, window: SendWindow, epoch: u64) -> SendStream {
        let first = window.next_seq();
        SendStream {
            group,
            queue: VecDeque::new(),
            frag: None,
            epoch,
            window,
            pacer: Pacer::new(),
            floor: Seq(first.0.wrapping_sub(1)),
            state_at: None,
            state_repeats_left: 0,
            state_backoff: Duration::ZERO,
            state_sent: None,
            view: 0,
        }
    }

    /// Reliable mode: nothing is unacknowledged and every member of the region (those the
    /// leader skipped in its last rounds included) has everything sent, so the sender may
    /// go: a member still repairing from its peers would otherwise lose the rest when the
    /// sender's goodbye ends the stream.
    pub(super) fn is_settled(&self) -> bool {
        self.window.is_empty() && (!self.window.started() || self.floor == self.window.highest())
    }

    /// The multicast group (and port) of the stream's region.
    pub(super) fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// Whether messages wait in the queue.
    pub(super) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes this stream's queue counts against the send queue.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queue
            .iter()
            .map(|m| m.payload.len() + MESSAGE_OVERHEAD)
            .sum()
    }

    /// When the stream next needs the core: a stream state, or a pacing token for queued data
    /// (when the window is open).
    pub(super) fn deadline(&self) -> Option<Instant> {
        let paced = (!self.queue.is_empty() && self.window.is_open())
            .then(|| self.pacer.deadline())
            .flatten();
        [self.state_at, paced].into_iter().flatten().min()
    }

    /// Refills the pacing bucket (the next `poll_transmit` may send).
    pub(super) fn tick(&mut self, now: Instant) {
        self.pacer.allows(now);
    }

    /// Panics if the stream's bookkeeping is inconsistent.
    pub(super) fn check_invariants(&self) {
        self.window.check_invariants();
        assert!(
            self.frag.is_none() || !self.queue.is_empty(),
            "fragment cursor without a message"
        );
    }
}

/// The tag this node's data packets into `region` carry: its member list as this node sees it.
fn view_tag(region: &qs_regions::Region) -> u16 {
    wire::view_tag(wire::members_hash(&region.members), region.members.len())
}

impl NodeCore {
    /// Queues `payload` on `topic` for every region subscribing it. A message larger than
    /// `max_message_bytes` or a full send queue is refused (the caller keeps the message: this
    /// is back-pressure, not loss).
    pub fn publish(&mut self, topic: TopicId, payload: Bytes) -> Result<(), PublishRefused> {
        if payload.len() > self.config.max_message_bytes
            || payload.len() > u32::MAX as usize
            || payload.len()
                > Fragment::payload_capacity(self.config.max_datagram) * usize::from(u16::MAX)
        {
            return Err(PublishRefused::TooLarge);
        }
        if topic == TopicId::HANDOVER {
            return Err(PublishRefused::ReservedTopic);
        }
        if !self.can_publish(payload.len()) {
            return Err(PublishRefused::QueueFull);
        }
        self.stats.published += 1;
        if self.subscriptions.contains(&topic) {
            self.deliver(self.config.id, topic, payload.clone());
        }
        let own = self.own_region;
        // The regions to queue into; the last of them takes the payload itself (a clone of
        // a `Bytes` made from a `Vec` allocates, and this runs once per message).
        let regions = self.regions.regions_for_topic(topic);
        let eligible = |region: RegionId| {
            self.regions.region(region).filter(|info| {
                // Only this node is in it: delivered locally above.
                !(Some(region) == own && info.members.len() == 1)
            })
        };
        let Some(last) = regions.iter().rposition(|&r| eligible(r).is_some()) else {
            self.stats.published_unheard += 1;
            return Ok(());
        };
        let mut payload = Some(payload);
        for i in 0..=last {
            // Looked up again each turn (queueing needs the whole core): a topic's regions
            // are few, and nothing here allocates.
            let region = self.regions.regions_for_topic(topic)[i];
            let eligible = self
                .regions
                .region(region)
                .is_some_and(|info| !(Some(region) == own && info.members.len() == 1));
            if !eligible {
                continue;
            }
            let payload = if i == last {
                payload.take()
            } else {
                payload.clone()
            };
            let Some(payload) = payload else {
                break;
            };
            self.queue_message(region, topic, payload);
        }
        Ok(())
    }

    /// Makes sure this node has a send stream into `region` (a region of the table);
    /// returns whether it has one.
    pub(super) fn send_stream_for(&mut self, region: RegionId) -> bool {
        if self.send.contains_key(&region) {
            return true;
        }
        let Some(info) = self.regions.region(region) else {
            return false;
        };
        if let Entry::Vacant(e) = self.send.entry(region) {
            let window = if self.config.reliable {
                self.config.send_window_packets
            } else {
                0
            };
            let group = SocketAddrV4::new(info.group, self.config.data_port);
            // Epochs grow with the incarnation, then with every stream this process
            // starts, so a restarted sender never reuses one.
            self.streams_started += 1;
            let epoch = (self.config.incarnation << 16).wrapping_add(self.streams_started);
            let window = SendWindow::starting_at(window, self.config.first_seq).bound_by_time(
                self.config.send_window_time,
                super::config::SEND_WINDOW_FLOOR,
            );
            let mut s = SendStream::new(group, window, epoch);
            s.view = view_tag(info);
            e.insert(s);
        }
        // Members departing the region as the stream starts: nothing of it is theirs, so it
        // starts with their cut. A sender that learns of a move only now (restarted, or new
        // to the region) has marked nothing, and they would wait for its marker until
        // `handover_timeout`.
        let departing: Vec<NodeId> = self
            .regions
            .region(region)
            .map(|r| r.departing.iter().copied().collect())
            .unwrap_or_default();
        for m in departing {
            if let Some(version) = self.gossip.subscriptions().record(m).map(|r| r.version) {
                let to = self.regions.region_of(m);
                self.mark_handover(m, version, region, to);
            }
        }
        true
    }

    /// Queues one message into `region`'s send stream (started if there is none); returns
    /// whether it was queued (the region exists).
    pub(super) fn queue_message(
        &mut self,
        region: RegionId,
        topic: TopicId,
        payload: Bytes,
    ) -> bool {
        if !self.send_stream_for(region) {
            return false;
        }
        let stream = self.send.get_mut(&region).expect("made sure");
        if stream.queue.is_empty() {
            self.ready.push_back(region);
        }
        self.queued_bytes += payload.len() + MESSAGE_OVERHEAD;
        stream.queue.push_back(Outgoing { topic, payload });
        true
    }

    /// Bytes queued for sending.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether a message of `len` bytes can be queued now (back-pressure check).
    pub fn can_publish(&self, len: usize) -> bool {
        self.queued_bytes == 0 || self.queued_bytes + len + MESSAGE_OVERHEAD <= self.queue_limit()
    }

    /// The send queue's limit now: `send_queue_bytes`, or less when that would hold more than
    /// `send_queue_time` at the queue's drain rate.
    pub fn queue_limit(&self) -> usize {
        self.drain.limit(
            self.config.send_queue_time,
            super::config::SEND_QUEUE_FLOOR,
            self.config.send_queue_bytes,
        )
    }

    /// This node's own stream into `region` — its epoch and highest packet — if any went out.
    pub(super) fn own_stream(&self, region: RegionId) -> Option<(u64, qs_transport::Seq)> {
        self.send
            .get(&region)
            .filter(|s| s.window.started())
            .map(|s| (s.epoch, s.window.highest()))
    }

    /// Throws away send streams of regions that no longer exist (counted); the others take
    /// their region's current member list as their view tag.
    pub(super) fn prune_send_streams(&mut self) {
        let regions = &self.regions;
        let mut gone = 0u64;
        let mut freed = 0usize;
        self.send.retain(|id, s| {
            let Some(region) = regions.region(*id) else {
                gone += s.queue.len() as u64;
                freed += s.queued_bytes();
                return false;
            };
            s.view = view_tag(region);
            true
        });
        if gone > 0 || freed > 0 {
            self.stats.drops.region_gone += gone;
            self.queued_bytes -= freed;
            let send = &self.send;
            self.ready.retain(|r| send.contains_key(r));
        }
    }

    /// Writes a due stream state (unsealed) into `buf`.
    pub(super) fn poll_stream_state(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let header = self.header(PacketKind::StreamState);
        let (region, stream) = self
            .send
            .iter_mut()
            .find(|(_, s)| s.state_at.is_some_and(|t| t <= now))?;
        let state = StreamState {
            region: *region,
            epoch: stream.epoch,
            highest: stream.window.highest(),
            floor: stream.floor,
        };
        header.write(buf).ok()?;
        let len = HEADER_LEN + state.write(&mut buf[HEADER_LEN..]).ok()?;
        stream.state_sent = Some(now);
        if stream.state_repeats_left > 1 {
            stream.state_repeats_left -= 1;
            stream.state_backoff *= 4;
            stream.state_at = Some(now + stream.state_backoff);
        } else {
            stream.state_repeats_left = 0;
            stream.state_at = None;
        }
        Some(Transmit {
            destination: SocketAddr::V4(stream.group),
            class: TrafficClass::Control,
            len,
        })
    }

    /// Builds the next data packet (unsealed) of the next ready region into `buf`.
    pub(super) fn poll_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.drain.on_poll(now, self.queued_bytes);
        // The first ready region whose send window is open (full windows wait for the ring's
        // acknowledgement; their queues push back on publishers) and, when paced, that has a
        // token (rate control through the ring).
        let mut region = None;
        for _ in 0..self.ready.len() {
            let r = *self.ready.front()?;
            if let Some(s) = self.send.get_mut(&r) {
                if !s.window.is_open() {
                    // Rate control follows a window full of packets (the region's slowest
                    // member cannot keep up); the time bound closing it is the window's own
                    // back-pressure on a delay, already at the region's pace.
                    if s.window.is_full() {
                        s.pacer.on_window_full();
                    }
                } else if s.pacer.allows(now) {
                    region = Some(r);
                    break;
                }
            }
            self.ready.rotate_left(1);
        }
        let region = region?;
        let header = self.header(PacketKind::Data);
        let frag_header = self.header(PacketKind::Fragment);
        let budget = (buf.len().min(self.config.max_datagram) - self.seal.overhead())
            .min(self.lec_data_budget(region));
        let frag_capacity = Fragment::payload_capacity(budget);
        let stream = self.send.get_mut(&region)?;
        let seq = stream.window.next_seq();
        let id = StreamId {
            region,
            epoch: stream.epoch,
        };
        let head_len = stream.queue.front()?.payload.len();
        let packs = stream.frag.is_none()
            && HEADER_LEN + wire::DATA_FIXED_LEN + MESSAGE_OVERHEAD + head_len <= budget
            && head_len <= usize::from(u16::MAX);
        let len = if packs {
            let mut w = DataWriter::new(&mut buf[..budget], &header, id, seq).ok()?;
            w.set_view(stream.view);
            let mut packed = 0;
            let mut marker = false;
            while let Some(m) = stream.queue.front() {
                // A handover marker goes alone in its packet (flagged, so that receivers
                // find it without reading every packet's messages).
                marker = m.topic == TopicId::HANDOVER;
                if marker && packed > 0 {
                    marker = false;
                    break;
                }
                if !w.push(m.topic, &m.payload) {
                    marker = false;
                    break;
                }
                packed += 1;
                let m = stream.queue.pop_front().expect("front exists");
                self.queued_bytes -= m.payload.len() + MESSAGE_OVERHEAD;
                self.drain.on_drained(m.payload.len() + MESSAGE_OVERHEAD);
                if marker {
                    break;
                }
                self.stats.messages_sent += 1;
                self.stats.payload_bytes_sent += m.payload.len() as u64;
            }
            let len = w.finish().ok()?;
            if marker {
                buf[wire::field::FLAGS] |= wire::FLAG_HANDOVER;
            }
            len
        } else {
            let m = stream.queue.front()?;
            let cursor = *stream.frag.get_or_insert(FragCursor {
                index: 0,
                count: u16::try_from(m.payload.len().div_ceil(frag_capacity)).ok()?,
            });
            let start = usize::from(cursor.index) * frag_capacity;
            let end = (start + frag_capacity).min(m.payload.len());
            let len = Fragment::write(
                buf,
                &frag_header,
                id,
                seq,
                cursor.index,
                cursor.count,
                m.topic,
                m.payload.len() as u32,
                stream.view,
                &m.payload[start..end],
            )
            .ok()?;
            if cursor.index + 1 == cursor.count {
                stream.frag = None;
                let m = stream.queue.pop_front().expect("front exists");
                self.queued_bytes -= m.payload.len() + MESSAGE_OVERHEAD;
                self.drain.on_drained(m.payload.len() + MESSAGE_OVERHEAD);
                self.stats.messages_sent += 1;
                self.stats.payload_bytes_sent += m.payload.len() as u64;
            } else {
                stream.frag = Some(FragCursor {
                    index: cursor.index + 1,
                    ..cursor
                });
            }
            len
        };
        stream.window.sent(&buf[..len]);
        stream.pacer.on_sent();
        self.stats.unacked_bytes_peak = self
            .stats
            .unacked_bytes_peak
            .max(stream.window.bytes() as u64);
        self.stats.data_bytes_sent += len as u64;
        stream.state_backoff = self.config.stream_state_delay;
        stream.state_at = Some(now + self.config.stream_state_delay);
        stream.state_repeats_left = self.config.stream_state_repeats;
        let destination = SocketAddr::V4(stream.group);
        self.ready.pop_front();
        if !stream.queue.is_empty() {
            self.ready.push_back(region);
        }
        self.stats.data_packets_sent += 1;
        if Some(region) == self.own_region {
            if let Some(ring) = self.ring.as_mut() {
                ring.on_data();
            }
            let me = self.config.id;
            let epoch = id.epoch;
            self.lec_on_packet(
                now,
                qs_recovery::PacketId {
                    sender: me,
                    epoch,
                    seq,
                },
                &buf[..len],
            );
        }
        self.unicast_copies(region, seq, &buf[..len]);
        Some(Transmit {
            destination,
            class: TrafficClass::Data,
            len,
        })
    }

    /// The region acknowledged a stream of ours: free what is stable, pace to the slowest
    /// member, re-multicast what a whole caretaker partition lacks, re-announce the stream's
    /// tail or floor if the region knows less than we sent or freed.
    pub(super) fn handle_sender_ack(&mut self, now: Instant, ack: SenderAck) {
        let Some(stream) = self.send.get_mut(&ack.region) else {
            return;
        };
        if ack.epoch != stream.epoch {
            // About a stream of ours that no longer exists (before a restart, or an earlier
            // stream into this region): nothing of the current one is stable by it.
            self.stats.acks_refused += 1;
            return;
        }
        let acked_before = stream.window.acked();
        let dropped_before = stream.window.retained_dropped();
        // A full retention closes the window for about as long as the view takes to drop a
        // crashed member, twice over, so the view change reaches the ring and its floor.
        stream
            .window
            .set_retention_hold(self.gossip.membership().detection_time() * 2);
        let freed = stream.window.ack(now, ack.stable, ack.floor);
        self.stats.acked_packets += freed;
        self.stats.retained_dropped += stream.window.retained_dropped() - dropped_before;
        if !ack.stable.is_before(ack.floor) && stream.floor.is_before(ack.floor) {
            stream.floor = ack.floor;
        }
        if self.config.rate_control
            && stream.pacer.on_ack(now, ack.slowest_rate) == PaceChange::Engaged
        {
            self.stats.pacing_engaged += 1;
        }
        // The region knows less than we freed: tell it the floor at once. It knows less than
        // we sent while nothing is queued: tell it the tail, but not on every acknowledgement
        // (they lag the stream by a round or two by design), only once a while has passed
        // since the last state.
        let quiet = self.config.stream_state_delay * 4;
        let tail_unknown = stream.queue.is_empty()
            && ack.highest.is_before(stream.window.highest())
            && stream.state_sent.is_none_or(|t| now >= t + quiet);
        let announce = ack.stable.is_before(acked_before) || tail_unknown;
        if announce {
            stream.state_at = Some(now);
            stream.state_repeats_left = stream.state_repeats_left.max(1);
        }
        let mut again = 0;
        let mut held_off = 0;
        // The work per acknowledgement is bounded by the window, not by the ranges' widths
        // on the wire: nothing outside the window can be sent again anyway.
        let examine = self.config.send_window_packets;
        for s in ack.naks.iter().flat_map(|r| r.iter()).take(examine) {
            if again >= self.config.ring.max_request {
                break;
            }
            match stream.window.resend(now, s, RESEND_HOLDOFF) {
                Resend::Go => {
                    again += 1;
                    self.out.push(Intent::Resend {
                        region: ack.region,
                        seq: s,
                    });
                }
                Resend::HeldOff => held_off += 1,
                Resend::Gone => {}
            }
        }
        self.stats.resends_held_off += held_off;
        self.stats.retransmitted += again as u64;
    }
}
