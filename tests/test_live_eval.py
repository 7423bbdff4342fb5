"""Live evals on the real SmolLM2: the resumable result store, a run killed mid-way and resumed,
pipelines through the eval, and `composer eval --benchmark`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from composer.errors import BadRequestError
from composer.evals.live import ResultStore, rescore, run_live_eval, select_items, summarise, unique_records

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


@pytest.fixture(scope="module")
def cfg(repo_root):
    return str(repo_root / "tests" / "configs" / "aggregation.yaml")


def rec(item_id, correct=True, **kw):
    return {"schema": "composer.live/1", "benchmark": "mmlu", "split": "test", "run": "smollm2",
            "pipeline": None, "expert": "smollm2", "seed": 0, "max_tokens": 4, "item_id": item_id,
            "correct": correct, "cost": 1e-6, "latency_s": 0.5, "prompt_tokens": 10,
            "completion_tokens": 2, "error": None, **kw}


def test_store_repairs_a_torn_line_and_never_counts_twice(tmp_path):
    s = ResultStore(tmp_path / "r.jsonl")
    s.append(rec("a"))
    s.append(rec("b", correct=False))
    with s.path.open("ab") as f:
        f.write(b'{"item_id": "c", "tor')  # killed mid-write
    assert [r["item_id"] for r in s.records()] == ["a", "b"]
    assert s.repair() == len(b'{"item_id": "c", "tor') and s.path.read_bytes().endswith(b"}\n")
    s.append(rec("a", correct=False))  # a duplicate must not count
    summ = summarise(s.records())
    assert summ["n"] == 2 and summ["correct"] == 1 and summ["accuracy"] == 0.5 and summ["duplicates_ignored"] == 1
    assert [r["item_id"] for r in unique_records(s.records())] == ["a", "b"]


def test_rescore_regrades_from_the_stored_text(tmp_path, shared_data):
    s = ResultStore(tmp_path / "g.jsonl")
    s.append(rec("gsm8k-test-0", correct=False, benchmark="gsm8k", text="The answer is 10 + 8 = 18.",
                 prediction="10", score=0.0, reason="mismatch"))
    s.append(rec("gsm8k-test-1", correct=False, benchmark="gsm8k", text="", error="expert failed"))
    assert rescore(s.path) == {"records": 2, "changed": 1}
    r0, r1 = s.records()
    assert r0["prediction"] == "18" and r0["correct"] is True and r1["correct"] is False
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_line_is_named(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(rec("a")) + "\nnot json\n")
    with pytest.raises(BadRequestError, match=r"r.jsonl:2: not a JSON record"):
        ResultStore(p).records()


def test_selection_is_a_seeded_shuffle(shared_data):
    a = [it.id for _, it in select_items("gsm8k", "test", 10, seed=0)]
    assert a == [it.id for _, it in select_items("gsm8k", "test", 10, seed=0)]
    assert a != [it.id for _, it in select_items("gsm8k", "test", 10, seed=1)]
    assert a[:5] == [it.id for _, it in select_items("gsm8k", "test", 5, seed=0)]  # limits nest


def test_real_run_resume_and_mismatch(tmp_path, cfg):
    out = tmp_path / "mmlu.jsonl"
    s1 = run_live_eval("mmlu", "smollm2", cfg, limit=2, seed=0, out=out, max_tokens=4, progress=False)
    assert s1["n"] == 2 and s1["run"] == "smollm2" and s1["expert"] == "smollm2" and s1["pipeline"] is None
    recs = ResultStore(out).records()
    assert [r["item_id"] for r in recs] == [it.id for _, it in select_items("mmlu", "test", 2, 0)]
    r = recs[0]
    assert r["answer"]["candidates"][0]["usage"]["completion_tokens"] <= 4 and r["completion_tokens"] <= 4
    assert r["gold"] in "ABCD" and isinstance(r["correct"], bool) and r["latency_s"] > 0
    before = out.read_bytes()
    s2 = run_live_eval("mmlu", "smollm2", cfg, limit=2, seed=0, out=out, max_tokens=4, progress=False)
    assert out.read_bytes() == before and s2["n"] == 2  # resumed: nothing re-run, nothing added
    with pytest.raises(BadRequestError, match="holds a different run"):
        run_live_eval("mmlu", "smollm2", cfg, limit=2, seed=1, out=out, max_tokens=4, progress=False)
    s3 = run_live_eval("mmlu", "smollm2", cfg, limit=1, seed=0, out=out, max_tokens=4, resume=False, progress=False)
    assert s3["n"] == 1 and len(list(tmp_path.glob("mmlu.jsonl.*.bak"))) == 1  # old results kept aside


def test_pipeline_through_the_eval(tmp_path, cfg):
    s = run_live_eval("gsm8k", "self-moa", cfg, limit=1, seed=3, out=tmp_path / "g.jsonl", max_tokens=8,
                      progress=False)
    assert s["n"] == 1 and s["pipeline"] == "self-moa"
    r = ResultStore(tmp_path / "g.jsonl").records()[0]
    assert [st["stage"] for st in r["answer"]["stages"]] == ["samples", "aggregate"]
    assert r["completion_tokens"] == sum(c["usage"]["completion_tokens"] for c in r["answer"]["candidates"])
    assert [c["metadata"]["seed"] for c in r["answer"]["stages"][0]["candidates"]] == [3, 4, 5]


def test_killed_run_resumes_with_nothing_lost_or_doubled(tmp_path, cfg, repo_root):
    out = tmp_path / "kill.jsonl"
    limit = 8
    cmd = [sys.executable, "-m", "composer.evals.live", "--benchmark", "mmlu", "--pipeline", "smollm2", "--config", cfg,
           "--limit", str(limit), "--max-tokens", "6", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 540
        while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run wrote fewer than 2 results in 9 minutes"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = out.read_bytes().count(b"\n")
    assert 2 <= done < limit, f"killed after {done} of {limit}"
    with out.open("ab") as f:
        f.write(b'{"schema": "composer.live/1", "item_id": "mml')  # and as if killed mid-write
    kept = out.read_bytes()[: out.read_bytes().rfind(b"\n") + 1]
    res = subprocess.run(cmd, cwd=repo_root, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    after = out.read_bytes()
    assert after.startswith(kept)  # the records of the killed run are untouched
    ids = [r["item_id"] for r in ResultStore(out).records()]
    assert len(ids) == limit == len(set(ids))
    assert set(ids) == {it.id for _, it in select_items("mmlu", "test", limit, 0)}
    assert json.loads(res.stdout)["n"] == limit


def test_composer_eval_benchmark_cli(tmp_path, cfg):
    from composer.cli.main import app, register_commands

    register_commands()
    out = tmp_path / "cli.jsonl"
    r = CliRunner().invoke(app, ["eval", "--benchmark", "mmlu", "--pipeline", "smollm2", "--config", cfg,
                                 "--limit", "1", "--max-tokens", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(ResultStore(out).records()) == 1 and '"n": 1' in r.output
    bad = CliRunner().invoke(app, ["eval", "--benchmark", "nope", "--pipeline", "smollm2", "--config", cfg,
                                   "--out", str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 2 and "unknown benchmark 'nope'" in bad.output
