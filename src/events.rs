//! Node events for the application: what the core reports besides deliveries (gaps, peers
//! coming and going, slow receivers, isolation, multicast reachability), as [`NodeEvent`]s on
//! bounded queues ([`Events`]) that [`Node::events`](crate::Node::events) hands out.
//!
//! This file owns the public event type, its mapping from [`core::Event`](crate::core::Event)
//! and the listener list the node thread feeds. It does not decide *when* anything happens
//! (the core does) and it never blocks the node thread: a listener whose queue is full loses
//! the event, counted in [`Stats::events_dropped`](crate::Stats::events_dropped).

use std::time::Duration;

use qs_transport::{NodeId, RegionId};

use crate::core::Event;
use crate::RecvError;

/// Something that happened to the node or the cluster, as the application sees it.
///
/// New variants will be added (sender lost, region changes); match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeEvent {
    /// Messages of `sender`'s stream into `region` were lost for good: in reliable mode only
    /// when the sender died before any member had them; in best-effort mode whenever a hole
    /// timed out (or the node isolated itself as a slow receiver).
    Gap {
        /// The stream's sender.
        sender: NodeId,
        /// The stream's region.
        region: RegionId,
        /// Packets lost.
        missed: u32,
    },
    /// A peer was discovered.
    PeerUp {
        /// The peer.
        peer: NodeId,
    },
    /// A peer changed its subscriptions or its address.
    PeerChanged {
        /// The peer.
        peer: NodeId,
    },
    /// A peer left or went silent.
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// A member of this node's region has been far behind `sender` for a while (reported by
    /// the region's leader). The sender slows down to it; nothing is lost.
    SlowReceiver {
        /// The stream's sender.
        sender: NodeId,
        /// The lagging member.
        member: NodeId,
        /// Packets it is behind.
        lag: u32,
    },
    /// This node fell too far behind `sender` for too long and, under the opt-in isolation
    /// policy ([`NodeBuilder::isolate_slow`](crate::NodeBuilder::isolate_slow)), stopped
    /// holding the region back: what it cannot keep up with is reported as [`NodeEvent::Gap`].
    Isolated {
        /// The stream's sender.
        sender: NodeId,
        /// Packets it was behind.
        lag: u32,
    },
    /// This node caught up with `sender`'s stream again after isolating itself.
    Rejoined {
        /// The stream's sender.
        sender: NodeId,
    },
    /// `member` does not hear `region`'s multicast (gossip's probe); senders serve it by
    /// unicast copies until it does again.
    MulticastUnreachable {
        /// The member.
        member: NodeId,
        /// The region.
        region: RegionId,
    },
    /// `member` hears `region`'s multicast again.
    MulticastReachable {
        /// The member.
        member: NodeId,
        /// The region.
        region: RegionId,
    },
}

impl NodeEvent {
    /// The application's view of a core event; `None` for deliveries (they go to
    /// subscriptions). Copies a few ids: no allocation.
    pub(crate) fn from_core(e: &Event) -> Option<NodeEvent> {
        Some(match *e {
            Event::Delivered(_) => return None,
            Event::Gap {
                sender,
                region,
                missed,
            } => NodeEvent::Gap {
                sender,
                region,
                missed,
            },
            Event::PeerUp(peer) => NodeEvent::PeerUp { peer },
            Event::PeerChanged(peer) => NodeEvent::PeerChanged { peer },
            Event::PeerDown(peer) => NodeEvent::PeerDown { peer },
            Event::SlowReceiver {
                sender,
                member,
                lag,
            } => NodeEvent::SlowReceiver {
                sender,
                member,
                lag,
            },
            Event::Isolated { sender, lag } => NodeEvent::Isolated { sender, lag },
            Event::Rejoined { sender } => NodeEvent::Rejoined { sender },
            Event::MulticastUnreachable { member, region } => {
                NodeEvent::MulticastUnreachable { member, region }
            }
            Event::MulticastReachable { member, region } => {
                NodeEvent::MulticastReachable { member, region }
            }
        })
    }

    /// Records the event in the log at a level that matches its weight (losses and
    /// isolation warn; membership is informational), with its fields as structured values.
    pub(crate) fn trace(&self) {
        match *self {
            NodeEvent::Gap {
                sender,
                region,
                missed,
            } => tracing::warn!(%sender, %region, missed, "messages lost (gap)"),
            NodeEvent::PeerUp { peer } => tracing::info!(%peer, "peer up"),
            NodeEvent::PeerChanged { peer } => tracing::debug!(%peer, "peer changed"),
            NodeEvent::PeerDown { peer } => tracing::info!(%peer, "peer down"),
            NodeEvent::SlowReceiver {
                sender,
                member,
                lag,
            } => tracing::info!(%sender, %member, lag, "slow receiver"),
            NodeEvent::Isolated { sender, lag } => {
                tracing::warn!(%sender, lag, "isolated from a sender's stream (slow receiver)")
            }
            NodeEvent::Rejoined { sender } => tracing::info!(%sender, "rejoined a sender's stream"),
            NodeEvent::MulticastUnreachable { member, region } => {
                tracing::warn!(%member, %region, "multicast unreachable: unicast copies")
            }
            NodeEvent::MulticastReachable { member, region } => {
                tracing::info!(%member, %region, "multicast reachable again")
            }
        }
    }
}

