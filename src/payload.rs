//! [`PayloadArena`]: payloads for publishing carved out of large shared buffers, so that a
//! stream of small messages costs one allocation per chunk instead of one per message.
//!
//! It owns only the chunk being filled; a chunk is freed when the last message cut from it
//! is dropped (by the node thread, once the message is packed and sent). It does not publish
//! anything and holds no lock: one arena per publishing thread.

use bytes::{Bytes, BytesMut};

/// Cuts payloads out of chunks of `chunk_bytes` (see [`PayloadArena::new`]). Each payload is a
/// [`Bytes`] sharing its chunk, ready for [`Publisher::publish`](crate::Publisher::publish):
/// no allocation and no free per message, where `Bytes::copy_from_slice` makes one of each:
/// a malloc on the publishing thread and a free on the node thread (in a `perf` profile of a
/// 64 B blast the malloc alone was 9% of the publishing process).
///
/// ```
/// let mut arena = quicksilver::PayloadArena::new(64 << 10);
/// let a = arena.copy(b"tick 1");
/// let b = arena.write(6, |buf| buf.copy_from_slice(b"tick 2"));
/// assert_eq!((&a[..], &b[..]), (&b"tick 1"[..], &b"tick 2"[..]));
/// ```
#[derive(Debug)]
pub struct PayloadArena {
    buf: BytesMut,
    chunk: usize,
}

impl PayloadArena {
    /// An arena allocating chunks of `chunk_bytes` (at least 1 KiB). A payload larger than a
    /// quarter of a chunk gets an allocation of its own, so that one large message does not
    /// waste most of a chunk. A chunk whose messages have all been dropped is reused in place.
    pub fn new(chunk_bytes: usize) -> PayloadArena {
        let chunk = chunk_bytes.max(1024);
        PayloadArena {
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    /// A payload holding a copy of `data`.
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.len() > self.chunk / 4 {
            return Bytes::copy_from_slice(data);
        }
        self.room(data.len());
        self.buf.extend_from_slice(data);
        self.buf.split().freeze()
    }

    /// A payload of `len` bytes written by `fill` (handed `len` zeroed bytes).
    pub fn write(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
        if len > self.chunk / 4 {
            let mut own = vec![0; len];
            fill(&mut own);
            return Bytes::from(own);
        }
        self.room(len);
        self.buf.resize(len, 0);
        fill(&mut self.buf);
        self.buf.split().freeze()
    }

    /// Makes room for `len` more bytes: the rest of the chunk, the same chunk again if every
    /// message cut from it is gone, or a fresh one.
    fn room(&mut self, len: usize) {
        if self.buf.capacity() < len {
            self.buf.reserve(self.chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_bytes_while_later_ones_fill_the_same_and_new_chunks() {
        let mut arena = PayloadArena::new(1024);
        let kept: Vec<Bytes> = (0..100u8).map(|i| arena.write(64, |b| b.fill(i))).collect();
        for (i, p) in kept.iter().enumerate() {
            assert_eq!(p.len(), 64);
            assert!(
                p.iter().all(|&b| b == i as u8),
                "payload {i} was overwritten"
            );
        }
        let copied = arena.copy(b"hello");
        assert_eq!(&copied[..], b"hello");
    }

    #[test]
    fn a_chunk_whose_payloads_are_dropped_is_reused_and_a_held_one_is_not() {
        let mut arena = PayloadArena::new(1024);
        let first = arena.copy(&[1; 200]);
        let start = first.as_ptr();
        drop(first);
        // Fill the rest of the chunk (nothing held): the next payload reuses the chunk.
        for _ in 0..4 {
            drop(arena.copy(&[2; 200]));
        }
        let again = arena.copy(&[3; 200]);
        assert_eq!(again.as_ptr(), start, "a free chunk was not reused");
        // Held payloads pin their chunk: the arena moves on to another one.
        let held: Vec<Bytes> = (0..6).map(|_| arena.copy(&[4; 200])).collect();
        assert!(held.iter().all(|p| p.iter().all(|&b| b == 4)));
        assert!(
            again.iter().all(|&b| b == 3),
            "a held payload was overwritten"
        );
    }

    #[test]
    fn a_payload_over_a_quarter_chunk_gets_its_own_allocation_and_one_under_does_not() {
        let mut arena = PayloadArena::new(1024);
        let small = arena.copy(&[1; 256]);
        let next = arena.copy(&[2; 8]);
        assert_eq!(
            next.as_ptr(),
            small.as_ptr().wrapping_add(256),
            "256 B left the chunk"
        );
        let large = arena.write(257, |b| b.fill(5));
        let after = arena.copy(&[3; 8]);
        assert_eq!(
            after.as_ptr(),
            next.as_ptr().wrapping_add(8),
            "257 B took chunk room"
        );
        assert!(large.iter().all(|&b| b == 5) && large.len() == 257);
    }
}
