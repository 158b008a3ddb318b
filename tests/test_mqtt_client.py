"""The MQTT client's registration of its socket with the event loop (cloud_sync/mqtt.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from agent.config import BrokerLogin
from cloud_sync.mqtt import Client, make_client

PEERS: list[socket.socket] = []  # the broker's ends, kept open: a closed peer reads as a lost link


def client_with_socket() -> tuple[Client, socket.socket]:
    client = make_client(BrokerLogin(url="mqtt://127.0.0.1:1"), "socket-test", "5")
    ours, peer = socket.socketpair()
    PEERS.append(peer)
    client._client._sock = ours  # as paho holds it once connect() has opened it
    client._misc_loop = asyncio.Event().wait  # type: ignore[method-assign]  # no keepalive work here
    return client, ours


def opened(client: Client, sock: socket.socket) -> None:
    client._on_socket_open(client._client, None, sock)
    client._on_socket_register_write(client._client, None, sock)


async def next_iterations() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_live_socket_is_watched_for_reading_and_writing() -> None:
    client, sock = client_with_socket()
    loop = asyncio.get_running_loop()
    opened(client, sock)
    await next_iterations()
    assert loop.remove_reader(sock.fileno()) and loop.remove_writer(sock.fileno())
    client._misc_task.cancel()


async def test_a_socket_closed_before_the_loop_gets_to_it_is_left_alone() -> None:
    client, sock = client_with_socket()
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    fileno = sock.fileno()
    opened(client, sock)
    client._client._sock = None  # the TLS handshake failed: paho closes the socket at once
    sock.close()
    reused, peer = socket.socketpair()
    PEERS.append(peer)  # the next connection may get the same descriptor
    await next_iterations()
    assert errors == []  # aiomqtt's own callbacks: "Exception in callback ... Bad file descriptor"
    if reused.fileno() == fileno:
        assert not loop.remove_reader(fileno) and not loop.remove_writer(fileno)
    client._misc_task.cancel()
