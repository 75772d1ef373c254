//! Counters for oracles: what the network did with every datagram.

use std::ops::AddAssign;

/// Network counters of one node (or, summed, of the whole simulation).
///
/// `sent` and `unroutable` count the node as a sender; every other field counts it as a
/// receiver. Per receiver, once nothing is in flight:
/// `routed + duplicated == delivered + dropped_loss + dropped_partition + dropped_crash`
/// (see [`SimStats::accounted`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams the node transmitted.
    pub sent: u64,
    /// Transmitted unicast datagrams whose destination is no node's address.
    pub unroutable: u64,
    /// Copies of datagrams routed towards this node (one per transmit that reaches it,
    /// duplicates excluded).
    pub routed: u64,
    /// Copies handed to the node's `handle_datagram`.
    pub delivered: u64,
    /// Copies lost by the loss model.
    pub dropped_loss: u64,
    /// Copies dropped because sender and receiver were on different sides of a partition.
    pub dropped_partition: u64,
    /// Copies that reached the node after it crashed.
    pub dropped_crash: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
    /// Copies that had a bit flipped.
    pub corrupted: u64,
    /// Copies routed but not yet delivered or dropped (on the wire, or queued while frozen).
    pub in_flight: u64,
    /// Calls to the node's `handle_timeout`.
    pub timeouts: u64,
}

impl SimStats {
    /// Every copy routed to this receiver (plus duplicates) is delivered, dropped or in flight.
    pub fn accounted(&self) -> bool {
        self.routed + self.duplicated
            == self.delivered
                + self.dropped_loss
                + self.dropped_partition
                + self.dropped_crash
                + self.in_flight
    }

    /// Copies dropped by the network (loss and partitions, not crashes).
    pub fn network_drops(&self) -> u64 {
        self.dropped_loss + self.dropped_partition
    }
}

impl AddAssign<&SimStats> for SimStats {
    fn add_assign(&mut self, o: &SimStats) {
        self.sent += o.sent;
        self.unroutable += o.unroutable;
        self.routed += o.routed;
        self.delivered += o.delivered;
        self.dropped_loss += o.dropped_loss;
        self.dropped_partition += o.dropped_partition;
        self.dropped_crash += o.dropped_crash;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
        self.in_flight += o.in_flight;
        self.timeouts += o.timeouts;
    }
}
