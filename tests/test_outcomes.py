"""Outcome tables: every reader against the real files in ../shared/data, missing scores, errors, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from composer.cli.main import app, register_commands
from composer.config import Price
from composer.errors import OutcomeFormatError
from composer.outcomes import OutcomeTable, concat, estimate_tokens, load_prices, read_outcomes

DATA = Path(os.environ.get("COMPOSER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RDC = DATA / "outcomes" / "routerdc-7b"
RLLM = DATA / "outcomes" / "routellm"
RDC_MODELS = [
    "mistralai/Mistral-7B-v0.1", "meta-math/MetaMath-Mistral-7B", "itpossible/Chinese-Mistral-7B-v0.1",
    "HuggingFaceH4/zephyr-7b-beta", "cognitivecomputations/dolphin-2.6-mistral-7b",
    "meta-llama/Meta-Llama-3-8B", "cognitivecomputations/dolphin-2.9-llama3-8b",
]
RLLM_MODELS = ["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"]


def write_routerbench(path: Path, rows: list[dict]) -> Path:
    """A small CSV in RouterBench's public wide format, written by hand."""
    models = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "WizardLM/WizardLM-13B-V1.2"]
    header = ["sample_id", "prompt", "eval_name"] + models
    header += [f"{m}|model_response" for m in models] + [f"{m}|total_cost" for m in models]
    header += ["oracle_model_to_route_to"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def routerbench_rows() -> list[dict]:
    g, m, w = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "WizardLM/WizardLM-13B-V1.2"
    return [
        {"sample_id": "mmlu.a.1", "prompt": "What is 2+2?\nA. 3\nB. 4", "eval_name": "mmlu-math",
         g: "1.0", m: "1.0", w: "0.0", f"{g}|model_response": "B", f"{m}|model_response": "B",
         f"{w}|model_response": "A", f"{g}|total_cost": "0.00031", f"{m}|total_cost": "0.00002",
         f"{w}|total_cost": "0.00001", "oracle_model_to_route_to": w},
        {"sample_id": "mmlu.a.2", "prompt": "Capital of France?", "eval_name": "mmlu-geo",
         g: "True", m: "False", w: "", f"{g}|model_response": "Paris", f"{m}|model_response": "Lyon",
         f"{w}|model_response": "", f"{g}|total_cost": "0.00020", f"{m}|total_cost": "0.00001",
         f"{w}|total_cost": "", "oracle_model_to_route_to": g},
        {"sample_id": "gsm.1", "prompt": "Janet has 3 apples, eats 1. How many?", "eval_name": "gsm8k",
         g: "1", m: "1", w: "1", f"{g}|model_response": "2", f"{m}|model_response": "2",
         f"{w}|model_response": "2", f"{g}|total_cost": "0.00050", f"{m}|total_cost": "0.00003",
         f"{w}|total_cost": "0.00002", "oracle_model_to_route_to": w},
    ]


# -- readers on the real files --------------------------------------------------------------

def test_routerdc_mmlu_test_matches_the_file():
    path = RDC / "mmlu_test.json"
    raw = json.loads(path.read_text())
    t = read_outcomes(path)
    assert t.experts == RDC_MODELS
    assert t.tasks == ["mmlu"]
    assert t.n_queries == len(raw) == 4213
    assert len(t) == 4213 * 7
    for m in RDC_MODELS:
        expect = sum(x["scores"][m] for x in raw) / len(raw)
        assert t.mean_scores()[m] == pytest.approx(expect)
    assert t.oracle_score() == pytest.approx(sum(max(x["scores"].values()) for x in raw) / len(raw))
    assert t.missing_counts().sum() == 0
    assert t.prompts()[0] == raw[0]["question"]


@pytest.mark.parametrize("name,task,n", [
    ("gsm8k-test.json", "gsm8k", 1319), ("gsm8k-train.json", "gsm8k", 1000),
    ("arc_challenge_train.json", "arc_challenge", 820), ("humaneval_test.json", "humaneval", 49),
    ("MATH_prealgebra.json", "MATH_prealgebra", 871),
])
def test_routerdc_task_from_file_name(name, task, n):
    t = read_outcomes(RDC / name)
    assert t.tasks == [task] and t.n_queries == n and t.experts == RDC_MODELS


def test_routellm_mmlu_folder_reads_57_subjects():
    t = read_outcomes(RLLM / "mmlu")
    assert t.experts == RLLM_MODELS
    assert t.tasks == ["mmlu"]
    assert t.n_queries == 14042
    assert len(t) == 2 * 14042
    assert set(t.frame["score"].dropna().unique()) <= {0.0, 1.0}
    # gpt-4 beats Mixtral on MMLU in RouteLLM's own table
    means = t.mean_scores()
    assert means["gpt-4-1106-preview"] > means["mistralai/Mixtral-8x7B-Instruct-v0.1"]


def test_routellm_gsm8k_has_responses():
    t = read_outcomes(RLLM / "gsm8k" / "gsm8k_responses.csv")
    assert t.experts == RLLM_MODELS and t.tasks == ["gsm8k"] and t.n_queries == 1319
    assert t.frame["response"].notna().mean() > 0.99
    row = t.frame.iloc[0]
    assert row["prompt"].startswith("Janet") and "18" in row["response"]


def test_routerbench_wide_csv(tmp_path):
    path = write_routerbench(tmp_path / "routerbench_small.csv", routerbench_rows())
    t = read_outcomes(path)
    assert t.experts == ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "WizardLM/WizardLM-13B-V1.2"]
    assert t.tasks == ["mmlu-math", "mmlu-geo", "gsm8k"]
    assert t.query_ids == ["mmlu.a.1", "mmlu.a.2", "gsm.1"]
    s = t.expert_summary()
    assert s.loc["WizardLM/WizardLM-13B-V1.2", "missing"] == 1
    assert s.loc["WizardLM/WizardLM-13B-V1.2", "mean_score"] == pytest.approx(0.5)  # (0 + 1) / 2, not / 3
    assert s.loc["gpt-4-1106-preview", "total_cost"] == pytest.approx(0.00101)
    assert s.loc["WizardLM/WizardLM-13B-V1.2", "cost_missing"] == 1
    assert t.score_matrix().loc["mmlu.a.2", "mistralai/mixtral-8x7b-chat"] == 0.0
    assert math.isnan(t.score_matrix().loc["mmlu.a.2", "WizardLM/WizardLM-13B-V1.2"])
    assert t.oracle_score() == pytest.approx(1.0)
    assert t.frame.set_index(["query_id", "expert"]).loc[("mmlu.a.1", "gpt-4-1106-preview"), "response"] == "B"


