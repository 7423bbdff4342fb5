"""Answers from recorded outcomes: the recorded response, score and cost of one expert.

Lets routers and pipelines be evaluated offline on real outcome tables, with no model runs.
`model` is an outcome file (any format `composer.outcomes.read_outcomes` reads); `options.expert`
names the expert column in that table (default: this expert's name). A query is matched by
`metadata["outcome_query_id"]`, then by its id, then by its exact prompt text; a query with no
recorded outcome gets a clear per-query error, and a missing score stays None (never 0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from composer.backends.base import Backend
from composer.errors import ExpertLoadError
from composer.runtime.errors import failure
from composer.types import Delta, Candidate, Query, Usage


class ReplayBackend(Backend):
    remote = True  # nothing to hold in memory worth scheduling

    def __init__(self, spec, base_dir=None):
        super().__init__(spec, base_dir)
        self._by_id: dict[str, dict] | None = None
        self._by_prompt: dict[str, dict] | None = None

    def _path(self) -> Path:
        p = Path(self.spec.model).expanduser()
        return p if p.is_absolute() or self.base_dir is None else Path(self.base_dir) / p

    def _load(self) -> None:
        from composer.errors import OutcomeFormatError
        from composer.outcomes import read_outcomes

        try:
            table = read_outcomes(self._path())
        except (OutcomeFormatError, FileNotFoundError) as exc:
            raise ExpertLoadError(f"cannot read outcomes: {exc}", expert=self.name) from None
        source = self.spec.options.get("expert", self.name)
        if source not in table.experts:
            raise ExpertLoadError(f"expert '{source}' is not in {self._path()} (it has: "
                                  f"{', '.join(table.experts)}); set options.expert", expert=self.name)
        rows = table.frame[table.frame["expert"] == source].to_dict("records")
        self._by_id = {r["query_id"]: r for r in rows}
        self._by_prompt = {r["prompt"]: r for r in rows}

    def _unload(self) -> None:
        self._by_id = self._by_prompt = None

    def _row(self, q: Query) -> dict | None:
        key = q.metadata.get("outcome_query_id")
        return (self._by_id.get(str(key)) if key is not None else None) \
            or self._by_id.get(q.id) or self._by_prompt.get(q.text)

    def _generate(self, queries: list[Query], on_delta=None) -> list[Candidate]:
        out = []
        for q in queries:
            t0 = time.perf_counter()
            r = self._row(q)
            if r is None:
                out.append(failure(q.id, self.name, "not_recorded",
                                   f"expert '{self.name}': no recorded outcome for query '{q.id}' in {self._path()}"))
                continue
            score = None if r["score"] is None or (isinstance(r["score"], float) and math.isnan(r["score"])) \
                else float(r["score"])
            cost = r["cost"]
            pt = max(1, len(q.text) // 4)
            text = r["response"] or ""
            ct = max(1, len(text) // 4) if text else 0
            if cost is None or (isinstance(cost, float) and math.isnan(cost)):
                cost = self.cost(pt, ct)
            if on_delta is not None and text:
                on_delta(Delta(q.id, self.name, text))
            out.append(Candidate(q.id, self.name, text, Usage(pt, ct, float(cost), time.perf_counter() - t0),
                                 finish_reason="replay", score=score,
                                 metadata={"outcome_query_id": r["query_id"], "task": r["task"]}))
        return out
