"""Live events for the dashboard: the daemon publishes what changed, each open stream takes it.

Publishing never waits: every subscriber has a bounded buffer, and one that falls behind loses its
buffer and is told to resynchronise (it then sends the whole state again), so a slow browser can
never hold up the daemon or grow its memory. "state" events carry no data: the stream renders the
current state when it sends them, so a burst of changes becomes one message.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

Event = tuple[str, Any]


class Subscription:
    def __init__(self, limit: int) -> None:
        self._items: deque[Event] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self.closed = False
        self.resync = False           # items were dropped: the next state must be whole

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._items) >= self._limit:
            self._items.clear()
            self.resync = True
            event = ("state", None)
        self._items.append(event)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout: float) -> list[Event] | None:
        """Everything published since the last call ([] when `timeout` passed with nothing); None once closed."""
        if not self._items and not self.closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
        self._wake.clear()
        if self.closed:
            return None
        items = list(self._items)
        self._items.clear()
        return items


class EventHub:
    def __init__(self, limit: int = 256) -> None:
        self._subscribers: set[Subscription] = set()
        self._limit = limit
        self.closed = False

    def subscribe(self) -> Subscription:
        sub = Subscription(self._limit)
        if self.closed:
            sub.close()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, kind: str, data: Any = None) -> None:
        for sub in list(self._subscribers):
            sub.push((kind, data))

    def close(self) -> None:
        """The daemon stops: every stream ends (an open stream would hold the HTTP server's shutdown)."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


def sse(kind: str, data: Any) -> str:
    """One server-sent event: `event: kind` and its data as one line of JSON."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"
