#!/usr/bin/env python3
"""mcast-check.py: a tiny IPv4 multicast sender/receiver to prove a testbed LAN works.

Usage:
  mcast-check.py recv --iface ADDR [--group G] [--port P] [--count N] [--timeout S]
                      [--idle S] [--ready-file PATH]
  mcast-check.py send --iface ADDR [--group G] [--port P] [--count N] [--interval S]

  recv joins GROUP on the interface that has ADDR, counts datagrams from mcast-check senders
  and prints one JSON line on exit:
    {"iface": ..., "group": ..., "port": ..., "received": unique, "duplicates": d,
     "expected": n_or_null, "first_seq": .., "last_seq": .., "end_seen": bool}
  It exits when it has all N datagrams, on the sender's END marker (after a short grace),
  when nothing arrived for --idle seconds after the first datagram, or after --timeout.
  --ready-file is created once the socket has joined the group (for scripted start-up).

  send sends N datagrams (seq 0..N-1) to GROUP:PORT with TTL 1 out of the interface with ADDR,
  then 3 END markers, and prints one JSON line {"sent": N}.

Safety: only groups in 239.255.0.0/16 (organisation-local scope) are accepted, and the TTL is
always 1, so nothing leaves the testbed's own link.
Run it inside testbed namespaces (lan.sh check does): `lan.sh exec PREFIX I python3 mcast-check.py ...`.
"""

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time

MAGIC = b"QSMC"
KIND_DATA = 0
KIND_END = 1
# magic, kind, seq, total
HEADER = struct.Struct("!4sBII")
PAYLOAD = 200  # bytes after the header: well under any MTU, never fragmented
SCOPE = ipaddress.ip_network("239.255.0.0/16")


def check_group(group: str) -> None:
    if ipaddress.ip_address(group) not in SCOPE:
        sys.exit(f"mcast-check.py: group {group} is outside 239.255.0.0/16; refusing")


def recv(args: argparse.Namespace) -> int:
    check_group(args.group)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        pass
    # Bind the group address so only this group's datagrams arrive on this socket.
    sock.bind((args.group, args.port))
    mreq = struct.pack("!4s4s", socket.inet_aton(args.group), socket.inet_aton(args.iface))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    if args.ready_file:
        with open(args.ready_file, "w", encoding="ascii") as f:
            f.write("ready\n")

    seen = set()
    duplicates = 0
    expected = args.count
    end_seen = False
    first = None
    start = time.monotonic()
    last_rx = None
    end_at = None
    while True:
        now = time.monotonic()
        if now - start >= args.timeout:
            break
        if last_rx is not None and now - last_rx >= args.idle:
            break
        if end_at is not None and now >= end_at:
            break
        if expected is not None and len(seen) >= expected:
            break
        waits = [args.timeout - (now - start)]
        if last_rx is not None:
            waits.append(args.idle - (now - last_rx))
        if end_at is not None:
            waits.append(end_at - now)
        sock.settimeout(max(0.01, min(waits)))
        try:
            data, _src = sock.recvfrom(65536)
        except socket.timeout:
            continue
        if len(data) < HEADER.size:
            continue
        magic, kind, seq, total = HEADER.unpack_from(data)
        if magic != MAGIC:
            continue
        last_rx = time.monotonic()
        if expected is None:
            expected = total
        if kind == KIND_END:
            end_seen = True
            if end_at is None:
                end_at = last_rx + 0.2  # grace for datagrams still queued
            continue
        if first is None:
            first = seq
        if seq in seen:
            duplicates += 1
        else:
            seen.add(seq)
    out = {
        "iface": args.iface,
        "group": args.group,
        "port": args.port,
        "received": len(seen),
        "duplicates": duplicates,
        "expected": expected,
        "first_seq": min(seen) if seen else None,
        "last_seq": max(seen) if seen else None,
        "end_seen": end_seen,
    }
    print(json.dumps(out), flush=True)
    return 0


def send(args: argparse.Namespace) -> int:
    check_group(args.group)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.iface))
    sock.bind((args.iface, 0))
    pad = b"\0" * PAYLOAD
    dest = (args.group, args.port)
    for seq in range(args.count):
        sock.sendto(HEADER.pack(MAGIC, KIND_DATA, seq, args.count) + pad, dest)
        if args.interval > 0:
            time.sleep(args.interval)
    for _ in range(3):
        time.sleep(0.02)
        sock.sendto(HEADER.pack(MAGIC, KIND_END, args.count, args.count), dest)
    print(json.dumps({"sent": args.count}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("recv", "send"):
        s = sub.add_parser(name)
        s.add_argument("--iface", required=True, help="IPv4 address of the interface to use")
        s.add_argument("--group", default="239.255.77.1")
        s.add_argument("--port", type=int, default=47701)
        if name == "recv":
            s.add_argument("--count", type=int, default=None, help="stop after N distinct datagrams")
            s.add_argument("--timeout", type=float, default=10.0)
            s.add_argument("--idle", type=float, default=1.0)
            s.add_argument("--ready-file", default=None)
        else:
            s.add_argument("--count", type=int, default=200)
            s.add_argument("--interval", type=float, default=0.0005)
    args = p.parse_args()
    return recv(args) if args.mode == "recv" else send(args)


if __name__ == "__main__":
    sys.exit(main())
