"""In-process llama.cpp expert (llama_cpp.Llama).

Uses the chat template stored in the GGUF (or `chat_format` from experts.yaml); `chat_format:
completion` sends a plain prompt, for base models such as Gemma-3-270M that have no template.
A batch is answered query by query on one loaded model (llama-cpp-python's high-level API
decodes one sequence at a time); the model is loaded once per batch, which is what matters.
`unload()` closes the model and drops every reference so its memory is returned.
`cancel(query_ids)` ends those queries' generation at the next token (a logits processor
forces end-of-sequence), so a client that went away stops costing compute.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

from composer.backends.base import Backend
from composer.errors import ExpertLoadError
from composer.models import ModelNotFoundError, resolve_model_path
from composer.backends.params import (delta_fields, llamacpp_kwargs, llamacpp_messages, merge_tool_calls,
                                      message_fields)
from composer.runtime.errors import failure
from composer.types import Candidate, Delta, Query, Usage


def completion_prompt(q: Query) -> str:
    """A plain-text prompt for base models (no chat template); /v1/completions' prompt as it is."""
    if q.metadata.get("raw_prompt"):
        return q.text
    if not q.messages:
        return f"Question: {q.text}\nAnswer:"
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in q.messages]
    return "\n".join(lines) + "\nAssistant:"


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class LlamaCppBackend(Backend):
    def __init__(self, spec, base_dir=None):
        super().__init__(spec, base_dir)
        self._llm = None
        self._path = None

    def _stopper(self, qid: str):
        eos = self._llm.token_eos()

        def force_eos(_ids, scores):
            if self.is_cancelled(qid):
                scores = np.full_like(scores, -np.inf)
                scores[eos] = 0.0
            return scores

        return [force_eos]

    def model_path(self):
        if self._path is None:
            from pathlib import Path

            self._path = resolve_model_path(self.spec.model, Path(self.base_dir) if self.base_dir else None)
        return self._path

    def _footprint(self) -> int:
        # Weights plus KV cache and scratch: file size + a context-proportional allowance.
        try:
            size = self.model_path().stat().st_size
        except (OSError, ModelNotFoundError):
            return 0
        return int(size * 1.1) + self.spec.context_length * 64 * 1024

    def _load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ExpertLoadError("llama-cpp-python is not installed; run: pip install 'composer-moe[local]'",
                                  expert=self.name) from None
        try:
            path = self.model_path()
        except ModelNotFoundError as exc:
            raise ExpertLoadError(str(exc), expert=self.name) from None
        opts = self.spec.options
        chat_format = self.spec.chat_format if self.spec.chat_format != "completion" else None
        try:
            self._llm = Llama(
                model_path=str(path),
                n_ctx=self.spec.context_length,
                n_threads=int(opts.get("n_threads", _default_threads())),
                n_batch=int(opts.get("n_batch", 512)),
                seed=int(opts.get("seed", 0)),
                chat_format=chat_format,
                verbose=bool(opts.get("verbose", False)),
                logits_all=bool(opts.get("logits_all", False)),  # needed for logprobs (n_ctx x vocab floats)
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ExpertLoadError(f"llama.cpp could not load {path}: {exc}", expert=self.name) from None
        # Weights are memory-mapped and paged in lazily: one decode step touches every layer,
        # so the load event's duration is the real cost and the first query is not penalised.
        self._llm.eval([self._llm.token_bos()])
        self._llm.reset()

    def _unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            close = getattr(llm, "close", None)
            if close is not None:
                close()
            del llm
        gc.collect()

    def n_tokens(self, text: str) -> int:
        """Token count of `text` with this model's tokenizer (model must be loaded)."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False))

    def _generate(self, queries: list[Query], on_delta=None) -> list[Candidate]:
        return [self._one(q, on_delta) for q in queries]

    def _request(self, q: Query, stream: bool):
        kw = {**llamacpp_kwargs(self, q), "stream": stream}
        kw["logits_processor"] = kw.get("logits_processor", []) + self._stopper(q.id)  # params' logit_bias first
        if self.spec.chat_format == "completion":
            return self._llm.create_completion(prompt=completion_prompt(q), **kw)
        return self._llm.create_chat_completion(messages=llamacpp_messages(self.messages_for(q)), **kw)

    def _overflow(self, q: Query, exc: ValueError, t0: float) -> Candidate:
        """llama.cpp reports a prompt that does not fit as a ValueError; it is the only
        ValueError its completion calls raise for a well-formed request."""
        msg = f"expert '{self.name}': {exc}"
        text = str(exc).lower()
        kind = "context_overflow" if ("context" in text or "exceed" in text) else "bad_request"
        return failure(q.id, self.name, kind, msg, usage=Usage(latency_s=time.perf_counter() - t0))

    def _one(self, q: Query, on_delta=None) -> Candidate:
        if self.is_cancelled(q.id):
            return self.cancelled_candidate(q, 0.0)
        t0 = time.perf_counter()
        if on_delta is not None:
            return self._streamed(q, on_delta, t0)
        try:
            res = self._request(q, stream=False)
        except ValueError as exc:
            return self._overflow(q, exc, t0)
        choice = res["choices"][0]
        if self.spec.chat_format == "completion":
            text, tool_calls = choice["text"], None
        else:
            text, tool_calls = message_fields(choice["message"])
        usage = res.get("usage") or {}
        if self.is_cancelled(q.id):
            return self.cancelled_candidate(q, time.perf_counter() - t0, int(usage.get("completion_tokens", 0)))
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return Candidate(q.id, self.name, text.strip(), Usage(pt, ct, self.cost(pt, ct), time.perf_counter() - t0),
                         finish_reason="tool_calls" if tool_calls else choice.get("finish_reason"),
                         tool_calls=tool_calls, logprobs=choice.get("logprobs"))

    def _streamed(self, q: Query, on_delta, t0: float) -> Candidate:
        """Generate with stream=True, passing each piece on as it is decoded; a cancel ends the
        generation at the next token (the generator is closed, llama.cpp stops decoding)."""
        parts: list[str] = []
        tool_calls: list[dict] = []
        finish, ct = None, 0
        completion = self.spec.chat_format == "completion"
        try:
            stream = self._request(q, stream=True)
        except ValueError as exc:
            return self._overflow(q, exc, t0)
        try:
            for chunk in stream:
                if self.is_cancelled(q.id):
                    return self.cancelled_candidate(q, time.perf_counter() - t0, ct)
                choice = chunk["choices"][0]
                if completion:
                    text, tcs = choice.get("text") or "", None
                else:
                    text, tcs = delta_fields(choice.get("delta") or {})
                finish = choice.get("finish_reason") or finish
                if text or tcs:
                    ct += 1
                    if tcs:
                        tool_calls.extend(tcs)
                    on_delta(Delta(q.id, self.name, text, tool_calls=tcs, logprobs=choice.get("logprobs")))
                    parts.append(text)
        except ValueError as exc:
            return self._overflow(q, exc, t0)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if self.is_cancelled(q.id):
            return self.cancelled_candidate(q, time.perf_counter() - t0, ct)
        total = int(getattr(self._llm, "n_tokens", 0) or 0)
        pt = max(0, total - ct)
        merged = merge_tool_calls(tool_calls) if tool_calls else None
        return Candidate(q.id, self.name, "".join(parts).strip(), Usage(pt, ct, self.cost(pt, ct),
                                                                         time.perf_counter() - t0),
                         finish_reason="tool_calls" if merged else finish, tool_calls=merged)
