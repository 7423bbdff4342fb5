"""The runtime of one Composer: the executor (where local experts live), the policy (retries,
fallbacks, cooldowns), the event sink, the event loop for remote calls and, in server mode, the
stream batcher. Every stage of every request goes through `run_stage`; `cancel` reaches every
stage that holds one of the ids, wherever its items are (queued, generating, waiting).
"""

from __future__ import annotations

import threading
import weakref

from composer.executors import StageResult
from composer.runtime.aio import shared
from composer.runtime.stage import Stage


class Runtime:
    def __init__(self, executor, policy, sink, io=None):
        self.executor = executor
        self.policy = policy
        self.sink = sink
        self.io = io or shared()
        self.batcher = None  # composer.stream.StreamBatcher in server mode
        self._active: "weakref.WeakSet[Stage]" = weakref.WeakSet()
        self._lock = threading.Lock()

    def run_stage(self, work, upcoming=None, *, extra_fallbacks=(), on_delta=None) -> StageResult:
        st = Stage(self.executor, work, upcoming, policy=self.policy, sink=self.sink, io=self.io,
                   batcher=self.batcher, on_delta=on_delta, extra_fallbacks=extra_fallbacks)
        with self._lock:
            self._active.add(st)
        try:
            return st.run()
        finally:
            with self._lock:
                self._active.discard(st)

    def cancel(self, query_ids) -> None:
        ids = set(query_ids)
        self.policy.cancel(ids)
        with self._lock:
            stages = list(self._active)
        for st in stages:  # a request's sub-calls have ids `<id>/<stage>/<n>` (aggregation)
            hit = {qid for qid in st.query_ids() if qid in ids or qid.split("/", 1)[0] in ids}
            if hit:
                st.cancel(hit)
        for qid in ids:
            self.sink.emit("cancel", query_id=qid)

    def forget(self, query_ids) -> None:
        self.policy.forget(query_ids)
