"""The runtime's event loop: one background thread per process running asyncio, on which every
remote expert call runs as a coroutine (no thread per call). `submit(coro)` returns a
concurrent.futures.Future; cancelling it cancels the task, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

_shared: "IOLoop | None" = None
_lock = threading.Lock()


class IOLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._sems: dict[str, asyncio.Semaphore] = {}
        self._thread = threading.Thread(target=self._run, name="composer-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def semaphore(self, key: str, n: int) -> asyncio.Semaphore:
        """The per-expert concurrency bound (call on the loop)."""
        sem = self._sems.get(key)
        if sem is None:
            sem = self._sems[key] = asyncio.Semaphore(max(1, n))
        return sem


def shared() -> IOLoop:
    """The process's IOLoop (started on first use)."""
    global _shared
    with _lock:
        if _shared is None or not _shared._thread.is_alive():
            _shared = IOLoop()
        return _shared
