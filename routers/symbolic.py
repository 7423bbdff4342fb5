"""Symbolic-MoE routing: skills per query -> per-expert skill profiles -> recruit k experts + an aggregator.

After Symbolic-MoE (Chen et al., 2025): every training query gets a few skills; an expert's
profile for a skill is how well it did on the queries needing that skill (Symbolic-MoE's
+1 correct / -1 wrong tally, here as a shrunk accuracy); a new query's experts are ranked by
local suitability (its skills' profile scores) x global competency (overall accuracy), the top k
are recruited, and one aggregator expert (the most competent overall) combines their answers.
Symbolic-MoE recruits k=3; the default here is k=1 so offline comparisons with single-expert
routers are like for like; pipelines set k (and `composer route --k 3` shows a recruitment).

Skills come from either
- ``skills="embedding"`` (default): the query's nearest entries of a skill vocabulary by
  sentence-embedding similarity (`vocabulary` is configurable), or
- ``skills="llm"``: a local LLM (`skill_model`, SmolLM2 by default) writes keywords, which are
  mapped onto the vocabulary by embedding so profiles stay comparable.
"""

from __future__ import annotations

import numpy as np

from composer.errors import RoutingError
from composer.types import Query
from composer.routers.base import Router
from composer.routers.embed import DEFAULT_EMBEDDING

DEFAULT_SKILLS = (
    "arithmetic word problems", "algebra", "geometry", "probability and statistics", "calculus",
    "number theory", "logical reasoning", "commonsense reasoning", "reading comprehension",
    "python programming", "algorithms and data structures", "string manipulation code",
    "mathematical proof", "physics", "chemistry", "biology", "anatomy and medicine", "genetics",
    "nutrition and health", "psychology", "sociology", "economics", "accounting and finance",
    "business and management", "marketing", "law and legal reasoning", "politics and government",
    "international relations", "us history", "european history", "world history", "geography",
    "philosophy", "ethics and morality", "religion", "astronomy", "earth science and weather",
    "computer science", "computer security", "machine learning", "electrical engineering",
    "formal logic", "moral scenarios", "virology and infectious disease", "ecology and environment",
    "everyday science facts", "grade school science", "units and measurement",
    "chinese language and culture", "literature and language", "art and music", "public relations",
    "human development and aging", "sexuality and relationships", "trivia and global facts",
)

_PROMPT = ("List up to three short skills or knowledge areas needed to answer the question, "
           "comma-separated.\n\nQuestion: {q}\n\nSkills:")


