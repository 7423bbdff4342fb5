"""The one core: Composer owns route -> schedule -> execute -> aggregate.

The CLI, the SDK and the HTTP endpoint are thin shells over this class; nothing else
re-implements any step of the path.

    >>> c = Composer.from_yaml("experts.yaml")
    >>> c.ask("What is the capital of France?").text
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterable

from composer.aggregation import make_aggregator
from composer.backends import make_backend
from composer.backends.base import Backend
from composer.config import ExpertSpec, PipelineSpec, RegistryConfig, load_config
from composer.errors import BadRequestError, RoutingError
from composer.executors import LocalExecutor
from composer.scheduler import Scheduler
from composer.runtime.events import EventSink
from composer.types import Answer, Delta, Query, RouteDecision


def _batched_stage(batcher):
    """A stage runner over a StreamBatcher: each item joins its expert's next batch."""

    def run_stage(work, upcoming=None):
        from composer.executors import StageResult  # noqa: PLC0415

        t0 = time.perf_counter()
        futures = [batcher.submit(w.query, w.expert) for w in work]
        cands = [f.result() for f in futures]
        events, seen = [], set()
        for c in cands:  # each batch's load/unload events, once per batch
            evs = c.metadata.pop("batch_events", [])
            if id(evs) not in seen:
                seen.add(id(evs))
                events.extend(evs)
        return StageResult(cands, events, time.perf_counter() - t0)

    return run_stage


