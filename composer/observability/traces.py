"""OpenTelemetry traces built from the runtime's events: request -> route / stage -> expert call.

    provider = provider_from_env()            # None unless OTEL_TRACES_EXPORTER / an OTLP endpoint is set
    sub = TraceSubscriber(provider, experts=composer.experts)
    composer.events.subscribe(sub)

Events arrive as things happen (or, from the interim core, after each batch), and a parent span
must exist before its children, so the subscriber buffers a trace's events and writes its spans,
with the events' own timestamps, when the trace is complete: on the HTTP layer's `request` event
(all queries of that request_id), on an `answer` event for a query without a request, on
`flush()`/`close()`, or once a trace has been idle `idle_s` seconds (a sweeper thread). Routes
without a request_id whose query ids are the endpoint's `<request_id>-<n>` join their request
when its `request` event comes. One trace per request (or per query
when there is no request):

- `composer.request` (root): composer.request_id, http.route, http.response.status_code,
  gen_ai.request.model (the pipeline or expert the client asked for)
- `composer.route` per query: composer.query_id, composer.pipeline, composer.router,
  composer.route.experts, composer.route.reason
- `composer.stage <name>` per query and stage (an attempt event's `stage` field, else the stage in
  an aggregation sub-call's id `<query id>/<stage>/<n>`, else one stage named `call`)
- `chat <model>` per expert call (kind CLIENT), GenAI semantic conventions: gen_ai.operation.name,
  gen_ai.provider.name, gen_ai.request.model, gen_ai.usage.input_tokens/output_tokens, error.type;
  the loads of its expert while the request waited are span events (`load`, seconds), as are
  its first token, and the query's retries, fallbacks and cancels.

Off by default: provider_from_env() follows the standard variables (OTEL_SDK_DISABLED,
OTEL_TRACES_EXPORTER = otlp | console | none | any installed exporter entry point,
OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / _PROTOCOL / _HEADERS, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*). Prompts and completions are never put on spans.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("composer.observability")
_RESIDENCY = ("load", "unload", "load_failed", "connect", "crash", "batch")
_QUERY_EVENTS = ("attempt", "retry", "fallback", "cancel", "first_token")


class TracingUnavailable(RuntimeError):
    """Tracing was asked for (OTEL_* variables) but a package it needs is not installed."""


def tracing_requested(env=None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exp = env.get("OTEL_TRACES_EXPORTER")
    if exp is not None:
        return exp.strip().lower() not in ("", "none")
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def _exporter(name: str, env):
    from importlib.metadata import entry_points

    if name == "otlp":  # the spec's default protocol is http/protobuf; the entry point "otlp" is gRPC
        proto = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                 or "http/protobuf").strip()
        name = "otlp_proto_grpc" if proto == "grpc" else "otlp_proto_http"
    found = [ep for ep in entry_points(group="opentelemetry_traces_exporter") if ep.name == name]
    if not found:
        pkg = {"otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
               "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc"}.get(name, f"the package providing '{name}'")
        raise TracingUnavailable(f"OTEL_TRACES_EXPORTER asks for '{name}' but it is not installed; run: pip install {pkg}")
    return found[0].load()()


def provider_from_env(env=None):
    """A TracerProvider exporting as the OTEL_* variables say, or None when tracing is off."""
    env = os.environ if env is None else env
    if not tracing_requested(env):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable("OTEL_* variables ask for traces but opentelemetry-sdk is not installed; "
                                 "run: pip install opentelemetry-sdk") from exc
    attrs = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "composer"}
    provider = TracerProvider(resource=Resource.create(attrs))
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",") if n.strip()]
    for n in names:
        if n != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(n, env)))
    return provider


def _base(query_id: str) -> str:
    return query_id.split("/", 1)[0]


def _stage(query_id: str) -> str:
    """The stage of an aggregation sub-call id `<query id>/<stage>/...`, else "call"."""
    parts = query_id.split("/")
    return parts[1] if len(parts) > 1 else "call"


def _ns(t: float) -> int:
    return int(t * 1e9)


@dataclass
class _Trace:
    key: str
    request_id: str | None = None
    routes: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    request: dict | None = None
    last: float = field(default_factory=time.time)


_ENDPOINT_ID = re.compile(r"^(chatcmpl|cmpl)-[0-9a-z]+-\d+$")  # the endpoint's query ids: <request_id>-<n>


class TraceSubscriber:
    """An EventSink subscriber that turns each request's events into one OpenTelemetry trace."""

    def __init__(self, tracer_provider, experts: dict | None = None, idle_s: float = 30.0):
        self.tracer = tracer_provider.get_tracer("composer")
        self.experts = experts or {}  # name -> ExpertSpec (model, backend) for gen_ai attributes
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._traces: dict[str, _Trace] = {}
        self._key_of: dict[str, str] = {}  # query_id -> trace key
        self._residency: deque[dict] = deque(maxlen=2000)
        self._stop = threading.Event()
        threading.Thread(target=self._sweep, name="composer-trace-sweeper", daemon=True).start()

    # -- collecting ---------------------------------------------------------------------------
    def __call__(self, ev: dict) -> None:
        kind = ev.get("event")
        done: list[_Trace] = []
        with self._lock:
            if kind in _RESIDENCY:
                self._residency.append(ev)
            elif kind == "route" and ev.get("query_id"):
                key = ev.get("request_id") or ev["query_id"]
                tr = self._trace(key, ev.get("request_id"))
                tr.routes.append(ev)
                self._key_of[ev["query_id"]] = key
            elif kind in _QUERY_EVENTS and ev.get("query_id"):
                qid = _base(ev["query_id"])  # an aggregation sub-call is `<query id>/<stage>/<n>`
                self._trace(self._key_of.setdefault(qid, qid)).events.append(ev)
            elif kind == "request" and ev.get("request_id"):
                rid = ev["request_id"]
                if rid not in self._traces:  # routes without request_id: the endpoint's ids are `<request_id>-<n>`
                    self._merge(rid, [k for k in self._traces if k.startswith(rid + "-")])
                tr = self._trace(rid, rid)
                tr.request = ev
                done.append(self._pop(tr.key))
            elif kind == "answer" and ev.get("query_id"):
                key = self._key_of.get(ev["query_id"], ev["query_id"])
                # a request's traces end with the request; so do the endpoint's `<request_id>-<n>`
                # queries whose routes carried no request_id
                if key == ev["query_id"] and key in self._traces and not _ENDPOINT_ID.match(key):
                    self._traces[key].events.append(ev)
                    done.append(self._pop(key))
            done += self._idle()
        for tr in done:
            self._emit(tr)

    def _idle(self) -> list[_Trace]:
        now = time.time()
        return [self._pop(k) for k, tr in list(self._traces.items()) if now - tr.last > self.idle_s]

    def _merge(self, rid: str, keys: list[str]) -> None:
        if not keys:
            return
        into = self._trace(rid, rid)
        for k in keys:
            tr = self._traces.pop(k)
            into.routes += tr.routes
            into.events += tr.events
            for r in tr.routes:
                self._key_of[r["query_id"]] = rid

    def _sweep(self) -> None:
        """Write traces idle for idle_s even when no further event arrives."""
        while not self._stop.wait(min(self.idle_s / 2, 5.0)):
            with self._lock:
                done = self._idle()
            for tr in done:
                try:
                    self._emit(tr)
                except Exception:  # noqa: BLE001 - one bad trace never stops the sweeper
                    log.exception("could not write trace %s", tr.key)

    def close(self) -> int:
        """Stop the idle sweeper and write every trace still open; returns how many."""
        self._stop.set()
        return self.flush()

    def _trace(self, key: str, request_id: str | None = None) -> _Trace:
        tr = self._traces.get(key)
        if tr is None:
            tr = self._traces[key] = _Trace(key, request_id)
        tr.last = time.time()
        return tr

    def _pop(self, key: str) -> _Trace:
        tr = self._traces.pop(key)
        for r in tr.routes:
            self._key_of.pop(r["query_id"], None)
        for e in tr.events:
            self._key_of.pop(_base(e.get("query_id") or ""), None)
        return tr

    def flush(self) -> int:
        """Write every trace still open; returns how many."""
        with self._lock:
            done = [self._pop(k) for k in list(self._traces)]
        for tr in done:
            self._emit(tr)
        return len(done)

    # -- writing --------------------------------------------------------------------------------
    def _model(self, expert: str) -> tuple[str, str]:
        spec = self.experts.get(expert)
        if spec is None:
            return expert, "composer"
        model, backend = str(spec.model), str(spec.backend)
        if backend == "litellm" and "/" in model:
            return model, model.split("/", 1)[0]
        return model, {"llamacpp": "llama_cpp", "server": "openai_compatible"}.get(backend, backend)

    def _emit(self, tr: _Trace) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        calls = [e for e in tr.events if e["event"] == "attempt"]
        starts = [r["t"] - (r.get("seconds") or 0.0) for r in tr.routes]
        starts += [c["t"] - (c.get("seconds") or 0.0) for c in calls]
        ends = [e["t"] for e in (*tr.routes, *tr.events)]
        if tr.request is not None:
            starts.append(tr.request["t"] - (tr.request.get("seconds") or 0.0))
            ends.append(tr.request["t"])
        if not starts:
            starts = ends
        t0, t1 = min(starts), max(ends)
        req = tr.request or {}
        attrs = {"composer.request_id": tr.request_id or "", "composer.queries": len(tr.routes)}
        if req.get("route"):
            attrs["http.route"] = req["route"]
        if req.get("status") is not None:
            attrs["http.response.status_code"] = int(req["status"])
        model = req.get("model") or next((r.get("pipeline") for r in tr.routes if r.get("pipeline")), None)
        if model:
            attrs["gen_ai.request.model"] = model
        root = self.tracer.start_span("composer.request", start_time=_ns(t0), attributes=attrs, kind=SpanKind.SERVER)
        ctx = set_span_in_context(root)
        for e in tr.events:
            if e["event"] in ("retry", "fallback", "cancel"):
                root.add_event(e["event"], {k: str(v) for k, v in e.items() if k not in ("event", "t") and v is not None},
                               timestamp=_ns(e["t"]))
        for r in tr.routes:
            rs = self.tracer.start_span("composer.route", context=ctx, start_time=_ns(r["t"] - (r.get("seconds") or 0.0)),
                                        attributes={"composer.query_id": r["query_id"],
                                                    "composer.pipeline": r.get("pipeline") or "",
                                                    "composer.router": r.get("router") or "",
                                                    "composer.route.experts": [str(x) for x in r.get("experts") or []],
                                                    "composer.route.reason": r.get("reason") or ""})
            rs.end(end_time=_ns(r["t"]))
        stages: dict[tuple, list[dict]] = {}
        for c in calls:
            qid = c.get("query_id") or ""
            stages.setdefault((_base(qid), str(c.get("stage") or _stage(qid))), []).append(c)
        used_loads: set[int] = set()
        failed_any = False
        for (qid, stage), cs in stages.items():
            s0 = min(c["t"] - (c.get("seconds") or 0.0) for c in cs)
            s1 = max(c["t"] for c in cs)
            ok = any(c.get("ok") for c in cs)
            st = self.tracer.start_span(f"composer.stage {stage}", context=ctx, start_time=_ns(s0),
                                        attributes={"composer.query_id": qid or "", "composer.stage": stage,
                                                    "composer.calls": len(cs)})
            sctx = set_span_in_context(st)
            for c in sorted(cs, key=lambda c: c["t"]):
                failed_any |= not c.get("ok")
                self._call_span(c, sctx, t0, used_loads, tr.events)
            if not ok:
                st.set_status(Status(StatusCode.ERROR, "every call of the stage failed"))
            st.end(end_time=_ns(s1))
        status = req.get("status")
        if (status is not None and int(status) >= 500) or (status is None and failed_any and not any(
                c.get("ok") for c in calls)):
            root.set_status(Status(StatusCode.ERROR))
        root.end(end_time=_ns(t1))

    def _call_span(self, c: dict, ctx, t0: float, used_loads: set[int], query_events: list[dict]) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        expert = c.get("expert") or ""
        model, provider = self._model(expert)
        c0, c1 = c["t"] - (c.get("seconds") or 0.0), c["t"]
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.system": provider,
                 "gen_ai.request.model": model, "composer.expert": expert,
                 "composer.query_id": c.get("query_id") or ""}
        for src, dst in (("prompt_tokens", "gen_ai.usage.input_tokens"), ("completion_tokens", "gen_ai.usage.output_tokens")):
            if c.get(src) is not None:
                attrs[dst] = int(c[src])
        if c.get("cost") is not None:
            attrs["composer.cost_usd"] = float(c["cost"])
        if not c.get("ok"):
            attrs["error.type"] = c.get("error_kind") or "error"
        sp = self.tracer.start_span(f"chat {model}", context=ctx, kind=SpanKind.CLIENT, start_time=_ns(c0),
                                    attributes=attrs)
        for ev in list(self._residency):  # this expert's loads while the request waited for it
            if ev.get("expert") == expert and t0 <= ev["t"] <= c1 + 1e-6 and id(ev) not in used_loads:
                used_loads.add(id(ev))
                sp.add_event(ev["event"], {k: (v if isinstance(v, (int, float, bool)) else str(v))
                                           for k, v in ev.items() if k not in ("event", "t") and v is not None},
                             timestamp=_ns(ev["t"]))
        for ev in query_events:
            if (ev["event"] == "first_token" and ev.get("expert") == expert and ev.get("seconds") is not None
                    and ev.get("query_id") == c.get("query_id")
                    and c0 + ev["seconds"] <= c1 + 1e-6):
                sp.add_event("gen_ai.first_token", {"seconds": float(ev["seconds"])}, timestamp=_ns(c0 + ev["seconds"]))
        if not c.get("ok"):
            sp.set_status(Status(StatusCode.ERROR, str(c.get("error_kind") or "error")))
        sp.end(end_time=_ns(c1))
