"""`composer collect` (outcomes of your own experts), `composer pipeline add` (a routed
pipeline into experts.yaml) and `composer feedback` (scores for past endpoint responses)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.core_cmds import CONFIG_OPT, default_config_path, fail, open_composer, print_json
from composer.cli.main import app
from composer.errors import ComposerError

EXIT_USAGE = 2
pipeline_app = typer.Typer(no_args_is_help=True, help="Write pipelines into experts.yaml.")
feedback_app = typer.Typer(no_args_is_help=True, help="Scores for past endpoint responses (feedback store).")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(feedback_app, name="feedback")


def _split(values: List[str] | None) -> list[str]:
    return [p.strip() for v in values or [] for p in v.split(",") if p.strip()]


def parse_max_tokens(values: List[str] | None, experts: list[str], default: dict[str, int]) -> dict[str, int]:
    """`--max-tokens 64` (every expert) and/or `--max-tokens smollm2=128` (one expert)."""
    out = dict(default)
    for v in values or []:
        key, _, raw = v.rpartition("=")
        try:
            n = int(raw)
        except ValueError:
            fail(f"--max-tokens '{v}': expected N or EXPERT=N with N an integer", EXIT_USAGE)
        if n < 1:
            fail(f"--max-tokens '{v}': N must be at least 1", EXIT_USAGE)
        if key and key not in experts:
            fail(f"--max-tokens '{v}': '{key}' is not a collected expert ({', '.join(experts)})", EXIT_USAGE)
        for e in [key] if key else experts:
            out[e] = n
    return out


def _progress(enabled: bool, lines: bool):
    """A rich progress bar with ETA, or (`lines`: --no-progress without --json) one stderr line per
    chunk, so a long background run shows its progress and loads in its log."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,  # noqa: PLC0415
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn("[bold]collect"), BarColumn(), MofNCompleteColumn(), TextColumn("calls"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)
    state: dict = {"t0": time.monotonic()}

    def update(done: int, total: int, report) -> None:
        if "task" not in state:  # starts counting ETA from the pairs already stored
            state["task"] = bar.add_task("collect", total=total, completed=done)
            state["start"] = done
        bar.update(state["task"], completed=done, total=total)
        if lines and report.chunks:
            rate = (done - state["start"]) / max(time.monotonic() - state["t0"], 1e-9)
            eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "-"
            typer.echo(f"collect: {done}/{total} calls stored, chunk {report.chunks}, "
                       f"{time.monotonic() - state['t0']:.0f} s, ETA {eta}; model loads {report.loads} "
                       f"(lower bound {report.lower_bound}); failed {len(report.failed)}", err=True)

    return bar, update


