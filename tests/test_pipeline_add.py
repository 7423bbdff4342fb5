"""`composer pipeline add`: a router trained on collected outcomes becomes a pipeline in
experts.yaml (comments and order kept), validated against the registry, and answers at once
through `composer ask --pipeline`. The router is trained on a real `composer collect` run."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from composer.cli.main import register_commands
from composer.collect import OutcomeStore, benchmark_prompts, collect
from composer.core import Composer

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args):
    return runner.invoke(register_commands(), list(map(str, args)))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> Path:
    """Real outcomes of SmolLM2 and Gemma-3-270M on 4 MMLU questions (short answers)."""
    out = tmp_path_factory.mktemp("collected") / "mmlu.jsonl"
    with Composer.from_yaml(REPO / "experts.yaml") as c:
        report = collect(c, benchmark_prompts(["mmlu"], limit=4, seed=1), ["smollm2", "gemma3-270m"],
                         OutcomeStore(out), max_tokens={"smollm2": 6, "gemma3-270m": 6})
    assert report.failed == [] and report.pairs_written == 8
    return out


@pytest.fixture(scope="module")
def knn_router(outcomes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("router") / "knn"
    res = cli("router", "train", "--outcomes", outcomes, "--router", "knn", "--param", "n_neighbors=2", "--out", out)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def registry(tmp_path) -> Path:
    cfg = tmp_path / "experts.yaml"
    shutil.copy(REPO / "experts.yaml", cfg)
    return cfg


def test_pipeline_add_writes_a_valid_pipeline_and_it_answers(registry, knn_router):
    before = registry.read_text()
    res = cli("pipeline", "add", "collected-knn", "--router", knn_router, "--config", registry)
    assert res.exit_code == 0, res.output
    after = registry.read_text()
    diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:2] in ("- ", "+ ")]
    assert all(d.startswith("+ ") for d in diff)  # only lines added: every comment and line break kept
    assert [d[2:] for d in diff] == ["  - name: collected-knn", "    router: knn", f"    router_path: \"{knn_router}\"",
                                     "    k: 1", "    aggregator: {kind: none}"]
    assert after.index("name: collected-knn") > after.index("pipelines:")  # inside the pipelines list
    assert cli("validate", registry).exit_code == 0
    with Composer.from_yaml(registry) as c:
        p = c.pipeline("collected-knn")
        assert p.router == "knn" and Path(p.router_path).is_absolute() and p.k == 1
        answer = c.ask("Which planet is known as the red planet? Answer with the letter of the correct "
                       "option. The options are: (A) Venus (B) Mars (C) Jupiter (D) Saturn",
                       pipeline="collected-knn", max_tokens=8)
        assert answer.ok and answer.text.strip()
        assert answer.route.router == "knn" and answer.experts[0] in ("smollm2", "gemma3-270m")
    res = cli("ask", "What is 2+2?", "--pipeline", "collected-knn", "--config", registry, "--max-tokens", "6")
    assert res.exit_code == 0, res.output


def test_a_router_path_inside_the_registry_folder_is_written_relative(registry, knn_router):
    local = registry.parent / "routers" / "knn"
    shutil.copytree(knn_router, local)
    res = cli("pipeline", "add", "local-knn", "--router", local, "--config", registry)
    assert res.exit_code == 0, res.output
    assert "router_path: routers/knn" in registry.read_text()
    res = cli("pipeline", "add", "local-knn", "--router", local, "--config", registry, "--replace")
    assert res.exit_code == 0 and registry.read_text().count("name: local-knn") == 1


def test_routers_experts_must_exist_in_the_registry(tmp_path, outcomes, registry):
    # the same outcomes under an expert name the registry does not have
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(outcomes.read_text().replace('"expert": "gemma3-270m"', '"expert": "gemma-7b"'))
    res = cli("router", "train", "--outcomes", renamed, "--router", "best_single", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    before = registry.read_text()
    res = cli("pipeline", "add", "p", "--router", tmp_path / "r", "--config", registry)
    assert res.exit_code == 2
    assert "trained on expert(s) ['gemma-7b'] that are not in" in res.output
    assert registry.read_text() == before  # nothing written
    # restricting the pool to experts that exist is allowed
    res = cli("pipeline", "add", "p", "--router", tmp_path / "r", "--experts", "smollm2", "--config", registry)
    assert res.exit_code == 0, res.output
    assert "experts: [smollm2]" in registry.read_text()


@pytest.mark.parametrize("args, message", [
    (["smollm2"], "pipeline name 'smollm2' is already an expert"),
    (["moa"], "already a pipeline"),
    (["p", "--k", "3"], "--k 3: must be between 1 and the 2 experts"),
    (["p", "--k", "2"], "choose how their answers combine"),
    (["p", "--k", "2", "--aggregator", "moa", "--aggregator-expert", "ghost"], "--aggregator-expert 'ghost'"),
    (["p", "--aggregator", "median"], "--aggregator 'median'"),
    (["p", "--experts", "ghost"], "--experts: ['ghost'] not in"),
    (["p", "--experts", "smollm2-server"], "was not trained on ['smollm2-server']"),
])
def test_bad_pipelines_exit_2_and_leave_the_file_alone(registry, knn_router, args, message):
    before = registry.read_text()
    res = cli("pipeline", "add", *args, "--router", knn_router, "--config", registry)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert registry.read_text() == before


def test_a_folder_without_a_router_exits_2(registry, tmp_path):
    res = cli("pipeline", "add", "p", "--router", tmp_path, "--config", registry)
    assert res.exit_code == 2 and "no saved router there" in res.output


def test_k2_with_an_aggregator_is_written_and_validates(registry, knn_router):
    res = cli("pipeline", "add", "team", "--router", knn_router, "--k", "2", "--aggregator", "moa",
              "--aggregator-expert", "smollm2", "--config", registry)
    assert res.exit_code == 0, res.output
    assert "aggregator: {kind: moa, expert: smollm2}" in registry.read_text()
    assert cli("validate", registry).exit_code == 0


@pytest.mark.parametrize("text, expect", [
    ("version: 1\npipelines: []   # none yet\nspecialists: []\n",
     "version: 1\npipelines:  # none yet\n  - name: p\n    router: knn\n    k: 1\nspecialists: []\n"),
    ("version: 1\nexperts: []", "version: 1\nexperts: []\npipelines:\n  - name: p\n    router: knn\n    k: 1\n"),
    ("pipelines:\n- name: q\n  experts: [a, b,\n    c]  # kept\n\n# next\nexperts: []\n",
     "pipelines:\n- name: q\n  experts: [a, b,\n    c]  # kept\n- name: p\n  router: knn\n  k: 1\n\n# next\nexperts: []\n"),
    ("pipelines: [{name: q, k: 1}]  # flow\n", "pipelines: [{name: q, k: 1}, {name: p, router: knn, k: 1}]  # flow\n"),
])
def test_splice_keeps_every_other_byte_in_each_layout(text, expect):
    from composer.pipeline_edit import splice

    assert splice(text, {"name": "p", "router": "knn", "k": 1}) == expect
