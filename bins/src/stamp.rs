//! Payload stamps: a sequence number and a send time at the start of each payload, so a
//! subscriber checks order and measures one-way latency. The clock is CLOCK_MONOTONIC, which
//! every process and network namespace of one machine shares.

pub use qs_runtime::monotonic_nanos;

/// Bytes a stamp takes.
pub const STAMP_LEN: usize = 16;

/// Writes a stamp into the start of `buf` (which holds at least [`STAMP_LEN`] bytes).
pub fn write(buf: &mut [u8], seq: u64, sent_nanos: u64) {
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..16].copy_from_slice(&sent_nanos.to_be_bytes());
}

/// Reads a stamp: `(seq, sent_nanos)`, or `None` if the payload is too short.
pub fn read(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}
