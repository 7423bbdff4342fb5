"""Leaderboard over result files: a Markdown table, a static HTML page and PNG plots.

    write_leaderboard(["runs/aggregation/*.jsonl", "runs/eval/results.json"], "runs/board")

Every input file is adapted into rows of one generic schema ("composer.leaderboard/1"):

    {"name": str, "kind": "live" | "replay" | str, "benchmark": str, "n": int,
     "accuracy": float | None, "cost_per_query": float | None, "cost_unit": "usd" | "calls",
     "latency_s": float | None (mean per query), "tokens_per_query": float | None, "source": str}

Inputs understood:
- live result stores (JSONL of "composer.live/1" records, from evals/live.py): one row per file;
- router replay evaluations (`results.json` from evals/router_eval.py): one row per router
  (its default operating point), per single expert and for the oracle; replays have no latency;
- comparison tables (a JSON list of live summaries, from evals/compare.py);
- generic files: `{"schema": "composer.leaderboard/1", "rows": [...]}` or a JSON list of rows
  in the schema above (missing optional fields are None).

Outputs in DIR: leaderboard.md, leaderboard.html (table id "leaderboard"), leaderboard.json,
accuracy_vs_cost.png, accuracy_vs_latency.png.
"""

from __future__ import annotations

import glob
import html
import json
from pathlib import Path
from typing import Any

SCHEMA = "composer.leaderboard/1"
FIELDS = ("name", "kind", "benchmark", "n", "accuracy", "cost_per_query", "cost_unit", "latency_s",
          "tokens_per_query", "source")


def row(**kw) -> dict[str, Any]:
    out = {k: kw.get(k) for k in FIELDS}
    out["cost_unit"] = out["cost_unit"] or "usd"
    return out


def from_live(path: Path, records: list[dict]) -> list[dict]:
    from composer.evals.live import summarise  # noqa: PLC0415

    s = summarise(records)
    toks = (s["mean_prompt_tokens"] or 0) + (s["mean_completion_tokens"] or 0) if s["n"] else None
    return [row(name=s["run"], kind="live", benchmark=s["benchmark"], n=s["n"], accuracy=s["accuracy"],
                cost_per_query=s["mean_cost"], latency_s=s["mean_latency_s"], tokens_per_query=toks,
                source=str(path))]


def from_live_summaries(path: Path, rows: list[dict]) -> list[dict]:
    return [row(name=s["run"], kind="live", benchmark=s["benchmark"], n=s["n"], accuracy=s["accuracy"],
                cost_per_query=s.get("mean_cost"), latency_s=s.get("mean_latency_s"),
                tokens_per_query=(s.get("mean_prompt_tokens") or 0) + (s.get("mean_completion_tokens") or 0),
                source=str(path)) for s in rows]


def from_router_eval(path: Path, res: dict) -> list[dict]:
    bench = Path(str(res.get("test") or path.parent.name)).stem
    n = res.get("n_test_queries")
    unit = res.get("cost_unit", "usd")

    def mk(name: str, p: dict) -> dict:
        acc = p.get("task_average") if p.get("task_average") is not None else p.get("accuracy")
        cpq = p.get("cost_per_query")
        if cpq is None and p.get("cost") is not None and n:
            cpq = p["cost"] / n
        return row(name=name, kind="replay", benchmark=bench, n=n, accuracy=acc, cost_per_query=cpq,
                   cost_unit=unit, source=str(path))

    out = [mk(f"router:{name}", e["default"]) for name, e in res.get("routers", {}).items()]
    out += [mk(f"single:{e}", p) for e, p in res.get("singles", {}).items()]
    if res.get("oracle"):
        out.append(mk("oracle", res["oracle"]))
    return out


