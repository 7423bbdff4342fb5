"""Typed call errors: how a failed expert call is described from the backend to the client.

A failed Candidate carries `call_error` (composer.types.CallError: kind, retryable, HTTP status,
message); `failure(...)` builds one. `from_exception(exc)` maps composer's, litellm's and the
openai client's exception classes (by class, not by message) onto a CallError. The policy
(composer/runtime/policy.py) decides retries and fallbacks from the kind alone.
"""

from __future__ import annotations

from composer.types import CallError, Candidate, Usage

# kind -> (retryable by default, HTTP status a client sees)
KINDS: dict[str, tuple[bool, int]] = {
    "timeout": (True, 504),
    "rate_limit": (True, 429),
    "unavailable": (True, 503),
    "bad_request": (False, 400),
    "context_overflow": (False, 400),
    "cancelled": (False, 499),
    "load": (False, 503),
    "over_budget": (False, 507),
    "exhausted": (False, 503),
    "not_recorded": (False, 404),
    "error": (False, 502),
}


def call_error(kind: str, message: str, *, retryable: bool | None = None, status: int | None = None) -> CallError:
    default_retry, default_status = KINDS.get(kind, (False, 502))
    if kind in ("bad_request", "context_overflow", "cancelled"):
        retryable = False  # another try of the same request cannot help
    return CallError(kind, message, default_retry if retryable is None else bool(retryable),
                     default_status if status is None else int(status))


def failure(query_id: str, expert: str, kind: str, message: str, *, retryable: bool | None = None,
            status: int | None = None, usage: Usage | None = None, **metadata) -> Candidate:
    """A failed Candidate whose `error` is the message and `call_error` the typed error."""
    err = call_error(kind, message, retryable=retryable, status=status)
    return Candidate(query_id, expert, "", usage or Usage(), error=message, metadata=dict(metadata),
                     call_error=err)


def kind_of(c: Candidate) -> CallError:
    """The CallError of a failed candidate (an untyped failure is a non-retryable 'error')."""
    if c.call_error is not None:
        return c.call_error
    return call_error("error", c.error or "failed")


def _status(exc: BaseException) -> int | None:
    s = getattr(exc, "status_code", None)
    if isinstance(s, int):
        return s
    resp = getattr(exc, "response", None)
    s = getattr(resp, "status_code", None)
    return s if isinstance(s, int) else None


def from_exception(exc: BaseException) -> CallError:
    """A CallError for an exception raised by a backend, litellm or the openai client."""
    from composer.errors import (BackendError, ContextOverflowError, ExpertLoadError,  # noqa: PLC0415
                                 ExpertTimeoutError)

    msg = str(exc).split("\n")[0][:500] or type(exc).__name__
    if isinstance(exc, ContextOverflowError):
        return call_error("context_overflow", msg)
    if isinstance(exc, ExpertTimeoutError) or isinstance(exc, TimeoutError):
        return call_error("timeout", msg)
    if isinstance(exc, ExpertLoadError):
        return call_error("load", msg)
    if isinstance(exc, BackendError):
        return call_error("error", msg, retryable=exc.retryable)
    if getattr(exc, "code", None) == "context_length_exceeded":  # OpenAI's error code (openai client)
        return call_error("context_overflow", msg)
    for kind, classes in _provider_classes():
        if isinstance(exc, classes):
            return call_error(kind, msg, status=_status(exc) if kind in ("bad_request",) else None)
    status = _status(exc)
    if status is not None:
        if status == 429:
            return call_error("rate_limit", msg)
        if status >= 500:
            return call_error("unavailable", msg, status=503)
        if 400 <= status < 500:
            return call_error("bad_request", msg, status=status)
    if isinstance(exc, (ConnectionError, OSError)):
        return call_error("unavailable", msg)
    return call_error("error", f"{type(exc).__name__}: {msg}", retryable=True)


_CLASSES: list | None = None


def _provider_classes() -> list:
    """(kind, exception classes) of litellm and openai, most specific first; loaded once."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    out: list = []
    groups = {
        "context_overflow": ["ContextWindowExceededError"],
        "timeout": ["Timeout", "APITimeoutError"],
        "rate_limit": ["RateLimitError"],
        "unavailable": ["APIConnectionError", "ServiceUnavailableError", "InternalServerError",
                        "BadGatewayError"],
        "bad_request": ["BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
                        "UnprocessableEntityError", "UnsupportedParamsError", "ContentPolicyViolationError"],
    }
    mods = []
    for name in ("litellm.exceptions", "openai"):
        try:
            mods.append(__import__(name, fromlist=["_"]))
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    for kind, names in groups.items():
        classes = tuple(getattr(m, n) for m in mods for n in names if isinstance(getattr(m, n, None), type))
        if classes:
            out.append((kind, classes))
    _CLASSES = out
    return out
