"""The owner of the local experts when the endpoint runs several ingress replicas.

With `--replicas N > 1`, every replica routes, aggregates and calls remote experts itself, but a
local expert (llama.cpp in-process, a managed vLLM/llama.cpp server) must not be loaded once per
replica: one `ExpertHost` deployment owns them (its executor, memory budget and stream batcher),
and every replica hands it its local calls through a Ray Serve handle (`RemoteBatcher`, the same
`submit / cancel` contract as composer.stream.StreamBatcher). Requests for one expert that arrive
at different replicas therefore meet in one batch, and each model loads as few times as with one
replica. Deltas stream back through the handle as they are generated; a cancelled request cancels
its call in the host (the generation stops at the next token).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from dataclasses import asdict

from composer.runtime.errors import failure
from composer.types import Candidate, Delta, Query


class ExpertHostImpl:
    """The deployment's logic (composer/serve/app.py wraps it in @serve.deployment)."""

    def __init__(self, config_path: str, options: dict):
        from composer.core import Composer
        from composer.observability import attach

        self.composer = Composer.from_yaml(config_path)
        self.composer.stream_mode(max_wait_s=float(options.get("batch_max_wait_s", 0.5)),
                                  max_batch=int(options.get("max_batch", 32)))
        attach(self.composer)

    async def call(self, query: dict, expert: str, stream: bool = False):
        """One local call: yields ("delta", Delta fields) as generated, then ("candidate", dict)."""
        loop = asyncio.get_running_loop()
        q = Query.from_dict(query)
        out: asyncio.Queue = asyncio.Queue()

        def on_delta(d: Delta) -> None:
            loop.call_soon_threadsafe(out.put_nowait, ("delta", asdict(d)))

        fut = self.composer.submit_local(q, expert, on_delta if stream else None)
        afut = asyncio.wrap_future(fut, loop=loop)
        afut.add_done_callback(lambda _f: out.put_nowait(("done", None)))
        try:
            while True:
                kind, value = await out.get()
                if kind == "done":
                    break
                yield kind, value
            yield "candidate", afut.result().to_dict()
        finally:
            if not fut.done():  # the replica cancelled the call (client gone, time limit)
                self.composer.cancel([q.id])

    async def stats(self) -> dict:
        return {"loads": {n: self.composer.backend(n).load_count for n in self.composer.experts
                          if not self.composer.backend(n).remote},
                "resident": list(self.composer.executor.resident)}


class RemoteBatcher:
    """StreamBatcher's contract over the ExpertHost's handle (used by every ingress replica)."""

    def __init__(self, handle):
        # The calls come from the runtime's worker threads, not the replica's event loop: the
        # handle's router runs on a loop of its own (the endpoint sets Serve's default off for
        # the ingress, where it saves latency).
        try:
            handle._init(_run_router_in_separate_loop=True)  # noqa: SLF001 - Serve's documented init hook
        except RuntimeError:
            pass  # already initialised (a second Composer over the same handle)
        self.handle = handle
        self._calls: dict[str, object] = {}  # query id -> the streaming response
        self._lock = threading.Lock()

    def submit(self, query: Query, expert: str, on_delta=None) -> Future:
        fut: Future = Future()
        threading.Thread(target=self._run, args=(query, expert, on_delta, fut), daemon=True,
                         name=f"host-call-{expert}").start()
        return fut

    def _run(self, query: Query, expert: str, on_delta, fut: Future) -> None:
        try:
            gen = self.handle.options(stream=True).call.remote(query.to_dict(), expert, on_delta is not None)
            with self._lock:
                self._calls[query.id] = gen
            cand = None
            for kind, value in gen:
                if kind == "delta" and on_delta is not None:
                    on_delta(Delta(**value))
                elif kind == "candidate":
                    cand = Candidate.from_dict(value)
            fut.set_result(cand or failure(query.id, expert, "error", f"expert '{expert}': no answer from its host"))
        except Exception as exc:  # noqa: BLE001 - the host (or its node) is gone: a typed, retryable error
            name = type(exc).__name__
            kind = "cancelled" if "Cancel" in name else "unavailable"
            fut.set_result(failure(query.id, expert, kind, f"expert '{expert}': its host failed: {name}: {exc}"))
        finally:
            with self._lock:
                self._calls.pop(query.id, None)

    def cancel(self, query_ids) -> None:
        with self._lock:
            gens = [g for qid, g in self._calls.items() if qid in set(query_ids)]
        for g in gens:
            g.cancel()

    def host_stats(self) -> dict:
        """The host's loads per local expert and what it holds resident."""
        return self.handle.stats.remote().result(timeout_s=30)