def test_long_jsonl_and_csv_round_trip(tmp_path):
    t = read_outcomes(RDC / "humaneval_test.json")
    t.to_jsonl(tmp_path / "he.jsonl")
    t.to_csv(tmp_path / "he.csv")
    for p in (tmp_path / "he.jsonl", tmp_path / "he.csv"):
        back = read_outcomes(p)
        assert back.experts == t.experts and back.query_ids == t.query_ids
        np.testing.assert_allclose(back.score_matrix().to_numpy(), t.score_matrix().to_numpy())


# -- missing scores -------------------------------------------------------------------------

def test_missing_scores_are_excluded_and_counted():
    t = OutcomeTable.from_records([
        {"query_id": "q1", "prompt": "a", "task": "x", "expert": "A", "score": 1.0},
        {"query_id": "q1", "prompt": "a", "task": "x", "expert": "B", "score": None},
        {"query_id": "q2", "prompt": "b", "task": "x", "expert": "A", "score": 0.0},
        {"query_id": "q2", "prompt": "b", "task": "x", "expert": "B", "score": 1.0},
        {"query_id": "q3", "prompt": "c", "task": "y", "expert": "A", "score": float("nan")},
        {"query_id": "q3", "prompt": "c", "task": "y", "expert": "B", "score": ""},
    ])
    assert t.mean_scores().to_dict() == {"A": 0.5, "B": 1.0}
    assert t.missing_counts().to_dict() == {"A": 1, "B": 2}
    assert t.best_expert() == "B"
    assert t.oracle_score() == pytest.approx(1.0)  # q3 has no score at all: excluded, not 0
    assert t.summary()["queries_without_any_score"] == 1
    m = t.score_matrix()
    assert m.shape == (3, 2) and int(m.isna().sum().sum()) == 3


def test_split_is_by_query_and_keeps_tasks():
    t = concat([read_outcomes(RDC / "humaneval_train.json"), read_outcomes(RDC / "arc_challenge_test.json")])
    train, test = t.split(test_fraction=0.25, seed=3)
    assert set(train.query_ids).isdisjoint(test.query_ids)
    assert set(train.query_ids) | set(test.query_ids) == set(t.query_ids)
    assert set(train.tasks) == set(test.tasks) == {"humaneval", "arc_challenge"}
    assert abs(test.n_queries - 0.25 * t.n_queries) <= 2
    assert len(test) == 7 * test.n_queries  # whole queries, all experts