class SymbolicMoERouter(Router):
    """Skill-based recruitment of k experts plus an aggregator (Symbolic-MoE)."""

    name = "symbolic"

    def __init__(self, *, skills: str = "embedding", vocabulary: list[str] | None = None, n_skills: int = 3,
                 shrinkage: float = 10.0, min_share: float = 0.05, temperature: float = 0.05,
                 skill_model: str = "embedded:smollm2-135m-instruct", max_llm_queries: int = 200,
                 lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = DEFAULT_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.skills = skills
        self.vocabulary = vocabulary
        self.n_skills = n_skills
        self.shrinkage = shrinkage
        self.min_share = min_share
        self.temperature = temperature
        self.skill_model = skill_model
        self.max_llm_queries = max_llm_queries

    # -- skills -----------------------------------------------------------------------------
    def _skill_weights(self, X: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """(n, V) weights of each vocabulary skill for each query (n_skills non-zero per row)."""
        if self.skills == "llm" and texts is not None:
            sims = self._llm_skill_sims(texts)
        else:
            sims = X @ self.vocab_emb_.T
        m = max(1, min(int(self.n_skills), sims.shape[1]))
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
        W = np.zeros_like(sims)
        vals = np.clip(np.take_along_axis(sims, top, axis=1), 1e-3, None)
        np.put_along_axis(W, top, vals / vals.sum(axis=1, keepdims=True), axis=1)
        return W

    def _llm_skill_sims(self, texts: list[str]) -> np.ndarray:
        """Similarity to the vocabulary of the keywords a local LLM writes for each query."""
        backend = self._skill_backend()
        cands = backend.generate([Query(_PROMPT.format(q=t[:1500]), max_tokens=24, temperature=0.0)
                                  for t in texts])
        sims = np.zeros((len(texts), len(self.vocab_)))
        for i, c in enumerate(cands):
            words = [w.strip(" .\n-*") for w in (c.text or "").replace("\n", ",").split(",")]
            words = [w for w in words if 2 <= len(w) <= 60][:3]
            if not words:  # the LLM gave nothing usable: fall back to the query's own embedding
                sims[i] = self.embedder.encode([texts[i]])[0] @ self.vocab_emb_.T
                continue
            sims[i] = (self.embedder.encode(words) @ self.vocab_emb_.T).max(axis=0)
        return sims

    def _skill_backend(self):
        if getattr(self, "_backend", None) is None:
            from composer.backends import make_backend
            from composer.config import ExpertSpec

            spec = ExpertSpec(name="skill-keywords", backend="llamacpp", model=self.skill_model,
                              generation={"max_tokens": 24, "temperature": 0.0}, options={"n_threads": 2})
            self._backend = make_backend(spec)
            self._backend.load()
        return self._backend

    # -- fit / predict ----------------------------------------------------------------------------
    def _features(self, texts):
        X = super()._features(texts)
        return (X, list(texts)) if self.skills == "llm" else X

    def _fit(self, F, Y, table) -> None:
        if self.skills not in ("embedding", "llm"):
            raise RoutingError(f"symbolic: skills must be 'embedding' or 'llm', got '{self.skills}'")
        X, texts = F if isinstance(F, tuple) else (F, None)
        self.vocab_ = list(self.vocabulary or DEFAULT_SKILLS)
        self.vocab_emb_ = self.embedder.encode(self.vocab_)
        if texts is not None and len(texts) > self.max_llm_queries:
            keep = np.random.default_rng(self.seed).choice(len(texts), self.max_llm_queries, replace=False)
            X, Y, texts = X[keep], Y[keep], [texts[i] for i in keep]
        W = self._skill_weights(X, texts)                            # (n, V)
        obs = ~np.isnan(Y)
        Y0 = np.nan_to_num(Y, nan=0.0)
        g = self.train_means_
        # shrunk per-skill accuracy: (sum w*y + a*g) / (sum w + a), only over observed scores
        num = W.T @ Y0 + self.shrinkage * g[None, :]                  # (V, E)
        den = W.T @ obs.astype(float) + self.shrinkage
        self.profile_ = num / den
        # Symbolic-MoE's tally in its own units: sum over queries of w * (+1 right / -1 wrong)
        self.tally_ = W.T @ np.where(obs, 2 * Y0 - 1, 0.0)
        self.competency_ = g / max(float(g.max()), 1e-9)
        self.aggregator_index_ = int(np.argmax(g))

    def _predict_explained(self, F):
        X, texts = F if isinstance(F, tuple) else (F, None)
        W = self._skill_weights(X, texts)
        local = W @ self.profile_                                       # (n, E) suitability
        S = local * self.competency_[None, :]
        notes = []
        for w in W:
            top = np.argsort(-w)[: self.n_skills]
            notes.append("skills: " + ", ".join(self.vocab_[j] for j in top if w[j] > 0))
        return S, notes

    def _predict(self, X):
        return self._predict_explained(X)[0]

    def select(self, S, C, *, lam=None, k=None, budget=None, **_):
        picks = super().select(S, C, lam=lam, k=k, budget=budget)
        if self.min_share <= 0:
            return picks
        out = []
        for i, p in enumerate(picks):
            z = S[i, p] / max(self.temperature, 1e-6)
            share = np.exp(z - z.max())
            share /= share.sum()
            out.append([j for j, sh in zip(p, share) if sh >= self.min_share or j == p[0]])
        return out

    def route(self, queries, *, k=None, lam=None, budget=None):
        decisions = super().route(queries, k=k, lam=lam, budget=budget)
        agg = self.experts_[self.aggregator_index_]
        for d in decisions:
            if len(d.experts) > 1:
                d.aggregator, d.aggregator_expert = "moa", agg
                d.reason += f"; aggregator {agg} (highest global competency)"
        return decisions
