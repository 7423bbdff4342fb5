"""RouteLLM's MT-Bench folder (question.jsonl + judgements.jsonl) as an outcome table, scored the
way RouteLLM's `MTBench` benchmark scores it: the routed model's mean judge grade over a
question's turns, routing on the first turn."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from composer.errors import OutcomeFormatError
from composer.outcome_readers import detect_format, read_mt_bench
from composer.outcomes import load_prices, read_outcomes
from routers_helpers import embedder  # noqa: F401 - fixture

DATA = Path(os.environ.get("COMPOSER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MTB = DATA / "outcomes" / "routellm" / "mt_bench"
GPT4, MIXTRAL = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
PRICES = Path(__file__).resolve().parents[1] / "evals" / "prices" / "routellm.yaml"

needs_data = pytest.mark.skipif(not (MTB / "judgements.jsonl").is_file(), reason="shared MT-Bench data not present")


@needs_data
def test_folder_is_detected_and_read_as_one_table():
    assert detect_format(MTB) == "mt_bench"
    assert detect_format(MTB / "judgements.jsonl") == "mt_bench"
    t = read_outcomes(MTB)
    assert t.n_queries == 80 and sorted(t.experts) == sorted([GPT4, MIXTRAL])
    assert t.tasks == ["mt_bench"] and t.score_kinds == {"mt_bench": "graded"}
    assert t.frame["score"].notna().all()
    # the router sees the first turn only (RouteLLM: "Only use first turn for routing")
    questions = pd.read_json(MTB / "question.jsonl", lines=True)
    first = dict(zip("mt_bench:" + questions["question_id"].astype(str), questions["turns"].str[0]))
    assert t.queries()["prompt"].to_dict() == first


@needs_data
def test_scores_follow_routellm_mean_over_turns():
    """RouteLLM merges judgements on (question_id, routed model) and averages `score` over all
    rows (both turns); composer's per-question score is that mean / 10."""
    t = read_outcomes(MTB)
    j = pd.read_json(MTB / "judgements.jsonl", lines=True)
    for model in (GPT4, MIXTRAL):
        routellm = j.loc[j["model"] == model, "score"].mean()  # get_model_accuracy: one model for all
        assert t.accuracies()[model] * 10 == pytest.approx(routellm, abs=1e-12)
    # one question by hand: 81's two turns for GPT-4
    g = j[(j["question_id"] == 81) & (j["model"] == GPT4)]
    assert len(g) == 2
    s = t.score_matrix().loc["mt_bench:81", GPT4]
    assert s == pytest.approx(g["score"].mean() / 10)
    # a routed mix: RouteLLM's mean over the merged rows equals the mean of per-question scores
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 2, size=80)
    qids = sorted(j["question_id"].unique())
    routed = pd.DataFrame({"question_id": qids, "routed_model": np.where(pick == 1, GPT4, MIXTRAL)})
    merged = routed.merge(j, left_on=["question_id", "routed_model"], right_on=["question_id", "model"])
    assert len(merged) == 160
    S = t.score_matrix()
    ours = np.mean([S.loc[f"mt_bench:{q}", m] for q, m in zip(routed["question_id"], routed["routed_model"])])
    assert ours * 10 == pytest.approx(merged["score"].mean(), abs=1e-12)


@needs_data
def test_responses_are_the_answers_and_prices_make_gpt4_dearer():
    t = read_outcomes(MTB)
    r = t.frame.set_index(["query_id", "expert"])["response"]
    assert r.notna().all()
    # question 81's first GPT-4 answer is the blog post, its second starts every sentence with A
    assert "Hawaii" in r.loc[("mt_bench:81", GPT4)]
    priced = t.with_price_costs(load_prices(PRICES))
    cost = priced.cost_matrix()
    assert cost.notna().all().all()
    assert (cost[GPT4] > 10 * cost[MIXTRAL]).all()


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "mt_bench"
    d.mkdir()
    for f in ("question.jsonl", "judgements.jsonl"):
        shutil.copy(MTB / f, d / f)
    return d


def _edit_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _set(field, value):
    def edit(line):
        rec = json.loads(line)
        rec[field] = value
        return json.dumps(rec)
    return edit


