"""Cost-quality plots of an offline router evaluation (matplotlib, Agg backend: no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_curves(res: dict[str, Any], path: str | Path) -> Path:
    """One panel per task plus 'all': every router's sweep curve, its default point, the single
    experts as labelled points and the oracle as a star. A strong/weak pair also gets RouteLLM's
    panel (% strong calls vs accuracy)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    scopes = ["all", *res["tasks"]] if len(res["tasks"]) > 1 else ["all"]
    panels = scopes + (["routellm"] if "pair" in res else [])
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    colors = plt.get_cmap("tab20")
    names = list(res["routers"])
    for ax, scope in zip(axes.ravel(), panels):
        if scope == "routellm":
            _routellm_panel(ax, res, names, colors)
            continue
        for i, name in enumerate(names):
            e = res["routers"][name]
            pts = sorted((_x(p, scope, res), _y(p, scope)) for p in e.get("curve", []) if _y(p, scope) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker=".", color=colors(i % 20),
                        label=name, alpha=0.85)
            d = e["default"]
            if _y(d, scope) is not None:
                ax.plot(_x(d, scope, res), _y(d, scope), "o", color=colors(i % 20),
                        label=None if pts else name, markersize=6)
        for expert, p in res["singles"].items():
            if _y(p, scope) is None:
                continue
            ax.plot(_x(p, scope, res), _y(p, scope), "s", color="black", markersize=5)
            ax.annotate(expert.split("/")[-1][:22], (_x(p, scope, res), _y(p, scope)), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        o = res["oracle"]
        if _y(o, scope) is not None:
            ax.plot(_x(o, scope, res), _y(o, scope), "*", color="gold", markersize=12,
                    markeredgecolor="black", label="oracle")
        unit = "USD per query" if res["cost_unit"] == "usd" else "calls per query"
        ax.set_xlabel(f"cost ({unit})")
        ax.set_ylabel("accuracy (mean score)")
        ax.set_title(f"{scope} ({res['n_test_queries'] if scope == 'all' else 'task'})")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _routellm_panel(ax, res, names, colors) -> None:
    for i, name in enumerate(names):
        pair = res["routers"][name].get("pair")
        if not pair:
            continue
        pts = sorted((p["strong_pct"], p["accuracy_pct"]) for p in pair["points"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker=".", color=colors(i % 20),
                label=f"{name} (APGR {pair['apgr']:.3f})")
        weak, strong = pair["weak_accuracy_pct"], pair["strong_accuracy_pct"]
    ax.axhline(weak, color="grey", linestyle="--", label=res["pair"]["weak"])
    ax.axhline(strong, color="red", linestyle="--", label=res["pair"]["strong"])
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("RouteLLM view")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)


def _x(p, scope, res):
    n = res["n_test_queries"]
    if scope == "all":
        return p["cost"] / max(n, 1)
    return p["task_cost"][scope] / max(res["task_sizes"][scope], 1)


def _y(p, scope):
    return p["accuracy"] if scope == "all" else p["task_accuracy"][scope]


def plot_accuracy(res: dict[str, Any], path: str | Path) -> Path:
    """Task-average accuracy of every router next to every single expert and the oracle."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [(f"expert: {e.split('/')[-1]}", p["task_average"], "#9e9e9e") for e, p in res["singles"].items()]
    rows += [(name, e["default"]["task_average"], "#1f77b4") for name, e in res["routers"].items() if name != "oracle"]
    rows.append(("oracle", res["oracle"]["task_average"], "#d4a017"))
    rows = [r for r in rows if r[1] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=[r[2] for r in rows])
    best = res["best_single"]["task_average"]
    ax.axvline(best, color="red", linestyle="--", label=f"best single expert ({best:.3f})")
    lo = min(r[1] for r in rows)
    ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(r[1] for r in rows) + 0.03))
    ax.set_xlabel(f"accuracy, mean over tasks ({', '.join(res['tasks'])})")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