@app.command("collect")
def collect_cmd(
    benchmark: Optional[List[str]] = typer.Option(None, "--benchmark", help=(
        "Built-in benchmark(s) graded by gold answers: gsm8k, mmlu, mmlu_pro, medmcqa, aime24, humaneval "
        "(repeat or comma-separate; --limit applies to each).")),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help=(
        "Your JSONL: one {\"prompt\", optional \"reference\", \"task\", \"id\"} per line.")),
    experts: Optional[List[str]] = typer.Option(None, "--experts", help=(
        "Experts to run (comma-separated; default: every LLM expert of the registry).")),
    judge: Optional[str] = typer.Option(None, "--judge", help="Grade with this registry expert as an LLM judge."),
    judge_mode: str = typer.Option("absolute", "--judge-mode", help="absolute (1-10 rubric) or pairwise (vs --reference-expert, both orders)."),
    reference_expert: Optional[str] = typer.Option(None, "--reference-expert", help="Pairwise judging: the expert every other is compared with."),
    judge_max_tokens: int = typer.Option(256, "--judge-max-tokens", min=1, help="The judge's generation budget per verdict."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Prompts (per benchmark)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the question order and of generation."),
    split: str = typer.Option("test", "--split", help="Benchmark split."),
    max_tokens: Optional[List[str]] = typer.Option(None, "--max-tokens", help=(
        "N for every expert, or EXPERT=N (repeatable). Default: the benchmark's budget, else the expert's.")),
    chunk_size: int = typer.Option(16, "--chunk-size", min=1, help="Prompts per scheduled stage (and per durable write)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Outcome store (JSONL; default runs/collect/<set>.jsonl)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip pairs already in --out (default), or start over (the old file is kept as .bak)."),
    config: Optional[Path] = CONFIG_OPT,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with ETA."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report and summary as JSON."),
):
    """Run experts on a prompt set, grade every answer, and write a long outcome table
    (query_id, prompt, task, expert, score, cost, response, latency, tokens) that
    `composer router train --outcomes` reads. Resumable: rerun the same command after a kill."""
    from composer.collect import Judge, OutcomeStore, benchmark_prompts, collect, jsonl_prompts, summarise

    benches = _split(benchmark)
    if bool(benches) == bool(prompts):
        fail("give a prompt set: --benchmark NAME or --prompts FILE.jsonl (not both)", EXIT_USAGE)
    c = open_composer(config)
    try:
        names = _split(experts) or [n for n, e in c.experts.items() if e.backend not in ("replay", "fake")]
        if not names:
            fail("no LLM experts in the registry; name some with --experts", EXIT_USAGE)
        try:
            for e in names + ([judge] if judge else []) + ([reference_expert] if reference_expert else []):
                c.expert_spec(e)
            if benches:
                items = benchmark_prompts(benches, limit=limit, seed=seed, split=split)
                from composer.evals.benchmarks import get_benchmark  # noqa: PLC0415

                bench_mt = max(get_benchmark(b).max_tokens for b in benches)
                source = {"benchmarks": [get_benchmark(b).name for b in benches]}
            else:
                items = jsonl_prompts(prompts, limit=limit, seed=seed if limit else None)
                bench_mt = None
                source = {"file": str(prompts.resolve())}
            default_mt = {e: bench_mt or c.expert_spec(e).generation.max_tokens for e in names}
            mt = parse_max_tokens(max_tokens, names, default_mt)
            jd = Judge(judge, judge_mode, reference_expert, judge_max_tokens) if judge else None
        except (ComposerError, ValueError) as exc:
            fail(str(exc), EXIT_USAGE)
        label = "+".join(source.get("benchmarks", [Path(str(prompts)).stem]))
        store = OutcomeStore(out or Path("runs") / "collect" / f"{label}__seed{seed}.jsonl")
        meta = {"prompts": source, "split": split if benches else None, "seed": seed,
                "grader": "judge" if jd else ("gold" if benches else "reference"),
                "judge": judge, "judge_mode": judge_mode if jd else None,
                "reference_expert": reference_expert if jd and judge_mode == "pairwise" else None,
                "judge_max_tokens": judge_max_tokens if jd else None, "experts": names, "max_tokens": mt}
        try:
            if not resume:
                bak = store.backup(time.strftime("%Y%m%d-%H%M%S"))
                if bak:
                    typer.echo(f"--no-resume: kept the old store as {bak}", err=True)
            store.check_and_write_meta(meta)
        except ComposerError as exc:
            fail(str(exc), EXIT_USAGE)
        bar, update = _progress(progress and not as_json, lines=not progress)
        try:
            with bar:
                report = collect(c, items, names, store, max_tokens=mt, seed=seed, judge=jd,
                                 chunk_size=chunk_size, progress=update)
        except ComposerError as exc:
            fail(str(exc), EXIT_USAGE)
    finally:
        c.close()
    ids = {p.id for p in items}
    rows = [r for r in store.rows() if r["expert"] in names and r["query_id"] in ids]
    summary = summarise(rows, names)
    if as_json:
        print_json({"report": report.to_dict(), "summary": summary})
    else:
        _print_summary(report, summary)
    if report.failed:
        typer.echo(f"{len(report.failed)} call(s) failed and were not stored (first: {report.failed[0]}); "
                   "rerun the same command to retry them", err=True)
        raise typer.Exit(1)


