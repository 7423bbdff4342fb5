"""Router commands: `router train`, `route`, `bench router`, and `eval` (offline or live)."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.main import app, bench_app, router_app
from composer.errors import ComposerError

EXIT_USAGE = 2


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def expand_paths(values: List[str] | None) -> list[str]:
    """Repeated options, comma-separated lists and (quoted) glob patterns, in order."""
    out: list[str] = []
    for v in values or []:
        for part in (p.strip() for p in v.split(",")):
            if not part:
                continue
            hits = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
            if not hits:
                _fail(f"no file matches '{part}'", EXIT_USAGE)
            out.extend(hits)
    return out


def parse_params(values: List[str] | None, routers: list[str]) -> dict[str, dict]:
    """`--param knn.n_neighbors=30` (one router) or `--param lam=0.1` (every router)."""
    import yaml

    params: dict[str, dict] = {r: {} for r in routers}
    for item in values or []:
        if "=" not in item:
            _fail(f"--param '{item}': expected key=value or router.key=value", EXIT_USAGE)
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if "." in key and key.split(".", 1)[0] in params:
            r, k = key.split(".", 1)
            params[r][k] = value
        else:
            for r in routers:
                params[r][key] = value
    return params


def _read(paths: list[str], fmt: str, prices: Optional[Path], tasks: list[str] | None = None,
          score_kinds: list[str] | None = None, on_duplicate: str = "error"):
    from composer.outcomes import load_prices, parse_score_kinds, read_outcomes

    table = read_outcomes(paths, format=fmt, on_duplicate=on_duplicate)
    for line in table.report_lines():
        typer.echo(f"note: {line}", err=True)
    if score_kinds:  # tasks a table lacks are checked by _check_kinds_named over all tables read
        present = {t: k for t, k in parse_score_kinds(score_kinds).items() if t in table.tasks}
        if present:
            table = table.with_score_kinds(present)
    if tasks:
        unknown = sorted(set(tasks) - set(table.tasks))
        if unknown:
            _fail(f"task(s) {unknown} not in {', '.join(paths)}; tasks there: {', '.join(table.tasks)}", EXIT_USAGE)
        table = table.filter(tasks=tasks)
    if prices is not None:
        table = table.with_price_costs(load_prices(prices))
    return table


def _check_kinds_named(score_kinds: list[str] | None, *tables) -> None:
    """Every task a --score-kind names must be in one of the tables read."""
    from composer.outcomes import parse_score_kinds

    known = {t for tb in tables for t in tb.tasks}
    unknown = sorted(set(parse_score_kinds(score_kinds or [])) - known)
    if unknown:
        _fail(f"--score-kind names task(s) {unknown} that the outcomes do not have; tasks there: "
              f"{', '.join(sorted(known))}", EXIT_USAGE)


OUTCOMES_OPT = typer.Option(None, "--outcomes", help="Training outcome files/folders (repeat, comma-separate or quote a glob).")
PRICES_OPT = typer.Option(None, "--prices", help="experts.yaml or {expert: price} YAML: fills missing costs from a token estimate.")
FORMAT_OPT = typer.Option("auto", "--format", help="Outcome format: auto, routerdc, routellm, routerbench, mt_bench, long.")
PARAM_OPT = typer.Option(None, "--param", "-P", help="Router parameter key=value (or router.key=value); repeatable.")
SCORE_KIND_OPT = typer.Option(None, "--score-kind", help="TASK=KIND: how TASK's scores count as accuracy "
                              "(correct_if_positive, fraction, binary, graded); repeatable or comma-separated.")
DUPLICATE_OPT = typer.Option("error", "--on-duplicate", help="When a file gives one (query, expert) two different "
                             "values: error (default), first or mean. Complementary rows always merge.")


@router_app.command("train")
def train(
    outcomes: List[str] = OUTCOMES_OPT,
    router: str = typer.Option(..., "--router", "-r", help="Router name (see `composer router list`)."),
    out: Path = typer.Option(..., "--out", help="Folder to save the fitted router in."),
    prices: Optional[Path] = PRICES_OPT,
    fmt: str = FORMAT_OPT,
    param: List[str] = PARAM_OPT,
    calibrate_cost: Optional[float] = typer.Option(None, help="Calibrate lam so the mean cost per query is at most this (on a held-out 20%)."),
    calibrate_share: Optional[float] = typer.Option(None, help="Calibrate lam so at most this share of calls go to the priciest expert."),
    seed: int = typer.Option(0, help="Seed for the calibration split and the router."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated)."),
    score_kind: List[str] = SCORE_KIND_OPT,
    on_duplicate: str = DUPLICATE_OPT,
):
    """Fit a router on outcome tables and save it (it learns each task's accuracy by its score kind)."""
    from composer.routers import make_router

    paths = expand_paths(outcomes)
    if not paths:
        _fail("give training outcomes with --outcomes", EXIT_USAGE)
    try:
        table = _read(paths, fmt, prices, [t for t in tasks.split(",") if t] if tasks else None,
                      score_kind, on_duplicate)
        _check_kinds_named(score_kind, table)
        params = parse_params(param, [router])[router]
        params.setdefault("seed", seed)
        r = make_router(router, **params)
        cal = None
        if calibrate_cost is not None or calibrate_share is not None:
            fit_t, cal_t = table.split(0.2, seed=seed)
            r.fit(fit_t)
            cal = r.calibrate(cal_t.prompts(), target_cost=calibrate_cost, expensive_share=calibrate_share)
        else:
            r.fit(table)
        r.save(out)
    except ComposerError as exc:
        _fail(str(exc), EXIT_USAGE)
    typer.echo(f"trained '{router}' on {table.n_queries} queries x {len(r.experts_)} experts "
               f"({', '.join(table.tasks)}); saved to {out}")
    for e, m, c in zip(r.experts_, r.train_means_, r.expert_costs_):
        typer.echo(f"  {e:<48} train mean {m:.4f}  mean cost {c:.3g}")
    if cal is not None:
        typer.echo(f"calibrated lam = {cal:.6g}")


@router_app.command("list")
def list_routers():
    """The router names `--router` accepts."""
    from composer.routers import ROUTERS, router_class

    for name in ROUTERS:
        doc = (router_class(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<12} {doc[0] if doc else ''}")


@app.command("route")
def route(
    question: str = typer.Argument(..., help="The query to route."),
    router: Path = typer.Option(..., "--router", "-r", help="A saved router folder (from `composer router train`)."),
    k: Optional[int] = typer.Option(None, help="Experts per query (default: the router's)."),
    lam: Optional[float] = typer.Option(None, help="Cost weight: maximise score - lam x cost."),
    budget: Optional[float] = typer.Option(None, help="Maximum expected cost per query."),
    as_json: bool = typer.Option(False, "--json", help="Print the RouteDecision as JSON."),
):
    """Print the experts a saved router picks for QUESTION, with its reason."""
    from composer.routers import load_router

    try:
        d = load_router(None, router).route([question], k=k, lam=lam, budget=budget)[0]
    except ComposerError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    typer.echo(f"experts: {', '.join(d.experts)}")
    if d.aggregator:
        typer.echo(f"aggregator: {d.aggregator}" + (f" by {d.aggregator_expert}" if d.aggregator_expert else ""))
    typer.echo(f"reason: {d.reason}")
    for e in sorted(d.scores, key=lambda x: -d.scores[x]):
        typer.echo(f"  {e:<48} predicted {d.scores[e]:.4f}  cost {d.costs.get(e, 0):.3g}")


@bench_app.command("router")
def bench_router(
    router: str = typer.Option(..., "--router", "-r", help="A saved router folder, or a router name to fit on --outcomes."),
    outcomes: List[str] = OUTCOMES_OPT,
    n_single: int = typer.Option(100, help="Single-query calls to time."),
    n_batch: int = typer.Option(1024, help="Queries in the batched run."),
    batch_size: int = typer.Option(256, help="Queries per route() call in the batched run."),
    threads: Optional[int] = typer.Option(None, help="Torch threads while embedding (default: the embedder's, tuned by measurement between 1 and every CPU up to 4; 1: best on a busy CPU; 0: torch's own)."),
    out: Path = typer.Option(Path("runs/bench_router.json"), "--out", help="JSON file for the numbers."),
):
    """Routing overhead: p50 single-query latency and batched queries/s on fresh prompts."""
    from composer.evals.bench_router import run_bench
    from composer.routers import Router, make_router

    paths = expand_paths(outcomes)
    if not paths:
        _fail("give --outcomes: their prompts are the benchmark queries", EXIT_USAGE)
    try:
        table = _read(paths, "auto", None)
        if Path(router).is_dir():
            r = Router.load(router)
        else:
            train, _ = table.split(0.5, seed=0)
            r = make_router(router).fit(train)
        run_bench(r, table.prompts(), n_single=n_single, n_batch=n_batch, batch_size=batch_size,
                  threads=threads, out=out, progress=typer.echo)
    except (ComposerError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    typer.echo(f"wrote {out}")


@app.command("eval")
def eval_cmd(
    outcomes: List[str] = OUTCOMES_OPT,
    test: List[str] = typer.Option(None, "--test", "-t", help="Held-out outcome files (default: a split of --outcomes)."),
    router: List[str] = typer.Option(None, "--router", "-r", help="Router names to evaluate (repeat or comma-separate; 'all')."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Trace each router's cost-quality curve."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json, decisions.jsonl, curves.png (live: the JSONL store)."),
    prices: Optional[Path] = PRICES_OPT,
    fmt: str = FORMAT_OPT,
    param: List[str] = PARAM_OPT,
    test_fraction: float = typer.Option(0.3, help="Held-out share when --test is not given."),
    cv: int = typer.Option(0, "--cv", help="K-fold cross-fitting instead of one split: each query is scored by a "
                           "router trained on the other K-1 folds, all queries scored (small tables)."),
    cv_by_task: bool = typer.Option(False, "--cv-by-task", help="Leave one task out: each task's queries are scored "
                                    "by a router trained on the other tasks only (transfer to unseen tasks)."),
    points: int = typer.Option(20, help="Points per sweep curve."),
    strong: Optional[str] = typer.Option(None, help="Strong expert for RouteLLM's metrics (default: the better of a pair)."),
    weak: Optional[str] = typer.Option(None, help="Weak expert for RouteLLM's metrics."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated), in train and test."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary rows as JSON."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Live mode: run this benchmark on real models."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Live mode: the pipeline (or expert) to run."),
    expert: Optional[str] = typer.Option(None, "--expert", help="Live mode: a single expert baseline."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Live mode: registry file."),
    limit: Optional[int] = typer.Option(None, help="Live mode: number of benchmark items."),
    max_tokens: Optional[int] = typer.Option(None, help="Live mode: max new tokens per answer."),
    seed: int = typer.Option(0, help="Seed (split, routers; live: item order)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Live mode: skip items already in the store."),
    score_kind: List[str] = SCORE_KIND_OPT,
    on_duplicate: str = DUPLICATE_OPT,
):
    """Evaluate routers offline on recorded outcomes, or (--benchmark) a pipeline live on real models."""
    if benchmark is not None:
        from composer.evals.live import run_live_eval

        kwargs = dict(benchmark=benchmark, pipeline=pipeline, config=config, limit=limit, seed=seed,
                      out=out, resume=resume)
        if expert is not None:
            kwargs["expert"] = expert
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        try:
            summary = run_live_eval(**kwargs)
        except ComposerError as exc:
            _fail(str(exc), EXIT_USAGE)
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    _offline_eval(outcomes, test, router, sweep, out, prices, fmt, param, test_fraction, points,
                  strong, weak, as_json, seed, tasks, score_kind, on_duplicate, cv, cv_by_task)


def _offline_eval(outcomes, test, router, sweep, out, prices, fmt, param, test_fraction, points,
                  strong, weak, as_json, seed, tasks, score_kind=None, on_duplicate="error", cv=0,
                  cv_by_task=False) -> None:
    from composer.evals.router_eval import evaluate
    from composer.routers import ROUTERS

    train_paths, test_paths = expand_paths(outcomes), expand_paths(test)
    if not train_paths:
        _fail("offline eval needs --outcomes (or --benchmark for a live run)", EXIT_USAGE)
    names = [n for v in (router or ["all"]) for n in v.split(",") if n]
    if "all" in names:
        names = list(ROUTERS)
    if cv and test_paths:
        _fail("--cv cross-fits on --outcomes alone; drop --test (or --cv)", EXIT_USAGE)
    if cv_by_task and (test_paths or cv):
        _fail("--cv-by-task scores --outcomes by leaving each task out; drop --test and --cv", EXIT_USAGE)
    if cv == 1 or cv < 0:
        _fail(f"--cv {cv}: give 2 folds or more (0: one split by --test-fraction)", EXIT_USAGE)
    unknown = [n for n in names if n not in ROUTERS]
    if unknown:
        _fail(f"unknown router(s) {unknown}; known: {', '.join(ROUTERS)}", EXIT_USAGE)
    try:
        only = [t for t in tasks.split(",") if t] if tasks else None
        train_t = _read(train_paths, fmt, prices, only, score_kind, on_duplicate)
        if test_paths:
            test_t = _read(test_paths, fmt, prices, only, score_kind, on_duplicate)
        elif cv or cv_by_task:
            test_t = None
        else:
            train_t, test_t = train_t.split(test_fraction, seed=seed)
        _check_kinds_named(score_kind, *[t for t in (train_t, test_t) if t is not None])
        params = parse_params(param, names)
        for p in params.values():
            p.setdefault("seed", seed)
        res = evaluate(train_t, test_t, names, params=params, sweep=sweep, n_points=points, out_dir=out,
                       strong=strong, weak=weak, progress=lambda m: typer.echo(m, err=as_json), cv=cv, seed=seed,
                       cv_by_task=cv_by_task)
    except ComposerError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps(res["summary"], indent=2))
        return
    print_summary(res)
    if out is not None:
        typer.echo(f"wrote {out}/results.json, {out}/decisions.jsonl, {out}/curves.png, {out}/accuracy.png")


def print_summary(res) -> None:
    b, o = res["best_single"], res["oracle"]
    if res.get("cv") == "task":
        how = (f"leave one task out: each task scored by routers trained on the others (up to "
               f"{res['n_train_queries']} queries); all {res['n_test_queries']} queries scored")
    elif res.get("cv"):
        how = f"{res['cv']}-fold cross-fitted: ~{res['n_train_queries']} train -> all {res['n_test_queries']} queries"
    else:
        how = f"{res['n_train_queries']} train -> {res['n_test_queries']} test queries"
    typer.echo(f"\n{how}; tasks {', '.join(res['tasks'])}")
    kinds = {**res.get("score_kinds", {}).get("train", {}), **res.get("score_kinds", {}).get("test", {})}
    if kinds:
        typer.echo("accuracy by score kind: " + ", ".join(f"{t} {k}" for t, k in kinds.items() if t in res["tasks"]))
    typer.echo(f"best single expert: {b['expert']} task-avg {b['task_average']:.4f}; oracle task-avg {o['task_average']:.4f}")
    cols = ["router", "task_avg", "pooled", "gap_closed", "cost", "APGR", "CPT50", "AIQ", "gain@mid"]
    typer.echo("  ".join(f"{c:>11}" for c in cols))
    for row in res["summary"]:
        vals = [row["router"], _f(row["task_average"]), _f(row["accuracy"]), _f(row["oracle_gap_closed"]),
                f"{row['cost']:.4g}", _f(row.get("apgr")), _f(row.get("cpt50"), 2), _f(row.get("aiq_all"), 4),
                _f(row.get("gain_at_mid_cost"), 4)]
        typer.echo("  ".join(f"{v:>11}" for v in vals))
    if "aiq" in res:
        typer.echo(f"zero router (single experts mixed by cost) AIQ: all {_f(res['aiq']['all']['zero_router'])}, "
                   f"task mean {_f(res['aiq']['task_mean']['zero_router'])}")
    mid = res.get("midpoint", {}).get("all")
    if mid:
        typer.echo(f"gain@mid: router's cost-quality hull minus the zero router's ({_f(mid['zero_router'])}) at "
                   f"cost {mid['cost']:.4g}, halfway between the cheapest and the priciest single expert")
    if "pair" in res:
        typer.echo(f"APGR/CPT: RouteLLM's definitions with strong={res['pair']['strong']}, weak={res['pair']['weak']}")


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


@router_app.command("table")
def table_cmd(
    router: List[str] = typer.Option(None, "--router", "-r", help="Routers to fit and compare (default: knn, mlp, stack)."),
    data: Optional[Path] = typer.Option(None, "--data", help="RouterDC's outcomes folder (default: "
                                        "<data folder>/outcomes/routerdc-7b; see `composer data where`)."),
    param: List[str] = PARAM_OPT,
    out: Path = typer.Option(Path("results/router_routerdc_table.json"), "--out", help="JSON file for the table."),
    seed: int = typer.Option(0, help="Seed of every router."),
):
    """RouterDC's split and metric: train on its 5 train files, test on 5 ID + 3 OOD files; prints the
    markdown table of docs/routers.md (best single, best per task, RouterDC published, routers)."""
    from composer.evals.router_table import markdown, routerdc_table, write
    from composer.routers import ROUTERS

    names = [n for v in (router or ["knn,mlp,stack"]) for n in v.split(",") if n]
    unknown = [n for n in names if n not in ROUTERS]
    if unknown:
        _fail(f"unknown router(s) {unknown}; known: {', '.join(ROUTERS)}", EXIT_USAGE)
    if data is None:
        from composer.data import resolution

        data = resolution(None)[0] / "outcomes" / "routerdc-7b"
    if not data.is_dir():
        _fail(f"--data {data}: no such folder; give RouterDC's outcomes folder", EXIT_USAGE)
    params = parse_params(param, names)
    for p in params.values():
        p.setdefault("seed", seed)
    try:
        res = routerdc_table(data, names, params=params, progress=lambda m: typer.echo(m, err=True))
    except ComposerError as exc:
        _fail(str(exc), EXIT_USAGE)
    write(res, out)
    typer.echo(markdown(res))
    typer.echo(f"wrote {out}")