def load_rows(path: str | Path) -> list[dict]:
    """Rows of the generic schema from one result file (see the module docstring)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        from composer.evals.live import ResultStore  # noqa: PLC0415

        records = ResultStore(p).records()
        if not records:
            return []
        if "item_id" in records[0]:
            return from_live(p, records)
        raise ValueError(f"{p}: JSONL records without item_id are not a live result store")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc.msg} at line {exc.lineno}); give live .jsonl stores, "
                         "router results.json files or composer.leaderboard/1 JSON") from None
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        return [row(**{"source": str(p), **r}) for r in data["rows"]]
    if isinstance(data, dict) and "routers" in data and "singles" in data:
        return from_router_eval(p, data)
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        if "run" in data[0] and "accuracy" in data[0]:
            return from_live_summaries(p, data)
        if "name" in data[0] and "accuracy" in data[0]:
            return [row(**{"source": str(p), **r}) for r in data]
    raise ValueError(f"{p}: unrecognised result file; expected a live .jsonl store, a router "
                     f"results.json, a comparison list or {{'schema': '{SCHEMA}', 'rows': [...]}}")


def expand(patterns: list[str]) -> list[Path]:
    """Paths from files, directories (their *.jsonl and results.json) and glob patterns."""
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            out += sorted(p.glob("*.jsonl")) + sorted(p.rglob("results.json"))
        elif any(ch in pat for ch in "*?["):
            out += [Path(x) for x in sorted(glob.glob(pat))]
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"result file {p} not found")
    return list(dict.fromkeys(out))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _cells(r: dict) -> list[str]:
    cost = _fmt(r["cost_per_query"], ".3g") + ("" if r["cost_unit"] == "usd" else f" {r['cost_unit']}")
    return [r["benchmark"] or "-", r["name"], r["kind"] or "-", _fmt(r["n"], "d"), _fmt(r["accuracy"], ".3f"),
            cost, _fmt(r["latency_s"], ".2f"), _fmt(r["tokens_per_query"], ".0f")]


HEADERS = ["benchmark", "name", "kind", "n", "accuracy", "cost / query (USD)", "latency / query (s)",
           "tokens / query"]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_SORT_JS = """
document.querySelectorAll('#leaderboard th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = document.querySelector('#leaderboard tbody');
    var rows = Array.from(body.rows);
    var asc = th.dataset.order !== 'asc';
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    th.dataset.order = asc ? 'asc' : 'desc';
  });
});
document.getElementById('leaderboard').dataset.rendered = String(document.querySelectorAll('#leaderboard tbody tr').length);
"""


def html_page(rows: list[dict], plots: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    imgs = "\n".join(f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}" width="560">'
                     f"<figcaption>{html.escape(p)}</figcaption></figure>" for p in plots)
    sources = "".join(f"<li>{html.escape(s)}</li>" for s in dict.fromkeys(r["source"] for r in rows))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>composer leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #bbb; padding: .3rem .6rem; }}
th {{ cursor: pointer; background: #eee; }} td {{ text-align: right; }}
td:nth-child(-n+3) {{ text-align: left; }} figure {{ display: inline-block; }}
</style></head>
<body>
<h1>composer leaderboard</h1>
<p>{len(rows)} result(s). Click a column header to sort. Replay rows come from recorded outcomes
(no latency); live rows from real model runs.</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
{imgs}
<h2>Sources</h2><ul>{sources}</ul>
<script>{_SORT_JS}</script>
</body></html>
"""


def plot(rows: list[dict], x: str, path: Path, xlabel: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    pts = [r for r in rows if r["accuracy"] is not None and r[x] is not None
           and (x != "cost_per_query" or r["cost_unit"] == "usd")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    benches = list(dict.fromkeys(r["benchmark"] for r in pts))
    for i, b in enumerate(benches):
        sel = [r for r in pts if r["benchmark"] == b]
        ax.scatter([r[x] for r in sel], [r["accuracy"] for r in sel], label=b, color=f"C{i}")
        for r in sel:
            ax.annotate(r["name"], (r[x], r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if pts and min(r[x] for r in pts) > 0 and max(r[x] for r in pts) / min(r[x] for r in pts) > 50:
        ax.set_xscale("log")
    if not pts:
        ax.text(0.5, 0.5, f"no results with {xlabel.lower()}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if benches:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_leaderboard(inputs: list[str], out_dir: str | Path) -> dict:
    """Read every result, write the table, the page and the plots. Returns paths and rows."""
    paths = expand([str(i) for i in inputs])
    if not paths:
        raise FileNotFoundError(f"no result files matched {inputs}")
    rows = [r for p in paths for r in load_rows(p)]
    rows.sort(key=lambda r: (r["benchmark"] or "", -(r["accuracy"] if r["accuracy"] is not None else -1), r["name"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, "cost_per_query", out / "accuracy_vs_cost.png", "cost per query (USD)")
    plot(rows, "latency_s", out / "accuracy_vs_latency.png", "latency per query (s)")
    plots = ["accuracy_vs_cost.png", "accuracy_vs_latency.png"]
    (out / "leaderboard.md").write_text("# composer leaderboard\n\n" + markdown(rows) + "\n" +
                                        "".join(f"![{p}]({p})\n" for p in plots), encoding="utf-8")
    (out / "leaderboard.html").write_text(html_page(rows, plots), encoding="utf-8")
    (out / "leaderboard.json").write_text(json.dumps({"schema": SCHEMA, "rows": rows}, indent=2), encoding="utf-8")
    return {"rows": rows, "files": [str(out / f) for f in
                                    ("leaderboard.md", "leaderboard.html", "leaderboard.json", *plots)]}
