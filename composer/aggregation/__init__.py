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


def make_aggregator(kind: str = "none", expert: str | None = None, *, registry=None, **params) -> Aggregator:
    """`registry` is the core's `expert_spec(name)`; aggregators that write prompts read the
    aggregator expert's context length and default max_tokens from it."""
    try:
        mod, cls = AGGREGATORS[kind].split(":")
    except KeyError:
        raise ValueError(f"unknown aggregator '{kind}'; known: {', '.join(AGGREGATORS)}") from None
    agg = getattr(importlib.import_module(mod), cls)(expert=expert, **params)
    if registry is not None and hasattr(agg, "bind"):
        agg.bind(registry)
    return agg


__all__ = ["AGGREGATORS", "Aggregator", "NoAggregation", "make_aggregator"]
