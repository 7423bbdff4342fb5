"""Feedback: the endpoint logs every completion it returns; POST /v1/feedback (and
Composer.feedback) scores a past response id into the feedback store; bad ids, duplicates and
out-of-range scores are clear 4xx; nothing is lost when the server restarts; `router train`
retrains on the store. The HTTP round trip runs a real `composer serve` with SmolLM2."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from composer.cli.main import register_commands
from composer.core import Composer
from composer.feedback import (DuplicateFeedbackError, FeedbackError, FeedbackStore, UnknownResponseError,
                               default_path, parse_body, read_feedback)
from composer.outcomes import read_outcomes
from composer.types import Answer, Candidate, Query, RouteDecision, Usage
from tests.serve_proc import ServerProc

KEY = "sk-test-feedback"


def _answer(qid: str, experts: list[str], text: str = "4") -> Answer:
    cands = [Candidate(qid, e, text, Usage(10, 2, 0.001 * (i + 1), 0.1)) for i, e in enumerate(experts)]
    total = sum((c.usage for c in cands), Usage())
    return Answer(qid, text, list(experts), cands, total,
                  RouteDecision(qid, list(experts), reason="test route", router="knn"))


# -- the store ----------------------------------------------------------------------------------

def test_store_records_once_and_says_why_it_refuses(tmp_path):
    s = FeedbackStore(tmp_path / "fb.sqlite")
    qs = [Query("What is 2+2?", id="a-0", task="math"), Query("And 3+3?", id="a-1")]
    assert s.log_response("resp-1", "routed", qs, [_answer("a-0", ["smollm2"]), _answer("a-1", ["gemma"])]) == 2
    out = s.record("resp-1", 1.0)
    assert out["experts"] == ["smollm2"] and out["prompt"] == "What is 2+2?" and out["cost"] == pytest.approx(0.001)
    with pytest.raises(DuplicateFeedbackError, match="already has feedback \\(score 1\\)") as e:
        s.record("resp-1", 0.0)
    assert e.value.status == 409
    with pytest.raises(UnknownResponseError, match="unknown response id 'nope'") as e:
        s.record("nope", 0.5)
    assert e.value.status == 404 and e.value.param == "id"
    with pytest.raises(UnknownResponseError, match="unknown choice 5 of response 'resp-1'"):
        s.record("resp-1", 0.5, choice=5)
    for bad in (1.5, -0.1, float("nan"), "good", True, None):
        with pytest.raises(FeedbackError, match="'score' must be") as e:
            s.record("resp-1", bad, choice=1)
        assert e.value.status == 400 and e.value.param == "score"
    assert s.record("resp-1", 0.25, choice=1, comment="meh")["experts"] == ["gemma"]
    # durable: a new store object (a restarted server) sees both the log and the feedback
    again = FeedbackStore(tmp_path / "fb.sqlite")
    assert again.counts() == {"responses": 2, "feedback": 2}
    with pytest.raises(DuplicateFeedbackError):
        again.record("resp-1", 1.0, choice=1)


_KILLED_WRITER = """
import os, signal, sys
from composer.feedback import FeedbackStore
from composer.types import Answer, Candidate, Query, RouteDecision, Usage
store = FeedbackStore(sys.argv[1])
for i in range(3):
    q = Query("2+2?", id=f"q{i}")
    c = Candidate(q.id, "smollm2", "4", Usage(10, 2, 0.001, 0.1))
    store.log_response(f"chatcmpl-{i}", "smollm2", [q], [Answer(q.id, "4", ["smollm2"], [c], c.usage,
                       RouteDecision(q.id, ["smollm2"], reason="r", router="knn"))])