class Composer:
    """Routes queries to experts, schedules and runs them, and aggregates their answers.

    `executor` is "local" (in-process) or "ray"; `memory_budget` (bytes) bounds the experts
    resident at once (default: experts.yaml's settings, else available RAM).
    """

    def __init__(self, config: RegistryConfig, *, base_dir: str | Path | None = None,
                 executor: str | None = None, memory_budget: int | None = None,
                 ray_address: str | None = None, reliability=None):
        self.config = config
        self.base_dir = str(base_dir) if base_dir is not None else None
        self.executor_kind = executor or config.settings.executor
        self.memory_budget = memory_budget or config.settings.memory_budget_bytes
        self.ray_address = ray_address or config.settings.ray_address
        self._experts = {e.name: e for e in config.experts}
        self._pipelines = {p.name: p for p in config.pipelines}
        self._backends: dict[str, Backend] = {}
        self._routers: dict[str, Any] = {}
        self._specialists: dict[str, Any] = {}
        self._executor = None
        self._reliability = reliability  # composer.reliability.Reliability; default made on first use
        self._batcher = None  # composer.stream.StreamBatcher once stream_mode() is on (server)
        self._lock = threading.RLock()
        self.events = EventSink()  # every load, unload, attempt, cancel... (composer/runtime/events.py)

    @classmethod
    def from_yaml(cls, path: str | Path, **kw) -> "Composer":
        p = Path(path)
        return cls(load_config(p), base_dir=p.resolve().parent, **kw)

    # -- registry ---------------------------------------------------------------------------
    @property
    def experts(self) -> dict[str, ExpertSpec]:
        return dict(self._experts)

    @property
    def pipelines(self) -> dict[str, PipelineSpec]:
        return dict(self._pipelines)

    def expert_spec(self, name: str) -> ExpertSpec:
        try:
            return self._experts[name]
        except KeyError:
            raise BadRequestError(f"unknown expert '{name}'; known: {', '.join(self._experts)}") from None

    def backend(self, name: str) -> Backend:
        b = self._backends.get(name)  # lock-free when cached: stage workers call this (see reliability)
        if b is not None:
            return b
        with self._lock:
            if name not in self._backends:
                self._backends[name] = make_backend(self.expert_spec(name), base_dir=self.base_dir)
            return self._backends[name]

    def default_expert(self) -> str:
        return self.config.settings.default_expert or self.config.experts[0].name

    @property
    def executor(self):
        with self._lock:
            if self._executor is None:
                self._executor = self._make_executor()
            return self._executor

    def _make_executor(self):
        footprints = {n: self.backend(n).footprint for n in self._experts}
        remote = frozenset(n for n in self._experts if self.backend(n).remote)
        # None: the scheduler measures free GPU memory where there is a GPU, else available RAM.
        scheduler = Scheduler(footprints, self.memory_budget, remote)
        if self.executor_kind == "ray":
            from composer.executors import RayExecutor  # noqa: PLC0415 - Ray loads only when asked

            return RayExecutor(self.expert_spec, scheduler, base_dir=self.base_dir, address=self.ray_address)
        return LocalExecutor(self.backend, scheduler)

    @property
    def reliability(self):
        """Timeouts, retries, fallbacks, cooldowns for every stage (composer/reliability.py)."""
        if self._reliability is not None:  # lock-free: cancel() comes from other threads mid-run
            return self._reliability
        with self._lock:
            if self._reliability is None:
                from composer.reliability import Reliability  # noqa: PLC0415

                self._reliability = Reliability(self.experts, get_backend=self.backend,
                                                **self.config.settings.reliability.model_dump())
            return self._reliability

    # -- routing ----------------------------------------------------------------------------
    def _as_queries(self, queries: Iterable[Query | str]) -> list[Query]:
        out = []
        for q in queries:
            if isinstance(q, str):
                q = Query(q)
            if not isinstance(q, Query):
                raise BadRequestError(f"expected a Query or a string, got {type(q).__name__}")
            out.append(q)
        ids = [q.id for q in out]
        if len(set(ids)) != len(ids):
            raise BadRequestError("query ids in one batch must be unique")
        return out

    def pipeline(self, name: str) -> PipelineSpec:
        try:
            return self._pipelines[name]
        except KeyError:
            raise BadRequestError(f"unknown pipeline '{name}'; known: {', '.join(self._pipelines) or '(none)'}") from None

    def router_for(self, p: PipelineSpec):
        """The fitted router of a pipeline (loaded once from its saved state)."""
        with self._lock:
            if p.name not in self._routers and p.profile == "declared_skills":
                from composer.declared_skills import fit_declared  # noqa: PLC0415

                self._routers[p.name] = fit_declared(p, self._experts)
            if p.name not in self._routers:
                from routers import load_router  # noqa: PLC0415 - routers load embedders lazily

                path = p.router_path
                if path and self.base_dir and not Path(path).is_absolute():
                    path = str(Path(self.base_dir) / path)
                self._routers[p.name] = load_router(p.router, path, experts=p.experts or None, **p.params)
            return self._routers[p.name]

    def route(self, queries: Iterable[Query | str], *, expert: str | None = None,
              pipeline: str | None = None) -> list[RouteDecision]:
        qs = self._as_queries(queries)
        if expert is not None and pipeline is not None:
            raise BadRequestError("give an expert or a pipeline, not both")
        if pipeline is not None:
            p = self.pipeline(pipeline)
            if p.router is None:
                experts = p.experts[: max(p.k, 1)] if p.aggregator.kind != "self_moa" else p.experts[:1]
                return [RouteDecision(q.id, list(experts), aggregator=p.aggregator.kind,
                                      aggregator_expert=p.aggregator.expert,
                                      reason=f"pipeline '{p.name}' uses fixed experts", router="fixed")
                        for q in qs]
            decisions = self.router_for(p).route(qs, k=p.k)
            for d in decisions:
                unknown = [e for e in d.experts if e not in self._experts]
                if unknown:
                    raise RoutingError(f"router of pipeline '{p.name}' chose unknown expert(s) {unknown}; "
                                       "train it on outcomes whose expert names match experts.yaml")
                if d.aggregator is None:
                    d.aggregator = p.aggregator.kind
                if d.aggregator_expert is None:
                    d.aggregator_expert = p.aggregator.expert
            return decisions
        name = expert or self.default_expert()
        self.expert_spec(name)
        why = "requested expert" if expert else "registry default expert"
        return [RouteDecision(q.id, [name], reason=why, router="fixed") for q in qs]

    # -- the path ---------------------------------------------------------------------------
    def run(self, queries: Iterable[Query | str], *, expert: str | None = None,
            pipeline: str | None = None) -> list[Answer]:
        """Answer a batch. Failures are per query (Answer.error), never a silent partial result."""
        qs = self._as_queries(queries)
        if not qs:
            return []
        decisions = self.route(qs, expert=expert, pipeline=pipeline)
        for q, d in zip(qs, decisions):
            self.events.emit("route", query_id=q.id, pipeline=pipeline, experts=list(d.experts),
                             reason=d.reason, router=d.router)
        if pipeline is not None:
            a = self.pipeline(pipeline).aggregator
            aggregator = make_aggregator(a.kind, a.expert, registry=self.expert_spec, **a.params)
        else:
            aggregator = make_aggregator("none")
        p_spec = self._pipelines.get(pipeline or "")
        if self._batcher is not None:  # stream mode: concurrent runs share batches by expert
            answers = aggregator.run(qs, decisions, self.reliability.wrap(
                _batched_stage(self._batcher), p_spec, self._pipelines))
        else:
            with self._lock:  # one batch at a time owns the executor's residency
                run_stage = self.reliability.wrap(self.executor.run_stage, p_spec, self._pipelines)
                answers = aggregator.run(qs, decisions, run_stage)
        for a in answers:  # interim: stage events until the runtime emits them as they happen
            for st in a.stages:
                for ev in st.get("events", []) or st.get("batch", {}).get("events", []):
                    self.events.emit(ev["event"], **{k: v for k, v in ev.items() if k != "event"})
            for c in a.candidates:
                self.events.emit("attempt", expert=c.expert, query_id=a.query_id, ok=c.ok,
                                 error_kind=(c.metadata or {}).get("error_type"), seconds=c.usage.latency_s,
                                 prompt_tokens=c.usage.prompt_tokens, completion_tokens=c.usage.completion_tokens,
                                 cost=c.usage.cost)
        if len(answers) != len(qs):
            raise RuntimeError(f"aggregator '{aggregator.kind}' returned {len(answers)} answers for {len(qs)} queries")
        return answers

    def ask(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None,
            **generation) -> Answer:
        """Answer one question. `generation` may set max_tokens, temperature, stop, seed."""
        q = question if isinstance(question, Query) else Query(question, **generation)
        return self.run([q], expert=expert, pipeline=pipeline)[0]

    def run_work(self, work: list, upcoming: list[set[str]] | None = None):
        """One scheduled stage of explicit (query, expert) calls, with the reliability policy:
        `work` is a list of composer.scheduler.WorkItem; returns a StageResult whose candidates
        are aligned with `work` (e.g. every expert on every prompt, for `composer collect`)."""
        if self._batcher is not None:
            return self.reliability.wrap(_batched_stage(self._batcher))(list(work), upcoming)
        with self._lock:
            return self.reliability.wrap(self.executor.run_stage)(list(work), upcoming)

    def stream(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None):
        """Answer one question as it is generated: yields Delta objects (text pieces, tool-call
        deltas, the finish reason) and, last, the finished Answer (usage, route, stages)."""
        q = question if isinstance(question, Query) else Query(question)
        answer = self.run([q], expert=expert, pipeline=pipeline)[0]
        if answer.ok:
            yield Delta(q.id, answer.experts[0] if answer.experts else "", answer.text,
                        tool_calls=answer.tool_calls, finish_reason=answer.finish_reason or "stop")
        yield answer

    async def astream(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None):
        """`stream` for asyncio: an async generator of the same Delta objects, then the Answer.
        Closing it early (client gone) cancels the generation."""
        import asyncio  # noqa: PLC0415

        items = await asyncio.to_thread(lambda: list(self.stream(question, expert=expert, pipeline=pipeline)))
        for it in items:
            yield it

    def cancel(self, query_ids) -> None:
        """Stop these queries wherever they are (queued, generating, waiting for a retry)."""
        self.reliability.cancel(list(query_ids))

    def stream_mode(self, *, max_wait_s: float = 0.5, max_batch: int = 32):
        """Server mode: from now on concurrent `run` calls are batched by expert through one
        StreamBatcher (composer/stream.py) instead of taking turns. Returns the batcher."""
        with self._lock:
            if self._batcher is None:
                from composer.stream import StreamBatcher  # noqa: PLC0415

                self._batcher = StreamBatcher(self.executor, max_wait_s=max_wait_s, max_batch=max_batch)
            return self._batcher

    # -- specialists ------------------------------------------------------------------------
    def specialist_for(self, task: str | None = None, name: str | None = None):
        from composer.specialists import load_specialist  # noqa: PLC0415 - torch loads lazily

        specs = self.config.specialists
        match = [s for s in specs if (name is None or s.name == name) and (task is None or s.task == task)]
        if not match:
            known = ", ".join(f"{s.name} (task {s.task})" for s in specs) or "(none)"
            raise BadRequestError(f"no specialist for task={task!r} name={name!r}; known: {known}")
        spec = match[0]
        with self._lock:
            if spec.name not in self._specialists:
                self._specialists[spec.name] = load_specialist(spec, base_dir=self.base_dir)
            return spec, self._specialists[spec.name]

    def predict(self, payload: dict, *, task: str | None = None, specialist: str | None = None) -> dict:
        """Route a structured request to the specialist registered for its task type."""
        from composer.specialists import predict_request  # noqa: PLC0415

        spec, model = self.specialist_for(task, specialist)
        out = predict_request(model, payload)
        return {"specialist": spec.name, "task": spec.task, **out}

    # -- lifecycle --------------------------------------------------------------------------
    def loaded_experts(self) -> list[str]:
        return [n for n, b in self._backends.items() if b.is_loaded]

    def close(self) -> None:
        """Unload every expert and stop every server/actor. Safe to call twice."""
        with self._lock:
            if self._batcher is not None:
                self._batcher.close()  # serves what is queued, then stops
                self._batcher = None
            if self._executor is not None:
                self._executor.close()
                self._executor = None
            for b in self._backends.values():
                b.unload()

    def __enter__(self) -> "Composer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
