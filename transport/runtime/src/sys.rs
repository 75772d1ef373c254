//! Thin, safe wrappers over the Linux calls the standard library and socket2 do not cover:
//! `recvmmsg`/`sendmmsg` batches, `IP_MULTICAST_ALL`, `SO_*BUFFORCE`, `CLOCK_MONOTONIC` and a
//! one-shot `timerfd` (the event loop's precise timer).
//!
//! Every `unsafe` block is here, each with the argument for why it is sound.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::Socket;

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock shared by every process and network namespace
/// on a kernel, so a receiver can subtract a sender's timestamp.
pub fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A non-blocking one-shot `CLOCK_MONOTONIC` timer file descriptor: readable once it
/// expired. `epoll_wait` only takes milliseconds; registering this beside the sockets gives
/// the loop wake-ups to the microsecond (within the thread's timer slack).
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// A disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; a negative result is an error.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(TimerFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Arms the timer to expire once after `after` (zero disarms it, so pass at least 1 ns
    /// to expire at once). Re-arming replaces the previous expiry.
    pub fn set(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; a null old-value pointer is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, so the descriptor is no longer readable; harmless when none is
    /// pending.
    pub fn clear(&self) {
        let mut ticks = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer; EAGAIN when nothing expired.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
    }

    /// The raw descriptor, for registering with the poller.
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live c_int and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `IP_MULTICAST_ALL = 0`: the socket receives only the groups joined on this very socket,
/// not every group any socket on the host joined for the same port.
pub fn disable_multicast_all(socket: &Socket) -> io::Result<()> {
    set_int_opt(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_ALL,
        0,
    )
}

/// A socket's receive-side memory as the kernel reports it (`SO_MEMINFO`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// Bytes queued for reading (`SK_MEMINFO_RMEM_ALLOC`, kernel accounting: payload plus
    /// per-datagram overhead).
    pub queued: u32,
    /// The receive buffer (`SK_MEMINFO_RCVBUF`), in the same accounting.
    pub buffer: u32,
    /// Datagrams the socket dropped since it was opened, wrapping (`SK_MEMINFO_DROPS`: mostly
    /// a full receive buffer).
    pub drops: u32,
}

/// Reads `SO_MEMINFO` of `fd`: one `getsockopt`, no allocation.
pub fn meminfo(fd: RawFd) -> io::Result<MemInfo> {
    const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut vars = [0u32; VARS];
    let mut len = mem::size_of_val(&vars) as libc::socklen_t;
    // SAFETY: `vars` is a live array of `len` bytes; the kernel writes at most `len` bytes
    // and updates `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            vars.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < mem::size_of_val(&vars) {
        // An older kernel without the drop counter: report none rather than garbage.
        vars[libc::SK_MEMINFO_DROPS as usize] = 0;
    }
    Ok(MemInfo {
        queued: vars[libc::SK_MEMINFO_RMEM_ALLOC as usize],
        buffer: vars[libc::SK_MEMINFO_RCVBUF as usize],
        drops: vars[libc::SK_MEMINFO_DROPS as usize],
    })
}

/// Which socket buffer to size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferDir {
    /// `SO_RCVBUF` / `SO_RCVBUFFORCE`, capped by `net.core.rmem_max`.
    Recv,
    /// `SO_SNDBUF` / `SO_SNDBUFFORCE`, capped by `net.core.wmem_max`.
    Send,
}

impl BufferDir {
    fn sysctl(self) -> &'static str {
        match self {
            BufferDir::Recv => "net.core.rmem_max",
            BufferDir::Send => "net.core.wmem_max",
        }
    }
}

/// What sizing one buffer achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferOutcome {
    /// The size in force, as the value one would have to request to get it: Linux reports
    /// (and reserves) twice the requested value for bookkeeping, so this is the read-back / 2.
    pub bytes: usize,
    /// The `*FORCE` option was needed and accepted.
    pub forced: bool,
    /// Still below the request after trying everything.
    pub capped: bool,
}

fn read_buffer(socket: &Socket, dir: BufferDir) -> io::Result<usize> {
    let doubled = match dir {
        BufferDir::Recv => socket.recv_buffer_size()?,
        BufferDir::Send => socket.send_buffer_size()?,
    };
    Ok(doubled / 2)
}

