"""Sentence embeddings for routers, cached per prompt on disk.

`Embedder("embedded:all-minilm-l6-v2")` (the default, shipped as a wheel) or any local
sentence-transformers folder. Vectors are L2-normalised float32. Every vector is cached on disk
keyed by (model id, sha256 of the text), so training, evaluation and benchmarks embed each
prompt once; a per-instance memory cache makes repeated lookups in one process free.

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
_MEMORY_LIMIT = 200_000  # vectors kept in memory per Embedder (~300 MB at 384 floats)


def default_cache_dir() -> Path:
    """$COMPOSER_HOME/embeddings, default ~/.cache/composer/embeddings."""
    home = os.environ.get("COMPOSER_HOME") or str(Path.home() / ".cache" / "composer")
    return Path(home) / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Embedder:
    """Embeds texts with a sentence-transformers model; caches vectors on disk and in memory.

    model: "embedded:all-minilm-l6-v2" or a local sentence-transformers folder.
    cache_dir: where the SQLite vector cache lives (None: `default_cache_dir()`); cache=False
    disables the disk cache (the memory cache still works).
    """

    def __init__(self, model: str = DEFAULT_EMBEDDING, *, cache_dir: str | Path | None = None,
                 cache: bool = True, batch_size: int = 16, device: str = "cpu",
                 max_seq_length: int | None = 256, threads: int | None = 1):
        self.model = model
        self.cache_dir = cache_dir
        self.cache = cache
        self.batch_size = batch_size  # small batches: long prompts gain nothing from big ones on CPU
        self.device = device
        self.max_seq_length = max_seq_length
        self.threads = threads  # torch threads while embedding; 1 is fastest on a shared CPU. None: torch default
        self._st = None
        self._db: sqlite3.Connection | None = None
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    # -- model --------------------------------------------------------------------------------
    def load(self) -> "Embedder":
        if self._st is None:
            from composer.models import resolve_model_path
            from composer.offline import ensure_offline

            ensure_offline()
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bar in CLI output
            path = resolve_model_path(self.model)
            self._st = SentenceTransformer(str(path), device=self.device)
            if self.max_seq_length:
                self._st.max_seq_length = self.max_seq_length
        return self

    @property
    def model_id(self) -> str:
        """What the cache is keyed by: the model name plus its sequence limit."""
        return f"{self.model}|max_seq={self.max_seq_length}"

    @property
    def dim(self) -> int:
        self.load()
        return int(self._st.get_sentence_embedding_dimension())

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

    def _compute(self, texts: list[str]) -> np.ndarray:
        self.load()
        import torch

        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            v = self._st.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        finally:
            if self.threads:
                torch.set_num_threads(before)
        return np.asarray(v, dtype=np.float32)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
