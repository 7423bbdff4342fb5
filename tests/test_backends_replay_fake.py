"""The replay backend on real recorded outcomes, and the fake backend's fault injection."""

from __future__ import annotations

import pytest

from composer.backends import make_backend
from composer.config import ExpertSpec
from composer.errors import ExpertLoadError
from composer.types import Query


def test_replay_routellm_gsm8k(shared_data):
    path = shared_data / "outcomes" / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    from composer.outcomes import read_outcomes

    table = read_outcomes(path)
    expert = table.experts[0]
    b = make_backend(ExpertSpec(name="mixtral", backend="replay", model=str(path),
                                options={"expert": expert}))
    row = table.frame[table.frame["expert"] == expert].iloc[3]
    c = b.generate([Query(row["prompt"], id="x"), Query("never asked", id="y")])
    assert c[0].ok and c[0].text == (row["response"] or "")
    assert c[0].score == pytest.approx(row["score"])
    assert c[1].error and "no recorded outcome" in c[1].error


def test_replay_missing_score_is_none(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text('{"query_id": "1", "prompt": "a", "expert": "m", "score": null}\n'
                 '{"query_id": "2", "prompt": "b", "expert": "m", "score": 1.0}\n')
    b = make_backend(ExpertSpec(name="m", backend="replay", model=str(p)))
    c = b.generate([Query("a", id="1"), Query("b", id="2")])
    assert c[0].ok and c[0].score is None and c[1].score == 1.0


def test_replay_unknown_expert(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text('{"query_id": "1", "prompt": "a", "expert": "m", "score": 1}\n')
    with pytest.raises(ExpertLoadError, match="not in"):
        make_backend(ExpertSpec(name="zz", backend="replay", model=str(p))).load()


def test_fake_failure_injection_and_counts():
    b = make_backend(ExpertSpec(name="f", backend="fake", model="x",
                                options={"fail_rate": 0.5, "seed": 1, "fail_on": ["poison"]}))
    out = b.generate([Query(f"q{i}") for i in range(200)] + [Query("poison pill")])
    failed = [c for c in out[:-1] if c.error]
    assert 60 < len(failed) < 140 and all(c.call_error.retryable for c in failed)
    assert out[-1].error and out[-1].call_error.retryable is False
    assert b.load_count == 1 and b.generate_calls == 1


def test_fake_load_failure():
    with pytest.raises(ExpertLoadError, match="injected"):
        make_backend(ExpertSpec(name="f", backend="fake", model="x", options={"fail_load": True})).load()
