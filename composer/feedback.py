"""The endpoint's response log and feedback store (one SQLite file, durable across restarts).

The endpoint logs every completion it returns (`log_response`: the response id, choice index,
model asked for, route, experts, prompt, task, answer text, cost and tokens). Later,
`POST /v1/feedback` (or `Composer.feedback`) records a score for a past response id; the route,
experts, prompt and cost are already known, so the client sends only the id and the score.
`read_feedback(path)` turns the scored responses into a long outcome table, so

    composer router train --outcomes runs/feedback.sqlite --router knn --out runs/knn-fb

retrains on it (alone or together with `composer collect` tables).

Rules, each a clear error with an HTTP status (FeedbackError.status):
- an unknown response id (or choice index) -> 404;
- a second score for the same response and choice -> 409 (the first is kept);
- a score that is not a number in [0, 1] -> 400.

Durability: WAL journal; every write is one transaction committed before the call returns, so a
server process killed right after answering keeps what it answered. Commits use
synchronous=NORMAL (SQLite's setting for WAL): the committed WAL is in the operating system's
hands, which a killed process cannot undo; only an OS crash or power loss may drop the newest
rows. FULL would fsync on every answer (0.6 ms on an idle disk here, far more under load). The
writer keeps one connection per store (opened once), so an answer costs one small transaction.

An answer that combined several experts (MoA, vote) gives one outcome row per expert that
answered, each credited with the answer's score (the experts' own costs kept); a single-expert
answer gives one row.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

from composer.errors import BadRequestError

ENV = "COMPOSER_FEEDBACK_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT NOT NULL, choice INTEGER NOT NULL, created REAL NOT NULL, model TEXT, route TEXT,
    experts TEXT NOT NULL, candidates TEXT NOT NULL, prompt TEXT NOT NULL, task TEXT,
    response TEXT, cost REAL, tokens INTEGER, PRIMARY KEY (id, choice));
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT NOT NULL, choice INTEGER NOT NULL, score REAL NOT NULL, comment TEXT,
    created REAL NOT NULL, PRIMARY KEY (id, choice));
"""


class FeedbackError(BadRequestError):
    """Feedback that cannot be recorded; `status` is the HTTP status, `param` the field."""

    status = 400
    code = "invalid_feedback"

    def __init__(self, message: str, *, param: str | None = None):
        self.param = param
        super().__init__(message)


class UnknownResponseError(FeedbackError):
    status = 404
    code = "unknown_response"


class DuplicateFeedbackError(FeedbackError):
    status = 409
    code = "duplicate_feedback"


BODY_KEYS = ("id", "score", "choice", "comment")


def parse_body(raw: bytes | str) -> dict:
    """The JSON body of POST /v1/feedback: {"id", "score", optional "choice", "comment"}."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"the body must be a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise FeedbackError('the body must be a JSON object: {"id": "<response id>", "score": 0..1}')
    unknown = sorted(set(body) - set(BODY_KEYS))
    if unknown:
        raise FeedbackError(f"unknown field(s) {unknown}; send {', '.join(BODY_KEYS)}", param=unknown[0])
    for key in ("id", "score"):
        if key not in body:
            raise FeedbackError(f"'{key}' is required", param=key)
    return {"response_id": body["id"], "score": body["score"], "choice": body.get("choice", 0),
            "comment": body.get("comment")}


def default_path(base_dir: str | Path | None = None) -> Path:
    """$COMPOSER_FEEDBACK_DB, else runs/feedback.sqlite next to the registry (or here)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    return Path(base_dir or ".") / "runs" / "feedback.sqlite"


def check_score(score) -> float:
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise FeedbackError(f"'score' must be a number between 0 and 1, got {score!r}", param="score")
    if not 0.0 <= float(score) <= 1.0:
        raise FeedbackError(f"'score' must be between 0 and 1, got {score}", param="score")
    return float(score)


