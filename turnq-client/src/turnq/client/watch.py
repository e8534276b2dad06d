"""``turnq watch CHANNEL``: the observer stream as readable lines, resumed when the connection drops."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

from .errors import ServerUnavailableError
from .http import TurnqClient
from .models import Event


def format_event(event: Event) -> str:
    d = event.data
    who = d.get("clientId", "")
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    detail: list[str] = []
    if event.name == "turn-started":
        detail.append(f"token={d.get('fencingToken')}")
        if "waitedMs" in d:
            detail.append(f"waited={d['waitedMs']}ms")
    elif event.name == "turn-completed":
        detail.append("ok" if d.get("success") else f"failed: {d.get('error', '')}")
        if "heldMs" in d:
            detail.append(f"held={d['heldMs']}ms")
    elif event.name in ("step-started", "step-ended"):
        detail.append(f"step={d.get('step')!r}")
        if event.name == "step-ended":
            detail.append("ok" if d.get("success") else f"failed: {d.get('error', '')}")
    elif event.name == "left":
        detail.append(f"reason={d.get('reason')}")
    elif event.name == "queued":
        detail.append(f"position={d.get('position')}")
    else:
        detail.extend(f"{k}={v}" for k, v in d.items() if k != "channel")
    return f"{stamp}  {event.name:<15} {who}  {' '.join(str(x) for x in detail)}".rstrip()


def watch(client: TurnqClient, channel: str, *, out: Any = None) -> int:
    stream = out if out is not None else sys.stdout
    backoff = 0.1
    while True:
        try:
            with client.observe(channel) as events:
                backoff = 0.1
                for event in events:
                    print(format_event(event), file=stream, flush=True)
                    if event.name == "channel-deleted":
                        return 0
        except ServerUnavailableError as exc:
            print(f"[turnq] {exc.message}; reconnecting", file=sys.stderr, flush=True)
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
