"""Leaderboard over live stores and a real router replay evaluation; the HTML page is loaded in
real headless Chromium (Debian's `chromium`; CI installs it with `apt-get install -y chromium`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from routers_helpers import embedder, multitask  # noqa: F401 - fixture
from typer.testing import CliRunner

from composer.evals.leaderboard import SCHEMA, load_rows, write_leaderboard
from composer.evals.live import ResultStore

PNG = b"\x89PNG\r\n\x1a\n"


def live_store(path: Path, run: str, bench: str, correct: list[bool], latency: float, cost: float) -> Path:
    s = ResultStore(path)
    for i, ok in enumerate(correct):
        s.append({"schema": "composer.live/1", "benchmark": bench, "split": "test", "run": run, "pipeline": run,
                  "expert": None, "seed": 0, "max_tokens": 32, "item_id": f"{bench}-{i}", "correct": ok,
                  "cost": cost, "latency_s": latency, "prompt_tokens": 100, "completion_tokens": 20, "error": None})
    return path


@pytest.fixture(scope="module")
def router_results(tmp_path_factory, embedder):  # noqa: F811 - the shared fixture
    from composer.evals.router_eval import evaluate

    out = tmp_path_factory.mktemp("router-eval")
    train = multitask("train", {"mmlu": 40, "gsm8k": 30})
    test = multitask("test", {"mmlu": 20, "gsm8k": 20})
    evaluate(train, test, ["best_single", "knn"], sweep=False, embedder=embedder, out_dir=out,
             progress=lambda *_: None)
    return out / "results.json"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, router_results):
    d = tmp_path_factory.mktemp("live")
    live_store(d / "a.jsonl", "smollm2", "mmlu", [True, False, False, True], 1.5, 2e-6)
    live_store(d / "b.jsonl", "self-moa", "mmlu", [True, True, False, True], 6.0, 9e-6)
    generic = d / "generic.json"
    generic.write_text(json.dumps({"schema": SCHEMA, "rows": [
        {"name": "hosted-x", "kind": "live", "benchmark": "gsm8k", "n": 10, "accuracy": 0.9,
         "cost_per_query": 1e-3, "latency_s": 2.0}]}))
    return [str(d / "*.jsonl"), str(generic), str(router_results)]


def test_rows_from_every_kind_of_result(inputs, router_results):
    live = load_rows(inputs[0].replace("*", "b"))
    assert live == [{"name": "self-moa", "kind": "live", "benchmark": "mmlu", "n": 4, "accuracy": 0.75,
                     "cost_per_query": 9e-6, "cost_unit": "usd", "latency_s": 6.0, "tokens_per_query": 120.0,
                     "source": inputs[0].replace("*", "b")}]
    replay = load_rows(router_results)
    names = [r["name"] for r in replay]
    assert {"router:best_single", "router:knn", "oracle"} <= set(names)
    assert any(n.startswith("single:") for n in names)
    res = json.loads(Path(router_results).read_text())
    knn = next(r for r in replay if r["name"] == "router:knn")
    assert knn["accuracy"] == pytest.approx(res["routers"]["knn"]["default"]["task_average"])
    assert knn["kind"] == "replay" and knn["latency_s"] is None and knn["n"] == res["n_test_queries"]


def test_unknown_file_is_named(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="x.json: unrecognised result file"):
        load_rows(p)


def test_markdown_html_plots(inputs, tmp_path):
    res = write_leaderboard(inputs, tmp_path / "board")
    rows = res["rows"]
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row (separator starts with "|-")
    mmlu = [r["name"] for r in rows if r["benchmark"] == "mmlu"]
    assert mmlu[:2] == ["self-moa", "smollm2"]  # sorted by accuracy within a benchmark
    for png in ("accuracy_vs_cost.png", "accuracy_vs_latency.png"):
        data = (tmp_path / "board" / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert json.loads((tmp_path / "board" / "leaderboard.json").read_text())["rows"] == rows


class _Table(HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs, self.rows, self.cells, self._in, self._td = None, [], [], False, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "leaderboard":
            self.attrs, self._in = a, True
        elif self._in and tag == "tr":
            self.rows.append([])
        elif self._in and tag in ("td", "th"):
            self._td = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif tag in ("td", "th"):
            self._td = False

    def handle_data(self, data):
        if self._in and self._td and self.rows:
            self.rows[-1].append(data)


def test_html_page_in_headless_chromium(inputs, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is required for this test: apt-get install -y chromium"
    res = write_leaderboard(inputs, tmp_path / "board")
    page = (tmp_path / "board" / "leaderboard.html").resolve()
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    t = _Table()
    t.feed(out.stdout)
    assert t.attrs is not None, "no table#leaderboard in the rendered DOM"
    assert t.attrs.get("data-rendered") == str(len(res["rows"]))  # set by the page's script: it ran
    header, body = t.rows[0], t.rows[1:]
    assert header[:5] == ["benchmark", "name", "kind", "n", "accuracy"]
    assert len(body) == len(res["rows"])
    assert {r[1] for r in body} == {r["name"] for r in res["rows"]}
    assert "accuracy_vs_cost.png" in out.stdout


def test_leaderboard_cli(inputs, tmp_path):
    from composer.cli.main import app, register_commands

    register_commands()
    r = CliRunner().invoke(app, ["leaderboard", *inputs, "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "| mmlu | self-moa | live | 4 | 0.750 |" in r.output
    assert (tmp_path / "cli" / "leaderboard.html").exists()
    bad = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not found" in bad.output