class FeedbackStore:
    """Response log + feedback in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._ready = readonly  # a reader never creates tables
        self._writer: sqlite3.Connection | None = None

    def _connect(self, *, shared: bool = False) -> sqlite3.Connection:
        if self.readonly:
            return sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, timeout=30,
                                   isolation_level=None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=not shared)
        con.execute("PRAGMA synchronous=NORMAL")
        if not self._ready:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            self._ready = True
        return con

    def _write_connection(self) -> sqlite3.Connection:
        """The store's one writing connection (callers hold self._lock); reopened if closed."""
        if self._writer is None:
            self._writer = self._connect(shared=True)
        return self._writer

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- the endpoint's log -----------------------------------------------------------------
    def log_response(self, response_id: str, model: str, queries, answers) -> int:
        """Log each choice of a returned completion (query i -> answer i). Returns rows logged."""
        rows = []
        now = time.time()
        for i, (q, a) in enumerate(zip(queries, answers)):
            prompt = q.chat_messages()[-1]["content"] if q.messages else q.text
            cands = [{"expert": c.expert, "cost": c.usage.cost, "tokens": c.usage.total_tokens}
                     for c in a.candidates if c.ok]
            rows.append((response_id, i, now, model, json.dumps(a.route.to_dict() if a.route else None),
                         json.dumps(list(a.experts)), json.dumps(cands), str(prompt), q.task, a.text,
                         a.usage.cost, a.usage.total_tokens))
        with self._lock:
            con = self._write_connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany("INSERT OR IGNORE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(rows)

    def response(self, response_id: str, choice: int = 0) -> dict | None:
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            r = con.execute("SELECT * FROM responses WHERE id=? AND choice=?", (response_id, choice)).fetchone()
        if r is None:
            return None
        d = dict(r)
        for k in ("route", "experts", "candidates"):
            d[k] = json.loads(d[k]) if d[k] is not None else None
        return d

    # -- feedback ---------------------------------------------------------------------------
    def record(self, response_id, score, *, choice=0, comment: str | None = None) -> dict:
        """Record one score for a logged response; raises FeedbackError (404/409/400)."""
        if not isinstance(response_id, str) or not response_id.strip():
            raise FeedbackError("'id' must be the id of a past response (a non-empty string)", param="id")
        if isinstance(choice, bool) or not isinstance(choice, int) or choice < 0:
            raise FeedbackError(f"'choice' must be a choice index >= 0, got {choice!r}", param="choice")
        if comment is not None and not isinstance(comment, str):
            raise FeedbackError("'comment' must be a string", param="comment")
        value = check_score(score)
        with self._lock:
            con = self._write_connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                known = con.execute("SELECT experts, prompt, cost FROM responses WHERE id=? AND choice=?",
                                    (response_id, choice)).fetchone()
                if known is None:
                    n = con.execute("SELECT COUNT(*) FROM responses WHERE id=?", (response_id,)).fetchone()[0]
                    where = f"choice {choice} of response '{response_id}'" if n else f"response id '{response_id}'"
                    raise UnknownResponseError(f"unknown {where}: no completion with that id was logged here",
                                               param="choice" if n else "id")
                try:
                    con.execute("INSERT INTO feedback VALUES (?,?,?,?,?)",
                                (response_id, choice, value, comment, time.time()))
                except sqlite3.IntegrityError:
                    old = con.execute("SELECT score FROM feedback WHERE id=? AND choice=?",
                                      (response_id, choice)).fetchone()[0]
                    raise DuplicateFeedbackError(
                        f"response '{response_id}' choice {choice} already has feedback (score {old:g}); "
                        "feedback is recorded once", param="id") from None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return {"id": response_id, "choice": choice, "score": value, "experts": json.loads(known[0]),
                "prompt": known[1], "cost": known[2]}

    def counts(self) -> dict:
        with closing(self._connect()) as con:
            return {"responses": con.execute("SELECT COUNT(*) FROM responses").fetchone()[0],
                    "feedback": con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]}

    def outcome_rows(self) -> list[dict]:
        """Long outcome rows (query_id, prompt, task, expert, score, cost, response) of every
        scored response: one row per expert that answered it."""
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT r.id, r.choice, r.prompt, r.task, r.response, r.candidates, r.experts, r.cost, "
                "f.score FROM feedback f JOIN responses r ON r.id=f.id AND r.choice=f.choice "
                "ORDER BY f.created").fetchall()
        out = []
        for rid, choice, prompt, task, text, cands, experts, cost, score in rows:
            cands = json.loads(cands) or [{"expert": e, "cost": cost} for e in json.loads(experts)]
            seen = set()
            for c in cands:
                if c["expert"] in seen:
                    continue
                seen.add(c["expert"])
                out.append({"query_id": f"{rid}:{choice}", "prompt": prompt, "task": task or "feedback",
                            "expert": c["expert"], "score": score,
                            "cost": sum(x["cost"] or 0 for x in cands if x["expert"] == c["expert"]),
                            "response": text})
        return out


def read_feedback(path: str | Path):
    """The scored responses of a feedback store as an OutcomeTable (for router training)."""
    from composer.errors import OutcomeFormatError  # noqa: PLC0415
    from composer.outcomes import OutcomeTable  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise OutcomeFormatError(f"{path}: feedback store not found")
    try:
        rows = FeedbackStore(path, readonly=True).outcome_rows()
    except sqlite3.DatabaseError as exc:
        raise OutcomeFormatError(f"{path}: not a composer feedback store ({exc})") from None
    if not rows:
        raise OutcomeFormatError(f"{path}: no feedback recorded yet (POST /v1/feedback scores past responses)")
    return OutcomeTable.from_records(rows, str(path))
