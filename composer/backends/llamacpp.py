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
from composer.types import Candidate, Query, Usage


def completion_prompt(q: Query) -> str:
    """A plain-text prompt for base models (no chat template)."""
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
            raise ExpertLoadError(f"llama-cpp-python is not installed ({exc}); run ./install.sh",
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

    def _generate(self, queries: list[Query]) -> list[Candidate]:
        return [self._one(q) for q in queries]

    def _one(self, q: Query) -> Candidate:
        s = self.settings_for(q)
        if self.is_cancelled(q.id):
            return self.cancelled_candidate(q, 0.0)
        kw = dict(max_tokens=s["max_tokens"], temperature=s["temperature"], top_p=s["top_p"],
                  stop=s["stop"] or None, logits_processor=self._stopper(q.id))
        if s["seed"] is not None:
            kw["seed"] = s["seed"]
        t0 = time.perf_counter()
        try:
            if self.spec.chat_format == "completion":
                res = self._llm.create_completion(prompt=completion_prompt(q), **kw)
                text = res["choices"][0]["text"]
            else:
                res = self._llm.create_chat_completion(messages=self.messages_for(q), **kw)
                text = res["choices"][0]["message"]["content"] or ""
        except ValueError as exc:
            overflow = "context" in str(exc).lower() or "exceed" in str(exc).lower()
            return Candidate(q.id, self.name, "", Usage(latency_s=time.perf_counter() - t0),
                             error=f"expert '{self.name}': {exc}",
                             metadata={"error_type": "context_overflow" if overflow else "bad_request",
                                       "retryable": False})
        usage = res.get("usage") or {}
        if self.is_cancelled(q.id):
            return self.cancelled_candidate(q, time.perf_counter() - t0, int(usage.get("completion_tokens", 0)))
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return Candidate(q.id, self.name, text.strip(),
                         Usage(pt, ct, self.cost(pt, ct), time.perf_counter() - t0),
                         finish_reason=res["choices"][0].get("finish_reason"))

