"""The Backend contract every expert runtime implements.

A backend is created from its ExpertSpec (constructor stores it, nothing else), then
`load()` makes it ready, `generate(queries, on_delta)` answers a batch (list in, list out, same
length), and `unload()` frees what `load()` took. `footprint` is the memory it needs while loaded.

Streaming: with `on_delta`, a backend calls `on_delta(Delta)` for each piece of text (or tool-call
delta) as it is generated, and still returns the finished Candidates. Remote backends also offer
`acall(query, on_delta)`, a coroutine for one call on the runtime's event loop (no thread per call);
cancelling its task closes the upstream request.

Failures are Candidates with `call_error` set (composer.runtime.errors.failure), never strings in
metadata.
"""

from __future__ import annotations

import abc
import threading
import time
from typing import TYPE_CHECKING, Callable

from composer.errors import BackendError
from composer.runtime.errors import failure
from composer.types import Candidate, Delta, Query, Usage

if TYPE_CHECKING:
    from composer.config import ExpertSpec


class Backend(abc.ABC):
    """Base class: subclasses implement `_load`, `_unload`, `_generate` and `_footprint`."""

    remote: bool = False  # remote backends cost no load and hold no local memory

    def __init__(self, spec: "ExpertSpec", base_dir: str | None = None):
        self.spec = spec
        self.base_dir = base_dir
        self._loaded = False
        self.load_count = 0
        self.unload_count = 0
        self.last_load_s = 0.0
        self.last_unload_s = 0.0
        self._cancel_ids: set[str] = set()
        self._cancel_lock = threading.Lock()

    # -- cancellation (a client went away): backends check `is_cancelled` while generating ----
    def cancel(self, query_ids) -> None:
        """Stop generating for these query ids (running now or not started yet)."""
        with self._cancel_lock:
            self._cancel_ids.update(query_ids)

    def is_cancelled(self, qid: str) -> bool:
        with self._cancel_lock:
            return qid in self._cancel_ids

    def cancelled_candidate(self, q: Query, seconds: float, tokens: int = 0) -> Candidate:
        """The answer for a cancelled query (and forget the cancel, so ids can be reused)."""
        with self._cancel_lock:
            self._cancel_ids.discard(q.id)
        return failure(q.id, self.name, "cancelled", f"expert '{self.name}': generation cancelled",
                       usage=Usage(latency_s=seconds), tokens_before_cancel=tokens)

    def forget_cancel(self, query_ids) -> None:
        with self._cancel_lock:
            self._cancel_ids.difference_update(query_ids)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    @property
    def footprint(self) -> int:
        """Bytes this expert occupies while loaded (spec value, else derived by the backend)."""
        if self.spec.footprint_bytes is not None:
            return self.spec.footprint_bytes
        return 0 if self.remote else self._footprint()

    def _footprint(self) -> int:
        return 0

    def load(self) -> float:
        """Make the expert ready. Idempotent. Returns the seconds it took (0 if already loaded)."""
        if self._loaded:
            return 0.0
        t0 = time.perf_counter()
        self._load()
        self._loaded = True
        self.load_count += 1
        self.last_load_s = time.perf_counter() - t0
        return self.last_load_s

    def unload(self) -> float:
        """Free what load() took. Idempotent. Returns the seconds it took."""
        if not self._loaded:
            return 0.0
        t0 = time.perf_counter()
        try:
            self._unload()
        finally:
            self._loaded = False
            self.unload_count += 1
        self.last_unload_s = time.perf_counter() - t0
        return self.last_unload_s

    def generate(self, queries: list[Query], on_delta: Callable[[Delta], None] | None = None) -> list[Candidate]:
        """Answer a batch. Per-query failures come back as Candidates with `error` set; a
        failure of the whole backend raises BackendError. With `on_delta`, pieces of each
        answer are passed to it as they are generated."""
        if not queries:
            return []
        if not self._loaded:
            self.load()
        out = self._generate(list(queries), on_delta)
        if len(out) != len(queries):
            raise BackendError(f"returned {len(out)} candidates for {len(queries)} queries",
                               expert=self.name)
        return out

    # -- helpers for subclasses --------------------------------------------------------------
    def settings_for(self, q: Query) -> dict:
        g = self.spec.generation
        return {
            "max_tokens": q.max_tokens if q.max_tokens is not None else g.max_tokens,
            "temperature": q.temperature if q.temperature is not None else g.temperature,
            "top_p": g.top_p,
            "stop": list(q.stop) if q.stop is not None else list(g.stop),
            "seed": q.seed if q.seed is not None else g.seed,
        }

    def messages_for(self, q: Query) -> list[dict[str, str]]:
        """The chat messages to send: the request's, with the expert's system prompt first when
        the request has no system message of its own."""
        msgs = q.chat_messages()
        if self.spec.system_prompt and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.spec.system_prompt})
        return msgs

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.spec.price.cost(prompt_tokens, completion_tokens)

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _unload(self) -> None: ...

    @abc.abstractmethod
    def _generate(self, queries: list[Query], on_delta: Callable[[Delta], None] | None = None) -> list[Candidate]: ...

    async def acall(self, q: Query, on_delta: Callable[[Delta], None] | None = None) -> Candidate:
        """One call as a coroutine (remote backends override this with a real async call)."""
        import asyncio  # noqa: PLC0415

        return (await asyncio.to_thread(self.generate, [q], on_delta))[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, loaded={self._loaded})"
