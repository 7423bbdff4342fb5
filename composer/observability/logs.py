"""The `composer` logger: one line per runtime event worth a human's (or a collector's) eye.

    configure_logging(fmt="json", level="INFO", log_prompts=False)
    composer.events.subscribe(LogSubscriber())

INFO: route decisions (experts, reason), loads and unloads with durations, retries, fallbacks,
cancels, HTTP requests. WARNING: failed attempts and failed loads. DEBUG: successful attempts,
first tokens, batches. Event fields travel with the record (`record.composer`), so the json
format writes them as keys of one JSON object per line. Credentials are never written; prompts
only with log_prompts (composer/observability/redact.py), applied by a filter on the handler so
that lines from any `composer.*` logger are cleaned too.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from composer.observability.redact import clean_fields, scrub

LOGGER = "composer"
RUNTIME_LOGGER = "composer.runtime"
_HANDLER_TAG = "_composer_handler"
_settings = {"log_prompts": False}  # what configure() chose; LogSubscriber reads it


class RedactFilter(logging.Filter):
    """Scrubs credentials from every record's message and fields; withholds prompts unless allowed."""

    def __init__(self, log_prompts: bool = False):
        super().__init__()
        self.log_prompts = log_prompts

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        record.msg, record.args = scrub(msg), None
        if isinstance(getattr(record, "composer", None), dict):
            record.composer = clean_fields(record.composer, self.log_prompts)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601 UTC), level, logger, msg, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for k, v in (getattr(record, "composer", None) or {}).items():
            if k not in out and k != "t":
                out[k] = v
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(fmt: str = "text", level: str = "INFO", log_prompts: bool = False, stream=None) -> logging.Logger:
    """(Re)configure the `composer` logger's own handler (stderr by default). Idempotent: a second
    call replaces the handler it installed, never adds one."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stderr)
    setattr(h, _HANDLER_TAG, True)
    h.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    h.addFilter(RedactFilter(log_prompts))
    logger.addHandler(h)
    logger.propagate = False  # one line per record, even when the host app configures the root logger
    _settings["log_prompts"] = bool(log_prompts)
    return logger


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _kv(ev: dict, keys) -> str:
    return " ".join(f"{k}={_fmt(ev[k])}" for k in keys if ev.get(k) is not None)


def _message(ev: dict) -> tuple[int, str]:
    """(level, text) of one event's log line."""
    kind = ev.get("event", "?")
    if kind == "route":
        reason = f" reason={ev['reason']!r}" if ev.get("reason") else ""
        return logging.INFO, "route " + _kv(ev, ("query_id", "request_id", "pipeline", "experts", "router")) + reason
    if kind in ("load", "unload", "connect"):
        return logging.INFO, f"{kind} " + _kv(ev, ("expert", "seconds", "node", "restart"))
    if kind == "load_failed":
        return logging.WARNING, "load failed " + _kv(ev, ("expert", "seconds", "error"))
    if kind == "crash":
        return logging.WARNING, "expert process crashed " + _kv(ev, ("expert", "pid", "error"))
    if kind == "attempt":
        if ev.get("ok"):
            return logging.DEBUG, "attempt ok " + _kv(ev, ("query_id", "expert", "seconds", "prompt_tokens",
                                                            "completion_tokens", "cost"))
        return logging.WARNING, "attempt failed " + _kv(ev, ("query_id", "expert", "error_kind", "retryable",
                                                              "seconds", "error"))
    if kind == "retry":
        return logging.INFO, "retry " + _kv(ev, ("query_id", "expert", "error_kind", "delay_s"))
    if kind == "fallback":
        return logging.INFO, "fallback " + _kv(ev, ("query_id", "from_expert", "expert", "error_kind"))
    if kind == "cancel":
        return logging.INFO, "cancel " + _kv(ev, ("query_id", "expert"))
    if kind == "request":
        lvl = logging.WARNING if str(ev.get("status", "200"))[:1] == "5" else logging.INFO
        return lvl, "request " + _kv(ev, ("request_id", "route", "model", "status", "seconds"))
    if kind in ("first_token", "batch"):
        return logging.DEBUG, f"{kind} " + _kv(ev, ("query_id", "expert", "seconds", "size", "wait_s", "queued"))
    return logging.DEBUG, f"{kind} " + _kv(ev, sorted(k for k in ev if k not in ("event", "t")))


class LogSubscriber:
    """An EventSink subscriber writing each event as one line of the `composer.runtime` logger."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(RUNTIME_LOGGER)

    def __call__(self, ev: dict) -> None:
        level, msg = _message(ev)
        if not self.logger.isEnabledFor(level):
            return
        # the text line goes through the same cleaning as the fields (the handler's RedactFilter
        # does it too; doing it here keeps lines clean under a host app's own handlers)
        fields = clean_fields(dict(ev), _settings["log_prompts"])
        self.logger.log(level, scrub(msg), extra={"composer": fields})
