"""Many paho clients on one asyncio loop, with no thread per client.

paho can leave its socket to an outside event loop: it announces the socket and when it has
bytes to write, and the loop calls ``loop_read`` / ``loop_write`` when the socket is ready.
Every paho callback therefore runs on the loop's thread and may touch asyncio state directly.
Keepalive needs ``loop_misc`` about once a second, which the owner of the clients calls.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import paho.mqtt.client as mqtt


def bind_to_loop(client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` drive ``client``'s socket from now on (before ``connect``)."""
    # What paho queues is written on the loop's next turn, straight away; only a socket whose
    # send buffer is full is watched for room. Watching every socket for each publish (add and
    # remove a writer: two epoll changes a message) took a tenth of a 10,000-device fleet's CPU.
    watching = False  # a writer is registered: the socket's send buffer was full

    def opened(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):
            # Many clients, small messages: keep the kernel buffers small and the latency low.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.add_reader(sock, client.loop_read)

    def closed(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        loop.remove_reader(sock)
        written(client, userdata, sock)

    def write(sock: Any) -> None:
        nonlocal watching
        client.loop_write()
        current = client.socket()  # None, or a new one, if the connection went meanwhile
        if client.want_write() and current is not None and current is sock and not watching:
            watching = True
            loop.add_writer(current, client.loop_write)

    def want_write(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if not watching:
            loop.call_soon(write, sock)

    def written(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        nonlocal watching
        if watching:
            watching = False
            loop.remove_writer(sock)

    client.on_socket_open = opened
    client.on_socket_close = closed
    client.on_socket_register_write = want_write
    client.on_socket_unregister_write = written
