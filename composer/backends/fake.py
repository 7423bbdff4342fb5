"""A deterministic fake backend for fault injection and timing-controlled benchmarks.

It is NOT a stand-in for a real model in functional tests: it exists to make load time,
generation time and failures controllable. Options (experts.yaml `options`):

- load_s: seconds a load takes; unload_s: seconds an unload takes
- gen_s: seconds per query (a batch sleeps gen_s * len(batch) unless batch_gen_s is given)
- batch_gen_s: seconds for a whole batch regardless of size
- fail_rate: probability in [0, 1] that a query fails (retryable error); seeded by `seed`
- fail_load: true makes every load fail (ExpertLoadError)
- fail_on: list of substrings; a query containing one fails with a non-retryable error
- fail_on_type: the error_type those failures carry (e.g. "bad_request" for a 400; default "error")
- reply: a template for the answer, formatted with {expert}, {text}, {n}; default echoes the query
- tokens_per_word: completion tokens counted per word of the reply (default 1)
- remote: true makes it behave as a remote API expert (no load counted, no memory held, run
  concurrently with other groups), for timing benchmarks of remote stages
- enforce_context: true makes a query whose prompt words + max_tokens exceed `context_length`
  fail with error_type "context_overflow" (non-retryable), as real backends do
- first_token_s: when streaming (on_delta), seconds before the first word; the other words are
  spread evenly over the rest of the query's gen_s

`cancel(query_ids)` stops the generation of those queries (a sleeping query wakes at once and
fails with error_type "cancelled"), as a client disconnect asks of every backend.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time

from composer.backends.base import Backend
from composer.errors import ExpertLoadError
from composer.runtime.errors import failure
from composer.types import Candidate, Delta, Query, Usage


class FakeBackend(Backend):
    def __init__(self, spec, base_dir=None):
        super().__init__(spec, base_dir)
        self._rng: random.Random | None = None
        self._lock = threading.Lock()
        self.generate_calls = 0
        self.queries_seen = 0
        self.cancelled_queries = 0
        self._cancel: set[str] = set()
        self._wake = threading.Condition(self._lock)

    @property
    def remote(self) -> bool:  # `remote: true`: timing benchmarks of remote experts
        return bool(self._opt("remote", False))

    def cancel(self, query_ids) -> None:
        """Stop generating for these query ids (those not started yet or sleeping now)."""
        with self._wake:
            self._cancel.update(query_ids)
            self._wake.notify_all()

    def _sleep(self, seconds: float, query_ids) -> bool:
        """Sleep up to `seconds`; False when one of `query_ids` was cancelled meanwhile."""
        deadline = time.monotonic() + seconds
        with self._wake:
            while True:
                if self._cancel.intersection(query_ids):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._wake.wait(left)

    def _opt(self, key, default):
        return self.spec.options.get(key, default)

    def _footprint(self) -> int:
        return int(self._opt("footprint_bytes", 100 * 2**20))

    def _load(self) -> None:
        time.sleep(float(self._opt("load_s", 0.0)))
        if self._opt("fail_load", False):
            raise ExpertLoadError("injected load failure (fake backend, fail_load: true)",
                                  expert=self.name)
        self._rng = random.Random(self._opt("seed", 0))

    def _unload(self) -> None:
        time.sleep(float(self._opt("unload_s", 0.0)))
        self._rng = None

    def _generate(self, queries: list[Query], on_delta=None) -> list[Candidate]:
        with self._lock:
            self.generate_calls += 1
            self.queries_seen += len(queries)
        batch_s = self._opt("batch_gen_s", None)
        per_q = float(self._opt("gen_s", 0.0))
        fail_rate = float(self._opt("fail_rate", 0.0))
        fail_on = list(self._opt("fail_on", []))
        tpw = int(self._opt("tokens_per_word", 1))
        out = []
        t_start = time.perf_counter()
        enforce = bool(self._opt("enforce_context", False))
        all_ids = [q.id for q in queries]
        if batch_s is not None:
            self._sleep(float(batch_s), all_ids)
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            s = self.settings_for(q)
            prompt_tokens = max(1, len(q.text.split()))
            if batch_s is None and per_q and on_delta is None:
                self._sleep(per_q, [q.id])
            elif on_delta is not None and not self._stream_words(q, per_q if batch_s is None else 0.0, on_delta):
                pass  # cancelled while streaming: reported below
            with self._lock:
                cancelled = q.id in self._cancel
                self._cancel.discard(q.id)
                self.cancelled_queries += cancelled
            if cancelled:
                out.append(failure(q.id, self.name, "cancelled", f"expert '{self.name}': generation cancelled",
                                   usage=Usage(prompt_tokens, 0, 0.0, 0.0)))
                continue
            if enforce and prompt_tokens + s["max_tokens"] > self.spec.context_length:
                out.append(failure(q.id, self.name, "context_overflow",
                                   f"expert '{self.name}': prompt ({prompt_tokens} tokens) + max_tokens "
                                   f"({s['max_tokens']}) exceed the context window ({self.spec.context_length})",
                                   usage=Usage(prompt_tokens, 0, 0.0, 0.0)))
                continue
            if any(f in q.text for f in fail_on):
                out.append(failure(q.id, self.name, self._opt("fail_on_type", "error"),
                                   f"expert '{self.name}': injected failure (fail_on)", retryable=False,
                                   usage=Usage(prompt_tokens, 0, 0.0, 0.0)))
                continue
            with self._lock:
                draw = self._rng.random() if self._rng else 0.0
            if draw < fail_rate:
                out.append(failure(q.id, self.name, "error",
                                   f"expert '{self.name}': injected failure (fail_rate={fail_rate})", retryable=True,
                                   usage=Usage(prompt_tokens, 0, 0.0, 0.0)))
                continue
            words = self._words(q)
            text = " ".join(words)
            comp = len(words) * tpw
            lat = (time.perf_counter() - t0) if batch_s is None else (time.perf_counter() - t_start)
            out.append(Candidate(q.id, self.name, text,
                                 Usage(prompt_tokens, comp, self.cost(prompt_tokens, comp), lat),
                                 finish_reason="stop"))
        return out

    def _words(self, q: Query) -> list[str]:
        """The reply's words: deterministic given (expert, text, temperature, seed)."""
        s = self.settings_for(q)
        h = hashlib.sha256(f"{self.name}|{q.text}|{s['temperature']}|{s['seed']}".encode()).hexdigest()[:8]
        text = self._opt("reply", "[{expert}] {text}").format(expert=self.name, text=q.text, n=h)
        return text.split()[: s["max_tokens"]]

    def _stream_words(self, q: Query, seconds: float, on_delta) -> bool:
        """Pass the reply to `on_delta` word by word over `seconds`; False when cancelled."""
        words = self._words(q)
        first = float(self._opt("first_token_s", seconds / max(1, len(words))))
        step = max(0.0, seconds - first) / max(1, len(words) - 1)
        for i, w in enumerate(words):
            if not self._sleep(first if i == 0 else step, [q.id]):
                return False
            on_delta(Delta(q.id, self.name, w if i == 0 else " " + w))
        return True

    async def acall(self, q: Query, on_delta=None) -> Candidate:
        """A remote fake's call on the event loop: sleeps asynchronously (timing benchmarks and
        fault injection only). Cancelling the task stops it at once."""
        import asyncio  # noqa: PLC0415

        if not self.remote:
            return await super().acall(q, on_delta)
        if not self._loaded:
            self.load()
        t0 = time.perf_counter()
        per_q = float(self._opt("gen_s", 0.0))
        words = self._words(q)
        if on_delta is None:
            await asyncio.sleep(per_q)
        else:
            first = float(self._opt("first_token_s", per_q / max(1, len(words))))
            step = max(0.0, per_q - first) / max(1, len(words) - 1)
            for i, w in enumerate(words):
                await asyncio.sleep(first if i == 0 else step)
                on_delta(Delta(q.id, self.name, w if i == 0 else " " + w))
        pt = max(1, len(q.text.split()))
        with self._lock:
            self.generate_calls += 1
            self.queries_seen += 1
            draw = self._rng.random() if self._rng else 0.0
        if any(f in q.text for f in self._opt("fail_on", [])):
            return failure(q.id, self.name, self._opt("fail_on_type", "error"),
                           f"expert '{self.name}': injected failure (fail_on)", retryable=False,
                           usage=Usage(pt, 0, 0.0, 0.0))
        if draw < float(self._opt("fail_rate", 0.0)):
            return failure(q.id, self.name, "error", f"expert '{self.name}': injected failure "
                           f"(fail_rate={self._opt('fail_rate', 0.0)})", retryable=True, usage=Usage(pt, 0, 0.0, 0.0))
        ct = len(words) * int(self._opt("tokens_per_word", 1))
        return Candidate(q.id, self.name, " ".join(words),
                         Usage(pt, ct, self.cost(pt, ct), time.perf_counter() - t0), finish_reason="stop")
