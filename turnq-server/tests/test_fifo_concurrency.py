"""FIFO and mutual exclusion with 50 concurrent clients, checked by timestamps and by an observer."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

from server_kit import Server

CLIENTS = 50


async def test_fifo_and_mutual_exclusion_with_50_clients(server: Server) -> None:
    ch = await server.create("race", leaseMs=30_000)
    obs = await server.observe(ch)
    spans: list[tuple[float, float, int, int, str]] = []  # (start, end, position, token, client)

    async def client(i: int) -> None:
        await asyncio.sleep(random.random() * 0.05)
        client_id = f"client-{i}"
        rid, position = await server.enqueue(ch, client_id)
        sse = await server.subscribe(ch, client_id, rid)
        try:
            turn = await sse.expect("your-turn", timeout=60)
            start = time.monotonic()
            await asyncio.sleep(random.random() * 0.004)
            end = time.monotonic()
            spans.append((start, end, position, turn["fencingToken"], client_id))
            assert await server.release(ch, client_id, rid) == 204
            assert await sse.ended()
        finally:
            sse.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(CLIENTS))), 90)
        by_start = sorted(spans)
        # Mutual exclusion: each turn ends before the next starts.
        for (_, end, *_), (start, *_) in itertools.pairwise(by_start):
            assert end <= start
        # Fencing tokens strictly increase with every grant.
        tokens = [s[3] for s in by_start]
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == CLIENTS
        # The observer saw the same order, and each turn complete before the next started.
        # FIFO: grants follow enqueue order, as the observer saw both.
        enqueued: list[str] = []
        order, holding = [], None
        while len(order) < CLIENTS or holding is not None:
            name, data = await obs.next() or ("", {})
            if name == "queued":
                enqueued.append(data["clientId"])
            elif name == "turn-started":
                assert holding is None, f"{data['clientId']} started while {holding} held"
                holding = data["clientId"]
                order.append(data["clientId"])
            elif name == "turn-completed":
                assert data["clientId"] == holding
                assert data["success"] is True
                holding = None
        assert order == [s[4] for s in by_start]
        assert order == enqueued
    finally:
        obs.close()
