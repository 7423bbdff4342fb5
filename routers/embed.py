"""Sentence embeddings for routers, cached per prompt on disk.

`Embedder("embedded:all-minilm-l6-v2")` (the default, shipped as a wheel) or any local
sentence-transformers folder; a spec naming a GGUF model (`embedded:smollm2-135m-instruct`,
`embedded:gemma3-270m`, a `.gguf` path) embeds with that LLM's mean-pooled hidden states
instead (`embed_gguf.py`). Vectors are L2-normalised float32. Every vector is cached on disk
keyed by (embedding spec, sha256 of the text), so training, evaluation and benchmarks embed each
prompt once; a per-instance memory cache makes repeated lookups in one process free.

An embedding *spec* is a model plus options after `?`:
``embedded:all-minilm-l6-v2?layers=2&max_seq=128`` keeps only the model's first 2 transformer
layers (of 6) and reads at most 128 tokens. The learned routers use that one
(`ROUTING_EMBEDDING`): they learn their own heads on top of the vectors, and 5-fold
cross-validation on RouterDC's training files scored `stack` the same on it as on the full
model (60.10 % against 60.13 %; 3 layers 60.10 %; docs/routers.md), at about a third of the
cost on long prompts. Sentence *similarity* (the symbolic router's skills, CoE's categories,
the `/v1/embeddings` endpoint) keeps the full model (`DEFAULT_EMBEDDING`).

    >>> emb = Embedder()
    >>> X = emb.encode(["What is 2+2?", "Write a haiku"])   # (2, 384)
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDING = "embedded:all-minilm-l6-v2"
ROUTING_EMBEDDING = DEFAULT_EMBEDDING + "?layers=2&max_seq=128"
_SPEC_OPTIONS = ("layers", "max_seq")
_MEMORY_LIMIT = 200_000  # vectors kept in memory per Embedder (~300 MB at 384 floats)
_TUNE_CHUNK = 64  # texts per measured encode when the thread count is tuned


def default_cache_dir() -> Path:
    """$COMPOSER_HOME/embeddings, default ~/.cache/composer/embeddings."""
    home = os.environ.get("COMPOSER_HOME") or str(Path.home() / ".cache" / "composer")
    return Path(home) / "embeddings"


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """("model", {"layers": 3, "max_seq": 128}) from "model?layers=3&max_seq=128"."""
    from urllib.parse import parse_qsl

    from composer.errors import RoutingError

    model, _, query = str(spec).partition("?")
    if not model:
        raise RoutingError(f"embedding spec {spec!r}: no model before '?'")
    opts: dict[str, int] = {}
    try:
        pairs = parse_qsl(query, strict_parsing=True) if query else []
    except ValueError:
        raise RoutingError(f"embedding spec {spec!r}: options after '?' must be key=value pairs joined "
                           f"by '&' ({', '.join(_SPEC_OPTIONS)})") from None
    for key, value in pairs:
        if key not in _SPEC_OPTIONS:
            raise RoutingError(f"embedding spec {spec!r}: unknown option {key!r}; known: {', '.join(_SPEC_OPTIONS)}")
        if not value.isdigit() or int(value) < 1:
            raise RoutingError(f"embedding spec {spec!r}: {key}={value!r} must be a positive integer")
        opts[key] = int(value)
    return model, opts


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Embedder:
    """Embeds texts with a sentence-transformers model; caches vectors on disk and in memory.

    model: an embedding spec: "embedded:all-minilm-l6-v2" or a local sentence-transformers folder,
    optionally with "?layers=N&max_seq=M" (see the module doc); max_seq in the spec wins over
    `max_seq_length`.
    cache_dir: where the SQLite vector cache lives (None: `default_cache_dir()`); cache=False
    disables the disk cache (the memory cache still works).
    """

    def __init__(self, model: str = DEFAULT_EMBEDDING, *, cache_dir: str | Path | None = None,
                 cache: bool = True, batch_size: int = 16, device: str = "cpu",
                 max_seq_length: int | None = 256, threads: int | None = None):
        self.model = model
        self.base_model, opts = parse_spec(model)
        self.layers = opts.get("layers")
        self.cache_dir = cache_dir
        self.cache = cache
        self.batch_size = batch_size  # small batches: long prompts gain nothing from big ones on CPU
        self.device = device
        self.max_seq_length = opts.get("max_seq", max_seq_length)
        # torch threads while embedding: None = tuned at run time between 1 and every CPU this
        # process may use (at most 4), see _ThreadTuner; 0 = leave torch's own setting; n = n.
        self.threads = threads
        self._tuner: _ThreadTuner | None = None
        self._st = None
        self._fast = None
        self._gguf = None
        self._db: sqlite3.Connection | None = None
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # -- model --------------------------------------------------------------------------------
    def load(self) -> "Embedder":
        if self._st is None and self._gguf is None:
            from composer.models import resolve_model_path
            from composer.offline import ensure_offline

            ensure_offline()
            path = resolve_model_path(self.base_model)
            if path.suffix == ".gguf":  # a decoder LLM's hidden states (embed_gguf.py): no torch needed
                self._gguf = self._gguf_encoder(path)
                return self
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bar in CLI output
            st = SentenceTransformer(str(path), device=self.device)
            if self.layers:
                _keep_layers(st, self.layers, self.model)
            if self.max_seq_length:
                st.max_seq_length = self.max_seq_length
            self._st = st
            self._fast = self._fast_path()
        return self

    def _gguf_encoder(self, path):
        from composer.errors import RoutingError
        from composer.routers.embed_gguf import GGUFEncoder

        if self.layers:
            raise RoutingError(f"embedding spec {self.model!r}: 'layers' needs a BERT-style sentence-transformers "
                               f"model; {path.name} is a GGUF model, which llama.cpp runs whole")
        return GGUFEncoder(path, max_seq=self.max_seq_length, spec=self.model)

    def _fast_path(self):
        """A direct tokenizer + transformer + mean-pool + normalise call for one text, used when
        the model is exactly that pipeline (all-MiniLM-L6-v2 is) and gives the same vector as
        sentence-transformers on a probe text; it skips encode()'s bookkeeping, measured at
        1.5 ms (short text, direct timing) to 4 ms (routing bench p50) per query on this CPU.
        None when the model is anything else."""
        try:
            import torch

            mods = list(self._st)
            names = [type(m).__name__ for m in mods]
            if names[:2] != ["Transformer", "Pooling"] or names[2:] not in ([], ["Normalize"]):
                return None
            pooling = mods[1]
            mode = getattr(pooling, "pooling_mode", None) or (
                "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None)
            if mode != "mean" or getattr(pooling, "pooling_mode_cls_token", False):
                return None
            tok, model = self._st.tokenizer, mods[0].auto_model
            limit = self._st.max_seq_length

            def one(text: str) -> np.ndarray:
                with torch.inference_mode():
                    enc = tok([text], padding=True, truncation=True, max_length=limit,
                              return_tensors="pt")
                    h = model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                    v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=1)
                return v.numpy().astype(np.float32)

            probe = "Which planet is closest to the sun? Explain in one sentence."
            ref = self._st.encode([probe], convert_to_numpy=True, normalize_embeddings=True,
                                  show_progress_bar=False)
            if np.abs(one(probe) - ref).max() > 1e-5:
                return None
            return one
        except Exception:  # any surprise in a model's layout: the general path is always right
            return None

    @property
    def model_id(self) -> str:
        """What the cache is keyed by: the model name, its sequence limit and its layer count."""
        layers = f"|layers={self.layers}" if self.layers else ""
        return f"{self.base_model}|max_seq={self.max_seq_length}{layers}"

    @property
    def dim(self) -> int:
        self.load()
        if self._gguf is not None:
            return self._gguf.dim
        st = self._st
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    # -- cache --------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            d = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
            d.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(d / "embeddings.sqlite"), timeout=60, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS vec (model TEXT, key TEXT, v BLOB, "
                             "PRIMARY KEY (model, key))")
            self._db.commit()
        return self._db

    def _disk_get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        db = self._conn()
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT key, v FROM vec WHERE model=? AND key IN ({marks})",
                              [self.model_id, *chunk]).fetchall()
            for k, blob in rows:
                out[k] = np.frombuffer(blob, dtype=np.float32)
        return out

    def _disk_put(self, items: dict[str, np.ndarray]) -> None:
        db = self._conn()
        with db:
            db.executemany("INSERT OR REPLACE INTO vec (model, key, v) VALUES (?, ?, ?)",
                           [(self.model_id, k, v.astype(np.float32).tobytes()) for k, v in items.items()])

    # -- encode -------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, use_cache: bool | None = None) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. Same length and order as `texts`."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        disk = self.cache if use_cache is None else use_cache
        keys = [text_key(t) for t in texts]
        with self._lock:
            found = {k: self._memory[k] for k in set(keys) if k in self._memory}
            todo = [k for k in dict.fromkeys(keys) if k not in found]
            if todo and disk:
                found.update(self._disk_get(todo))
                todo = [k for k in todo if k not in found]
            if todo:
                first = {}
                for k, t in zip(keys, texts):
                    first.setdefault(k, t)
                new = self._compute([first[k] for k in todo])
                fresh = dict(zip(todo, new))
                found.update(fresh)
                if disk:
                    self._disk_put(fresh)
            if len(self._memory) + len(found) > _MEMORY_LIMIT:
                self._memory.clear()
            self._memory.update(found)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _threads_for(self, n_texts: int) -> int:
        """Torch threads for an encode of n_texts texts (see `threads`)."""
        if self.threads is None:
            if self._tuner is None:
                self._tuner = _ThreadTuner(max(1, min(4, _cpus())))
            return self._tuner.choose(n_texts)
        if self.threads == 0:
            import torch

            return torch.get_num_threads()
        return int(self.threads)

    @property
    def thread_stats(self) -> dict:
        """What the thread tuner saw: per thread count, calls and mean seconds per character."""
        return self._tuner.stats() if self._tuner is not None else {}

    def _compute(self, texts: list[str]) -> np.ndarray:
        self.load()
        if self._gguf is not None:
            return self._gguf.encode(texts)
        if self.threads is not None or len(texts) <= _TUNE_CHUNK:
            return self._encode(texts)
        # Tuned threads: embed a long list in chunks of similar length (shortest first, as
        # sentence-transformers itself sorts), so each chunk is one measurement for the tuner.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), _TUNE_CHUNK):
            idx = order[i:i + _TUNE_CHUNK]
            out[idx] = self._encode([texts[j] for j in idx])
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        import time

        import torch

        before, want = torch.get_num_threads(), self._threads_for(len(texts))
        if want != before:
            torch.set_num_threads(want)
        t0 = time.perf_counter()
        try:
            if len(texts) == 1 and self._fast is not None:
                v = self._fast(texts[0])
            else:
                v = self._st.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        finally:
            if want != before:
                torch.set_num_threads(before)
        if self._tuner is not None and self.threads is None:
            self._tuner.record(len(texts), want, time.perf_counter() - t0, sum(len(t) for t in texts))
        return np.asarray(v, dtype=np.float32)

    def close(self) -> None:
        if self._gguf is not None:  # llama.cpp's model and context are freed now, not at collection
            self._gguf.close()
            self._gguf = None
        if self._db is not None:
            self._db.close()
            self._db = None


def _keep_layers(st, n: int, spec: str) -> None:
    """Keep the first n transformer layers of a BERT-style sentence-transformers model."""
    from composer.errors import RoutingError

    auto = getattr(st[0], "auto_model", None)
    layers = getattr(getattr(auto, "encoder", None), "layer", None)
    if layers is None:
        raise RoutingError(f"embedding spec {spec!r}: 'layers' needs a BERT-style model (encoder.layer); "
                           f"{type(auto).__name__} has none")
    if n > len(layers):
        raise RoutingError(f"embedding spec {spec!r}: layers={n}, but the model has {len(layers)}")
    auto.encoder.layer = layers[:n]
    auto.config.num_hidden_layers = n


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _ThreadTuner:
    """Picks the torch thread count for embedding by measuring, not guessing.

    On an idle 2-core machine two threads embed a short prompt 1.3x faster than one and batches
    1.7x faster; on the same machine shared with busy jobs two threads were 3x *slower* (they wait
    on each other for a core). So the choice is made from measured cost: an exponentially
    weighted mean of seconds per input character (plus 64 per text, so one-word prompts do not
    dominate) for 1 thread and for `most` threads, kept apart for single texts and for batches
    (batching alone changes the cost per character). Each option is tried twice first; then the
    cheaper one is used, and every 16th call of a kind (64th when the other measured over 2x
    worse) goes to the other, to notice when the load on the machine changes.
    """

    def __init__(self, most: int, warm: int = 2, probe_every: int = 16, decay: float = 0.8):
        self.options = sorted({1, most})
        self.warm, self.probe_every, self.decay = warm, probe_every, decay
        self.calls = {"single": 0, "batch": 0}
        self.n = {(kind, k): 0 for kind in self.calls for k in self.options}
        self.cost = {(kind, k): 0.0 for kind in self.calls for k in self.options}

    @staticmethod
    def _kind(n_texts: int) -> str:
        return "single" if n_texts <= 1 else "batch"

    def choose(self, n_texts: int = 1) -> int:
        if len(self.options) == 1:
            return self.options[0]
        kind = self._kind(n_texts)
        for k in self.options:
            if self.n[kind, k] < self.warm:
                return k
        best = min(self.options, key=lambda k: self.cost[kind, k])
        other = next(k for k in self.options if k != best)
        # A probe of an option measured far worse (2 threads on a busy CPU: 3-20x) is costly:
        # probe it 4x less often.
        every = self.probe_every * (4 if self.cost[kind, other] > 2 * self.cost[kind, best] else 1)
        if (self.calls[kind] + 1) % every == 0:
            return other
        return best

    def record(self, n_texts: int, threads: int, seconds: float, chars: int) -> None:
        kind = self._kind(n_texts)
        self.calls[kind] += 1
        c = seconds / (chars + 64 * n_texts)
        key = (kind, threads)
        self.cost[key] = c if self.n[key] == 0 else self.decay * self.cost[key] + (1 - self.decay) * c
        self.n[key] += 1

    def stats(self) -> dict:
        """{"single": {threads: {"calls", "s_per_char"}}, "batch": {...}}"""
        return {kind: {k: {"calls": self.n[kind, k], "s_per_char": self.cost[kind, k]}
                       for k in self.options} for kind in self.calls}