def test_costs_from_prices_use_a_token_estimate():
    t = read_outcomes(RLLM / "gsm8k" / "gsm8k_responses.csv").sample(20, seed=1)
    assert not t.has_costs
    prices = {"gpt-4-1106-preview": Price(input_per_1m=10.0, output_per_1m=30.0),
              "mistralai/Mixtral-8x7B-Instruct-v0.1": Price(input_per_1m=0.6, output_per_1m=0.6)}
    c = t.with_price_costs(prices)
    row = c.frame[c.frame["expert"] == "gpt-4-1106-preview"].iloc[0]
    expect = (estimate_tokens(row["prompt"]) * 10.0 + estimate_tokens(row["response"]) * 30.0) / 1e6
    assert row["cost"] == pytest.approx(expect)
    costs = c.cost_matrix().sum()
    assert costs["gpt-4-1106-preview"] > 10 * costs["mistralai/Mixtral-8x7B-Instruct-v0.1"]


def test_load_prices_from_plain_yaml_and_experts_yaml(tmp_path):
    p = tmp_path / "prices.yaml"
    p.write_text("gpt-4-1106-preview: {input_per_1m: 10, output_per_1m: 30}\n")
    assert load_prices(p)["gpt-4-1106-preview"].output_per_1m == 30
    reg = tmp_path / "experts.yaml"
    reg.write_text(
        "version: 1\nexperts:\n"
        "  - {name: cheap, backend: fake, model: x, price: {input_per_1m: 0.1, output_per_1m: 0.2}}\n"
        "  - {name: gpt4-replay, backend: fake, model: y, price: {input_per_1m: 10, output_per_1m: 30},\n"
        "     options: {expert: gpt-4-1106-preview}}\n")
    prices = load_prices(reg)
    assert prices["cheap"].output_per_1m == 0.2 and prices["gpt4-replay"].input_per_1m == 10


# -- errors ---------------------------------------------------------------------------------

def test_bad_score_names_file_row_and_column(tmp_path):
    p = tmp_path / "mmlu_bad.csv"
    p.write_text('prompt,modelA,modelB\n"q one",True,False\n"q two",True,maybe\n')
    with pytest.raises(OutcomeFormatError) as e:
        read_outcomes(p)
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and "'modelB'" in msg and "maybe" in msg


def test_routerdc_bad_records(tmp_path):
    p = tmp_path / "x_test.json"
    p.write_text(json.dumps([{"question": "q", "scores": {"a": 1}}, {"question": "r", "scores": {"a": "high"}}]))
    with pytest.raises(OutcomeFormatError, match=r"row 2, column 'scores.a'"):
        read_outcomes(p)
    p.write_text(json.dumps([{"scores": {"a": 1}}]))
    with pytest.raises(OutcomeFormatError, match=r"row 1, column 'question'"):
        read_outcomes(p, format="routerdc")


def test_routerbench_missing_score_column(tmp_path):
    p = tmp_path / "rb.csv"
    p.write_text("prompt,eval_name,m1|model_response,m1|total_cost\nhi,mmlu,x,0.1\n")
    with pytest.raises(OutcomeFormatError, match=r"column 'm1'"):
        read_outcomes(p)


def test_unknown_formats_and_collisions(tmp_path):
    p = tmp_path / "weird.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(OutcomeFormatError, match="unknown CSV outcome format"):
        read_outcomes(p)
    with pytest.raises(OutcomeFormatError, match="not found"):
        read_outcomes(tmp_path / "nope.json")
    t = read_outcomes(RDC / "humaneval_test.json")
    with pytest.raises(OutcomeFormatError, match="more than one table"):
        concat([t, t])


# -- CLI --------------------------------------------------------------------------------------

def test_cli_summary_routerdc():
    register_commands()
    r = CliRunner().invoke(app, ["outcomes", "summary", str(RDC / "mmlu_test.json")])
    assert r.exit_code == 0, r.output
    for m in RDC_MODELS:
        assert m in r.output
    assert "oracle" in r.output and "4213 queries" in r.output


def test_cli_summary_json_routerbench(tmp_path):
    register_commands()
    path = write_routerbench(tmp_path / "rb.csv", routerbench_rows())
    r = CliRunner().invoke(app, ["outcomes", "summary", str(path), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["queries"] == 3
    assert s["experts"]["WizardLM/WizardLM-13B-V1.2"] == {
        "rows": 3, "scored": 2, "missing": 1, "mean_score": 0.5, "total_cost": pytest.approx(0.00003),
        "cost_missing": 1}
    assert s["oracle_score"] == 1.0


def test_cli_summary_bad_file_exits_2(tmp_path):
    register_commands()
    p = tmp_path / "mmlu_bad.csv"
    p.write_text("prompt,modelA\nq,perhaps\n")
    r = CliRunner().invoke(app, ["outcomes", "summary", str(p)])
    assert r.exit_code == 2
    assert "row 1" in r.output and "modelA" in r.output
