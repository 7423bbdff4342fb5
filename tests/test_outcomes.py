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
from composer.outcomes import OutcomeTable, concat, estimate_tokens, load_prices, parse_score_kinds, read_outcomes

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
    # accuracy by RouterDC's metric: a multiple-choice score counts as right when > 0
    assert t.score_kinds == {"mmlu": "correct_if_positive"}
    assert t.oracle_score() == pytest.approx(sum(max(x["scores"].values()) > 0 for x in raw) / len(raw))
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
        "rows": 3, "scored": 2, "missing": 1, "mean_score": 0.5, "accuracy": 0.5,
        "total_cost": pytest.approx(0.00003), "cost_missing": 1}
    assert s["oracle_score"] == 1.0


def test_cli_summary_bad_file_exits_2(tmp_path):
    register_commands()
    p = tmp_path / "mmlu_bad.csv"
    p.write_text("prompt,modelA\nq,perhaps\n")
    r = CliRunner().invoke(app, ["outcomes", "summary", str(p)])
    assert r.exit_code == 2
    assert "row 1" in r.output and "modelA" in r.output


# -- score kinds: RouterDC's metric -------------------------------------------------------------

# Issue 14's table, RouterDC's metric on RouterDC's own test files (percent).
ISSUE_BEST_SINGLE = {"mmlu_test.json": 59.46, "cmmlu_test.json": 44.72, "gsm8k-test.json": 69.81,
                     "arc_challenge_test.json": 49.43, "humaneval_test.json": 49.39,
                     "MATH_prealgebra.json": 39.72, "mbpp.json": 47.34, "ceval.json": 44.80}
ISSUE_BEST_PER_TASK = {"mmlu_test.json": 64.59, "cmmlu_test.json": 51.77, "gsm8k-test.json": 69.81,
                       "arc_challenge_test.json": 57.95, "humaneval_test.json": 49.39,
                       "MATH_prealgebra.json": 39.72, "mbpp.json": 47.34, "ceval.json": 52.01}


def test_routerdc_reader_sets_score_kind_per_file():
    kinds = {f: read_outcomes(RDC / f).score_kinds for f in ISSUE_BEST_SINGLE}
    assert kinds["mmlu_test.json"] == {"mmlu": "correct_if_positive"}
    assert kinds["ceval.json"] == {"ceval": "correct_if_positive"}
    assert kinds["MATH_prealgebra.json"] == {"MATH_prealgebra": "correct_if_positive"}
    assert kinds["gsm8k-test.json"] == {"gsm8k": "fraction"}
    assert kinds["humaneval_test.json"] == {"humaneval": "fraction"}
    assert kinds["mbpp.json"] == {"mbpp": "fraction"}


def test_issue_table_rows_reproduce_on_routerdc_metric():
    """Best single model (dolphin-2.9, by the in-distribution average) and best model per task."""
    acc = {f: 100 * read_outcomes(RDC / f).accuracies() for f in ISSUE_BEST_SINGLE}
    id_files = list(ISSUE_BEST_SINGLE)[:5]
    id_avg = sum(acc[f] for f in id_files) / 5
    assert id_avg.idxmax() == "cognitivecomputations/dolphin-2.9-llama3-8b"
    assert id_avg.max() == pytest.approx(54.56, abs=0.01)
    for f, want in ISSUE_BEST_SINGLE.items():
        assert acc[f]["cognitivecomputations/dolphin-2.9-llama3-8b"] == pytest.approx(want, abs=0.005), f
    for f, want in ISSUE_BEST_PER_TASK.items():
        assert acc[f].max() == pytest.approx(want, abs=0.005), f
    # the raw mean (what eval reported before score kinds) is not RouterDC's number
    raw = 100 * read_outcomes(RDC / "mmlu_test.json").mean_scores()
    assert abs(raw["cognitivecomputations/dolphin-2.9-llama3-8b"] - 59.46) > 5


def test_score_kind_override_is_checked_against_the_values():
    t = read_outcomes(RDC / "humaneval_test.json")
    assert t.with_score_kinds({"humaneval": "correct_if_positive"}).accuracies().max() > t.accuracies().max()
    with pytest.raises(OutcomeFormatError, match=r"score 0\.\d+ does not fit task 'humaneval''s score kind binary"):
        t.with_score_kinds({"humaneval": "binary"})
    with pytest.raises(OutcomeFormatError, match=r"task\(s\) \['mmlu'\]"):
        t.with_score_kinds({"mmlu": "binary"})
    with pytest.raises(OutcomeFormatError, match="expected TASK=KIND"):
        parse_score_kinds(["humaneval=probability"])
    assert parse_score_kinds(["a=binary,b=graded", "c=fraction"]) == {"a": "binary", "b": "graded", "c": "fraction"}


