"""What a validated request becomes against the registry: the target its `model` names and its Queries.

`resolve_model` maps `model` (an expert, a pipeline, `default`, RouteLLM's
`router-<pipeline>-<threshold>`) to a Target, or a 404 `model_not_found`. `to_queries` turns a
chat request into composer Queries: the sampling fields composer handles itself (max_tokens,
temperature, stop, seed) go on the Query; every other field the client set goes, as sent, into
`Query.params` (composer/backends/params.py maps them per backend). Fields an expert cannot
honour are listed to drop (or refused when it sets `drop_params: false`); checks that need the
registry (tool choice names a tool, a vote pipeline and tools, images for text-only experts,
max_tokens against the context window) are made here, before any model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from composer.serve_schema import BadRequest, ChatRequest, CompletionRequest, Message, NamedToolChoice
from composer.types import Query

# -- the target a request names -----------------------------------------------------------------

ROUTER_MODEL = re.compile(r"^router-(?P<pipeline>.+)-(?P<threshold>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass
class Target:
    """What a request's `model` resolves to."""

    expert: str | None
    pipeline: str | None
    context_length: int
    threshold: float | None = None  # RouteLLM's cost knob, from router-<pipeline>-<threshold>
    experts: list[str] = field(default_factory=list)  # every expert the request may reach


def _ctx(spec) -> int:
    from composer.backends.model_info import with_model_info

    return with_model_info(spec).context_length


def resolve_model(composer, name: str) -> Target:
    """The expert or pipeline a request's `model` names; 404 (OpenAI's model_not_found) if none."""
    experts, pipelines = composer.experts, composer.pipelines
    threshold = None
    m = ROUTER_MODEL.match(name)
    if m and name not in experts and name not in pipelines and m["pipeline"] in pipelines:
        if pipelines[m["pipeline"]].router is None:
            raise BadRequest(f"model '{name}': pipeline '{m['pipeline']}' has no router, so it has no "
                             "threshold to set; use its plain name", param="model")
        name, threshold = m["pipeline"], float(m["threshold"])
    if name == "default" and name not in experts and name not in pipelines:  # the registry's default
        e = composer.default_expert()
        return Target(None, None, _ctx(experts[e]), experts=[e])
    if name in pipelines:
        p = pipelines[name]
        pool = list(p.experts or experts)
        if p.aggregator.expert and p.aggregator.expert not in pool:
            pool.append(p.aggregator.expert)
        return Target(None, name, max(_ctx(experts[e]) for e in pool), threshold, pool)
    if name in experts:
        return Target(name, None, _ctx(experts[name]), experts=[name])
    known = ", ".join([*pipelines, *experts, "default"])
    raise BadRequest(f"The model '{name}' does not exist; known pipelines and experts: {known}", param="model",
                     status=404, code="model_not_found")


# -- chat request -> queries -----------------------------------------------------------------------


