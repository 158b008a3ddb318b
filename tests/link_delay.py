"""Delay and random loss for the packets arriving on one interface, for kernels built without
``sch_netem``: an iptables NFQUEUE rule hands every packet to this process, which drops a share
of them at random and lets the rest through ``--delay`` seconds after they arrived, in order.

    ip netns exec NS python tests/link_delay.py --queue 7 --delay 0.15 --loss 0.02

Run it inside the namespace whose iptables rule sends packets to ``--queue``. It speaks
nfnetlink_queue directly (no libnetfilter_queue), asks for the packets' metadata only, and ends
on SIGTERM. It prints ``bound`` once the queue is its own.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, 0, 0) + body


def _configure(sock: socket.socket, queue: int) -> None:
    for attrs in (
        _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)),
        _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
        _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 8192)),
    ):
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        data = sock.recv(65536)
        _, kind = struct.unpack_from("=IH", data)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, 16)
            if error:
                raise OSError(-error, f"nfnetlink_queue refused the config of queue {queue}")


def _packet_ids(data: bytes) -> list[int]:
    """The packet ids of the queued packets in one read from the socket."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20  # after the netlink and nfgenmsg headers
            while at + 4 <= offset + length:
                size, attr = struct.unpack_from("=HH", data, at)
                if size < 4:
                    break
                if attr & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += size + (-size % 4)
        offset += length + (-length % 4)
    return ids


def _verdict(sock: socket.socket, queue: int, packet: int, verdict: int) -> None:
    header = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet))
    sock.send(_message(NFQNL_MSG_VERDICT, queue, header))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds each packet is held")
    parser.add_argument("--loss", type=float, default=0.0, help="share of packets dropped")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    _configure(sock, args.queue)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("bound", flush=True)
    held: collections.deque[tuple[float, int]] = collections.deque()
    while running:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _verdict(sock, args.queue, held.popleft()[1], NF_ACCEPT)
        wait = max(0.0, held[0][0] - now) if held else 0.5
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            continue
        arrived = time.monotonic()
        for packet in _packet_ids(sock.recv(1 << 20)):
            if rng.random() < args.loss:
                _verdict(sock, args.queue, packet, NF_DROP)
            else:
                held.append((arrived + args.delay, packet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
