"""A router fitted on the skills each expert declares in experts.yaml (no outcome data needed).

A pipeline with `profile: declared_skills` routes before anyone has recorded outcomes: every
distinct skill declared by the pool's experts becomes one profile row, scored 1 for the experts
that declare it and 0 for the others. The symbolic router (Symbolic-MoE) then matches a query to
its nearest declared skills by sentence embedding and recruits the expert whose profile fits
best; its reason names those skills. Nothing here is a measured accuracy: the profile says what
the registry's author declared, and the route's reason says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from composer.config import ExpertSpec, PipelineSpec
from composer.errors import RoutingError

# Defaults for the symbolic router on a declared profile: one row per skill, so almost no
# shrinkage towards the global mean, and two nearest skills per query.
DEFAULTS = {"n_skills": 2, "shrinkage": 0.5}


def declared_table(experts: Sequence[ExpertSpec]):
    """The long outcome table of declared skills: (skill, expert, 1.0 if declared else 0.0)."""
    from composer.outcomes import OutcomeTable  # noqa: PLC0415 - pandas loads only when routing

    skills = list(dict.fromkeys(s for e in experts for s in e.skills))
    if not skills:
        raise RoutingError("no expert in the pool declares any skills")
    rows = [{"query_id": f"skill-{i}", "prompt": s, "task": "declared_skills", "expert": e.name,
             "score": 1.0 if s in e.skills else 0.0}
            for i, s in enumerate(skills) for e in experts]
    return OutcomeTable.from_records(rows, source="declared skills"), skills


def fit_declared(pipeline: PipelineSpec, experts: Mapping[str, ExpertSpec]):
    """The pipeline's router, fitted on its experts' declared skills (vocabulary = those skills)."""
    from composer.routers import make_router  # noqa: PLC0415 - routers load embedders lazily

    pool = [experts[name] for name in pipeline.experts]
    table, skills = declared_table(pool)
    params = {**DEFAULTS, **pipeline.params}
    if pipeline.router == "symbolic":
        params.setdefault("vocabulary", skills)
    router = make_router(pipeline.router, **params)
    router.fit(table)
    reason = router.route  # keep the symbolic reason, and say where the profile came from

    def route(queries, **kw):
        decisions = reason(queries, **kw)
        for d in decisions:
            d.reason += " (profile: the skills declared in experts.yaml)"
        return decisions

    router.route = route
    return router
