"""The SSE hub: maps open streams to tickets and channels, and forwards committed events to them.

The hub listens to the backend's feed (a plain callback, no task per event). Each stream is a small object with an
inbox of pre-encoded frames and one future its response waits on, in the task aiohttp already runs for the
request: a stream costs no task of its own. Frames for observers are encoded once per event, not once
per observer.

An idle stream is what a deep queue is made of (thousands of waiters each holding one open), so what a stream keeps
while it waits is kept small: no inbox list until a frame arrives, and the response awaits the future itself
rather than a coroutine that awaits it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from turnq.core import Event, EventBatch

log = logging.getLogger("turnq.server.hub")

KEEPALIVE_FRAME = b": keepalive\n\n"
# An observer that falls this many frames behind is disconnected rather than buffered without bound.
MAX_OBSERVER_BACKLOG = 10_000


# Compact JSON as UTF-8 bytes. orjson rather than the json module: every turn encodes a few small objects (response
# bodies, event frames), and the json module's per-call set-up made that some 7% of a turn's CPU.
encode_json: Callable[[Any], bytes] = orjson.dumps


def encode_frame(name: str, data: dict[str, Any]) -> bytes:
    """``event: NAME\\ndata: JSON\\n\\n`` with LF line ends, exactly as the protocol (and the bash client) expects."""
    return b"event: %s\ndata: %s\n\n" % (name.encode(), encode_json(data))


class Stream:
    """One open SSE response's outgoing side: frames queued by the hub, written by the response.

    ``ticket_over`` tells the stream's end the ticket ended (no grace needed); ``replaced`` that a newer stream took
    over the ticket (its closing must change nothing).
    """

    __slots__ = (
        "attached",
        "attachment",
        "channel",
        "closing",
        "frames",
        "key",
        "replaced",
        "ticket_over",
        "told",
        "turn_sent",
        "waiter",
    )

    def __init__(self, channel: str, key: str | None, attachment: str = "") -> None:
        self.channel = channel
        self.key = key
        self.attachment = attachment
        self.frames: list[bytes] | None = None  # frames not yet written; None (not []) while there are none
        self.waiter: asyncio.Future[None] | None = None
        self.closing = False
        self.ticket_over = False
        self.replaced = False
        self.turn_sent = False  # your-turn went out on this stream (it is sent once per subscription)
        self.told: int | None = None  # the last position this stream was told
        # A ticket stream is registered before its attach and hears its ticket's events only from the attach's
        # marker on: the attach tells it where the ticket stands then (queued, or your-turn), which supersedes
        # any earlier event (a grant committed between registering and attaching would otherwise arrive twice).
        self.attached = False

    def push(self, frame: bytes) -> None:
        if self.closing:
            return
        frames = self.frames
        if frames is None:
            self.frames = [frame]
        else:
            frames.append(frame)
            if self.key is None and len(frames) > MAX_OBSERVER_BACKLOG:
                log.warning("observer on channel %r fell behind; disconnecting it", self.channel)
                self.frames = None
                self.close()
                return
        self._wake()

    def send(self, event: Event) -> None:
        """Write a ticket event's frame, and note what it told the client (a turn, or a position)."""
        assert event.name is not None
        self.push(encode_frame(event.name, event.data))
        if event.name == "your-turn":
            self.turn_sent = True
        elif "position" in event.data:
            self.told = event.data["position"]

    def close(self) -> None:
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> bytes | None:
        """The frames to write now, as one chunk; None when there are none."""
        frames = self.frames
        if frames is None:
            return None
        self.frames = None
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def wait(self) -> asyncio.Future[None]:
        """A future that completes when frames arrive or the stream is told to end. The response awaits it
        directly: a coroutine wrapped around it would cost every idle stream a suspended frame."""
        waiter = self.waiter
        if waiter is None:
            waiter = self.waiter = asyncio.get_running_loop().create_future()
        return waiter


class Hub:
    def __init__(self) -> None:
        # Ticket streams by channel, then request id: one small dict per channel rather than a (channel, request
        # id) key per stream, and a channel's streams found without looking at every other channel's.
        self.tickets: dict[str, dict[str, Stream]] = {}
        self.observers: dict[str, set[Stream]] = {}

    # -------------------------------------------------------------- registry

    def open_ticket_stream(self, channel: str, request_id: str, attachment: str) -> Stream:
        stream = Stream(channel, request_id, attachment)
        group = self.tickets.setdefault(channel, {})
        old = group.get(request_id)
        if old is not None:
            old.replaced = True
            old.close()
        group[request_id] = stream
        return stream

    def open_observer_stream(self, channel: str) -> Stream:
        stream = Stream(channel, None)
        self.observers.setdefault(channel, set()).add(stream)
        return stream

    def discard(self, stream: Stream) -> None:
        if stream.key is not None:
            tickets = self.tickets.get(stream.channel)
            if tickets is not None and tickets.get(stream.key) is stream:
                del tickets[stream.key]
                if not tickets:
                    del self.tickets[stream.channel]
        else:
            group = self.observers.get(stream.channel)
            if group is not None:
                group.discard(stream)
                if not group:
                    del self.observers[stream.channel]

    def end_ticket(self, stream: Stream) -> None:
        """The stream's ticket is over: end the stream, without a grace, and forget it."""
        stream.ticket_over = True
        stream.close()
        self.discard(stream)

    def ticket_streams(self, channel: str | None = None) -> list[Stream]:
        if channel is None:
            return [s for group in self.tickets.values() for s in group.values()]
        return list(self.tickets.get(channel, {}).values())

    def counts(self) -> tuple[int, int]:
        return sum(len(g) for g in self.tickets.values()), sum(len(g) for g in self.observers.values())

    # -------------------------------------------------------------- feed

    def on_batch(self, batch: EventBatch) -> None:
        channel = batch.channel
        observers = self.observers.get(channel)
        tickets = self.tickets.get(channel)
        for event in batch.events:
            if event.request_id is not None:
                stream = tickets.get(event.request_id) if tickets is not None else None
                if stream is None:
                    continue
                if event.name is None and "attachment" in event.data:
                    if event.data["attachment"] == stream.attachment:
                        stream.attached = True
                    elif stream.attached:
                        # A later stream (on another process) took this ticket over: end ours without a grace.
                        # (Before our own attach, another stream's marker is older than ours: ours supersedes it.)
                        stream.replaced = True
                        stream.close()
                        self.discard(stream)
                    continue
                if not stream.attached:
                    continue
                if event.name is not None:
                    stream.send(event)
                if event.final:
                    self.end_ticket(stream)
            elif observers and event.name is not None:
                frame = encode_frame(event.name, event.data)
                for observer in observers:
                    observer.push(frame)
                if event.final:
                    for observer in observers:
                        observer.close()

    # -------------------------------------------------------------- lifecycle

    def keepalive(self) -> None:
        for tickets in self.tickets.values():
            for stream in tickets.values():
                stream.push(KEEPALIVE_FRAME)
        for group in self.observers.values():
            for stream in group:
                stream.push(KEEPALIVE_FRAME)

    def shutdown(self, reason: str) -> None:
        """Tell every stream the server is stopping; clients resubscribe elsewhere and keep their places."""
        frame = encode_frame("server-shutdown", {"reason": reason})
        streams = self.ticket_streams() + [s for g in self.observers.values() for s in g]
        for stream in streams:
            stream.push(frame)
            stream.replaced = True  # not a disconnect: the ticket keeps its place
            stream.close()
        self.tickets.clear()
        self.observers.clear()
