"""Plain data types that flow through composer: Query -> RouteDecision -> Candidate -> Answer.

Everything here is a small dataclass with no behaviour beyond (de)serialisation, so the same
objects move through the CLI, the SDK, the HTTP endpoint, Ray actors and result files.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

_ids = itertools.count()


def new_query_id() -> str:
    """A short unique id for a query that came without one."""
    return f"q-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Query:
    """One request. `text` is the user's prompt; `messages` (OpenAI chat format) wins when given.

    Generation settings left as None fall back to the expert's defaults from experts.yaml.
    `task` names a task type (e.g. "mmlu", "gsm8k", "node_classification") for routing.
    `payload` carries structured input for specialists (node ids, a feature record).
    """

    text: str
    id: str = field(default_factory=new_query_id)
    messages: tuple[dict[str, str], ...] | None = None
    task: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    payload: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Further OpenAI request fields the client set (top_p, presence_penalty, tools, tool_choice,
    # response_format, logprobs, ...): passed to experts that support them, only when set.
    params: dict[str, Any] = field(default_factory=dict)

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation to send to a chat model."""
        if self.messages:
            return [dict(m) for m in self.messages]
        return [{"role": "user", "content": self.text}]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = list(self.messages) if self.messages else None
        d["stop"] = list(self.stop) if self.stop else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Query":
        d = dict(d)
        if d.get("messages") is not None:
            d["messages"] = tuple(dict(m) for m in d["messages"])
        if d.get("stop") is not None:
            d["stop"] = tuple(d["stop"])
        return cls(**d)


@dataclass
class Usage:
    """Tokens, money and time spent on one call (or summed over many)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost + other.cost,
            self.latency_s + other.latency_s,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_tokens"] = self.total_tokens
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Usage":
        return cls(
            int(d.get("prompt_tokens", 0)),
            int(d.get("completion_tokens", 0)),
            float(d.get("cost", 0.0)),
            float(d.get("latency_s", 0.0)),
        )


@dataclass(frozen=True)
class CallError:
    """Why one expert call failed. `kind` is one of KINDS; `retryable` says whether the same
    expert may succeed on a second try; `status` is the HTTP status a client should see."""

    kind: str
    message: str
    retryable: bool = False
    status: int = 502

    KINDS = ("timeout", "rate_limit", "unavailable", "bad_request", "context_overflow", "cancelled",
             "load", "over_budget", "exhausted", "error")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "retryable": self.retryable, "status": self.status}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CallError":
        return cls(d["kind"], d.get("message", ""), bool(d.get("retryable", False)), int(d.get("status", 502)))


@dataclass
class Delta:
    """A piece of an answer as it is generated (streaming). `text` is new content; `tool_calls`
    holds OpenAI-shaped tool-call deltas; the last delta of a candidate carries `finish_reason`."""

    query_id: str
    expert: str
    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


@dataclass
class Candidate:
    """One expert's output for one query. `error` is set (and `text` empty) when the call failed."""

    query_id: str
    expert: str
    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    score: float | None = None  # known only for replayed outcomes
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI shape: [{"id", "type": "function", "function": {...}}]
    logprobs: dict[str, Any] | None = None  # OpenAI shape: {"content": [{"token", "logprob", "top_logprobs"}]}
    call_error: "CallError | None" = None  # the typed error behind `error` (kind, retryable, status)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usage"] = self.usage.to_dict()
        d["call_error"] = self.call_error.to_dict() if self.call_error else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        d = dict(d)
        d["usage"] = Usage.from_dict(d.get("usage") or {})
        if d.get("call_error") is not None:
            d["call_error"] = CallError.from_dict(d["call_error"])
        return cls(**d)


@dataclass
class RouteDecision:
    """Which experts answer a query, why, and how their answers are combined.

    `scores` and `costs` hold the router's per-expert predictions (for the chosen experts at
    least); `aggregator` is an aggregation kind ("moa", "self_moa", "vote", ...) or None.
    """

    query_id: str
    experts: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    aggregator: str | None = None
    aggregator_expert: str | None = None
    reason: str = ""
    router: str = "fixed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RouteDecision":
        return cls(**d)


@dataclass
class Answer:
    """The final answer to one query, with everything that produced it."""

    query_id: str
    text: str
    experts: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    route: RouteDecision | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None
    call_error: CallError | None = None  # the typed error of the failure behind `error`

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "text": self.text,
            "experts": list(self.experts),
            "candidates": [c.to_dict() for c in self.candidates],
            "usage": self.usage.to_dict(),
            "route": self.route.to_dict() if self.route else None,
            "stages": list(self.stages),
            "error": self.error,
            "finish_reason": self.finish_reason,
            "tool_calls": self.tool_calls,
            "logprobs": self.logprobs,
            "call_error": self.call_error.to_dict() if self.call_error else None,
        }