/// A queue of [`NodeEvent`]s from one call of [`Node::events`](crate::Node::events): every
/// queue gets every event that happened after it was created. Blocking, timed and async
/// receive; it is also a [`futures_core::Stream`]. The queue is bounded: when the application
/// does not keep up, events are dropped and counted in
/// [`Stats::events_dropped`](crate::Stats::events_dropped), never blocking the node.
pub struct Events {
    rx: flume::Receiver<NodeEvent>,
    stream: flume::r#async::RecvStream<'static, NodeEvent>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl Events {
    pub(crate) fn new(rx: flume::Receiver<NodeEvent>) -> Events {
        Events {
            stream: rx.clone().into_stream(),
            rx,
        }
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Result<NodeEvent, RecvError> {
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<NodeEvent, RecvError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            flume::RecvTimeoutError::Timeout => RecvError::Empty,
            flume::RecvTimeoutError::Disconnected => RecvError::Closed,
        })
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Result<NodeEvent, RecvError> {
        self.rx.try_recv().map_err(|e| match e {
            flume::TryRecvError::Empty => RecvError::Empty,
            flume::TryRecvError::Disconnected => RecvError::Closed,
        })
    }

    /// Waits for the next event without blocking a thread.
    pub async fn recv_async(&self) -> Result<NodeEvent, RecvError> {
        self.rx.recv_async().await.map_err(|_| RecvError::Closed)
    }
}

impl futures_core::Stream for Events {
    type Item = NodeEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<NodeEvent>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

/// Event queues a node feeds at once; a queue asked for beyond these is closed at once.
pub(crate) const MAX_LISTENERS: usize = 64;

/// The node thread's side: one bounded sender per [`Events`] handed out (at most
/// [`MAX_LISTENERS`]).
#[derive(Default)]
pub(crate) struct Listeners {
    senders: Vec<flume::Sender<NodeEvent>>,
    /// Events a full listener queue did not take.
    pub(crate) dropped: u64,
}

impl Listeners {
    /// Adds a listener, unless [`MAX_LISTENERS`] live ones exist: then `tx` is dropped, which
    /// closes its queue (its receiver sees [`RecvError::Closed`]).
    pub(crate) fn add(&mut self, tx: flume::Sender<NodeEvent>) {
        if self.senders.len() >= MAX_LISTENERS {
            self.senders.retain(|s| !s.is_disconnected());
        }
        if self.senders.len() < MAX_LISTENERS {
            self.senders.push(tx);
        }
    }

    /// Logs the core event and hands it to every listener (listeners that went away are
    /// forgotten). Deliveries are not events: they cost nothing here.
    pub(crate) fn offer(&mut self, e: &Event) {
        let Some(ev) = NodeEvent::from_core(e) else {
            return;
        };
        ev.trace();
        let mut dropped = 0;
        self.senders.retain(|tx| match tx.try_send(ev) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        });
        self.dropped += dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap() -> Event {
        Event::Gap {
            sender: NodeId(7),
            region: RegionId(9),
            missed: 3,
        }
    }

    #[test]
    fn core_events_map_field_for_field_and_deliveries_are_not_events() {
        assert_eq!(
            NodeEvent::from_core(&gap()),
            Some(NodeEvent::Gap {
                sender: NodeId(7),
                region: RegionId(9),
                missed: 3
            })
        );
        assert_eq!(
            NodeEvent::from_core(&Event::PeerDown(NodeId(4))),
            Some(NodeEvent::PeerDown { peer: NodeId(4) })
        );
        let d = Event::Delivered(crate::core::Delivery {
            sender: NodeId(1),
            topic: qs_transport::TopicId(2),
            payload: bytes::Bytes::new(),
        });
        assert_eq!(NodeEvent::from_core(&d), None);
    }

    #[test]
    fn every_listener_gets_every_event_and_a_full_queue_counts_its_losses() {
        let mut l = Listeners::default();
        let (tx_a, rx_a) = flume::bounded(1);
        let (tx_b, rx_b) = flume::bounded(4);
        l.add(tx_a);
        l.add(tx_b);
        l.offer(&gap());
        l.offer(&gap());
        assert_eq!(rx_a.len(), 1, "the one-slot queue kept the first");
        assert_eq!(rx_b.len(), 2, "the roomy queue got both");
        assert_eq!(l.dropped, 1, "exactly the event the full queue refused");
    }

    #[test]
    fn listeners_beyond_the_maximum_are_closed_until_one_goes_away() {
        let mut l = Listeners::default();
        let mut rxs: Vec<_> = (0..MAX_LISTENERS)
            .map(|_| {
                let (tx, rx) = flume::bounded(1);
                l.add(tx);
                rx
            })
            .collect();
        let (tx, extra) = flume::bounded::<NodeEvent>(1);
        l.add(tx);
        assert!(extra.is_disconnected(), "one too many: closed at once");
        drop(rxs.pop());
        let (tx, late) = flume::bounded::<NodeEvent>(1);
        l.add(tx);
        assert!(!late.is_disconnected(), "a freed place is taken");
        l.offer(&gap());
        assert_eq!(late.len(), 1);
    }

    #[test]
    fn a_listener_that_went_away_is_forgotten_without_counting_a_loss() {
        let mut l = Listeners::default();
        let (tx, rx) = flume::bounded(1);
        l.add(tx);
        drop(rx);
        l.offer(&gap());
        assert!(l.senders.is_empty());
        assert_eq!(l.dropped, 0);
    }
}
