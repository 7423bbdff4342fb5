"""Query vectors from a local GGUF language model's hidden states (llama.cpp), for the learned routers.

`Embedder("embedded:smollm2-135m-instruct")`, `Embedder("embedded:gemma3-270m")` or
`Embedder("/path/model.gguf")` reads each text with the model and mean-pools its last hidden
layer over the tokens, L2-normalised: the decoder-LLM counterpart of a sentence encoder, the way
LLM-based routers represent a query. `max_seq` in the spec caps the tokens read (default 256);
`layers` does not apply (llama.cpp runs the whole model) and is refused.

Texts are embedded one at a time: llama.cpp must hold a whole sequence in one micro-batch to pool
it, and on CPU batching short sequences gains little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from composer.routers.embed import _cpus


class GGUFEncoder:
    """Mean-pooled, L2-normalised last-layer states of a GGUF model, one text at a time."""

    def __init__(self, path: str | Path, *, max_seq: int | None = 256, spec: str = ""):
        from composer.errors import RoutingError

        try:
            import llama_cpp
        except ImportError:
            raise RoutingError(f"embedding spec {spec!r} needs llama-cpp-python; run: "
                               "pip install 'composer-moe[local]'") from None
        self.max_seq = int(max_seq or 256)
        try:
            self._llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=self.max_seq,
                                        n_batch=self.max_seq, n_ubatch=self.max_seq, n_threads=max(1, min(4, _cpus())),
                                        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise RoutingError(f"embedding spec {spec!r}: llama.cpp could not load {path}: {exc}") from None

    @property
    def dim(self) -> int:
        return int(self._llm.n_embd())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            # truncate=True keeps the first n_batch (= max_seq) tokens; an empty text still has BOS
            v = self._llm.embed(text or " ", normalize=True, truncate=True)
            out[i] = np.asarray(v, dtype=np.float32).reshape(-1)[: out.shape[1]]
        return out

    def close(self) -> None:
        close = getattr(self._llm, "close", None)
        if close is not None:
            close()
