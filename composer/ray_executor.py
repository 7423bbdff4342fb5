"""RayExecutor: each loaded local expert lives in a Ray actor that holds its backend.

Same plan, same stage loop and same answers as LocalExecutor (composer/executors.py); what differs
is where a model lives. An actor is created on load and killed on unload, so the memory and the
Ray resources it reserved are really returned. Actors are annotated from experts.yaml:
`options.num_cpus` (default 0.5: fractional, several small experts share a core),
`options.num_gpus` (default 0) and `memory` = the expert's footprint.

The memory budget is one number for the whole cluster (unset, on a cluster: the `memory` Ray's
nodes offer); Ray decides what fits on which node. When no live node has room for an expert's
actor, the least recently used resident experts of one node are unloaded until it has
(`_make_room`), rather than waiting for the placement timeout.

Never blocks forever:
- placement: a request larger than the cluster's total resources fails at once; otherwise the
  actor must be scheduled within `placement_timeout_s` or the load fails with the resources the
  cluster has free;
- every call is `ray.get(..., timeout=)`: load (`load_timeout_s`, default the expert's
  `ready_timeout_s` + 60 s), generate (`timeout_s` x batch size + 30 s), unload (30 s).
A crashed actor (killed process, OOM) is restarted once and its batch retried; a second crash
fails the batch with a clear error, and so does a crash after part of an answer was streamed (a
retry would send that part twice). Streaming (`on_delta`) comes out of the actor token by token
through a Ray streaming generator (`ExpertActor.generate_stream`), under the same deadline.
`close()` stops every actor (and with it any server process the backend started) and shuts Ray
down if this executor started it.

    ex = RayExecutor(composer.expert_spec, scheduler)        # local Ray, num_cpus=2
    ex = RayExecutor(..., address="ray://head:10001")         # an existing cluster
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable

from composer.errors import BackendError, ExpertLoadError, ExpertTimeoutError
from composer.executors import BaseExecutor, describe
from composer.scheduler import Scheduler

DEFAULT_ACTOR_CPUS = 0.5
_END = object()


class ExpertActor:
    """Holds one backend inside a Ray worker process. Errors come back as values so the driver
    gets the backend's own message rather than a wrapped traceback."""

    def __init__(self, spec, base_dir):
        self.spec = spec
        self.base_dir = base_dir
        self.backend = None

    def ready(self) -> tuple[int, str]:
        import ray  # noqa: PLC0415

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def load(self):
        from composer.backends import make_backend

        try:
            self.backend = make_backend(self.spec, base_dir=self.base_dir)
            return True, self.backend.load()
        except Exception as exc:  # noqa: BLE001 - sent back to the driver as the expert's error
            return False, describe(exc)

    def generate(self, queries, on_delta=None):
        try:
            return True, self.backend.generate(queries, on_delta)
        except Exception as exc:  # noqa: BLE001
            return False, (describe(exc), bool(getattr(exc, "retryable", False)))

    def generate_stream(self, queries):
        """`generate` as a Ray streaming generator: ("deltas", [Delta, ...]) as the backend
        produces them (whatever piled up since the last item travels together), then
        ("done", generate's result). The backend runs in a thread of its own so its
        per-token callback never waits on Ray."""
        pieces: queue.SimpleQueue = queue.SimpleQueue()
        result: list = []

        def work():
            try:
                result.append(self.generate(queries, pieces.put))
            finally:
                pieces.put(_END)

        threading.Thread(target=work, name="expert-generate", daemon=True).start()
        ended = False
        while not ended:
            batch = [pieces.get()]
            while True:
                try:
                    batch.append(pieces.get_nowait())
                except queue.Empty:
                    break
            ended = batch[-1] is _END  # put last, after every delta
            deltas = [d for d in batch if d is not _END]
            if deltas:
                yield "deltas", deltas
        yield "done", result[0]

    def unload(self) -> float:
        return self.backend.unload() if self.backend is not None else 0.0

    def cancel_queries(self, query_ids) -> None:
        if self.backend is not None:
            self.backend.cancel(query_ids)

    def server_pid(self) -> int | None:
        """pid of the server process the backend started, if any (server backend)."""
        return getattr(self.backend, "pid", None)


