"""A minimal HTTP/1.1 client for the benchmarks: keep-alive POSTs and chunked SSE streams over raw asyncio
streams.

The load generator shares this 2-core machine with the server, so it must cost far less per turn than the
server does, or the benchmark measures the load generator. A general-purpose client costs several times more per
request than this one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpError(RuntimeError):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


class Connection:
    """One keep-alive connection for JSON POSTs, one request at a time."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), self.key.encode(), len(data), data)
        )
        status, headers = await _read_head(self.reader)
        length = int(headers.get(b"content-length", b"0"))
        payload = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(payload) if payload else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EventStream:
    """A subscriber or observer stream: ``next()`` gives ``(event, data)``, or None when the server ends it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.finished = False  # the server ended the stream cleanly: the connection can be reused

    @classmethod
    async def open(
        cls, host: str, port: int, key: str, path: str, reuse: EventStream | None = None
    ) -> EventStream:
        """Open a stream, on ``reuse``'s keep-alive connection if that stream ended cleanly."""
        if reuse is not None and reuse.finished:
            reader, writer = reuse.reader, reuse.writer
        else:
            if reuse is not None:
                reuse.close()
            reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\n\r\n"
            % (path.encode(), host.encode(), key.encode())
        )
        status, headers = await _read_head(reader)
        if status != 200:
            length = int(headers.get(b"content-length", b"0"))
            if length:
                await reader.readexactly(length)
            writer.close()
            raise HttpError(f"subscribe answered {status}")
        return cls(reader, writer)

    async def _chunk(self) -> bytes:
        size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            await self.reader.readexactly(2)  # the final CRLF
            self.finished = True
            return b""
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def next(self) -> tuple[str, dict[str, Any]] | None:
        while True:
            end = self.buffer.find(b"\n\n")
            if end >= 0:
                frame, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if frame.startswith(b":"):
                    continue
                name, data = "", b"{}"
                for line in frame.split(b"\n"):
                    if line.startswith(b"event: "):
                        name = line[7:].decode()
                    elif line.startswith(b"data: "):
                        data = line[6:]
                return name, json.loads(data)
            chunk = await self._chunk()
            if not chunk:
                return None
            self.buffer += chunk

    async def until(self, name: str) -> dict[str, Any]:
        while True:
            event = await self.next()
            if event is None:
                raise HttpError(f"stream ended before {name}")
            if event[0] == name:
                return event[1]

    def close(self) -> None:
        self.writer.close()
