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
from composer.types import Answer, Query, RouteDecision


def _finish_answer(a: Answer) -> None:
    """Carry the answering candidate's finish reason, tool calls and logprobs onto the Answer,
    and the typed error of a failed one."""
    if a.ok:
        src = next((c for c in a.candidates if c.ok and c.text == a.text and
                    c.metadata.get("role", "aggregator") == "aggregator"), None) \
            or next((c for c in a.candidates if c.ok and c.text == a.text), None)
        if src is not None:
            a.finish_reason = a.finish_reason or src.finish_reason
            a.tool_calls = a.tool_calls if a.tool_calls is not None else src.tool_calls
            a.logprobs = a.logprobs if a.logprobs is not None else src.logprobs
    elif a.call_error is None:
        failed = [c.call_error for c in a.candidates if c.call_error is not None]
        a.call_error = failed[-1] if failed else None


class Composer:
    """Routes queries to experts, schedules and runs them, and aggregates their answers.

    `executor` is "local" (in-process) or "ray"; `memory_budget` (bytes) bounds the experts
    resident at once (default: experts.yaml's settings, else available RAM).
    """

    def __init__(self, config: RegistryConfig, *, base_dir: str | Path | None = None,
                 executor: str | None = None, memory_budget: int | None = None,
                 ray_address: str | None = None, reliability=None, reliability_overrides: dict | None = None):
        self.config = config
        self.base_dir = str(base_dir) if base_dir is not None else None
        self.executor_kind = executor or config.settings.executor
        self.memory_budget = memory_budget or config.settings.memory_budget_bytes
        self.ray_address = ray_address or config.settings.ray_address
        # context and prices of litellm experts from litellm's model map where experts.yaml omits them
        from composer.backends.model_info import with_model_info  # noqa: PLC0415

        self._experts = {e.name: with_model_info(e) for e in config.experts}
        self._pipelines = {p.name: p for p in config.pipelines}
        self._backends: dict[str, Backend] = {}
        self._routers: dict[str, Any] = {}
        self._specialists: dict[str, Any] = {}
        self._executor = None
        self._reliability = reliability  # composer.runtime.policy.Reliability; default made on first use
        self._reliability_overrides = dict(reliability_overrides or {})  # e.g. `composer serve --retries`
        self._batcher = None  # composer.stream.StreamBatcher once stream_mode() is on (server)
        self._runtime = None  # composer.runtime.runtime.Runtime, made on first use
        self._responses = None  # composer.feedback.FeedbackStore, made on first use
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
            from composer.ray_executor import RayExecutor  # noqa: PLC0415 - Ray loads only when asked

            return RayExecutor(self.expert_spec, scheduler, base_dir=self.base_dir, address=self.ray_address)
        return LocalExecutor(self.backend, scheduler)

    @property
    def reliability(self):
        """Retries, fallbacks, cooldowns for every stage (composer/runtime/policy.py)."""
        if self._reliability is not None:  # lock-free: cancel() comes from other threads mid-run
            return self._reliability
        with self._lock:
            if self._reliability is None:
                from composer.runtime.policy import Reliability  # noqa: PLC0415

                self._reliability = Reliability(self.experts, **{**self.config.settings.reliability.model_dump(),
                                                                  **self._reliability_overrides})
            return self._reliability

    @property
    def runtime(self):
        """Scheduler, executor, policy, event sink and event loop: where every stage runs."""
        if self._runtime is not None:
            return self._runtime
        with self._lock:
            if self._runtime is None:
                from composer.runtime.runtime import Runtime  # noqa: PLC0415

                self._runtime = Runtime(self.executor, self.reliability, self.events)
            return self._runtime

    def _stage_runner(self, pipeline: str | None = None, on_delta=None):
        """The `run_stage(work, upcoming)` every aggregator gets: one runtime stage with the
        policy (and the pipeline's fallbacks). With `on_delta`, the final stage of a single
        query streams (the stage with nothing after it and one call)."""
        p_spec = self._pipelines.get(pipeline or "")
        extra = self.reliability.pipeline_chain(p_spec, self._pipelines) if p_spec is not None else []
        runtime = self.runtime

        def run_stage(work, upcoming=None):
            stream = on_delta is not None and not upcoming and len(work) == 1
            return runtime.run_stage(work, upcoming, extra_fallbacks=extra, on_delta=on_delta if stream else None)

        return run_stage

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
                from composer.routers import load_router  # noqa: PLC0415 - routers load embedders lazily

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
            # RouteLLM's router-<pipeline>-<threshold>: the request's cost knob (the router's lam)
            lams = {q.metadata.get("threshold") for q in qs} - {None}
            knob = {"lam": float(lams.pop())} if len(lams) == 1 else {}
            decisions = self.router_for(p).route(qs, k=p.k, **knob)
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
            pipeline: str | None = None, on_delta=None,
            decisions: list[RouteDecision] | None = None) -> list[Answer]:
        """Answer a batch. Failures are per query (Answer.error), never a silent partial result.
        Concurrent calls are safe: the runtime serialises only what shares residency.
        `decisions` (one per query, e.g. from `route()` and edited) skips routing."""
        qs = self._as_queries(queries)
        if not qs:
            return []
        if decisions is None:
            decisions = self.route(qs, expert=expert, pipeline=pipeline)
        elif len(decisions) != len(qs) or any(d.query_id != q.id for d, q in zip(decisions, qs)):
            raise BadRequestError("give one RouteDecision per query, in the same order (matching query_id)")
        else:
            for d in decisions:
                for e in d.experts:
                    self.expert_spec(e)
        t_run = time.perf_counter()
        for q, d in zip(qs, decisions):
            self.events.emit("route", query_id=q.id, request_id=q.metadata.get("request_id"), pipeline=pipeline,
                             experts=list(d.experts), reason=d.reason, router=d.router)
        if pipeline is not None:
            a = self.pipeline(pipeline).aggregator
            aggregator = make_aggregator(a.kind, a.expert, registry=self.expert_spec, **a.params)
        else:
            aggregator = make_aggregator("none")
        answers = aggregator.run(qs, decisions, self._stage_runner(pipeline, on_delta))
        if len(answers) != len(qs):
            raise RuntimeError(f"aggregator '{aggregator.kind}' returned {len(answers)} answers for {len(qs)} queries")
        for a in answers:
            _finish_answer(a)
            self.events.emit("answer", query_id=a.query_id, ok=a.ok, experts=list(a.experts),
                             error_kind=a.call_error.kind if a.call_error else None,
                             seconds=time.perf_counter() - t_run)
        return answers

    async def arun(self, queries: Iterable[Query | str], *, expert: str | None = None,
                   pipeline: str | None = None) -> list[Answer]:
        """`run` for asyncio callers (the endpoint)."""
        from composer.runtime.streaming import arun  # noqa: PLC0415

        return await arun(self, list(queries), expert=expert, pipeline=pipeline)

    def ask(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None,
            **generation) -> Answer:
        """Answer one question. `generation` may set max_tokens, temperature, stop, seed."""
        q = question if isinstance(question, Query) else Query(question, **generation)
        return self.run([q], expert=expert, pipeline=pipeline)[0]

    def run_work(self, work: list, upcoming: list[set[str]] | None = None):
        """One scheduled stage of explicit (query, expert) calls, with the reliability policy:
        `work` is a list of composer.scheduler.WorkItem; returns a StageResult whose candidates
        are aligned with `work` (e.g. every expert on every prompt, for `composer collect`)."""
        return self.runtime.run_stage(list(work), upcoming)

    def stream(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None,
               decision: RouteDecision | None = None):
        """Answer one question as it is generated: yields Delta objects (text pieces, tool-call
        deltas) as the expert produces them and, last, the finished Answer (usage, route,
        stages). Closing the generator early cancels the generation. `decision`: a route already
        made for this query (from `route()`), so it is not routed twice."""
        from composer.runtime.streaming import stream_answer  # noqa: PLC0415

        q = question if isinstance(question, Query) else Query(question)
        return stream_answer(self, q, expert=expert, pipeline=pipeline, decision=decision)

    def astream(self, question: Query | str, *, expert: str | None = None, pipeline: str | None = None,
                decision: RouteDecision | None = None):
        """`stream` for asyncio: an async generator of the same Delta objects, then the Answer.
        Closing it early (client gone) cancels the generation."""
        from composer.runtime.streaming import astream_answer  # noqa: PLC0415

        q = question if isinstance(question, Query) else Query(question)
        return astream_answer(self, q, expert=expert, pipeline=pipeline, decision=decision)

    def cancel(self, query_ids) -> None:
        """Stop these queries wherever they are (queued, generating, waiting for a retry): a
        remote call's connection is closed, a local generation ends at the next token."""
        self.runtime.cancel(list(query_ids))

    def forget(self, query_ids) -> None:
        """Drop the cancellation marks of finished queries (bounded memory)."""
        self.runtime.forget(list(query_ids))

    def submit_local(self, q: Query, expert: str, on_delta=None):
        """One attempt of one call on a local expert, through the stream batcher (server mode):
        a Future of its Candidate. This is how the ExpertHost serves every ingress replica."""
        self.expert_spec(expert)
        return self.stream_mode().submit(q, expert, on_delta)

    def expert_status(self) -> dict[str, dict]:
        """Per expert: loaded, loads, available (not cooling down), failure counts and the
        generations its backend stopped on cancel: what /metrics and /readyz report."""
        health = self.reliability.status()
        out = {}
        for name in self._experts:
            b = self.backend(name)
            out[name] = {"available": True, **health.get(name, {}), "loaded": b.is_loaded, "loads": b.load_count,
                         "stopped_generations": int(getattr(b, "cancelled_queries", 0) or 0)}
        return out

    def retry_after_s(self) -> float:
        """Seconds until the soonest cooling-down expert is back (0 when none is cooling down)."""
        return self.reliability.retry_after_s()

    def local_stats(self) -> dict:
        """Loads per local expert and what is resident, wherever the local experts live (this
        process, or the ExpertHost that serves every replica)."""
        host = getattr(self.runtime.batcher, "host_stats", None)
        if host is not None:
            return {**host(), "owner": "expert-host"}
        return {"loads": {n: self.backend(n).load_count for n in self._experts if not self.backend(n).remote},
                "resident": list(self.executor.resident), "owner": "this replica"}

    def use_expert_host(self, handle) -> None:
        """Hand every local call to the ExpertHost deployment behind `handle` (several ingress
        replicas share one owner of the local experts; composer/serve/host.py)."""
        from composer.serve.host import RemoteBatcher  # noqa: PLC0415

        self.runtime.batcher = RemoteBatcher(handle)

    def stream_mode(self, *, max_wait_s: float = 0.5, max_batch: int = 32):
        """Server mode: from now on concurrent `run` calls are batched by expert through one
        StreamBatcher (composer/stream.py) instead of taking turns. Returns the batcher."""
        with self._lock:
            if self._batcher is None:
                from composer.stream import StreamBatcher  # noqa: PLC0415

                self._batcher = StreamBatcher(self.executor, max_wait_s=max_wait_s, max_batch=max_batch,
                                              sink=self.events)
                self.runtime.batcher = self._batcher
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

    def feedback(self, response_id: str, score: float, *, choice: int = 0, comment: str | None = None) -> dict:
        """Record a score in [0, 1] for a past endpoint response (its route, experts, prompt and
        cost were logged with it) into this registry's feedback store (composer/feedback.py);
        `composer router train --outcomes <store>` retrains on it. Raises FeedbackError
        (.status 404 unknown id, 409 duplicate, 400 bad score)."""
        return self.responses.record(response_id, score, choice=choice, comment=comment)

    @property
    def responses(self):
        """This registry's response log and feedback store (composer/feedback.py): one store, so
        the endpoint's log and the feedback share one SQLite connection per process."""
        with self._lock:
            if self._responses is None:
                from composer.feedback import FeedbackStore, default_path  # noqa: PLC0415

                self._responses = FeedbackStore(default_path(self.base_dir))
            return self._responses

    # -- lifecycle --------------------------------------------------------------------------
    def loaded_experts(self) -> list[str]:
        return [n for n, b in self._backends.items() if b.is_loaded]

    def close(self) -> None:
        """Unload every expert and stop every server/actor. Safe to call twice."""
        with self._lock:
            if self._batcher is not None:
                self._batcher.close()  # serves what is queued, then stops
                self._batcher = None
                if self._runtime is not None:
                    self._runtime.batcher = None
            self._runtime = None
            if self._executor is not None:
                self._executor.close()
                self._executor = None
            for b in self._backends.values():
                b.unload()
            if self._responses is not None:
                self._responses.close()

    def __enter__(self) -> "Composer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
