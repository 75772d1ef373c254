#!/usr/bin/env python3
"""attack.py: a hostile outsider on a namespace LAN (run inside its own namespace).

Usage: attack.py IFACE_ADDR [--group 239.255.0.1] [--port 7400] [--seconds S] [--rate N]

Joins the control group as a listener, learns cluster and node ids from the (clear-text)
headers of what it hears, and for every datagram captured sends to the group: the datagram
again (a replay), a copy with one body byte flipped (tampered), and forgeries sealed with the
plain CRC-32 under the learned cluster id and sender: a stream state claiming the sender is
25,000 packets ahead, and a sender acknowledgement. At most --rate sends per second (default
2000), TTL 1. Prints one JSON line with what it sent. Without the cluster key none of it may
be accepted: the nodes count the forgeries and tampered copies as auth drops and the replays
as replay drops.
"""
import json
import socket
import struct
import sys
import time
import zlib

HEADER_LEN = 28
# The wire version the cluster speaks (transport/core/src/wire/header.rs VERSION).
VERSION = 4


def seal_plain(kind, cluster, sender, body):
    """A keyless datagram (current version header, CRC-32 over all but the checksum field)."""
    length = HEADER_LEN + len(body)
    head = struct.pack(">HBBBBHI", 0x5153, VERSION, kind, 0, 0, length, 0)
    d = bytearray(head + struct.pack(">QQ", cluster, sender) + body)
    crc = zlib.crc32(bytes(d[:8]) + bytes(d[12:])) & 0xFFFFFFFF
    d[8:12] = struct.pack(">I", crc)
    return bytes(d)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    iface = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    group = opts.get("--group", "239.255.0.1")
    port = int(opts.get("--port", "7400"))
    seconds = float(opts.get("--seconds", "10"))
    rate = int(opts.get("--rate", "2000"))

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rx.bind((group, port))
    mreq = socket.inet_aton(group) + socket.inet_aton(iface)
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    rx.settimeout(0.2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)

    sent = {"heard": 0, "replays": 0, "tampered": 0, "forged": 0}
    ids = set()
    end = time.monotonic() + seconds
    budget_start, budget = time.monotonic(), 0
    while time.monotonic() < end:
        try:
            d, _ = rx.recvfrom(65536)
        except socket.timeout:
            continue
        if len(d) < HEADER_LEN or d[0:2] != b"QS":
            continue
        sent["heard"] += 1
        cluster, sender = struct.unpack(">QQ", d[12:28])
        ids.add(sender)
        # Rate limit: a test of the checks, not a flood.
        if budget >= rate * (time.monotonic() - budget_start + 0.001):
            continue
        out = [("replays", d)]
        if len(d) > HEADER_LEN:
            t = bytearray(d)
            t[HEADER_LEN] ^= 1
            out.append(("tampered", bytes(t)))
        # StreamState body: region u64, highest u32, floor u32, epoch u64 (region unknown to an
        # outsider of a keyed cluster: zero, so only the MAC check stands in the way).
        state = struct.pack(">QIIQ", 0, 25_000, 25_000, 1)
        out.append(("forged", seal_plain(4, cluster, sender, state)))
        ack = struct.pack(">QQQI", 0, sender, 1, 1 << 30)
        out.append(("forged", seal_plain(8, cluster, sender, ack)))
        for what, datagram in out:
            try:
                tx.sendto(datagram, (group, port))
                sent[what] += 1
                budget += 1
            except OSError:
                pass
    sent["ids_learned"] = len(ids)
    print(json.dumps(sent))


if __name__ == "__main__":
    main()
