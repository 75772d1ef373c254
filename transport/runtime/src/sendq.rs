//! The runtime's small, bounded per-class transmit queues.
//!
//! Pull-based sending: the runtime asks the core for a packet only when a slot is free and the
//! socket is writable, so at most one batch of packets ever waits here; the rest stays as
//! intents inside the core, built at the last moment.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

use qs_transport::TrafficClass;

/// Consecutive flushes a lower class may be passed over (with packets waiting) before one of
/// its packets goes first: Control > Repair > Data, but nobody waits forever.
const STARVATION_LIMIT: u32 = 4;

#[derive(Debug, Clone, Copy)]
struct Queued {
    slot: usize,
    len: usize,
    dest: SocketAddrV4,
}

/// Bounded per-class queues over a fixed pool of packet buffers.
pub struct SendQueues {
    pool: Vec<u8>,
    slot_bytes: usize,
    free: Vec<usize>,
    queues: [VecDeque<Queued>; 3],
    /// Flushes in a row in which the class had packets queued but none went out.
    starved: [u32; 3],
    /// The batch being flushed: (class index, slot, len, dest), in send order.
    batch: Vec<(usize, Queued)>,
}

impl SendQueues {
    /// `slots` packet buffers of `slot_bytes` each. The pool is allocated zeroed (lazily
    /// backed by the OS), once.
    pub fn new(slots: usize, slot_bytes: usize) -> SendQueues {
        let slots = slots.max(1);
        let slot_bytes = slot_bytes.max(1);
        SendQueues {
            pool: vec![0; slots * slot_bytes],
            slot_bytes,
            free: (0..slots).rev().collect(),
            queues: Default::default(),
            starved: [0; 3],
            batch: Vec::with_capacity(slots),
        }
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// No packet waiting.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Takes a free buffer, if any; give it back with [`SendQueues::push`] or
    /// [`SendQueues::release`].
    pub fn take_slot(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// The buffer of a taken slot.
    pub fn slot_mut(&mut self, slot: usize) -> &mut [u8] {
        let start = slot * self.slot_bytes;
        &mut self.pool[start..start + self.slot_bytes]
    }

    /// Returns an unused slot.
    pub fn release(&mut self, slot: usize) {
        self.free.push(slot);
    }

    /// Queues the first `len` bytes of `slot` (`len <= slot size`, checked by the caller).
    pub fn push(&mut self, slot: usize, len: usize, dest: SocketAddrV4, class: TrafficClass) {
        self.queues[class as usize].push_back(Queued { slot, len, dest });
    }

    /// Lays out the next batch (at most `max` packets) in send order: any starved lower
    /// class's head first, then Control, Repair, Data. Returns the batch as
    /// `(destination, payload)` pairs.
    pub fn next_batch(&mut self, max: usize) -> impl Iterator<Item = (SocketAddrV4, &[u8])> {
        self.batch.clear();
        let mut taken = [0usize; 3];
        for c in [TrafficClass::Repair as usize, TrafficClass::Data as usize] {
            if self.batch.len() < max && self.starved[c] >= STARVATION_LIMIT {
                if let Some(q) = self.queues[c].front() {
                    self.batch.push((c, *q));
                    taken[c] = 1;
                }
            }
        }
        for (c, (queue, skip)) in self.queues.iter().zip(taken).enumerate() {
            for q in queue.iter().skip(skip) {
                if self.batch.len() >= max {
                    break;
                }
                self.batch.push((c, *q));
            }
        }
        let pool = &self.pool;
        let slot_bytes = self.slot_bytes;
        self.batch.iter().map(move |(_, q)| {
            let start = q.slot * slot_bytes;
            (q.dest, &pool[start..start + q.len])
        })
    }

    /// The first `n` packets of the batch laid out by [`SendQueues::next_batch`] left (sent or
    /// dropped): dequeue them, free their slots, update starvation. Returns their byte count.
    pub fn complete(&mut self, n: usize) -> u64 {
        let n = n.min(self.batch.len());
        let mut bytes = 0u64;
        let mut served = [false; 3];
        for &(c, q) in &self.batch[..n] {
            // Each class's entries in the batch are a prefix of its queue, in order.
            let popped = self.queues[c].pop_front();
            debug_assert_eq!(popped.map(|p| p.slot), Some(q.slot));
            self.free.push(q.slot);
            bytes += q.len as u64;
            served[c] = true;
        }
        for ((starved, queue), served) in self.starved.iter_mut().zip(&self.queues).zip(served) {
            *starved = if served || queue.is_empty() {
                0
            } else {
                starved.saturating_add(1)
            };
        }
        self.batch.clear();
        bytes
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn dest(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    fn queue(q: &mut SendQueues, tag: u8, class: TrafficClass) {
        let slot = q.take_slot().expect("free slot");
        q.slot_mut(slot)[0] = tag;
        q.push(slot, 1, dest(u16::from(tag)), class);
    }

    fn order(q: &mut SendQueues, max: usize) -> Vec<u8> {
        q.next_batch(max).map(|(_, p)| p[0]).collect()
    }

    #[test]
    fn batches_go_control_then_repair_then_data() {
        let mut q = SendQueues::new(8, 16);
        queue(&mut q, 1, TrafficClass::Data);
        queue(&mut q, 2, TrafficClass::Repair);
        queue(&mut q, 3, TrafficClass::Control);
        queue(&mut q, 4, TrafficClass::Data);
        queue(&mut q, 5, TrafficClass::Control);
        assert_eq!(order(&mut q, 8), vec![3, 5, 2, 1, 4]);
        assert_eq!(q.complete(2), 2);
        assert_eq!(q.len(), 3);
        assert_eq!(order(&mut q, 8), vec![2, 1, 4]);
        q.complete(3);
        assert!(q.is_empty());
        // All slots are free again.
        let mut n = 0;
        while q.take_slot().is_some() {
            n += 1;
        }
        assert_eq!(n, 8);
    }

    #[test]
    fn pool_is_bounded() {
        let mut q = SendQueues::new(2, 16);
        assert!(q.take_slot().is_some());
        assert!(q.take_slot().is_some());
        assert!(q.take_slot().is_none());
    }

    #[test]
    fn a_starved_data_packet_goes_first_after_the_limit() {
        let mut q = SendQueues::new(8, 16);
        queue(&mut q, 100, TrafficClass::Data);
        for round in 0..STARVATION_LIMIT {
            queue(&mut q, round as u8, TrafficClass::Control);
            assert_eq!(order(&mut q, 8)[0], round as u8);
            // The socket took only the first packet: data was passed over.
            q.complete(1);
        }
        queue(&mut q, 50, TrafficClass::Control);
        assert_eq!(order(&mut q, 8), vec![100, 50]);
        q.complete(1);
        assert_eq!(order(&mut q, 8), vec![50]);
    }
}