/// Requests `requested` bytes; if the kernel caps it at `*mem_max`, tries the `*FORCE`
/// option (root or CAP_NET_ADMIN); warns naming the sysctl if still short. `requested == 0`
/// keeps the kernel default.
pub fn size_buffer(socket: &Socket, dir: BufferDir, requested: usize) -> io::Result<BufferOutcome> {
    if requested == 0 {
        return Ok(BufferOutcome {
            bytes: read_buffer(socket, dir)?,
            forced: false,
            capped: false,
        });
    }
    // The kernel doubles the value and stores it in an int: stay below i32::MAX / 2.
    let requested = requested.min((i32::MAX / 2) as usize);
    match dir {
        BufferDir::Recv => socket.set_recv_buffer_size(requested)?,
        BufferDir::Send => socket.set_send_buffer_size(requested)?,
    }
    let mut bytes = read_buffer(socket, dir)?;
    let mut forced = false;
    if bytes < requested {
        let name = match dir {
            BufferDir::Recv => libc::SO_RCVBUFFORCE,
            BufferDir::Send => libc::SO_SNDBUFFORCE,
        };
        if set_int_opt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            requested as libc::c_int,
        )
        .is_ok()
        {
            bytes = read_buffer(socket, dir)?;
            forced = bytes >= requested;
        }
    }
    let capped = bytes < requested;
    if capped {
        tracing::warn!(
            "socket {:?} buffer capped at {} bytes (requested {}): raise sysctl {} or run with \
             CAP_NET_ADMIN",
            dir,
            bytes,
            requested,
            dir.sysctl()
        );
    }
    Ok(BufferOutcome {
        bytes,
        forced,
        capped,
    })
}

