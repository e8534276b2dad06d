"""The listening sockets ``turnq serve`` accepts connections on.

They are bound here, not by aiohttp, for two options aiohttp does not expose:

- ``TCP_USER_TIMEOUT``. Linux gives every accepted connection the listening socket's options, so a peer that stops
  acknowledging what we send (a machine that vanished, a network that dropped it) is cut off after
  ``UNACKED_TIMEOUT_S`` on every connection, streams included, for no work per request. aiohttp-sse would set the
  same option around each stream instead, at three socket calls per subscribe, plus three more to look the
  option up and restore it.
- A deeper accept queue. After a restart every client reconnects at once; with aiohttp's backlog of 128, the SYNs
  beyond it are dropped, and the kernel retries each only after a second.
"""

from __future__ import annotations

import socket

# How long sent data may stay unacknowledged before the connection is dropped (aiohttp-sse's default).
UNACKED_TIMEOUT_S = 120
# Connections waiting to be accepted; the kernel caps it at net.core.somaxconn.
BACKLOG = 4096


def listen(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` resolves to, as asyncio would bind them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    bound: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in bound:
                continue
            bound.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: an IPv6 socket would otherwise claim the IPv4 port too.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
            if user_timeout is not None:
                sock.setsockopt(socket.IPPROTO_TCP, user_timeout, UNACKED_TIMEOUT_S * 1000)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
