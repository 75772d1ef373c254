//! Receive memory that is reused instead of allocated per batch.
//!
//! Datagrams are received into an arena, then split off and frozen: the core gets zero-copy
//! `Bytes` slices, and may keep them (a receive window, a subscription queue in the
//! application). An arena can therefore be reused only once *no* slice of it is alive. This
//! keeps a few used arenas and, when the current one runs out, takes back the first whose
//! slices are all gone (`BytesMut::try_reclaim`: no copy, no allocation); only when every one
//! is still pinned is fresh memory allocated, and counted. In steady state with a core that
//! lets go of its datagrams, receiving allocates nothing.
//!
//! It does not copy datagrams out of a pinned arena (the core decides what to keep) and does
//! not bound the memory that slices the core keeps alive: arenas dropped from the spare list
//! are freed by their last slice.

use bytes::BytesMut;

/// Used arenas kept for reuse. More slots catch slower consumers; each costs one arena of
/// memory while pinned.
const SPARE_ARENAS: usize = 4;

/// The current receive arena and the used ones that may be reclaimed.
#[derive(Debug)]
pub(crate) struct RecvArenas {
    current: BytesMut,
    spare: Vec<BytesMut>,
    arena_bytes: usize,
    /// Fresh arenas allocated.
    pub allocations: u64,
    /// Used arenas taken back without allocating.
    pub reuses: u64,
}

impl RecvArenas {
    /// Arenas of `arena_bytes` bytes (none allocated yet).
    pub fn new(arena_bytes: usize) -> RecvArenas {
        RecvArenas {
            current: BytesMut::new(),
            spare: Vec::with_capacity(SPARE_ARENAS + 1),
            arena_bytes: arena_bytes.max(1),
            allocations: 0,
            reuses: 0,
        }
    }

    /// The current arena, with at least `min_bytes` of room (`min_bytes <= arena_bytes`).
    pub fn with_room(&mut self, min_bytes: usize) -> &mut BytesMut {
        if self.current.len() >= min_bytes {
            return &mut self.current;
        }
        let used = std::mem::take(&mut self.current);
        // Every arena but the empty initial handle (no memory behind it) owns its memory,
        // even when fully split off (then with no capacity left in its own view).
        if self.allocations + self.reuses > 0 {
            self.spare.push(used);
            if self.spare.len() > SPARE_ARENAS {
                // The oldest is freed by its last live slice; we stop tracking it.
                self.spare.remove(0);
            }
        }
        // Oldest first: the one whose slices had the longest time to be dropped.
        let size = self.arena_bytes;
        if let Some(i) = self.spare.iter_mut().position(|a| {
            a.clear();
            a.try_reclaim(size)
        }) {
            let mut arena = self.spare.remove(i);
            arena.resize(size, 0);
            self.reuses += 1;
            self.current = arena;
        } else {
            self.allocations += 1;
            self.current = BytesMut::zeroed(size);
        }
        &mut self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arena_whose_slices_are_gone_is_reused_without_allocating() {
        let mut a = RecvArenas::new(1024);
        let first = a.with_room(1024).split_to(1024).freeze();
        assert_eq!(a.allocations, 1);
        drop(first);
        let second = a.with_room(1024).split_to(1024).freeze();
        assert_eq!((a.allocations, a.reuses), (1, 1));
        assert_eq!(second.len(), 1024);
    }

    #[test]
    fn a_pinned_arena_is_never_handed_out_again() {
        let mut a = RecvArenas::new(64);
        let arena = a.with_room(64);
        arena[..4].copy_from_slice(b"kept");
        let kept = arena.split_to(64).freeze().slice(..4);
        for _ in 0..10 {
            let next = a.with_room(64);
            next[..4].copy_from_slice(b"over");
            let _ = next.split_to(64);
        }
        assert_eq!(&kept[..], b"kept");
        // The pinned one forced one fresh arena; the others were reused.
        assert_eq!(a.allocations, 2);
        assert_eq!(a.reuses, 9);
    }

    #[test]
    fn with_more_pinned_arenas_than_spares_fresh_memory_is_counted() {
        let mut a = RecvArenas::new(32);
        let pinned: Vec<_> = (0..SPARE_ARENAS + 3)
            .map(|_| a.with_room(32).split_to(32).freeze())
            .collect();
        assert_eq!(a.allocations, pinned.len() as u64);
        assert_eq!(a.reuses, 0);
        assert!(a.spare.len() <= SPARE_ARENAS);
    }

    #[test]
    fn room_left_in_the_current_arena_is_used_before_switching() {
        let mut a = RecvArenas::new(100);
        let x = a.with_room(10).split_to(30).freeze();
        let y = a.with_room(70).split_to(70).freeze();
        assert_eq!(a.allocations, 1);
        assert_eq!((x.len(), y.len()), (30, 70));
    }
}
