"""The sockets ``turnq serve`` listens on: what every accepted connection inherits from them."""

from __future__ import annotations

import socket

import pytest
from turnq.server.listener import UNACKED_TIMEOUT_S, listen

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux-only"
)


def test_accepted_connections_inherit_the_unacked_data_timeout() -> None:
    (server,) = listen("127.0.0.1", 0)
    try:
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not server.getblocking()
        with socket.create_connection(server.getsockname(), timeout=5):
            server.settimeout(5)
            accepted, _ = server.accept()
            with accepted:
                timeout_ms = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert timeout_ms == UNACKED_TIMEOUT_S * 1000
    finally:
        server.close()


def test_the_accept_queue_holds_a_reconnect_storm() -> None:
    """Connections the server has not accepted yet wait in the queue instead of having their SYNs dropped."""
    (server,) = listen("127.0.0.1", 0)
    clients: list[socket.socket] = []
    try:
        for _ in range(300):  # beyond aiohttp's default backlog of 128, and nothing accepts them
            clients.append(socket.create_connection(server.getsockname(), timeout=5))
    finally:
        for client in clients:
            client.close()
        server.close()


def test_a_port_in_use_is_an_error() -> None:
    (first,) = listen("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="in use"):
            listen("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_every_resolved_address_gets_its_own_socket() -> None:
    sockets = listen("localhost", 0)
    try:
        families = {s.family for s in sockets}
        assert socket.AF_INET in families
        for s in sockets:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in sockets:
            s.close()
