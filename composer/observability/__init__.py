"""Logs, traces and metrics, fed by the runtime's event sink (composer/runtime/events.py).

    configure_logging(fmt="text" | "json", level="INFO", log_prompts=False)   # the CLI calls this
    detach = attach(composer)   # logs always; traces when the OTEL_* variables ask for them
                                # (in a fresh process, logging as $COMPOSER_LOG says)
    attach(composer, metrics=m) # also the endpoint's Prometheus metrics (composer/serve/metrics.py)

Every observer is a subscriber of `composer.events`; none reads the runtime's private state.
See docs/observability.md.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import weakref
from typing import Callable

from composer.observability.logs import LogSubscriber, configure as _configure

__all__ = ["attach", "configure_logging"]

log = logging.getLogger("composer.observability")
# A library's logger: silent unless the application (or configure_logging) gives it a handler;
# records still propagate to the application's root handlers.
logging.getLogger("composer").addHandler(logging.NullHandler())
_attached: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # composer -> its detach


ENV = "COMPOSER_LOG"  # the choice, for processes started later (Ray Serve replicas, Ray workers)


def configure_logging(fmt: str = "text", level: str = "INFO", log_prompts: bool = False) -> None:
    """Set up the `composer` logger (stderr). `fmt` is "text" or "json" (one JSON object per
    line); credentials are never logged, prompts only when `log_prompts`. The choice is also
    put in $COMPOSER_LOG, so that `attach` in a process started afterwards (a Ray Serve replica
    holding the endpoint's Composer) logs the same way."""
    _configure(fmt, level, log_prompts)
    os.environ[ENV] = json.dumps({"fmt": fmt, "level": str(level).upper(), "log_prompts": bool(log_prompts)})


def _configure_from_env() -> None:
    """In a process whose `composer` logger nobody configured: the parent's choice, if any."""
    raw = os.environ.get(ENV)
    if not raw or any(getattr(h, "_composer_handler", False) for h in logging.getLogger("composer").handlers):
        return
    try:
        cfg = json.loads(raw)
        _configure(cfg.get("fmt", "text"), cfg.get("level", "INFO"), bool(cfg.get("log_prompts", False)))
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s=%r: %s", ENV, raw, exc)


def attach(composer, *, metrics=None, tracer_provider=None) -> Callable[[], None]:
    """Subscribe this process's observers to `composer.events`: the log lines always, an
    OpenTelemetry trace per request when `tracer_provider` is given or the OTEL_* variables turn
    tracing on, and `metrics.observe` when `metrics` (a composer.serve.metrics.Metrics) is given.
    Returns a function that unsubscribes them and writes any trace still open. A second call for
    the same Composer adds only its `metrics` (logs and traces are attached once)."""
    from composer.observability.traces import TraceSubscriber, provider_from_env

    if composer in _attached:
        if metrics is None:
            return _attached[composer]
        unsub = composer.events.subscribe(metrics.observe)
        first = _attached[composer]

        def both() -> None:
            unsub()
            first()

        return both
    _configure_from_env()
    unsubs = [composer.events.subscribe(LogSubscriber())]
    if metrics is not None:
        unsubs.append(composer.events.subscribe(metrics.observe))
    owned = tracer_provider is None
    provider = tracer_provider if tracer_provider is not None else provider_from_env()
    traces = None
    if provider is not None:
        traces = TraceSubscriber(provider, experts=composer.experts)
        unsubs.append(composer.events.subscribe(traces))
        log.info("tracing on: one trace per request (%s)", "OTEL_* environment" if owned else "given provider")

    done = []

    def detach() -> None:
        if done:
            return
        done.append(True)
        _attached.pop(composer, None)
        for u in unsubs:
            u()
        if traces is not None:
            traces.close()
            if owned:
                provider.shutdown()  # flushes the batch processor's exporter
            atexit.unregister(detach)

    _attached[composer] = detach
    if traces is not None:
        atexit.register(detach)  # the CLI's one-shot commands end before an idle trace would be written
    return detach
