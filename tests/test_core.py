"""The Composer core path (route -> schedule -> execute -> aggregate) on the real SmolLM2, with
fake experts only where failures are injected."""

from __future__ import annotations

import pytest

from composer.core import Composer
from composer.errors import BadRequestError
from composer.types import Query


@pytest.fixture(scope="module")
def real(default_config):
    c = Composer.from_yaml(default_config)
    yield c
    c.close()


@pytest.fixture()
def fake(repo_root):
    c = Composer.from_yaml(repo_root / "tests" / "configs" / "fake.yaml")
    yield c
    c.close()


def test_ask_real_model(real):
    ans = real.ask("What is the capital of France?", max_tokens=16)
    assert ans.ok and "paris" in ans.text.lower()
    assert ans.experts == ["smollm2"]
    assert ans.usage.completion_tokens > 0 and ans.usage.latency_s > 0
    assert ans.route.reason == "registry default expert"
    stage = ans.stages[0]
    assert stage["calls"] == 1 and stage["experts"] == ["smollm2"]
    assert real.loaded_experts() == ["smollm2"]


def test_batch_loads_each_expert_once(fake):
    qs = [Query(f"q{i}", id=f"id{i}") for i in range(5)]
    answers = fake.run(qs, pipeline="both")
    assert [a.query_id for a in answers] == [q.id for q in qs]
    assert all(a.ok for a in answers)
    assert answers[0].stages[0]["loads"] == 2  # two experts, each loaded once for the batch
    assert fake.backend("fast").load_count == 1 and fake.backend("slow").load_count == 1
    assert fake.backend("fast").generate_calls == 1  # one batch, not five calls


def test_failed_load_fails_only_its_queries(fake):
    a_ok = fake.run(["x"], expert="fast")[0]
    a_bad = fake.run(["y"], expert="broken")[0]
    assert a_ok.ok and not a_bad.ok
    assert "broken" in a_bad.error and "injected load failure" in a_bad.error


def test_bad_requests(fake):
    with pytest.raises(BadRequestError, match="unknown expert 'nope'"):
        fake.ask("x", expert="nope")
    with pytest.raises(BadRequestError, match="unknown pipeline"):
        fake.ask("x", pipeline="nope")
    with pytest.raises(BadRequestError, match="unique"):
        fake.run([Query("a", id="1"), Query("b", id="1")])
    assert fake.run([]) == []


def test_close_unloads_everything(fake):
    fake.run(["x"], pipeline="both")
    assert set(fake.loaded_experts()) == {"fast", "slow"}
    fake.close()
    assert fake.loaded_experts() == []


def test_stream_mode_reports_loads(fake):
    fake.stream_mode(max_wait_s=0.05)
    a = fake.run(["x", "y"], expert="slow")
    assert all(x.ok for x in a)
    events = a[0].stages[0]["events"]
    loads = [e for e in events if e["event"] in ("load", "unload")]
    assert [e["event"] for e in loads] == ["load"] and loads[0]["expert"] == "slow"
    assert "batch_events" not in a[0].candidates[0].metadata