@dataclass
class Plan:
    """A validated chat request: its queries, where they go, and what was dropped or ignored."""

    queries: list[Query]
    target: Target
    dropped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _check_tools(req: ChatRequest) -> None:
    names = [t.function.name for t in req.tools or []]
    if req.tool_choice is not None and not names:
        raise BadRequest("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name not in names:
        raise BadRequest(f"tool_choice names function '{req.tool_choice.function.name}', which is not in "
                         f"'tools' ({', '.join(names)})", param="tool_choice.function.name")
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    ids = {tc.id for m in req.messages for tc in (m.tool_calls or [])}
    for i, m in enumerate(req.messages):
        if m.role == "tool":
            if not m.tool_call_id:
                raise BadRequest("a 'tool' message needs 'tool_call_id'", param=f"messages[{i}].tool_call_id")
            if m.tool_call_id not in ids:
                raise BadRequest(f"'tool' message answers tool call '{m.tool_call_id}', which no earlier "
                                 "assistant message made", param=f"messages[{i}].tool_call_id")
        if m.tool_calls and m.role != "assistant":
            raise BadRequest("only 'assistant' messages carry 'tool_calls'", param=f"messages[{i}].tool_calls")


def _check_experts(composer, req: ChatRequest, target: Target, params: dict) -> list[str]:
    """Fields the reachable experts cannot honour: a 400 where an expert sets drop_params: false,
    else the list to drop with a warning. Images for text-only experts are refused."""
    from composer.backends.params import drop_params, unsupported

    specs = composer.experts
    wants_tools = bool(params.get("tools") or params.get("functions") or params.get("response_format"))
    if target.pipeline is not None and wants_tools:
        kind = composer.pipelines[target.pipeline].aggregator.kind
        if kind == "vote":
            field_ = "tools" if params.get("tools") or params.get("functions") else "response_format"
            raise BadRequest(f"pipeline '{target.pipeline}' votes over short answers, so it cannot honour "
                             f"'{field_}'; send it to an expert or a MoA/Self-MoA pipeline", param=field_)
    for i, m in enumerate(req.messages):
        for j in m.non_text_parts():
            text_only = [e for e in target.experts if specs[e].backend not in ("litellm", "server")]
            if text_only:
                raise BadRequest(f"expert '{text_only[0]}' reads text only; messages[{i}].content[{j}] is "
                                 f"'{m.content[j].type}'", param=f"messages[{i}].content[{j}]")
    dropped: set[str] = set()
    for e in target.experts:
        bad = unsupported(specs[e], params)
        if bad and not drop_params(specs[e]):
            raise BadRequest(f"expert '{e}' cannot honour field '{bad[0]}' (drop_params is false for it)",
                             param=bad[0], code="unsupported_parameter")
        dropped.update(bad)
    return sorted(dropped)


def to_queries(req: ChatRequest, composer, max_n: int, request_id: str) -> Plan:
    """Validate a chat request against the registry and turn it into n Queries."""
    target = resolve_model(composer, req.model)
    if req.n > max_n:
        raise BadRequest(f"n={req.n} is too large; this server allows n <= {max_n}", param="n")
    limit = req.limit()
    if limit is not None and limit >= target.context_length:
        raise BadRequest(f"max_tokens={limit} does not fit model '{req.model}' (context window "
                         f"{target.context_length} tokens, prompt included); ask for fewer tokens",
                         param="max_completion_tokens" if req.max_completion_tokens else "max_tokens",
                         code="context_length_exceeded")
    if not any(m.role == "user" for m in req.messages):
        raise BadRequest("messages needs at least one 'user' message", param="messages")
    _check_tools(req)
    params = req.params()
    dropped = _check_experts(composer, req, target, params)
    msgs = tuple(m.as_dict() for m in req.messages)
    text = next(m.text() for m in reversed(req.messages) if m.role == "user")
    stop = (req.stop,) if isinstance(req.stop, str) else (tuple(req.stop) if req.stop else None)
    meta = {"threshold": target.threshold} if target.threshold is not None else {}
    qs = []
    for i in range(req.n):
        seed = req.seed + i if req.seed is not None else (i if req.n > 1 else None)
        qs.append(Query(text, id=f"{request_id}-{i}", messages=msgs, task=req.task, max_tokens=limit,
                        temperature=req.temperature, stop=stop, seed=seed, params=dict(params),
                        metadata={**meta, "request_id": request_id}))
    return Plan(qs, target, dropped, req.ignored())


def completion_queries(req: CompletionRequest, composer, max_n: int, request_id: str) -> Plan:
    """A /v1/completions request as Queries: each prompt n times (choice index = prompt * n + j)."""
    target = resolve_model(composer, req.model)
    prompts = req.prompts()
    if not prompts:
        raise BadRequest("'prompt' is empty", param="prompt")
    if req.n * len(prompts) > max_n:
        raise BadRequest(f"{len(prompts)} prompt(s) x n={req.n} is too many; this server allows {max_n} "
                         "choices per request", param="n")
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequest("best_of other than n is not supported (composer returns every choice it "
                         "generates)", param="best_of")
    if req.suffix:
        raise BadRequest("'suffix' (insertion) is not supported by composer's experts", param="suffix")
    if req.max_tokens is not None and req.max_tokens >= target.context_length:
        raise BadRequest(f"max_tokens={req.max_tokens} does not fit model '{req.model}' (context window "
                         f"{target.context_length} tokens)", param="max_tokens", code="context_length_exceeded")
    data = req.model_dump(exclude_unset=True, exclude_none=True)
    params = {k: data[k] for k in ("top_p", "presence_penalty", "frequency_penalty", "logit_bias", "user")
              if k in data}
    if req.logprobs is not None:
        params.update(logprobs=True, top_logprobs=req.logprobs)
    chat_like = ChatRequest(model=req.model, messages=[Message(role="user", content=prompts[0])])
    dropped = _check_experts(composer, chat_like, target, params)
    stop = (req.stop,) if isinstance(req.stop, str) else (tuple(req.stop) if req.stop else None)
    # the prompt is sent as it is to base models (chat_format: completion); chat models get it as
    # the user's message through their template
    meta = {"raw_prompt": True, **({"threshold": target.threshold} if target.threshold is not None else {})}
    qs = []
    for p_i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise BadRequest(f"prompt[{p_i}] is empty", param=f"prompt[{p_i}]")
        for j in range(req.n):
            seed = req.seed + j if req.seed is not None else (j if req.n > 1 else None)
            qs.append(Query(prompt, id=f"{request_id}-{p_i * req.n + j}", task=req.task, max_tokens=req.max_tokens,
                            temperature=req.temperature, stop=stop, seed=seed, params=dict(params),
                            metadata={**meta, "request_id": request_id}))
    return Plan(qs, target, dropped, req.ignored())
