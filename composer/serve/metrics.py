"""Prometheus metrics of the endpoint, in a registry of their own, fed by the runtime's events.

    m = Metrics(replica="replica-1")
    composer.events.subscribe(m.observe)       # route, load, attempt, retry, batch, ... events
    m.refresh(composer)                        # before each scrape: loaded/available gauges
    generate_latest(m.registry)                # every sample carries replica="replica-1"

Counts are Counters (`*_total`), durations and sizes Histograms; Gauges only hold levels
(in flight now, loaded now, available now, queue depth now). No label ever holds a query id,
a prompt or a key. The HTTP layer (composer/serve/service.py) still feeds `requests`, `latency`,
`rejected`, `cancelled` and `inflight` directly, and `record_answers` counts final answers.
"""

from __future__ import annotations

import threading

_LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT_BUCKETS = (.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_LOAD_BUCKETS = (.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def replica_id() -> str:
    """This ingress replica's name: $COMPOSER_REPLICA, else Ray Serve's replica id when running in
    a replica, else host:pid."""
    import os
    import socket
    import sys

    if os.environ.get("COMPOSER_REPLICA"):
        return os.environ["COMPOSER_REPLICA"]
    if "ray.serve" in sys.modules:  # only look when Ray Serve is already in use
        try:
            from ray import serve

            ctx = serve.get_replica_context()
            rid = getattr(ctx, "replica_id", None)
            return str(getattr(rid, "unique_id", None) or rid or ctx.replica_tag)
        except Exception:  # noqa: BLE001 - not inside a replica
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


class _ReplicaLabelled:
    """A collector that re-exports another registry's samples with a `replica` label added, so
    several ingress replicas scraped behind one address stay distinct series."""

    def __init__(self, inner, replica: str):
        self.inner, self.replica = inner, replica

    def collect(self):
        from prometheus_client.metrics_core import Metric

        for fam in self.inner.collect():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            out.samples = [s._replace(labels={**s.labels, "replica": self.replica}) for s in fam.samples]
            yield out


class Metrics:
    """Prometheus metrics in a registry of their own (no module globals).

    `replica` (optional) is added as a label to every sample of `registry`."""

    def __init__(self, replica: str | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.replica = replica
        self._own = r = CollectorRegistry(auto_describe=True)
        if replica is None:
            self.registry = r
        else:
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(_ReplicaLabelled(r, str(replica)))
        self._lock = threading.Lock()
        self._seen_stopped: dict[str, int] = {}

        # -- the HTTP layer (service.py) ---------------------------------------------------
        self.requests = Counter("composer_requests", "HTTP requests", ["route", "model", "status"], registry=r)
        self.latency = Histogram("composer_request_latency_seconds", "Request latency", ["route"], registry=r,
                                 buckets=_LATENCY_BUCKETS)
        self.rejected = Counter("composer_rejected", "Requests refused before running", ["reason"], registry=r)
        self.cancelled = Counter("composer_cancelled", "Requests cancelled by client disconnect", registry=r)
        self.inflight = Gauge("composer_inflight_requests", "Requests in the replica now", registry=r)
        self.answers_final = Counter("composer_answers", "Final answers by outcome", ["status"], registry=r)

        # -- per expert, from attempt events ---------------------------------------------
        self.tokens = Counter("composer_tokens", "Tokens per expert", ["expert", "kind"], registry=r)
        self.cost = Counter("composer_cost_usd", "Cost in USD per expert", ["expert"], registry=r)
        self.errors = Counter("composer_expert_errors", "Failed expert attempts by error kind",
                              ["expert", "error_type"], registry=r)
        self.answers = Counter("composer_expert_answers", "Successful expert calls", ["expert"], registry=r)
        self.expert_latency = Histogram("composer_expert_latency_seconds", "Latency of one expert call",
                                        ["expert", "outcome"], registry=r, buckets=_LATENCY_BUCKETS)
        self.ttft = Histogram("composer_time_to_first_token_seconds", "Time to first token of an expert call",
                              ["expert"], registry=r, buckets=_LATENCY_BUCKETS)

        # -- routing and reliability -------------------------------------------------------
        self.routes = Counter("composer_route_decisions", "Experts chosen by route decisions",
                              ["pipeline", "expert", "router"], registry=r)
        self.retries = Counter("composer_retries", "Retries of a failed expert call", ["expert", "error_type"],
                               registry=r)
        self.fallbacks = Counter("composer_fallbacks", "Fallbacks to another expert",
                                 ["from_expert", "expert", "error_type"], registry=r)
        self.cancels = Counter("composer_query_cancels", "Queries cancelled in the runtime", ["expert"], registry=r)

        # -- residency -------------------------------------------------------------------------
        self.loads = Counter("composer_expert_loads", "Loads of each expert", ["expert"], registry=r)
        self.unloads = Counter("composer_expert_unloads", "Unloads of each expert", ["expert"], registry=r)
        self.load_failures = Counter("composer_expert_load_failures", "Failed loads of each expert", ["expert"],
                                     registry=r)
        self.load_seconds = Histogram("composer_expert_load_seconds", "Duration of one expert load", ["expert"],
                                      registry=r, buckets=_LOAD_BUCKETS)
        self.loaded = Gauge("composer_expert_loaded", "1 if the expert is loaded", ["expert"], registry=r)
        self.available = Gauge("composer_expert_available", "0 while cooling down or busy", ["expert"], registry=r)
        self.stopped = Counter("composer_expert_generations_cancelled",
                               "Generations the backend stopped on cancel (backends with cancel())", ["expert"],
                               registry=r)

        # -- the stream batcher -----------------------------------------------------------------
        self.batch_size = Histogram("composer_batch_size", "Requests per batch", ["expert"], registry=r,
                                    buckets=_SIZE_BUCKETS)
        self.batch_wait = Histogram("composer_batch_wait_seconds", "Wait of a batch's oldest request",
                                    ["expert"], registry=r, buckets=_WAIT_BUCKETS)
        self.queue_depth = Gauge("composer_batch_queue_depth", "Requests waiting in the batcher", registry=r)

        self.events = Counter("composer_events", "Runtime events seen, by kind", ["event"], registry=r)

    # -- feeding --------------------------------------------------------------------------------
    def observe(self, ev: dict) -> None:
        """One runtime event (composer/runtime/events.py); subscribe this to composer.events."""
        kind = ev.get("event", "")
        handler = getattr(self, f"_on_{kind}", None)
        self.events.labels(kind).inc()
        if handler is not None:
            handler(ev)

    def _on_route(self, ev):
        pipeline = ev.get("pipeline") or "none"
        for e in ev.get("experts") or []:
            self.routes.labels(pipeline, e, ev.get("router") or "").inc()

    def _on_attempt(self, ev):
        e, secs = ev.get("expert") or "", ev.get("seconds")
        if ev.get("ok"):
            self.answers.labels(e).inc()
            self.tokens.labels(e, "prompt").inc(ev.get("prompt_tokens") or 0)
            self.tokens.labels(e, "completion").inc(ev.get("completion_tokens") or 0)
            self.cost.labels(e).inc(ev.get("cost") or 0.0)
        elif not ev.get("skipped"):
            self.errors.labels(e, ev.get("error_kind") or "error").inc()
        if secs is not None and not ev.get("skipped"):
            self.expert_latency.labels(e, "ok" if ev.get("ok") else "error").observe(secs)

    def _on_first_token(self, ev):
        if ev.get("seconds") is not None:
            self.ttft.labels(ev.get("expert") or "").observe(ev["seconds"])

    def _on_retry(self, ev):
        self.retries.labels(ev.get("expert") or "", ev.get("error_kind") or "error").inc()

    def _on_fallback(self, ev):
        self.fallbacks.labels(ev.get("from_expert") or "", ev.get("expert") or "", ev.get("error_kind") or "error").inc()

    def _on_cancel(self, ev):
        self.cancels.labels(ev.get("expert") or "").inc()

    def _on_load(self, ev):
        e = ev.get("expert") or ""
        self.loads.labels(e).inc()
        self.loaded.labels(e).set(1)
        if ev.get("seconds") is not None:
            self.load_seconds.labels(e).observe(ev["seconds"])

    def _on_unload(self, ev):
        e = ev.get("expert") or ""
        self.unloads.labels(e).inc()
        self.loaded.labels(e).set(0)

    def _on_load_failed(self, ev):
        self.load_failures.labels(ev.get("expert") or "").inc()

    def _on_batch(self, ev):
        e = ev.get("expert") or ""
        if ev.get("size") is not None:
            self.batch_size.labels(e).observe(ev["size"])
        if ev.get("wait_s") is not None:
            self.batch_wait.labels(e).observe(ev["wait_s"])
        if ev.get("queued") is not None:
            self.queue_depth.set(ev["queued"])

    def record_answers(self, answers) -> None:
        """Final answers by outcome (per-expert counts come from the attempt events)."""
        for a in answers:
            self.answers_final.labels("ok" if a.ok else "error").inc()

    def refresh(self, composer) -> None:
        """Levels read from the Composer's public state before a scrape: loaded and available per
        expert, and the backends' own count of stopped generations (as counter increments).
        Also makes every expert's per-expert series exist (at 0) before its first event."""
        for name, st in composer.expert_status().items():
            self.loads.labels(name)
            self.errors.labels(name, "error")
            self.loaded.labels(name).set(int(st["loaded"]))
            self.available.labels(name).set(int(st["available"]))
            stopped = st["stopped_generations"]
            with self._lock:
                delta = stopped - self._seen_stopped.get(name, 0)
                self._seen_stopped[name] = max(stopped, self._seen_stopped.get(name, 0))
            self.stopped.labels(name).inc(max(delta, 0))
