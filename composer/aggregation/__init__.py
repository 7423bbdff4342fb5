"""Aggregation: none, Mixture-of-Agents, Self-MoA, sequential Self-MoA, voting.

`make_aggregator(spec)` builds one from an experts.yaml AggregatorSpec. Modules load lazily.
"""

from __future__ import annotations

import importlib

from composer.aggregation.base import Aggregator, NoAggregation

AGGREGATORS = {
    "none": "composer.aggregation.base:NoAggregation",
    "moa": "composer.aggregation.moa:MoA",
    "self_moa": "composer.aggregation.moa:SelfMoA",
    "self_moa_seq": "composer.aggregation.moa:SelfMoASeq",
    "vote": "composer.aggregation.vote:Vote",
}


def aggregator_class(kind: str) -> type[Aggregator]:
    try:
        mod, cls = AGGREGATORS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown aggregator '{kind}'; known: {', '.join(AGGREGATORS)}") from None
    return getattr(importlib.import_module(mod), cls)


def unknown_params(kind: str, params: dict) -> list[str]:
    """The keys of `params` that aggregator `kind` does not read (a typo, most likely)."""
    return sorted(set(params) - aggregator_class(kind).PARAMS)


def make_aggregator(kind: str = "none", expert: str | None = None, *, registry=None, **params) -> Aggregator:
    """`registry` is the core's `expert_spec(name)`; aggregators that write prompts read the
    aggregator expert's context length and default max_tokens from it."""
    bad = unknown_params(kind, params)
    if bad:
        raise ValueError(f"aggregator '{kind}' has no parameter {', '.join(map(repr, bad))}; "
                         f"known: {', '.join(sorted(aggregator_class(kind).PARAMS)) or '(none)'}")
    agg = aggregator_class(kind)(expert=expert, **params)
    if registry is not None and hasattr(agg, "bind"):
        agg.bind(registry)
    return agg


__all__ = ["AGGREGATORS", "Aggregator", "NoAggregation", "aggregator_class", "make_aggregator", "unknown_params"]