def _print_summary(report, summary: dict) -> None:
    typer.echo(f"{report.store}: {report.prompts} prompts x {len(report.experts)} experts; "
               f"{report.pairs_written} new outcomes, {report.pairs_before} already stored; "
               f"{report.chunks} chunk(s) in {report.wall_s:.1f} s")
    typer.echo(f"model loads: {report.loads} (lower bound {report.lower_bound}: each local model once)"
               + (f"; judge calls: {report.judge_calls}" if report.judge_calls else ""))
    typer.echo(f"{'expert':<28} {'n':>5} {'mean':>7} {'missing':>8} {'tokens':>8} {'lat s':>7} {'cost':>10}")
    for e, s in summary["experts"].items():
        mean = "-" if s["mean_score"] is None else f"{s['mean_score']:.4f}"
        lat = "-" if s["mean_latency_s"] is None else f"{s['mean_latency_s']:.2f}"
        typer.echo(f"{e:<28} {s['n']:>5} {mean:>7} {s['missing']:>8} {s['tokens']:>8} {lat:>7} {s['total_cost']:>10.3g}")
    if summary["oracle"] is not None:
        typer.echo(f"{'oracle':<28} {summary['queries_all_experts']:>5} {summary['oracle']:>7.4f}")


@pipeline_app.command("add")
def pipeline_add(
    name: str = typer.Argument(..., help="The new pipeline's name."),
    router: Path = typer.Option(..., "--router", "-r", help="A saved router folder (from `composer router train`)."),
    k: int = typer.Option(1, "--k", help="Experts per query."),
    aggregator: str = typer.Option("none", "--aggregator", help="none, moa, self_moa, self_moa_seq or vote (k > 1 needs one)."),
    aggregator_expert: Optional[str] = typer.Option(None, "--aggregator-expert", help="The expert that aggregates (moa)."),
    experts: Optional[List[str]] = typer.Option(None, "--experts", help="Restrict routing to these experts (comma-separated)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a pipeline of that name."),
    config: Optional[Path] = CONFIG_OPT,
):
    """Validate a trained router against the registry and write a routed pipeline into it
    (comments and order kept); `composer serve` and `composer ask --pipeline NAME` use it at once."""
    from composer.pipeline_edit import add_pipeline

    path = config or default_config_path()
    try:
        entry = add_pipeline(path, name, router, k=k, aggregator=aggregator, aggregator_expert=aggregator_expert,
                             experts=_split(experts) or None, replace=replace)
    except ComposerError as exc:
        fail(str(exc), EXIT_USAGE)
    typer.echo(f"{path}: pipeline '{name}' -> {json.dumps(entry)}")


@feedback_app.command("add")
def feedback_add(
    response_id: str = typer.Argument(..., help="The id of a past response (the completion's 'id')."),
    score: float = typer.Argument(..., help="A score in [0, 1]."),
    choice: int = typer.Option(0, "--choice", help="Choice index (for n > 1)."),
    comment: Optional[str] = typer.Option(None, "--comment"),
    store: Optional[Path] = typer.Option(None, "--store", help="Feedback store (default: $COMPOSER_FEEDBACK_DB, else runs/feedback.sqlite next to the registry)."),
    config: Optional[Path] = CONFIG_OPT,
):
    """Record a score for a past endpoint response (as POST /v1/feedback does)."""
    from composer.feedback import FeedbackStore, default_path

    path = store or default_path((config or default_config_path()).resolve().parent)
    try:
        out = FeedbackStore(path).record(response_id, score, choice=choice, comment=comment)
    except ComposerError as exc:
        fail(str(exc), EXIT_USAGE)
    print_json(out)


@feedback_app.command("summary")
def feedback_summary(store: Path = typer.Argument(..., help="A feedback store (runs/feedback.sqlite).")):
    """Responses logged and scored, and the outcome rows `router train` would read."""
    from composer.feedback import FeedbackStore

    if not store.is_file():
        fail(f"{store}: feedback store not found", EXIT_USAGE)
    s = FeedbackStore(store, readonly=True)
    print_json({**s.counts(), "outcome_rows": len(s.outcome_rows())})