/// Writes up to the scratch's capacity of `datagrams` into its destination and buffer
/// tables; returns how many.
fn fill_scratch<'a, I>(datagrams: I, scratch: &mut MmsgScratch) -> usize
where
    I: IntoIterator<Item = (SocketAddrV4, &'a [u8])>,
{
    let mut n = 0;
    for (dest, payload) in datagrams.into_iter().take(scratch.capacity()) {
        scratch.dests[n] = sockaddr_in(dest);
        scratch.iovs[n] = libc::iovec {
            // The kernel only reads send buffers; the mut cast is what the C type demands.
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        n += 1;
    }
    n
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn parse_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddrV4> {
    if storage.ss_family != libc::AF_INET as libc::sa_family_t
        || (len as usize) < mem::size_of::<libc::sockaddr_in>()
    {
        return None;
    }
    // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is larger
    // than and suitably aligned for every sockaddr type.
    let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// What one received datagram looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the slot.
    pub len: usize,
    /// The datagram was larger than the slot (its tail is lost).
    pub truncated: bool,
    /// The sender, if it is an IPv4 address.
    pub from: Option<SocketAddrV4>,
}

/// Reusable `mmsghdr`/`iovec`/address arrays for one batch.
///
/// The headers hold raw pointers into the other arrays and into caller buffers; every pointer
/// is rewritten immediately before each system call, so none is ever used stale.
pub struct MmsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    dests: Vec<libc::sockaddr_in>,
    /// One `UDP_SEGMENT` control message per header (GSO sends); `u64` words for alignment.
    cmsgs: Vec<[u64; CMSG_WORDS]>,
    /// Datagrams in each header of the last GSO batch.
    segments: Vec<usize>,
}

/// `u64` words in one control buffer: `CMSG_SPACE(sizeof(u16))` is 24 bytes on 64-bit Linux.
const CMSG_WORDS: usize = 4;

/// The most segments one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS` is 64 before
/// Linux 6.x raised it to 128; 64 works everywhere).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// The most payload bytes one GSO send may carry: the IPv4 UDP maximum.
pub const GSO_MAX_BYTES: usize = 65_507;

// SAFETY: the raw pointers inside are scratch values, rewritten before every use and never
// dereferenced by us; moving the arrays to another thread is no different from moving bytes.
unsafe impl Send for MmsgScratch {}

impl MmsgScratch {
    /// Arrays for batches of up to `capacity` datagrams.
    pub fn new(capacity: usize) -> MmsgScratch {
        let capacity = capacity.max(1);
        // SAFETY: these are plain C structs for which all-zero bytes is a valid value
        // (null pointers, zero lengths).
        let (hdr, iov, name, dest) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_storage>(),
                mem::zeroed::<libc::sockaddr_in>(),
            )
        };
        MmsgScratch {
            hdrs: vec![hdr; capacity],
            iovs: vec![iov; capacity],
            names: vec![name; capacity],
            dests: vec![dest; capacity],
            cmsgs: vec![[0; CMSG_WORDS]; capacity],
            segments: Vec::with_capacity(capacity),
        }
    }

    /// The largest batch.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

/// Receives up to `buf.len() / slot` datagrams (at most the scratch capacity) with one
/// `recvmmsg` (`flags`: `MSG_DONTWAIT` or `MSG_WAITFORONE`), datagram `i` into
/// `buf[i * slot..]`. `out` receives one entry per datagram. Returns the count, or
/// `WouldBlock` when nothing is queued.
pub fn recv_batch(
    fd: RawFd,
    flags: libc::c_int,
    buf: &mut [u8],
    slot: usize,
    scratch: &mut MmsgScratch,
    out: &mut Vec<RecvMeta>,
) -> io::Result<usize> {
    out.clear();
    if slot == 0 {
        return Ok(0);
    }
    let n = (buf.len() / slot).min(scratch.capacity());
    if n == 0 {
        return Ok(0);
    }
    let base = buf.as_mut_ptr();
    for i in 0..n {
        scratch.iovs[i] = libc::iovec {
            // SAFETY: i * slot + slot <= buf.len(), so the offset stays inside `buf`.
            iov_base: unsafe { base.add(i * slot) }.cast(),
            iov_len: slot,
        };
        let name = (&mut scratch.names[i] as *mut libc::sockaddr_storage).cast();
        let namelen = mem::size_of::<libc::sockaddr_storage>();
        point_header(&mut scratch.hdrs[i], name, namelen, &mut scratch.iovs[i]);
    }
    // SAFETY: the first `n` headers point at `n` live iovecs, each covering a disjoint `slot`
    // bytes of `buf` (exclusively borrowed for this call), and at `n` live sockaddr_storage
    // entries whose size we pass. The kernel writes at most those bytes. A null timeout is
    // allowed (no overall deadline).
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            scratch.hdrs.as_mut_ptr(),
            n as libc::c_uint,
            flags,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let k = (rc as usize).min(n);
    for i in 0..k {
        let hdr = &scratch.hdrs[i];
        out.push(RecvMeta {
            len: (hdr.msg_len as usize).min(slot),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: parse_sockaddr(&scratch.names[i], hdr.msg_hdr.msg_namelen),
        });
    }
    Ok(k)
}

/// Points one mmsghdr at an address buffer and a single iovec, with no control data.
fn point_header(
    hdr: &mut libc::mmsghdr,
    name: *mut libc::c_void,
    namelen: usize,
    iov: &mut libc::iovec,
) {
    hdr.msg_hdr.msg_name = name;
    hdr.msg_hdr.msg_namelen = namelen as libc::socklen_t;
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
    hdr.msg_hdr.msg_control = std::ptr::null_mut();
    hdr.msg_hdr.msg_controllen = 0;
    hdr.msg_hdr.msg_flags = 0;
    hdr.msg_len = 0;
}

/// Sends up to the scratch capacity of `(destination, payload)` datagrams with one `sendmmsg`
/// (`flags` e.g. `MSG_DONTWAIT`). Returns how many leading datagrams the kernel accepted; an
/// error means the first one failed.
pub fn send_batch<'a, I>(
    fd: RawFd,
    datagrams: I,
    flags: libc::c_int,
    scratch: &mut MmsgScratch,
) -> io::Result<usize>
where
    I: IntoIterator<Item = (SocketAddrV4, &'a [u8])>,
{
    let n = fill_scratch(datagrams, scratch);
    if n == 0 {
        return Ok(0);
    }
    for i in 0..n {
        let name = (&mut scratch.dests[i] as *mut libc::sockaddr_in).cast();
        let namelen = mem::size_of::<libc::sockaddr_in>();
        point_header(&mut scratch.hdrs[i], name, namelen, &mut scratch.iovs[i]);
    }
    // SAFETY: the first `n` headers point at live sockaddr_in values and iovecs, and each
    // iovec at a payload slice borrowed for the duration of this call ('a outlives it). The
    // kernel only reads them (it writes msg_len into the headers, which we own).
    let rc = unsafe { libc::sendmmsg(fd, scratch.hdrs.as_mut_ptr(), n as libc::c_uint, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rc as usize).min(n))
}

/// The most bytes one UDP GRO receive may return (the kernel coalesces up to 64 KiB).
pub const GRO_MAX_BYTES: usize = 65_536;

/// Turns on UDP generic receive offload (`UDP_GRO`, Linux 5.0): the kernel may queue runs of
/// equal-sized datagrams from one sender as one buffer, which [`recv_gro`] returns with the
/// segment size.
pub fn enable_gro(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid int option value and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One received buffer of a GRO socket: `meta.len` bytes holding datagrams of `segment`
/// bytes each (the last may be shorter); `segment` is `meta.len` for a single datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroMeta {
    /// The buffer as received.
    pub meta: RecvMeta,
    /// The length of each datagram inside it.
    pub segment: usize,
}

/// One `recvmsg` into `buf` on a socket with [`enable_gro`]: one datagram, or a run of
/// coalesced datagrams with their segment size.
pub fn recv_gro(fd: RawFd, flags: libc::c_int, buf: &mut [u8]) -> io::Result<GroMeta> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero bytes are valid for these C structs.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: as above.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = mem::size_of_val(&control) as _;
    // SAFETY: the header points at live, exclusively borrowed buffers of the sizes given; the
    // kernel writes at most those bytes.
    let rc = unsafe { libc::recvmsg(fd, &mut hdr, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (rc as usize).min(buf.len());
    let mut segment = len;
    // SAFETY: the kernel filled msg_control with well-formed control messages within
    // msg_controllen; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside it, and a UDP_GRO message carries
    // an int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                if size > 0 {
                    segment = (size as usize).min(len.max(1));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok(GroMeta {
        meta: RecvMeta {
            len,
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: parse_sockaddr(&name, hdr.msg_namelen),
        },
        segment,
    })
}

/// What one [`send_batch_gso`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GsoSent {
    /// Leading datagrams the kernel accepted.
    pub datagrams: usize,
    /// `sendmmsg` headers accepted that carried more than one datagram (one GSO send each).
    pub gso_sends: usize,
    /// Datagrams inside those GSO sends.
    pub gso_segments: usize,
}

/// Like [`send_batch`], but with UDP generic segmentation offload (`UDP_SEGMENT`, Linux 4.18):
/// runs of consecutive datagrams to the same destination, all of one length except a shorter
/// last one, go out as one header whose iovecs the kernel splits back into exactly those
/// datagrams (at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`] per run, of datagrams up to
/// `max_segment` bytes: the path MTU less the IPv4 and UDP headers). The wire sees
/// the same datagrams as with [`send_batch`]; the kernel's per-datagram work above the device
/// is done once per run.
///
/// An error means the first header failed; `first_was_gso` then says whether that header
/// carried a `UDP_SEGMENT` message (so `EIO`/`EINVAL` may mean the kernel or device refuses
/// GSO, and the caller should fall back to [`send_batch`]).
pub fn send_batch_gso<'a, I>(
    fd: RawFd,
    datagrams: I,
    flags: libc::c_int,
    max_segment: usize,
    scratch: &mut MmsgScratch,
) -> Result<GsoSent, (io::Error, bool)>
where
    I: IntoIterator<Item = (SocketAddrV4, &'a [u8])>,
{
    let n = fill_scratch(datagrams, scratch);
    if n == 0 {
        return Ok(GsoSent::default());
    }
    let runs = gso_runs(
        &scratch.dests[..n],
        &scratch.iovs[..n],
        max_segment,
        &mut scratch.segments,
    );
    let mut first = 0;
    for h in 0..runs {
        let k = scratch.segments[h];
        let name = (&mut scratch.dests[first] as *mut libc::sockaddr_in).cast();
        let namelen = mem::size_of::<libc::sockaddr_in>();
        point_header(
            &mut scratch.hdrs[h],
            name,
            namelen,
            &mut scratch.iovs[first],
        );
        if k > 1 {
            let seg = scratch.iovs[first].iov_len as u16;
            scratch.hdrs[h].msg_hdr.msg_iovlen = k as _;
            let buf = &mut scratch.cmsgs[h];
            *buf = [0; CMSG_WORDS];
            let hdr = &mut scratch.hdrs[h].msg_hdr;
            hdr.msg_control = buf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of two bytes is 24 <= the buffer's 32 bytes.
            hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            // SAFETY: msg_control points at a zeroed, 8-byte aligned buffer at least
            // msg_controllen long, so CMSG_FIRSTHDR is non-null and its data area holds a u16.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
        }
        first += k;
    }
    // SAFETY: the first `runs` headers point at live sockaddr_in values, at runs of live
    // iovecs (each run inside the first `n`) and at control buffers owned by the scratch; each
    // iovec at a payload slice borrowed for this call. The kernel only reads them (it writes
    // msg_len into the headers, which we own).
    let rc = unsafe { libc::sendmmsg(fd, scratch.hdrs.as_mut_ptr(), runs as libc::c_uint, flags) };
    if rc < 0 {
        return Err((io::Error::last_os_error(), scratch.segments[0] > 1));
    }
    let mut sent = GsoSent::default();
    for &k in &scratch.segments[..(rc as usize).min(runs)] {
        sent.datagrams += k;
        if k > 1 {
            sent.gso_sends += 1;
            sent.gso_segments += k;
        }
    }
    Ok(sent)
}

/// Splits datagrams into GSO runs: consecutive datagrams to one destination, each as long as
/// the run's first except a last one that may be shorter, at most [`GSO_MAX_SEGMENTS`] and
/// [`GSO_MAX_BYTES`] in all, and only of datagrams up to `max_segment` bytes. `runs` receives the length of each run; returns their count.
fn gso_runs(
    dests: &[libc::sockaddr_in],
    iovs: &[libc::iovec],
    max_segment: usize,
    runs: &mut Vec<usize>,
) -> usize {
    runs.clear();
    let same = |a: &libc::sockaddr_in, b: &libc::sockaddr_in| {
        a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port
    };
    let mut i = 0;
    while i < iovs.len() {
        let seg = iovs[i].iov_len;
        let mut k = 1;
        let mut bytes = seg;
        // A zero-length datagram cannot be a segment (the kernel would not send it), and a
        // segment must fit the path MTU unfragmented (the kernel refuses GSO otherwise).
        while seg > 0
            && seg <= max_segment
            && i + k < iovs.len()
            && k < GSO_MAX_SEGMENTS
            && same(&dests[i], &dests[i + k])
            && (1..=seg).contains(&iovs[i + k].iov_len)
            && bytes + iovs[i + k].iov_len <= GSO_MAX_BYTES
        {
            let len = iovs[i + k].iov_len;
            bytes += len;
            k += 1;
            if len < seg {
                break; // a shorter segment ends the run
            }
        }
        runs.push(k);
        i += k;
    }
    runs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_shows_an_unread_queue_and_counts_the_datagrams_a_full_buffer_drops() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        let empty = meminfo(rx.as_raw_fd()).expect("meminfo");
        assert_eq!((empty.queued, empty.drops), (0, 0));
        assert!(empty.buffer > 0);
        // Nobody reads: the queue fills, then the kernel drops (loopback delivery may lag the
        // send a little, hence the deadline rather than a count).
        let start = std::time::Instant::now();
        let mut m = empty;
        while m.drops == 0 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no drop: {m:?}"
            );
            for _ in 0..64 {
                tx.send_to(&[7; 1024], to).expect("send");
            }
            m = meminfo(rx.as_raw_fd()).expect("meminfo");
        }
        assert!(m.queued > 0 && m.buffer == empty.buffer, "{m:?}");
    }

    #[test]
    fn sockaddr_round_trips() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(239, 255, 1, 2), 7401);
        let sin = sockaddr_in(addr);
        // SAFETY: zeroed sockaddr_storage is valid; we copy a sockaddr_in into its prefix.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: storage is larger than sockaddr_in and suitably aligned.
        unsafe {
            std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin);
        }
        let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(parse_sockaddr(&storage, len), Some(addr));
        assert_eq!(parse_sockaddr(&storage, len - 1), None);
        storage.ss_family = libc::AF_INET6 as libc::sa_family_t;
        assert_eq!(parse_sockaddr(&storage, 28), None);
    }

    /// The runs GSO would form from datagrams of these lengths, all to `dests[i]`.
    fn runs_of(lens: &[usize], dests: &[SocketAddrV4], max_segment: usize) -> Vec<usize> {
        let payload = vec![0u8; 70_000];
        let iovs: Vec<libc::iovec> = lens
            .iter()
            .map(|&len| libc::iovec {
                iov_base: payload.as_ptr().cast_mut().cast(),
                iov_len: len,
            })
            .collect();
        let dests: Vec<libc::sockaddr_in> = dests.iter().map(|&d| sockaddr_in(d)).collect();
        let mut runs = Vec::new();
        let n = gso_runs(&dests, &iovs, max_segment, &mut runs);
        assert_eq!(n, runs.len());
        assert_eq!(runs.iter().sum::<usize>(), lens.len());
        runs
    }

    #[test]
    fn gso_runs_group_equal_datagrams_to_one_destination_and_end_at_a_shorter_one() {
        let a = SocketAddrV4::new(Ipv4Addr::new(239, 255, 0, 1), 7401);
        let b = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9000);
        // Equal, then a shorter tail that closes the run; a longer one starts a new run.
        assert_eq!(
            runs_of(&[100, 100, 100, 60, 100], &[a; 5], 1472),
            vec![4, 1]
        );
        assert_eq!(runs_of(&[100, 200, 200], &[a; 3], 1472), vec![1, 2]);
        // A new destination starts a new run.
        assert_eq!(runs_of(&[100, 100, 100], &[a, a, b], 1472), vec![2, 1]);
        // Empty datagrams and datagrams beyond the segment limit are never segments.
        assert_eq!(runs_of(&[0, 0, 100, 0], &[a; 4], 1472), vec![1, 1, 1, 1]);
        assert_eq!(runs_of(&[2000, 2000], &[a; 2], 1472), vec![1, 1]);
        // At most GSO_MAX_SEGMENTS segments and GSO_MAX_BYTES bytes per run.
        assert_eq!(runs_of(&[10; 130], &[a; 130], 1472), vec![64, 64, 2]);
        assert_eq!(runs_of(&[1400; 50], &[a; 50], 1472), vec![46, 4]);
    }

    #[test]
    fn gso_sends_the_same_datagrams_as_plain_sends() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(to) = rx.local_addr().expect("addr") else {
            unreachable!("bound to IPv4")
        };
        // 40 datagrams of 1,200 bytes, one of 700, then 3 of 900: two GSO runs, each
        // datagram's bytes distinct so a merged or split datagram shows.
        let lens: Vec<usize> = (0..40).map(|_| 1200).chain([700]).chain([900; 3]).collect();
        let payloads: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let mut scratch = MmsgScratch::new(64);
        let datagrams = payloads.iter().map(|p| (to, p.as_slice()));
        let sent = send_batch_gso(tx.as_raw_fd(), datagrams, 0, 1472, &mut scratch)
            .map_err(|(e, _)| e)
            .expect("gso send");
        assert_eq!(
            sent,
            GsoSent {
                datagrams: 44,
                gso_sends: 2,
                gso_segments: 44
            }
        );
        let mut buf = vec![0u8; 65_536];
        for (i, p) in payloads.iter().enumerate() {
            let (len, _) = rx.recv_from(&mut buf).expect("receive");
            assert_eq!(&buf[..len], p.as_slice(), "datagram {i}");
        }
    }

    #[test]
    fn gro_receives_a_gso_run_as_one_buffer_with_its_segment_size() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_gro(rx.as_raw_fd()).expect("UDP_GRO");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(to) = rx.local_addr().expect("addr") else {
            unreachable!("bound to IPv4")
        };
        // A run of 10 x 1,000 B and 1 x 300 B (one GSO send), then a lone datagram.
        let payloads: Vec<Vec<u8>> = (0..11)
            .map(|i| vec![i as u8; if i == 10 { 300 } else { 1000 }])
            .chain([vec![99u8; 50]])
            .collect();
        let mut scratch = MmsgScratch::new(64);
        let sent = send_batch_gso(
            tx.as_raw_fd(),
            payloads.iter().map(|p| (to, p.as_slice())),
            0,
            1472,
            &mut scratch,
        )
        .map_err(|(e, _)| e)
        .expect("gso send");
        assert_eq!(sent.datagrams, 12);
        let mut buf = vec![0u8; GRO_MAX_BYTES];
        let first = recv_gro(rx.as_raw_fd(), 0, &mut buf).expect("receive");
        assert_eq!((first.meta.len, first.segment), (10_300, 1000));
        assert!(!first.meta.truncated);
        assert_eq!(
            first.meta.from,
            Some(match tx.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                _ => unreachable!(),
            })
        );
        let split: Vec<&[u8]> = buf[..first.meta.len].chunks(first.segment).collect();
        assert_eq!(split.len(), 11);
        for (got, want) in split.iter().zip(&payloads) {
            assert_eq!(*got, want.as_slice());
        }
        let lone = recv_gro(rx.as_raw_fd(), 0, &mut buf).expect("receive");
        assert_eq!((lone.meta.len, lone.segment), (50, 50));
        assert_eq!(&buf[..50], payloads[11].as_slice());
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_nanos();
        let b = monotonic_nanos();
        assert!(a > 0 && b >= a);
    }
}
