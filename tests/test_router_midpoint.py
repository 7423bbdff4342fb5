"""The mid-cost check: a router's cost-quality hull versus the zero router's, halfway between the
cheapest and the most expensive single expert (hand-made curves with known answers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from composer.evals.router_metrics import hull_value_at, midpoint_gain

# two single experts: weak (cost 1, 0.6) and strong (cost 9, 0.8); mid cost 5, zero router 0.7 there
SINGLES = np.array([[1.0, 0.6], [9.0, 0.8]])


def test_zero_router_is_the_chord_between_two_experts():
    m = midpoint_gain({}, SINGLES)
    assert m["cost"] == pytest.approx(5.0)
    assert m["zero_router"] == pytest.approx(0.7)
    assert m["routers"] == {}


def test_router_above_below_and_on_the_hull():
    curves = {
        # reaches strong quality at cost 5: 0.8 - 0.7 = +0.1
        "good": np.array([[1.0, 0.6], [5.0, 0.8], [9.0, 0.8]]),
        # only mixes the two (its points on the chord): gain 0
        "chord": np.array([[1.0, 0.6], [3.0, 0.65], [9.0, 0.8]]),
        # a point under the chord is dropped by the hull: still the chord, gain 0
        "dip": np.array([[1.0, 0.6], [5.0, 0.62], [9.0, 0.8]]),
        # worse than either expert at every cost: 0.5 -> 0.7 linear, at 5: 0.6, gain -0.1
        "bad": np.array([[1.0, 0.5], [9.0, 0.7]]),
    }
    m = midpoint_gain(curves, SINGLES)
    gains = {k: v["gain"] for k, v in m["routers"].items()}
    assert gains["good"] == pytest.approx(0.1)
    assert gains["chord"] == pytest.approx(0.0, abs=1e-12)
    assert gains["dip"] == pytest.approx(0.0, abs=1e-12)
    assert gains["bad"] == pytest.approx(-0.1)
    assert m["routers"]["good"]["quality"] == pytest.approx(0.8)


def test_hull_is_flat_past_its_last_point_and_undefined_before_its_first():
    # a router whose points all cost <= 3: flat at its best (0.75) beyond, as AIQ extends it
    cheap = np.array([[1.0, 0.6], [3.0, 0.75]])
    assert hull_value_at(cheap, 5.0) == pytest.approx(0.75)
    assert midpoint_gain({"cheap": cheap}, SINGLES)["routers"]["cheap"]["gain"] == pytest.approx(0.05)
    # a router that never costs less than 6 cannot run at cost 5: NaN, not a made-up value
    pricey = np.array([[6.0, 0.9], [9.0, 0.95]])
    assert math.isnan(hull_value_at(pricey, 5.0))
    assert math.isnan(midpoint_gain({"pricey": pricey}, SINGLES)["routers"]["pricey"]["gain"])


def test_three_experts_and_a_non_increasing_tail():
    # singles: (0, 0.2), (4, 0.8), (10, 0.7): the hull stops at its peak (4, 0.8), then flat;
    # mid cost (0 + 10) / 2 = 5 -> zero router 0.8
    singles = np.array([[0.0, 0.2], [4.0, 0.8], [10.0, 0.7]])
    curves = {"r": np.array([[0.0, 0.2], [2.0, 0.7], [5.0, 0.9]])}
    m = midpoint_gain(curves, singles)
    assert m["cost"] == pytest.approx(5.0)
    assert m["zero_router"] == pytest.approx(0.8)
    assert m["routers"]["r"]["gain"] == pytest.approx(0.1)
    # between hull points the value is linear: at cost 1 the router's hull is 0.45
    assert hull_value_at(curves["r"], 1.0) == pytest.approx(0.45)