print("logged", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no exit handlers: a killed server
"""


def test_a_killed_writer_keeps_every_response_it_logged(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "fb.sqlite"
    p = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(db)], capture_output=True, text=True,
                       timeout=120, cwd=str(Path(__file__).resolve().parents[1]))
    assert p.returncode == -9 and "logged" in p.stdout, p.stderr
    again = FeedbackStore(db)
    assert again.counts() == {"responses": 3, "feedback": 0}
    assert again.response("chatcmpl-2")["experts"] == ["smollm2"]
    again.close()


def test_scored_responses_become_an_outcome_table(tmp_path):
    s = FeedbackStore(tmp_path / "fb.sqlite")
    s.log_response("r1", "m", [Query("q one", id="x")], [_answer("x", ["smollm2"])])
    s.log_response("r2", "m", [Query("q two", id="y")], [_answer("y", ["smollm2", "gemma"])])  # an MoA answer
    s.log_response("r3", "m", [Query("q three", id="z")], [_answer("z", ["gemma"])])  # never scored
    s.record("r1", 1.0)
    s.record("r2", 0.0)
    table = read_outcomes(tmp_path / "fb.sqlite")
    rows = table.frame.sort_values(["query_id", "expert"]).to_dict("records")
    assert [(r["query_id"], r["expert"], r["score"]) for r in rows] == [
        ("r1:0", "smollm2", 1.0), ("r2:0", "gemma", 0.0), ("r2:0", "smollm2", 0.0)]
    assert rows[1]["cost"] == pytest.approx(0.002) and rows[2]["cost"] == pytest.approx(0.001)  # each its own
    assert rows[0]["prompt"] == "q one" and rows[0]["task"] == "feedback"


def test_reading_is_read_only_and_refuses_what_is_not_a_store(tmp_path):
    from composer.errors import OutcomeFormatError

    empty = tmp_path / "empty.sqlite"
    FeedbackStore(empty).counts()
    with pytest.raises(OutcomeFormatError, match="no feedback recorded yet"):
        read_feedback(empty)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(OutcomeFormatError, match="not a composer feedback store"):
        read_feedback(other)
    names = [r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")]
    assert names == ["t"]  # reading created nothing


@pytest.mark.parametrize("raw, message", [
    (b"", "the body must be a JSON object"),
    (b"{oops", "the body must be a JSON object"),
    (b"[1]", "the body must be a JSON object"),
    (b'{"score": 1}', "'id' is required"),
    (b'{"id": "x"}', "'score' is required"),
    (b'{"id": "x", "score": 1, "rating": 5}', "unknown field(s) ['rating']"),
])
def test_request_bodies_are_checked(raw, message):
    with pytest.raises(FeedbackError, match=message.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        parse_body(raw)


def test_composer_feedback_scores_a_logged_real_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPOSER_FEEDBACK_DB", raising=False)
    cfg = _registry(tmp_path)
    with Composer.from_yaml(cfg) as c:
        q = Query("What is the capital of France?", max_tokens=8)
        answer = c.run([q], expert="smollm2")[0]
        assert answer.ok
        FeedbackStore(default_path(c.base_dir)).log_response("chatcmpl-sdk", "smollm2", [q], [answer])
        out = c.feedback("chatcmpl-sdk", 0.75)
        assert out["experts"] == ["smollm2"] and out["cost"] > 0
        with pytest.raises(DuplicateFeedbackError):
            c.feedback("chatcmpl-sdk", 0.75)
    assert (tmp_path / "runs" / "feedback.sqlite").is_file()


# -- the HTTP round trip on a real server ----------------------------------------------------------

def _registry(tmp_path: Path) -> Path:
    cfg = tmp_path / "experts.yaml"
    cfg.write_text(textwrap.dedent("""\
        version: 1
        settings: {default_expert: smollm2}
        experts:
          - name: smollm2
            backend: llamacpp
            model: embedded:smollm2-135m-instruct
            generation: {max_tokens: 8, temperature: 0.0}
            price: {input_per_1m: 0.01, output_per_1m: 0.02}
            options: {n_threads: 2}
        """))
    return cfg


def _chat(client: httpx.Client, text: str, stream: bool = False) -> str:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": text}], "max_tokens": 6, "stream": stream}
    if not stream:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["id"]
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events and all(e["id"] == events[0]["id"] for e in events)
    return events[0]["id"]


def test_feedback_round_trip_through_http_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPOSER_FEEDBACK_DB", raising=False)
    cfg = _registry(tmp_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    server = ServerProc(cfg, KEY).start()
    try:
        with httpx.Client(base_url=server.base, headers=headers, timeout=120) as client:
            first = _chat(client, "What is 2+2?")
            second = _chat(client, "Name a colour.")
            streamed = _chat(client, "Say hello.", stream=True)
            r = client.post("/v1/feedback", json={"id": first, "score": 1.0})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["object"] == "feedback" and body["experts"] == ["smollm2"]
            assert body["prompt"] == "What is 2+2?" and body["cost"] > 0
            assert client.post("/v1/feedback", json={"id": streamed, "score": 0.0}).status_code == 200
            dup = client.post("/v1/feedback", json={"id": first, "score": 0.0})
            assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_feedback"
            unknown = client.post("/v1/feedback", json={"id": "chatcmpl-nope", "score": 0.5})
            assert unknown.status_code == 404 and "unknown response id 'chatcmpl-nope'" in unknown.json()["error"]["message"]
            bad = client.post("/v1/feedback", json={"id": second, "score": 7})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
            assert client.post("/v1/feedback", content=b"{not json").status_code == 400
            assert client.post("/v1/feedback", json={"score": 1}).json()["error"]["param"] == "id"
            assert httpx.post(server.base + "/v1/feedback", json={"id": first, "score": 1}).status_code == 401
    finally:
        server.stop()
    # a new server process on the same registry: the log and the feedback are still there
    server = ServerProc(cfg, KEY).start()
    try:
        with httpx.Client(base_url=server.base, headers=headers, timeout=120) as client:
            assert client.post("/v1/feedback", json={"id": first, "score": 0.5}).status_code == 409
            late = client.post("/v1/feedback", json={"id": second, "score": 0.5, "comment": "after a restart"})
            assert late.status_code == 200, late.text
    finally:
        server.stop()
    store = tmp_path / "runs" / "feedback.sqlite"
    table = read_outcomes(store)
    assert table.n_queries == 3 and table.experts == ["smollm2"]
    # retrain on it
    res = CliRunner().invoke(register_commands(), ["router", "train", "--outcomes", str(store), "--router",
                                                   "best_single", "--out", str(tmp_path / "router")])
    assert res.exit_code == 0, res.output
    assert "trained 'best_single' on 3 queries x 1 experts" in res.output
