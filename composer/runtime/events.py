"""The runtime's one event sink: every route decision, load, unload, attempt, retry, fallback,
cancel, first token and batch goes here, and `--json` reports, logs, traces, metrics and tests
read it from here (subscribers), never from private state.

    sink = EventSink()
    unsubscribe = sink.subscribe(lambda ev: print(ev["event"], ev.get("expert")))
    sink.emit("load", expert="smollm2", seconds=0.41)

An event is a plain dict: `event` (its kind), `t` (time.time() when emitted), and its fields.
Kinds and their fields (every field optional unless named):
- route: query_id, request_id, pipeline, experts, reason, router
- load / unload: expert, seconds, node; load_failed: expert, seconds, error
- attempt: expert, query_id, ok, error_kind, retryable, seconds, prompt_tokens, completion_tokens, cost
- retry: query_id, expert, error_kind, delay_s; fallback: query_id, from_expert, expert, error_kind
- cancel: query_id, expert
- first_token: query_id, expert, seconds (since the call started)
- batch: expert, size, wait_s (the oldest item's wait in the batcher), queued (still waiting after it)
- request: request_id, route, model, status, seconds (the HTTP layer)
- answer: query_id, ok, experts, error_kind, seconds (each answer Composer.run returns)
A subscriber that raises is logged and kept; it never breaks the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger("composer.events")

Subscriber = Callable[[dict], None]


class EventSink:
    """Fan-out of runtime events to subscribers, plus the last `keep` events for inspection."""

    def __init__(self, keep: int = 2000):
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self.recent: deque[dict] = deque(maxlen=keep)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(event)` for every event from now on; returns a function that unsubscribes."""
        with self._lock:
            self._subs = [*self._subs, fn]

        def unsubscribe() -> None:
            with self._lock:
                self._subs = [s for s in self._subs if s is not fn]

        return unsubscribe

    def emit(self, event: str, **fields) -> dict:
        ev = {"event": event, "t": time.time(), **fields}
        self.recent.append(ev)
        for fn in self._subs:  # a copy-on-write list: no lock while calling out
            try:
                fn(ev)
            except Exception:  # noqa: BLE001 - observers never break the request path
                log.exception("event subscriber %r failed on %s", fn, event)
        return ev

    def count(self, event: str, **match) -> int:
        """How many of the recent events are of this kind (and match these fields)."""
        return sum(1 for e in list(self.recent)
                   if e["event"] == event and all(e.get(k) == v for k, v in match.items()))