def test_score_kind_is_inferred_and_round_trips(tmp_path):
    t = OutcomeTable.from_records([
        {"query_id": "q1", "prompt": "a", "task": "judge", "expert": "A", "score": 7},
        {"query_id": "q1", "prompt": "a", "task": "judge", "expert": "B", "score": 3},
        {"query_id": "q2", "prompt": "b", "task": "qa", "expert": "A", "score": 1},
        {"query_id": "q2", "prompt": "b", "task": "qa", "expert": "B", "score": 0},
    ])
    assert t.score_kinds == {"judge": "graded", "qa": "binary"}
    rdc = read_outcomes(RDC / "arc_challenge_test.json")
    rdc.to_jsonl(tmp_path / "arc.jsonl")
    back = read_outcomes(tmp_path / "arc.jsonl")
    assert back.score_kinds == {"arc_challenge": "correct_if_positive"}
    np.testing.assert_allclose(back.accuracies().to_numpy(), rdc.accuracies().to_numpy())


def test_cli_eval_style_score_kind_override_in_summary():
    register_commands()
    r = CliRunner().invoke(app, ["outcomes", "summary", str(RDC / "humaneval_test.json"), "--json",
                                 "--score-kind", "humaneval=correct_if_positive"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["score_kinds"] == {"humaneval": "correct_if_positive"}
    r = CliRunner().invoke(app, ["outcomes", "summary", str(RDC / "humaneval_test.json"), "--score-kind", "humaneval"])
    assert r.exit_code == 2 and "TASK=KIND" in r.output


# -- duplicate rows: merge, or a stated policy --------------------------------------------------

def _split_rows() -> list[dict]:
    """RouterBench-format rows where sample mmlu.a.1 is listed twice: gpt-4 and mixtral's scores in
    one row, WizardLM's in the other (empty where absent), as public files do."""
    g, m, w = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "WizardLM/WizardLM-13B-V1.2"
    rows = routerbench_rows()
    first = dict(rows[0])
    second = dict(rows[0])
    first.update({w: "", f"{w}|model_response": "", f"{w}|total_cost": ""})
    second.update({g: "", m: "", f"{g}|model_response": "", f"{m}|model_response": "",
                   f"{g}|total_cost": "", f"{m}|total_cost": ""})
    return [first, rows[1], second, rows[2]]


def test_complementary_duplicate_rows_merge_and_are_reported(tmp_path):
    path = write_routerbench(tmp_path / "rb.csv", _split_rows())
    t = read_outcomes(path)
    whole = read_outcomes(write_routerbench(tmp_path / "whole.csv", routerbench_rows()))
    assert t.query_ids == whole.query_ids and len(t) == len(whole) == 9
    np.testing.assert_array_equal(t.score_matrix().to_numpy(), whole.score_matrix().to_numpy())
    np.testing.assert_allclose(t.cost_matrix().to_numpy(), whole.cost_matrix().to_numpy())
    rep = t.report[0]
    assert rep["pairs_merged"] == 3 and rep["complementary"] == 3 and rep["conflicts"] == 0
    assert rep["rows_dropped"] == 3
    assert "merged them into one row each (3 complementary" in t.report_lines()[0]


def test_conflicting_duplicates_error_first_mean(tmp_path):
    rows = _split_rows()
    rows[2]["gpt-4-1106-preview"] = "0.0"  # row 3 disagrees with row 1 (1.0) for gpt-4
    path = write_routerbench(tmp_path / "rb.csv", rows)
    with pytest.raises(OutcomeFormatError) as e:
        read_outcomes(path)
    msg = str(e.value)
    assert "rows 1 and 3" in msg and "'gpt-4-1106-preview'" in msg and "mmlu.a.1" in msg and "--on-duplicate" in msg
    first = read_outcomes(path, on_duplicate="first")
    mean = read_outcomes(path, on_duplicate="mean")
    assert first.score_matrix().loc["mmlu.a.1", "gpt-4-1106-preview"] == 1.0
    assert mean.score_matrix().loc["mmlu.a.1", "gpt-4-1106-preview"] == 0.5
    assert mean.report[0]["conflicts"] == 1 and "averaged the values" in mean.report_lines()[0]
    register_commands()
    r = CliRunner().invoke(app, ["outcomes", "summary", str(path)])
    assert r.exit_code == 2 and "rows 1 and 3" in r.output
    r = CliRunner().invoke(app, ["outcomes", "summary", str(path), "--on-duplicate", "mean"])
    assert r.exit_code == 0 and "1 conflicting: averaged the values" in r.output
    r = CliRunner().invoke(app, ["outcomes", "summary", str(path), "--on-duplicate", "last"])
    assert r.exit_code == 2 and "unknown duplicate policy 'last'" in r.output


def test_one_id_for_two_prompts_is_always_an_error(tmp_path):
    rows = _split_rows()
    rows[2]["prompt"] = "a different question"
    path = write_routerbench(tmp_path / "rb.csv", rows)
    for policy in ("error", "first", "mean"):
        with pytest.raises(OutcomeFormatError, match=r"rows 1 and 3, column 'prompt'"):
            read_outcomes(path, on_duplicate=policy)


def test_readers_do_not_import_the_table_module():
    """The import circle outcomes <-> outcome_readers is cut: readers return frames."""
    import subprocess
    import sys

    code = "import sys, composer.outcome_readers; sys.exit('composer.outcomes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
