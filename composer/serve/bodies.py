"""The endpoint's response shapes: OpenAI chat completions, their stream chunks, text completions,
embeddings and error objects, built from composer's Answers and Deltas (composer.types).

`composer` in a body is composer's extension (who answered, what was tried, the cost and the
route); OpenAI clients ignore it and keep it in their objects' extra fields.
"""

from __future__ import annotations

import json
import time

from composer.types import Answer, Candidate, Delta


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_of(answers: list[Answer]) -> dict:
    pt = sum(a.usage.prompt_tokens for a in answers)
    ct = sum(a.usage.completion_tokens for a in answers)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def composer_extension(answers: list[Answer]) -> dict:
    """What composer adds to a response: who answered, what was tried, what it cost."""
    return {
        "experts": [a.experts for a in answers],
        "experts_tried": [[e for c in a.candidates for e in c.metadata.get("experts_tried", [c.expert])]
                          for a in answers],
        "cost": round(sum(a.usage.cost for a in answers), 10),
        "route": [a.route.to_dict() if a.route else None for a in answers],
    }


def final_candidate(a: Answer) -> Candidate | None:
    """The candidate whose output is the answer (the aggregator's is last)."""
    ok = [c for c in a.candidates if c.ok]
    same = [c for c in ok if c.text == a.text]
    return (same or ok or [None])[-1]


def tool_calls_of(a: Answer, streaming: bool = False) -> list[dict] | None:
    calls = a.tool_calls
    if calls is None:
        c = final_candidate(a)
        calls = c.tool_calls if c is not None else None
    if not calls:
        return None
    out = []
    for i, tc in enumerate(calls):
        fn = tc.get("function") or {}
        item = {"id": tc.get("id") or f"call_{i}", "type": "function",
                "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}
        if streaming:
            item = {"index": tc.get("index", i), **item}
        out.append(item)
    return out


def plain(obj):
    """JSON-ready copy: numpy scalars (llama.cpp's logprobs are float32) become Python numbers."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


def logprobs_of(a: Answer) -> dict | None:
    if a.logprobs is not None:
        return plain(a.logprobs)
    c = final_candidate(a)
    return plain(c.logprobs) if c is not None and c.logprobs is not None else None


def finish_reason(a: Answer) -> str:
    if tool_calls_of(a):
        return "tool_calls"
    reasons = [a.finish_reason] if a.finish_reason else [c.finish_reason for c in a.candidates
                                                          if c.ok and c.finish_reason]
    return "length" if "length" in reasons else "stop"


def message_of(a: Answer) -> dict:
    calls = tool_calls_of(a)
    msg = {"role": "assistant", "content": a.text if (a.text or not calls) else None, "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def completion_body(request_id: str, model: str, answers: list[Answer]) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": message_of(a), "finish_reason": finish_reason(a),
                     "logprobs": logprobs_of(a)} for i, a in enumerate(answers)],
        "usage": usage_of(answers),
        "system_fingerprint": None,
        "composer": composer_extension(answers),
    }


def text_completion_body(request_id: str, model: str, answers: list[Answer], prompts: list[str],
                         n: int, echo: bool) -> dict:
    choices = []
    for i, a in enumerate(answers):
        prefix = prompts[i // n] if echo else ""
        choices.append({"index": i, "text": prefix + a.text, "finish_reason": finish_reason(a),
                        "logprobs": _text_logprobs(logprobs_of(a))})
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of(answers), "composer": composer_extension(answers)}


def _text_logprobs(lp: dict | None) -> dict | None:
    """Chat-shaped logprobs -> the legacy completions shape."""
    if not lp or not lp.get("content"):
        return None
    toks = lp["content"]
    offsets, pos = [], 0
    for t in toks:
        offsets.append(pos)
        pos += len(t.get("token") or "")
    return {"tokens": [t.get("token") for t in toks], "token_logprobs": [t.get("logprob") for t in toks],
            "top_logprobs": [{x["token"]: x["logprob"] for x in t.get("top_logprobs") or []} for t in toks],
            "text_offset": offsets}


def embeddings_body(model: str, vectors, prompt_tokens: int, encoding: str) -> dict:
    import base64

    import numpy as np

    data = []
    for i, v in enumerate(vectors):
        arr = np.asarray(v, dtype=np.float32)
        emb = base64.b64encode(arr.tobytes()).decode() if encoding == "base64" else arr.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "model": model, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


# -- streaming -------------------------------------------------------------------------------------


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """SSE chunks of one streamed response (chat.completion.chunk or text_completion); with
    `encode=dict` the chunks themselves (the in-process SDK)."""

    def __init__(self, request_id: str, model: str, text_completion: bool = False, encode=sse):
        self.rid, self.model, self.text, self.encode = request_id, model, text_completion, encode
        self.created = int(time.time())
        self.tool_index: dict[int, dict[int, int]] = {}

    def _chunk(self, choices: list[dict], **extra):
        obj = "text_completion" if self.text else "chat.completion.chunk"
        return self.encode({"id": self.rid, "object": obj, "created": self.created, "model": self.model,
                    "choices": choices, **extra})

    def role(self, index: int) -> bytes:
        if self.text:
            return self._chunk([{"index": index, "text": "", "finish_reason": None, "logprobs": None}])
        return self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None, "logprobs": None}])

    def delta(self, index: int, d: Delta) -> bytes | None:
        """A Delta as a chunk (None when it carries nothing to send)."""
        if self.text:
            if not d.text:
                return None
            return self._chunk([{"index": index, "text": d.text, "finish_reason": None,
                                 "logprobs": _text_logprobs(plain(d.logprobs) if d.logprobs else None)}])
        delta: dict = {}
        if d.text:
            delta["content"] = d.text
        if d.tool_calls:
            delta["tool_calls"] = [self._tool_delta(index, i, tc) for i, tc in enumerate(d.tool_calls)]
        if not delta:
            return None
        return self._chunk([{"index": index, "delta": delta, "finish_reason": None,
                             "logprobs": plain(d.logprobs) if d.logprobs is not None else None}])

    def _tool_delta(self, index: int, i: int, tc: dict) -> dict:
        """OpenAI's shape: the first delta of a call carries its id, type and name, later ones only
        argument text (llama.cpp repeats the name in every chunk; it would be concatenated)."""
        fn = tc.get("function") or {}
        out: dict = {"index": tc.get("index", i)}
        seen = self.tool_index.setdefault(index, {})
        if out["index"] not in seen:
            out["id"], out["type"] = tc.get("id") or f"call_{index}_{out['index']}", "function"
            out["function"] = {"name": fn.get("name") or "", "arguments": fn.get("arguments") or ""}
            seen[out["index"]] = 1
        else:
            out["function"] = {"arguments": fn.get("arguments") or ""}
        return out

    def finish(self, index: int, reason: str) -> bytes:
        if self.text:
            return self._chunk([{"index": index, "text": "", "finish_reason": reason, "logprobs": None}])
        return self._chunk([{"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}])

    def usage(self, answers: list[Answer]) -> bytes:
        return self._chunk([], usage=usage_of(answers), composer=composer_extension(answers))