class RayExecutor(BaseExecutor):
    """Runs plans on Ray actors. `expert_spec(name)` returns the ExpertSpec of an expert."""

    def __init__(self, expert_spec: Callable, scheduler: Scheduler, *, base_dir: str | None = None,
                 address: str | None = None, num_cpus: float = 2, placement_timeout_s: float = 60.0,
                 load_timeout_s: float | None = None, unload_timeout_s: float = 30.0,
                 call_slack_s: float = 30.0, init_kwargs: dict | None = None):
        self.expert_spec = expert_spec
        self.scheduler = scheduler
        self.base_dir = base_dir
        self.address = address
        self.num_cpus = num_cpus
        self.placement_timeout_s = placement_timeout_s
        self.load_timeout_s = load_timeout_s
        self.unload_timeout_s = unload_timeout_s
        self.call_slack_s = call_slack_s
        self.init_kwargs = init_kwargs or {}
        self._init_state()
        self._actors: dict[str, tuple[object, int]] = {}  # expert -> (handle, pid)
        self._remote: dict[str, object] = {}
        self._actor_cls = None
        self._owns_ray = False
        self._inflight: set[str] = set()  # experts with a call out (interrupted ones stay here)
        self._nodes: dict[str, str] = {}  # expert -> Ray node id of its actor
        if address:  # a cluster: no configured budget means what its nodes hold, not this host's RAM
            scheduler.default_budget = self.cluster_memory

    def cluster_memory(self) -> int:
        """Bytes of Ray's `memory` resource over the cluster's live nodes (what actors may reserve)."""
        return int(self._ray().cluster_resources().get("memory", 0))

    # -- Ray plumbing -----------------------------------------------------------------------
    def _ray(self):
        from composer.offline import ensure_offline

        ensure_offline()
        import ray

        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, **self.init_kwargs)
            if self.address:
                ray.init(address=self.address, **kw)
            else:
                ray.init(num_cpus=self.num_cpus, **kw)
            self._owns_ray = True
        if self._actor_cls is None:
            self._actor_cls = ray.remote(ExpertActor)
        return ray

    def resources_for(self, expert: str) -> dict[str, float]:
        """The Ray resources an expert's actor asks for."""
        spec = self.expert_spec(expert)
        res = {"CPU": float(spec.options.get("num_cpus", DEFAULT_ACTOR_CPUS)),
               "GPU": float(spec.options.get("num_gpus", 0))}
        mem = self.scheduler.footprint(expert)
        if mem > 0:
            res["memory"] = float(mem)
        return res

    def _spawn(self, expert: str):
        ray = self._ray()
        from ray.exceptions import GetTimeoutError

        spec = self.expert_spec(expert)
        need = self.resources_for(expert)
        total = ray.cluster_resources()
        for key, amount in need.items():
            if amount > total.get(key, 0.0):
                raise ExpertLoadError(
                    f"its Ray actor can never be placed: it needs {key}={amount:g} but the cluster has "
                    f"{total.get(key, 0.0):g} in total; lower options.num_cpus/num_gpus or "
                    f"footprint_bytes in experts.yaml, or connect to a larger cluster (--ray-address)",
                    expert=expert)
        # max_concurrency 2: a cancel (or time limit) reaches the backend while it generates
        opts = {"num_cpus": need["CPU"], "num_gpus": need["GPU"], "max_restarts": 0,
                "max_task_retries": 0, "max_concurrency": 2}
        if "memory" in need:
            opts["memory"] = need["memory"]
        actor = self._actor_cls.options(**opts).remote(spec, self.base_dir)
        placement_s = float(spec.options.get("placement_timeout_s", self.placement_timeout_s))
        try:
            pid, node = ray.get(actor.ready.remote(), timeout=placement_s)
        except GetTimeoutError:
            ray.kill(actor)
            raise ExpertLoadError(
                f"its Ray actor could not be placed within {placement_s:g}s (needs "
                f"{ {k: v for k, v in need.items() if v} }; free now: {ray.available_resources()}); "
                "unload other experts, lower the request, or add nodes", expert=expert) from None
        except BaseException as exc:  # e.g. the worker failed to start, or Ctrl-C: never leave it behind
            ray.kill(actor)
            if not isinstance(exc, Exception):
                raise
            raise ExpertLoadError(f"its Ray actor failed to start: {_short(exc)}", expert=expert) from None
        self._nodes[expert] = node
        return actor, pid

    def _make_room(self, expert: str) -> list[str]:
        """The memory budget is one number for the whole cluster; Ray decides per node. When no
        live node has the CPUs, GPUs and memory this expert's actor asks for, unload resident
        experts, least recently used first, from the one node where that frees enough: the
        fewest and oldest. Nothing when some node has room already, or when no such node exists
        (then placement waits and fails as before, with its clear error)."""
        if not self.resident or _ray_if_up() is None:
            return []
        need = {k: v for k, v in self.resources_for(expert).items() if v > 0}
        try:
            from ray._private.state import available_resources_per_node  # DeveloperAPI

            free = {node: dict(res) for node, res in available_resources_per_node().items()}
        except Exception:  # noqa: BLE001 - no per-node view: placement decides, as before
            return []
        if any(_covers(res, need) for res in free.values()):
            return []
        taken: dict[str, list[str]] = {}
        for victim in self.resident:  # least recently used first
            node = self._nodes.get(victim)
            if victim == expert or node is None or node not in free:
                continue
            for key, amount in self.resources_for(victim).items():
                free[node][key] = free[node].get(key, 0.0) + amount
            taken.setdefault(node, []).append(victim)
            if _covers(free[node], need):
                return taken[node]
        return []

    def _load_timeout(self, expert: str) -> float:
        if self.load_timeout_s is not None:
            return self.load_timeout_s
        return float(self.expert_spec(expert).options.get("ready_timeout_s", 120)) + 60.0

    # -- executor hooks ---------------------------------------------------------------------
    def _load(self, expert, events):
        ray = self._ray()
        from ray.exceptions import GetTimeoutError

        t0 = time.perf_counter()
        actor, pid = self._spawn(expert)
        timeout = self._load_timeout(expert)
        try:
            ok, value = ray.get(actor.load.remote(), timeout=timeout)
        except GetTimeoutError:
            ray.kill(actor)
            raise ExpertLoadError(f"load did not finish within {timeout:g}s; the actor was stopped",
                                  expert=expert) from None
        except BaseException as exc:  # the actor died while loading, or Ctrl-C: never leave it behind
            ray.kill(actor)
            if not isinstance(exc, Exception):
                raise
            raise ExpertLoadError(f"its actor died while loading: {_short(exc)}", expert=expert) from None
        if not ok:
            ray.kill(actor)
            raise ExpertLoadError(value)
        self._actors[expert] = (actor, pid)
        return time.perf_counter() - t0

    def _unload(self, expert):
        ray = _ray_if_up()
        t0 = time.perf_counter()
        actor, _ = self._actors.pop(expert, (None, None))
        if actor is not None and ray is not None:
            try:
                ray.get(actor.unload.remote(), timeout=self.unload_timeout_s)
            finally:
                ray.kill(actor)
        return time.perf_counter() - t0

    def _generate(self, expert, queries, events, on_delta=None):
        ray = self._ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        dead = (RayActorError, getattr(ray.exceptions, "ActorUnavailableError", RayActorError))
        spec = self.expert_spec(expert)
        timeout = spec.timeout_s * len(queries) + self.call_slack_s
        streamed: list = []  # deltas already handed on: after one, a crash is not retried
        for attempt in (1, 2):
            actor, pid = self._actors[expert]
            self._inflight.add(expert)
            try:
                if on_delta is None:
                    ok, value = ray.get(actor.generate.remote(queries), timeout=timeout)
                else:
                    ok, value = self._stream(ray, actor, queries, timeout, on_delta, streamed)
                self._inflight.discard(expert)
            except GetTimeoutError:
                self._drop(expert)
                raise ExpertTimeoutError(f"no answer within {timeout:g}s for a batch of {len(queries)} "
                                         "queries; its actor was stopped (raise timeout_s in experts.yaml)",
                                         expert=expert) from None
            except dead as exc:
                events.append({"event": "crash", "expert": expert, "seconds": 0.0, "pid": pid,
                               "error": _short(exc)})
                self._drop(expert)
                if streamed:  # a retry here would send the streamed part again; the runtime
                    # retries (or falls back for) only the batch's queries that streamed nothing
                    raise BackendError(f"its actor crashed after part of the answer was streamed "
                                       f"({_short(exc)}); {len(queries)} queries failed", expert=expert,
                                       retryable=True) from None
                if attempt == 2:
                    raise BackendError(f"its actor crashed again after a restart ({_short(exc)}); "
                                       f"{len(queries)} queries failed", expert=expert, retryable=True) from None
                seconds = self._load(expert, events)  # restart once, then retry the whole batch
                events.append({"event": "load", "expert": expert, "seconds": seconds, "restart": True})
                self.resident.append(expert)
                continue
            if not ok:
                message, retryable = value
                raise BackendError(message, retryable=retryable)
            return value
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _stream(ray, actor, queries, timeout, on_delta, streamed: list):
        """Token streaming out of the actor: hand each delta on as it arrives; generate's
        (ok, value) at the end. The whole call shares one deadline."""
        from ray.exceptions import GetTimeoutError

        gen = actor.generate_stream.options(num_returns="streaming").remote(queries)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _ = ray.wait([gen], timeout=max(left, 0.0))
            if not ready:
                raise GetTimeoutError(f"no answer within {timeout:g}s")
            try:
                ref = next(gen)
            except StopIteration:
                return False, ("its actor's stream ended without an answer", True)
            kind, value = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.001))
            if kind == "done":
                return value
            if value and not streamed:
                streamed.append(True)
            for d in value:
                on_delta(d)

    def _drop(self, expert: str) -> None:
        """Forget (and kill) an expert's actor after a crash or a timeout."""
        actor, _ = self._actors.pop(expert, (None, None))
        if expert in self.resident:
            self.resident.remove(expert)
        ray = _ray_if_up()
        if actor is not None and ray is not None:
            ray.kill(actor)

    def remote_backend(self, expert):
        with self._lock:
            if expert not in self._remote:
                from composer.backends import make_backend

                self._remote[expert] = make_backend(self.expert_spec(expert), base_dir=self.base_dir)
            return self._remote[expert]

    def _placement(self, expert: str) -> dict:
        node = self._nodes.get(expert)
        return {"node": node} if node else {}

    def _stop(self, expert: str, query_ids: list[str]) -> None:
        """A cancel or time limit: the actor's backend stops those generations at the next token."""
        entry = self._actors.get(expert)
        if entry is not None:
            entry[0].cancel_queries.remote(list(query_ids))

    def node_of(self, expert: str) -> str | None:
        """The Ray node id holding a loaded expert (for run reports and placement tests)."""
        return self._nodes.get(expert) if expert in self._actors else None

    # -- lifecycle --------------------------------------------------------------------------
    def actor_pids(self) -> dict[str, int]:
        """expert -> pid of the process holding it (for monitoring and fault tests)."""
        return {name: pid for name, (_, pid) in self._actors.items()}

    def close(self) -> None:
        """Stop every actor (and server process), then Ray itself if this executor started it."""
        try:
            for name in [n for n in self._inflight if n in self._actors]:
                self._drop(name)  # busy (e.g. interrupted by Ctrl-C): a polite unload would queue
            self._inflight.clear()
            if self._actors:
                self.unload_all()
        finally:
            for name in list(self._actors):
                self._drop(name)
            for b in self._remote.values():
                b.unload()
            self._remote.clear()
            if self._owns_ray:
                import ray

                ray.shutdown()
                self._owns_ray = False
                self._actor_cls = None


def _covers(available: dict, need: dict) -> bool:
    return all(available.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def _ray_if_up():
    """The ray module if Ray is running (cleanup must never start a new Ray), else None."""
    import sys

    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def _short(exc: BaseException, n: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:n] if text else ''}"
