//! Recycled packet buffers: the send window and the caretaker cache copy each packet they
//! keep into a buffer taken from here and give it back when the packet is freed, so a stream
//! in steady state allocates nothing per packet.

/// A pool of byte buffers, each keeping its capacity across uses.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    /// Most buffers kept for reuse (the rest are dropped when given back).
    keep: usize,
    /// Most bytes of capacity kept idle.
    keep_bytes: usize,
    idle_bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `keep` idle buffers.
    pub fn new(keep: usize) -> BufferPool {
        BufferPool::bounded(keep, usize::MAX)
    }

    /// A pool keeping at most `keep` idle buffers of at most `keep_bytes` capacity in all.
    pub fn bounded(keep: usize, keep_bytes: usize) -> BufferPool {
        BufferPool {
            free: Vec::new(),
            keep,
            keep_bytes,
            idle_bytes: 0,
        }
    }

    /// A buffer holding a copy of `bytes` (recycled when one is idle).
    pub fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_default();
        self.idle_bytes -= b.capacity();
        b.clear();
        b.extend_from_slice(bytes);
        b
    }

    /// Gives a buffer back for reuse.
    pub fn give_back(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.keep && self.idle_bytes + buf.capacity() <= self.keep_bytes {
            self.idle_bytes += buf.capacity();
            self.free.push(buf);
        }
    }

    /// Idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_with_its_capacity() {
        let mut pool = BufferPool::new(4);
        let a = pool.copy_of(&[1; 1000]);
        let ptr = a.as_ptr();
        pool.give_back(a);
        let b = pool.copy_of(&[2; 10]);
        assert_eq!(b.as_ptr(), ptr, "same allocation");
        assert_eq!(&b[..], &[2; 10]);
        assert!(b.capacity() >= 1000);
    }

    #[test]
    fn the_pool_keeps_only_its_bound_of_idle_bytes() {
        let mut pool = BufferPool::bounded(100, 2500);
        for _ in 0..5 {
            pool.give_back(Vec::with_capacity(1000));
        }
        assert_eq!(pool.idle(), 2);
        pool.copy_of(&[1]);
        pool.give_back(Vec::with_capacity(1000));
        assert_eq!(pool.idle(), 2);
    }

    #[test]
    fn the_pool_keeps_only_its_bound_of_idle_buffers() {
        let mut pool = BufferPool::new(2);
        for _ in 0..5 {
            pool.give_back(vec![0; 8]);
        }
        assert_eq!(pool.idle(), 2);
    }
}
