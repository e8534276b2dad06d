"""Event batches as NOTIFY payloads: compact JSON, split into numbered parts when one would not fit.

Every payload starts with the sending backend's origin and a space, so a process skips its own notifications
without parsing them. PostgreSQL refuses a payload of 8000 bytes or more. JSON is written ASCII-only, so
characters and bytes agree and a part can be cut anywhere; after the origin, a whole batch starts with ``{`` and
a part with ``k/n:``. A transaction's notifications reach a listener together and in order, so parts are joined
per sending backend process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from turnq.core import Event, EventBatch

MAX_PAYLOAD = 7_900
_PART = MAX_PAYLOAD - 32  # room for the "k/n:" header


@dataclass(frozen=True, slots=True)
class Envelope:
    """A batch and where it came from: the sending backend's origin, the channel row and its version."""

    origin: str
    channel_id: int
    version: int
    batch: EventBatch


def encode(env: Envelope) -> list[str]:
    b = env.batch
    body = json.dumps(
        {
            "o": env.origin,
            "i": env.channel_id,
            "v": env.version,
            "c": b.channel,
            "n": b.next_deadline,
            "d": b.depth,
            "x": b.deleted,
            "e": [[e.name, e.data, e.request_id, e.final] for e in b.events],
        },
        separators=(",", ":"),
        ensure_ascii=True,
    )
    head = env.origin + " "
    if len(head) + len(body) <= MAX_PAYLOAD:
        return [head + body]
    size = _PART - len(head)
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return [f"{head}{k}/{len(parts)}:{part}" for k, part in enumerate(parts, start=1)]


def origin_of(payload: str) -> str:
    return payload.partition(" ")[0]


def decode(body: str) -> Envelope:
    d: dict[str, Any] = json.loads(body)
    events = tuple(Event(name, data, request_id, final) for name, data, request_id, final in d["e"])
    batch = EventBatch(d["c"], events, d["n"], d["d"], origin=d["o"], deleted=d["x"])
    return Envelope(d["o"], d["i"], d["v"], batch)


class Assembler:
    """Joins the parts of split payloads, per sending backend process."""

    def __init__(self) -> None:
        self._parts: dict[int, list[str]] = {}

    def feed(self, pid: int, payload: str) -> Envelope | None:
        """The batch this payload completes, if any."""
        payload = payload.partition(" ")[2]
        if payload.startswith("{"):
            self._parts.pop(pid, None)
            return decode(payload)
        header, _, part = payload.partition(":")
        k, _, n = header.partition("/")
        if k == "1":
            self._parts[pid] = []
        parts = self._parts.get(pid)
        if parts is None:
            return None  # a part whose beginning this listener missed (it connected in between)
        parts.append(part)
        if k != n:
            return None
        del self._parts[pid]
        return decode("".join(parts))