@needs_data
@pytest.mark.parametrize("file,line,edit,needle", [
    ("judgements.jsonl", 5, lambda s: s[:40], "line 5: invalid JSON"),
    ("judgements.jsonl", 7, _set("score", 11), "line 7, field 'score': 11"),
    ("judgements.jsonl", 3, _set("score", "ten"), "line 3, field 'score'"),
    ("judgements.jsonl", 9, _set("question_id", 9999), "line 9, field 'question_id': 9999 is not in question.jsonl"),
    ("judgements.jsonl", 2, _set("turn", 3), "line 2, field 'turn': 3"),
    ("judgements.jsonl", 4, _set("model", None), "line 4, field 'model': missing"),
    ("question.jsonl", 6, _set("turns", []), "line 6, field 'turns'"),
    ("question.jsonl", 8, _set("question_id", 81), "line 8: question_id 81 repeats line 1"),
    ("question.jsonl", 2, lambda s: "[1, 2]", "line 2: expected a JSON object"),
])
def test_malformed_rows_name_file_and_line(tmp_path, file, line, edit, needle):
    d = _copy(tmp_path)
    _edit_line(d / file, line, edit)
    with pytest.raises(OutcomeFormatError) as err:
        read_outcomes(d)
    assert str(d / file) in str(err.value) and needle in str(err.value)


@needs_data
def test_duplicate_judgement_names_both_lines(tmp_path):
    d = _copy(tmp_path)
    lines = (d / "judgements.jsonl").read_text(encoding="utf-8").splitlines()
    (d / "judgements.jsonl").write_text("\n".join(lines + [lines[0]]) + "\n", encoding="utf-8")
    with pytest.raises(OutcomeFormatError, match=r"line 321: .* already judged on line 1"):
        read_mt_bench(d)


@needs_data
def test_failed_or_absent_judgement_is_missing_not_zero(tmp_path):
    d = _copy(tmp_path)
    j = [json.loads(x) for x in (d / "judgements.jsonl").read_text(encoding="utf-8").splitlines()]
    first = j[0]  # FastChat writes -1 when it cannot parse the judge's grade
    _edit_line(d / "judgements.jsonl", 1, _set("score", -1))
    # drop one turn of another (question, model) altogether
    other = next(i for i, r in enumerate(j) if (r["question_id"], r["model"]) != (first["question_id"], first["model"]))
    kept = [x for i, x in enumerate((d / "judgements.jsonl").read_text(encoding="utf-8").splitlines()) if i != other]
    (d / "judgements.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    S = read_outcomes(d).score_matrix()
    assert np.isnan(S.loc[f"mt_bench:{first['question_id']}", first["model"]])
    assert np.isnan(S.loc[f"mt_bench:{j[other]['question_id']}", j[other]["model"]])
    assert S.notna().sum().sum() == 160 - 2


def test_a_plain_jsonl_is_still_long(tmp_path):
    p = tmp_path / "judgements.jsonl"  # no question.jsonl beside it: not MT-Bench
    p.write_text(json.dumps({"prompt": "q", "expert": "a", "score": 1}) + "\n", encoding="utf-8")
    assert detect_format(p) == "long"
    assert read_outcomes(p).n_queries == 1


# -- 80 questions: k-fold cross-fitted evaluation (composer eval --cv K) --------------------------

def test_kfold_positions_partition_every_task_evenly():
    from composer.evals.router_eval import kfold_positions

    tasks = np.array(["a"] * 10 + ["b"] * 7)
    folds = kfold_positions(tasks, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(17))
    assert [len(f) for f in folds] == [6, 6, 5]
    for f in folds:  # each task spread over the folds (3 or 4 of a, 2 or 3 of b)
        assert 3 <= (tasks[f] == "a").sum() <= 4 and 2 <= (tasks[f] == "b").sum() <= 3
    assert [f.tolist() for f in kfold_positions(tasks, 3, seed=0)] == [f.tolist() for f in folds]


@needs_data
def test_cv_scores_every_query_with_out_of_fold_predictions(embedder):
    from composer.evals.router_eval import evaluate

    t = read_outcomes(MTB).with_price_costs(load_prices(PRICES))
    res = evaluate(t, None, ["best_single", "knn", "oracle"], cv=4, seed=0, embedder=embedder,
                   n_points=5, progress=lambda m: None, params={"knn": {"n_neighbors": 1}})
    assert res["cv"] == 4 and res["n_test_queries"] == 80 and res["n_train_queries"] == 60
    acc = t.accuracies()
    assert res["routers"]["best_single"]["default"]["accuracy"] == pytest.approx(acc[GPT4])
    assert res["routers"]["oracle"]["default"]["accuracy"] == pytest.approx(t.oracle_score())
    # a 1-nearest-neighbour router that had seen the query would copy its own scores (the oracle);
    # cross-fitted, it never sees it: clearly below the oracle
    assert res["routers"]["knn"]["default"]["accuracy"] < t.oracle_score() - 0.005
    assert "midpoint" in res and "gain" in res["midpoint"]["all"]["routers"]["knn"]
    with pytest.raises(Exception, match="test table or cv"):
        evaluate(t, t, ["best_single"], cv=4, embedder=embedder, progress=lambda m: None)
