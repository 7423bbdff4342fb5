"""Prometheus metrics of the endpoint, in a registry of their own."""


class Metrics:
    """Prometheus metrics in a registry of their own (no module globals)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("composer_requests", "HTTP requests", ["route", "model", "status"], registry=r)
        self.latency = Histogram("composer_request_latency_seconds", "Request latency", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("composer_tokens", "Tokens per expert", ["expert", "kind"], registry=r)
        self.cost = Counter("composer_cost_usd", "Cost in USD per expert", ["expert"], registry=r)
        self.errors = Counter("composer_expert_errors", "Failed expert attempts", ["expert", "error_type"], registry=r)
        self.answers = Counter("composer_expert_answers", "Answers per expert", ["expert"], registry=r)
        self.rejected = Counter("composer_rejected", "Requests refused before running", ["reason"], registry=r)
        self.cancelled = Counter("composer_cancelled", "Requests cancelled by client disconnect", registry=r)
        self.inflight = Gauge("composer_inflight_requests", "Requests in the replica now", registry=r)
        self.loads = Gauge("composer_expert_loads", "Loads of each expert so far", ["expert"], registry=r)
        self.loaded = Gauge("composer_expert_loaded", "1 if the expert is loaded", ["expert"], registry=r)
        self.stopped = Gauge("composer_expert_generations_cancelled",
                             "Generations the backend stopped on cancel (backends with cancel())", ["expert"],
                             registry=r)
        self.available = Gauge("composer_expert_available", "0 while cooling down or busy", ["expert"], registry=r)

    def record_answers(self, answers) -> None:
        for a in answers:
            for c in a.candidates:
                for att in c.metadata.get("attempts", []):
                    if not att.get("skipped"):
                        self.errors.labels(att["expert"], att.get("error_type") or "error").inc()
                if c.ok:
                    self.answers.labels(c.expert).inc()
                    self.tokens.labels(c.expert, "prompt").inc(c.usage.prompt_tokens)
                    self.tokens.labels(c.expert, "completion").inc(c.usage.completion_tokens)
                    self.cost.labels(c.expert).inc(c.usage.cost)


