"""`composer router train`, `composer route`, `composer bench router`, `composer eval` via CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from routers_helpers import embedder, routellm_gsm8k  # noqa: F401 - fixture
from typer.testing import CliRunner

from composer.cli.main import app, register_commands


@pytest.fixture(scope="module")
def files(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("router_cli")
    routellm_gsm8k(120, seed=5).to_csv(d / "gsm8k_small.csv")
    (d / "prices.yaml").write_text(
        "gpt-4-1106-preview: {input_per_1m: 10, output_per_1m: 30}\n"
        "mistralai/Mixtral-8x7B-Instruct-v0.1: {input_per_1m: 0.6, output_per_1m: 0.6}\n")
    return d


@pytest.fixture(scope="module")
def cli(request):
    register_commands()
    runner = CliRunner()
    cache = str(request.config.cache.mkdir("composer-home"))

    def run(*args):
        return runner.invoke(app, [str(a) for a in args], env={"COMPOSER_HOME": cache})
    return run


def test_eval_offline_writes_results(cli, files):
    out = files / "eval"
    r = cli("eval", "--outcomes", files / "gsm8k_small.csv", "--router", "best_single,knn", "--router", "cascade",
            "--prices", files / "prices.yaml", "--test-fraction", "0.4", "--points", "5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "APGR" in r.output and "knn" in r.output and "best single expert" in r.output
    res = json.loads((out / "results.json").read_text())
    assert list(res["routers"]) == ["best_single", "knn", "cascade"]
    assert res["cost_unit"] == "usd" and "aiq" in res and "pair" in res
    assert (out / "curves.png").exists() and (out / "decisions.jsonl").exists()


def test_eval_errors_exit_2(cli, files):
    r = cli("eval", "--outcomes", files / "gsm8k_small.csv", "--router", "nope")
    assert r.exit_code == 2 and "unknown router" in r.output
    r = cli("eval", "--router", "knn")
    assert r.exit_code == 2 and "--outcomes" in r.output
    r = cli("eval", "--outcomes", files / "no_such_*.csv")
    assert r.exit_code == 2 and "no file matches" in r.output


def test_train_route_and_bench(cli, files):
    saved = files / "knn_router"
    r = cli("router", "train", "--outcomes", files / "gsm8k_small.csv", "--router", "knn", "--out", saved,
            "--prices", files / "prices.yaml", "--calibrate-share", "0.3", "-P", "n_neighbors=15")
    assert r.exit_code == 0, r.output
    assert "calibrated lam" in r.output and (saved / "router.json").exists()
    assert json.loads((saved / "router.json").read_text())["params"]["n_neighbors"] == 15
    r = cli("route", "Tom has 3 boxes of 12 pencils. How many pencils?", "--router", saved, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["router"] == "knn" and d["experts"][0] in d["scores"] and d["reason"]
    r = cli("route", "Tom has 3 boxes of 12 pencils. How many pencils?", "--router", saved, "--lam", "0")
    assert r.exit_code == 0 and "reason: knn:" in r.output
    out = files / "bench.json"
    r = cli("bench", "router", "--router", saved, "--outcomes", files / "gsm8k_small.csv",
            "--n-single", "5", "--n-batch", "40", "--batch-size", "20", "--out", out)
    assert r.exit_code == 0, r.output
    b = json.loads(out.read_text())
    assert b["single_query_ms"]["n"] == 5 and b["batched_qps"] > 0 and b["n_batch_queries"] == 40
    assert "single-query p50" in r.output


def test_route_unknown_router_folder(cli, files):
    r = cli("route", "hi", "--router", files / "missing")
    assert r.exit_code == 2 and "no router.json" in r.output


def test_eval_live_mode_calls_the_live_runner(cli, files):
    """--benchmark switches `composer eval` to a live run on a real model (SmolLM2, one item)."""
    out = files / "live.jsonl"
    r = cli("eval", "--benchmark", "gsm8k", "--expert", "smollm2", "--limit", "1", "--max-tokens", "16",
            "--out", out, "--no-resume")
    assert r.exit_code == 0, r.output
    assert out.exists() and len(out.read_text().splitlines()) == 1


def test_eval_on_a_routerbench_csv_uses_its_own_costs(cli, files):
    """RouterBench's wide format carries per-query costs: the eval needs no --prices."""
    import csv

    from composer.config import Price

    t = routellm_gsm8k(120, seed=5).with_price_costs({
        "gpt-4-1106-preview": Price(input_per_1m=10, output_per_1m=30),
        "mistralai/Mixtral-8x7B-Instruct-v0.1": Price(input_per_1m=0.6, output_per_1m=0.6)})
    models = t.experts
    S, C = t.score_matrix(), t.cost_matrix()
    resp = t.frame.pivot(index="query_id", columns="expert", values="response")
    q = t.queries()
    path = files / "routerbench_gsm8k.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "prompt", "eval_name", *models, *[f"{m}|model_response" for m in models],
                    *[f"{m}|total_cost" for m in models], "oracle_model_to_route_to"])
        for qid in t.query_ids:
            w.writerow([qid, q.at[qid, "prompt"], "gsm8k", *[S.at[qid, m] for m in models],
                        *[resp.at[qid, m] for m in models], *[C.at[qid, m] for m in models], models[0]])
    out = files / "eval_rb"
    r = cli("eval", "--outcomes", path, "--router", "best_single,knn", "--test-fraction", "0.4",
            "--points", "5", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["cost_unit"] == "usd" and res["tasks"] == ["gsm8k"]
    strong_cost = res["singles"]["gpt-4-1106-preview"]["cost"]
    assert strong_cost == pytest.approx(float(C.loc[res_ids(out), "gpt-4-1106-preview"].sum()))


def res_ids(out) -> list[str]:
    return sorted({json.loads(line)["query_id"] for line in (out / "decisions.jsonl").read_text().splitlines()})


@pytest.fixture(scope="module")
def routerdc_small(tmp_path_factory):
    """RouterDC's folder layout with the first records of each real file (same names)."""
    from routers_helpers import RDC

    from composer.evals.router_table import ID_FILES, OOD_FILES, TRAIN_FILES

    d = tmp_path_factory.mktemp("routerdc_small")
    for name in [*TRAIN_FILES, *ID_FILES.values(), *OOD_FILES.values()]:
        records = json.loads((RDC / name).read_text())
        (d / name).write_text(json.dumps(records[:14]))
    return d


def test_router_table_on_routerdc_layout(cli, routerdc_small, tmp_path):
    out = tmp_path / "table.json"
    r = cli("router", "table", "--data", routerdc_small, "--router", "best_single,knn", "--out", out)
    assert r.exit_code == 0, r.output
    for label in ("best single model", "best model per task", "RouterDC, published", "composer `knn`",
                  "| MMLU | CMMLU | GSM8K | ARC-C | HumanEval | ID avg | PreAlgebra | MBPP | C-EVAL | OOD avg |"):
        assert label in r.output
    res = json.loads(out.read_text())
    assert res["score_kinds"]["mmlu"] == "correct_if_positive" and res["score_kinds"]["mbpp"] == "fraction"
    rows = res["rows"]
    single = next(v for k, v in rows.items() if k.startswith("best single"))
    per_task = rows["best model per task (needs the task label)"]
    for col in res["columns"]:
        assert per_task[col] >= single[col] - 1e-9
        assert rows["oracle"][col] >= per_task[col] - 1e-9
    # paired bootstrap intervals, printed and written: each holds its row's own average
    assert "95 % bootstrap intervals" in r.output and "vs best per task" in r.output
    iv = res["intervals"]
    assert set(iv) == {k for k in rows if k.startswith(("best", "composer"))}
    for name, row_iv in iv.items():
        for g in ("id_avg", "ood_avg"):
            assert row_iv[g][0] <= rows[name][g] <= row_iv[g][1], (name, g)
    assert "id_avg_vs_reference" not in iv["best model per task (needs the task label)"]
    d = iv[next(k for k in iv if k.startswith("best single"))]["id_avg_vs_reference"]
    assert d[0] == pytest.approx(single["id_avg"] - per_task["id_avg"], abs=0.02) and d[1] <= d[0] <= d[2]
    r = cli("router", "table", "--data", tmp_path / "nowhere", "--router", "knn")
    assert r.exit_code == 2 and "nowhere" in r.output
    r = cli("router", "table", "--data", routerdc_small, "--router", "nope")
    assert r.exit_code == 2 and "unknown router" in r.output


def test_eval_score_kind_override_errors_exit_2(cli, routerdc_small):
    train, test = routerdc_small / "humaneval_train.json", routerdc_small / "humaneval_test.json"
    r = cli("eval", "--outcomes", train, "--test", test, "--router", "best_single", "--no-sweep",
            "--score-kind", "humaneval=binary")
    assert r.exit_code == 2 and "score kind binary" in r.output
    r = cli("eval", "--outcomes", train, "--test", test, "--router", "best_single", "--no-sweep",
            "--score-kind", "gsm8k=fraction")
    assert r.exit_code == 2 and "['gsm8k']" in r.output
    r = cli("eval", "--outcomes", train, "--test", test, "--router", "best_single", "--no-sweep",
            "--score-kind", "humaneval=correct_if_positive")
    assert r.exit_code == 0 and "humaneval correct_if_positive" in r.output


def test_eval_leave_one_task_out(cli, routerdc_small, tmp_path):
    """--cv-by-task: each task is scored by routers that never saw it."""
    from composer.outcomes import read_outcomes

    files = [routerdc_small / f for f in ("mmlu_train.json", "gsm8k-train.json", "humaneval_train.json")]
    out = tmp_path / "loto"
    r = cli("eval", "--outcomes", *[x for f in files for x in ("--outcomes", f)][1:], "--cv-by-task",
            "--router", "best_single,knn", "--no-sweep", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["cv"] == "task" and res["n_test_queries"] == 42
    t = read_outcomes(files)
    experts, tasks = list(t.experts), np.asarray(t.task_of().tolist())
    Y = t.credit_matrix(experts).to_numpy(dtype=float)
    for task in ("mmlu", "gsm8k", "humaneval"):  # the best expert on the *other* tasks, scored on this one
        others = Y[tasks != task]
        pick = int(np.argmax(np.nanmean(others, axis=0)))
        got = res["routers"]["best_single"]["default"]["task_accuracy"][task]
        assert got == pytest.approx(float(np.nanmean(Y[tasks == task, pick])))
    r = cli("eval", "--outcomes", files[0], "--cv-by-task", "--router", "knn", "--no-sweep")
    assert r.exit_code == 2 and "needs 2 tasks or more" in r.output
    r = cli("eval", "--outcomes", files[0], "--test", files[1], "--cv-by-task", "--router", "knn")
    assert r.exit_code == 2 and "--cv-by-task" in r.output
