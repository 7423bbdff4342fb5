"""`composer collect`: real llama.cpp experts on benchmark questions (graded by gold answers),
fake experts at scale (scheduling and loads; the fake backend is for scale and timing only),
the store's resume rules, and bad input (exit 2 naming what and where)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from composer.cli.main import register_commands
from composer.collect import OutcomeStore, benchmark_prompts, collect, grade_reference, jsonl_prompts
from composer.core import Composer
from composer.errors import BadRequestError
from composer.outcomes import read_outcomes

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args):
    return runner.invoke(register_commands(), list(map(str, args)))


# -- real models ------------------------------------------------------------------------------

def test_two_real_llamacpp_experts_on_gsm8k_and_mmlu(tmp_path):
    out = tmp_path / "real.jsonl"
    items = benchmark_prompts(["gsm8k", "mmlu"], limit=2, seed=0)
    assert [p.task for p in items] == ["gsm8k", "gsm8k", "mmlu", "mmlu"]
    experts = ["smollm2", "gemma3-270m"]
    with Composer.from_yaml(REPO / "experts.yaml") as c:
        report = collect(c, items, experts, OutcomeStore(out), max_tokens={"smollm2": 32, "gemma3-270m": 32},
                         chunk_size=2)
        assert report.failed == [] and report.pairs_written == 8 and report.chunks == 2
        # two chunks, yet each local model loaded once: the scheduler kept both resident
        assert report.loads == report.lower_bound == 2
        again = collect(c, items, experts, OutcomeStore(out), max_tokens={"smollm2": 32, "gemma3-270m": 32})
        assert again.pairs_before == 8 and again.pairs_written == 0 and again.loads == 0
    rows = OutcomeStore(out).rows()
    assert len(rows) == 8 == len(out.read_text().splitlines())
    for r in rows:
        assert r["score"] in (0.0, 1.0) and r["grader"] == "gold" and r["reason"]
        assert r["tokens"] == r["prompt_tokens"] + r["completion_tokens"] > 0
        assert r["latency"] > 0 and r["cost"] > 0 and r["max_tokens"] == 32
    # the table `router train` and `eval` read
    table = read_outcomes(out)
    assert table.n_queries == 4 and sorted(table.experts) == sorted(experts)
    assert sorted(table.tasks) == ["gsm8k", "mmlu"]


# -- scale (fake experts: scheduling only) ------------------------------------------------------

def _fake_registry(tmp_path: Path, budget: int | None = None, gen_s: float = 0.0) -> Path:
    cfg = tmp_path / "fake.yaml"
    settings = f"settings: {{memory_budget_bytes: {budget}}}\n" if budget else ""
    cfg.write_text(textwrap.dedent("""\
        # fake experts: scale and scheduling tests only (composer/backends/fake.py)
        version: 1
        """) + settings + textwrap.dedent(f"""\
        experts:
          - name: small
            backend: fake
            model: fake
            price: {{input_per_1m: 1.0, output_per_1m: 1.0}}
            options: {{reply: "Answer: 7", load_s: 0.05, gen_s: {gen_s}, footprint_bytes: 1000}}
          - name: large
            backend: fake
            model: fake
            price: {{input_per_1m: 10.0, output_per_1m: 10.0}}
            options: {{reply: "{{text}}", load_s: 0.05, gen_s: {gen_s}, footprint_bytes: 1000}}
          - name: api
            backend: fake
            model: fake
            options: {{reply: "Answer: 7", remote: true}}
        """))
    return cfg


def _numbers(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "numbers.jsonl"
    p.write_text("".join(json.dumps({"id": f"n{i}", "prompt": f"Say {i % 10}", "reference": str(i % 10),
                                     "task": "even" if i % 2 == 0 else "odd"}) + "\n" for i in range(n)))
    return p


def test_scale_every_expert_on_every_prompt_loads_each_local_model_once(tmp_path):
    items = jsonl_prompts(_numbers(tmp_path, 600))
    out = tmp_path / "scale.jsonl"
    experts = ["small", "large", "api"]
    with Composer.from_yaml(_fake_registry(tmp_path)) as c:
        report = collect(c, items, experts, OutcomeStore(out), max_tokens={e: 16 for e in experts}, chunk_size=50)
    assert report.failed == [] and report.pairs_written == 1800 and report.chunks == 12
    assert report.loads == report.lower_bound == 2  # 12 chunks, 2 local models, the API never "loads"
    table = read_outcomes(out)
    means = table.mean_scores()
    # "Answer: 7" is right exactly for prompts ending in 7; "large" echoes "Say d" -> its final number d
    assert means["small"] == pytest.approx(60 / 600) and means["api"] == pytest.approx(60 / 600)
    assert means["large"] == 1.0
    assert table.oracle_score() == 1.0


def test_a_budget_too_small_for_both_models_reports_the_extra_loads(tmp_path):
    items = jsonl_prompts(_numbers(tmp_path, 40))
    with Composer.from_yaml(_fake_registry(tmp_path, budget=1500)) as c:
        report = collect(c, items, ["small", "large"], OutcomeStore(tmp_path / "o.jsonl"),
                         max_tokens={"small": 4, "large": 4}, chunk_size=10)
    assert report.failed == [] and report.lower_bound == 2
    # only one model fits: each chunk loads what the previous one evicted, and the report says so
    assert report.loads > report.lower_bound
    assert report.loads == sum(1 for _ in report.load_events)


def test_failed_calls_write_no_rows_and_are_retried_by_the_next_run(tmp_path):
    cfg = _fake_registry(tmp_path)
    items = jsonl_prompts(_numbers(tmp_path, 10))
    out = tmp_path / "o.jsonl"
    broken = cfg.read_text().replace('reply: "Answer: 7", load_s', 'reply: "Answer: 7", fail_on: ["Say 3"], load_s')
    cfg.write_text(broken)
    with Composer.from_yaml(cfg) as c:
        report = collect(c, items, ["small"], OutcomeStore(out), max_tokens={"small": 4})
    assert [f["query_id"] for f in report.failed] == ["n3"] and len(OutcomeStore(out).rows()) == 9
    cfg.write_text(broken.replace(', fail_on: ["Say 3"]', ""))
    with Composer.from_yaml(cfg) as c:
        report = collect(c, items, ["small"], OutcomeStore(out), max_tokens={"small": 4})
    assert report.failed == [] and report.pairs_written == 1 and len(OutcomeStore(out).rows()) == 10


# -- the store ------------------------------------------------------------------------------------

def test_store_cuts_a_torn_line_and_never_counts_a_pair_twice(tmp_path):
    s = OutcomeStore(tmp_path / "s.jsonl")
    s.append([{"query_id": "a", "expert": "x", "score": 1.0}, {"query_id": "b", "expert": "x", "score": 0.0}])
    with s.path.open("a") as f:
        f.write('{"query_id": "c", "expert": "x", "sco')  # a kill mid-write
    assert [r["query_id"] for r in s.rows()] == ["a", "b"]
    assert s.repair() > 0 and s.path.read_text().endswith("\n")
    s.append([{"query_id": "a", "expert": "x", "score": 0.0}])  # a duplicate: first row wins
    assert [(r["query_id"], r["score"]) for r in s.rows()] == [("a", 1.0), ("b", 0.0)]


def test_resuming_a_different_run_is_refused(tmp_path):
    s = OutcomeStore(tmp_path / "s.jsonl")
    meta = {"prompts": {"benchmarks": ["gsm8k"]}, "split": "test", "seed": 0, "grader": "gold", "judge": None,
            "judge_mode": None, "reference_expert": None, "experts": ["a"], "max_tokens": {"a": 32}}
    s.check_and_write_meta(meta)
    merged = s.check_and_write_meta({**meta, "experts": ["b"], "max_tokens": {"b": 64}})  # adding an expert is fine
    assert merged["experts"] == ["a", "b"] and merged["max_tokens"] == {"a": 32, "b": 64}
    with pytest.raises(BadRequestError, match="holds a different run.*seed"):
        s.check_and_write_meta({**meta, "seed": 1})
    with pytest.raises(BadRequestError, match="max_tokens"):
        s.check_and_write_meta({**meta, "max_tokens": {"a": 16}})


def test_reference_grading():
    assert grade_reference("42", "so the total is 42 apples")["score"] == 1.0
    assert grade_reference("1,234", "Answer: 1234")["score"] == 1.0
    assert grade_reference("B", "The answer is (B).")["score"] == 1.0
    assert grade_reference("B", "Answer: C")["score"] == 0.0
    assert grade_reference("Paris", "The capital of France is Paris.")["score"] == 1.0
    assert grade_reference("Paris", "Lyon")["score"] == 0.0
    assert grade_reference("42", "no idea")["reason"] == "no answer found"


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("not json", "p.jsonl:2: not a JSON object"),
    ('["a"]', "p.jsonl:2: expected a JSON object"),
    ('{"prompt": ""}', "p.jsonl:2: field 'prompt' must be a non-empty string"),
    ('{"prompt": "x", "answer": "y"}', "p.jsonl:2: unknown field(s) ['answer']"),
    ('{"prompt": "ok", "id": "a"}', "p.jsonl:2: id 'a' repeats line 1"),
])
def test_bad_prompt_lines_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "first", "id": "a"}\n' + line + "\n")
    with pytest.raises(BadRequestError) as e:
        jsonl_prompts(p)
    assert message in str(e.value)


@pytest.mark.parametrize("args, message", [
    ([], "give a prompt set"),
    (["--benchmark", "gsm8k", "--prompts", "x.jsonl"], "give a prompt set"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--benchmark", "gsm8k", "--experts", "ghost"], "unknown expert 'ghost'"),
    (["--benchmark", "gsm8k", "--judge", "ghost"], "unknown expert 'ghost'"),
    (["--benchmark", "gsm8k", "--max-tokens", "lots"], "--max-tokens 'lots'"),
    (["--benchmark", "gsm8k", "--max-tokens", "ghost=3"], "'ghost' is not a collected expert"),
    (["--benchmark", "gsm8k", "--judge", "smollm2", "--judge-mode", "elo"], "judge mode 'elo'"),
    (["--benchmark", "gsm8k", "--judge", "smollm2", "--judge-mode", "pairwise"], "reference expert"),
    (["--prompts", "missing.jsonl"], "prompt file not found"),
])
def test_cli_bad_input_exits_2_naming_the_problem(tmp_path, args, message):
    res = cli("collect", *args, "--config", REPO / "experts.yaml", "--out", tmp_path / "o.jsonl")
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_prompts_without_references_need_a_judge(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "Write a haiku."}\n')
    res = cli("collect", "--prompts", p, "--experts", "smollm2", "--config", REPO / "experts.yaml",
              "--out", tmp_path / "o.jsonl", "--no-progress")
    assert res.exit_code == 2 and "grade them with --judge" in res.output


def test_cli_resuming_a_store_of_another_run_exits_2(tmp_path):
    cfg = _fake_registry(tmp_path)
    prompts = _numbers(tmp_path, 4)
    base = ["collect", "--prompts", prompts, "--experts", "small", "--config", cfg, "--out", tmp_path / "o.jsonl",
            "--no-progress"]
    first = cli(*base, "--max-tokens", "4")
    assert first.exit_code == 0, first.output
    assert "4 new outcomes" in first.output and "model loads: 1 (lower bound 1" in first.output
    res = cli(*base, "--max-tokens", "8")
    assert res.exit_code == 2 and "holds a different run" in res.output
    fresh = cli(*base, "--max-tokens", "8", "--no-resume")
    assert fresh.exit_code == 0 and "kept the old store as" in fresh.output
    assert list(tmp_path.glob("o.jsonl.*.bak"))  # the old results are kept, never deleted


# -- resume after SIGKILL (a real subprocess) -------------------------------------------------------

def test_resume_after_sigkill_loses_nothing_and_doubles_nothing(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from composer.backends.server import die_with_parent

    cfg = _fake_registry(tmp_path, gen_s=0.02)  # 2 x 200 calls x 20 ms: a few seconds of work
    prompts = _numbers(tmp_path, 200)
    out = tmp_path / "killed.jsonl"
    exe = str(Path(sys.executable).with_name("composer"))
    cmd = [exe, "collect", "--prompts", str(prompts), "--experts", "small,large", "--config", str(cfg),
           "--out", str(out), "--chunk-size", "10", "--max-tokens", "4", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= 60:  # a few chunks are stored
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stored = OutcomeStore(out).rows()
    assert 60 <= len(stored) < 400
    with out.open("a") as f:
        f.write('{"query_id": "n199", "expert": "small", "sc')  # as if the kill landed mid-write
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(stored)} already stored" in res.stdout
    lines = out.read_text().splitlines()
    keys = [(json.loads(ln)["query_id"], json.loads(ln)["expert"]) for ln in lines]
    assert len(keys) == len(set(keys)) == 400  # every pair once: nothing lost, nothing doubled
    assert [r["response"] for r in OutcomeStore(out).rows()[: len(stored)]] == [r["response"] for r in stored]
    assert read_outcomes(out).n_queries == 200


def test_routing_report_joins_eval_decisions_with_measured_tokens_and_time(tmp_path):
    from composer.collect.report import markdown, routing_report

    items = jsonl_prompts(_numbers(tmp_path, 40))
    out = tmp_path / "o.jsonl"
    with Composer.from_yaml(_fake_registry(tmp_path)) as c:
        collect(c, items, ["small", "large"], OutcomeStore(out), max_tokens={"small": 4, "large": 4})
    res = cli("eval", "--outcomes", out, "--test-fraction", "0.5", "--router", "best_single,oracle", "--no-sweep",
              "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    rep = routing_report([out], tmp_path / "ev" / "decisions.jsonl", large="large")
    assert rep["test_queries"] == 20
    alone = {x["name"]: x for x in rep["experts"]}
    routed = {x["name"]: x for x in rep["routers"]}
    assert alone["large"]["accuracy"] == 1.0 and alone["large"]["share_large"] == 1.0
    assert alone["small"]["share_large"] == 0.0
    # "large" is right everywhere, so both routers send everything to it and cost what it costs
    assert routed["best_single"]["share_large"] == 1.0 == routed["oracle"]["accuracy"]
    assert routed["best_single"]["mean_tokens"] == alone["large"]["mean_tokens"] > 0
    assert "| best_single | 1.0 |" in markdown(rep)
