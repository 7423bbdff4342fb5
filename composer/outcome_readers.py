"""Readers from outcome file formats into composer's long `OutcomeTable`.

Formats (pick one with `format=`, or let `detect_format` choose):

- ``routerdc``: a JSON list of ``{"question": str, "scores": {model: score}}`` (RouterDC's
  datasets). The task is the file name without a ``_train``/``_test`` suffix
  (``mmlu_test.json`` -> ``mmlu``, ``gsm8k-train.json`` -> ``gsm8k``).
- ``routellm``: a CSV with ``prompt`` then one True/False column per model and optional
  ``<model>_response`` columns (RouteLLM's ``mmlu_<subject>.csv``, ``gsm8k_responses.csv``).
  The task is the file name up to its first ``_``.
- ``routerbench``: RouterBench's wide CSV: ``prompt``, ``eval_name`` (the task), one score
  column per model, ``<model>|model_response``, ``<model>|total_cost``, optional ``sample_id``
  and ``oracle_model_to_route_to``. Models are the ones with a ``|model_response`` column
  (RouterBench's own rule), else the ones with a ``|total_cost`` column.
- ``mt_bench``: RouteLLM's MT-Bench folder: ``question.jsonl`` (``question_id``, ``category``,
  ``turns``: the user's two turns) and ``judgements.jsonl`` (one GPT-4 judge record per question,
  model and turn: ``question_id``, ``model``, ``turn``, ``score`` 1-10, ``user_prompt``). Scored
  as RouteLLM scores it (``routellm/evals/benchmarks.py``, ``MTBench``): a question routed to a
  model earns the mean of that model's judge scores over the question's turns; the router sees
  only the first turn ("Only use first turn for routing"). One query per question, task
  ``mt_bench``, score kind ``graded``, the score divided by 10 (into [0, 1], what composer's
  routers and curves expect: 0.9 is an MT-Bench score of 9.0). The response is the model's
  answers, cut from the judge prompts (for the token estimate of its cost). Give the folder (or
  its ``judgements.jsonl``); RouteLLM's decontamination (dropping questions whose turns are in its
  Arena training data, ``contaminated_prompts.jsonl``) is not applied: composer's routers train
  on MT-Bench's own other questions, not on Arena.
- ``long``: composer's own long format as CSV or JSONL: ``prompt``, ``expert``, ``score``
  and optional ``query_id``, ``task``, ``cost``, ``response``.

Every reader raises `OutcomeFormatError` naming the file, the row and the column.
Row numbers count data records from 1 (a CSV header is not a row; a multi-line prompt is one row).

Readers return a long `pandas.DataFrame` (the table's columns plus ``_row``, the record number
in the file, so duplicate and conflict messages can name both rows); `composer.outcomes` turns
it into an `OutcomeTable` (merging duplicates by its policy). This module does not import
`composer.outcomes`: the dependency goes one way.

Score kinds (how a score counts as accuracy; see `composer.outcomes.SCORE_KINDS`): the RouterDC
reader sets one per file, RouterDC's own way (`routerdc_score_kind`); the other readers leave
it to the table, which infers it from the values.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from composer.errors import OutcomeFormatError

FORMATS = ("routerdc", "routellm", "routerbench", "mt_bench", "long", "feedback")
MT_BENCH_FILES = ("question.jsonl", "judgements.jsonl")
MT_BENCH_SCALE = 10.0  # the judge's grades run 1-10; composer's graded score is grade / 10
_TRUE = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
_MISSING = {"", "nan", "none", "null", "na", "n/a"}
_SPLIT_SUFFIX = re.compile(r"[_-](train|test|val|valid|dev)$", re.IGNORECASE)
# RouterDC's evaluation (train_router_mdeberta.py): "probability" tasks count a query right when the
# chosen model's score is > 0 (the value is the answer's probability when right, 0 when wrong);
# "multi_attempt" tasks score the share of the 10 sampled answers that were right.
ROUTERDC_PROBABILITY = {"mmlu", "cmmlu", "arc_challenge", "arc_easy", "ceval", "math_prealgebra"}
ROUTERDC_MULTI_ATTEMPT = {"gsm8k", "humaneval", "mbpp", "javascript"}


def parse_scores(values: pd.Series, *, source: str, column: str, row_offset: int = 1) -> pd.Series:
    """Parse a column of scores: numbers, True/False, or empty/NaN/null for missing.

    Anything else raises OutcomeFormatError naming the source, the (1-based) row and the column.
    """
    if values.dtype == bool:
        return values.astype(float)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype(float)
    text = values.map(lambda v: v if isinstance(v, str) else ("" if v is None or
                                                              (isinstance(v, float) and np.isnan(v)) else v))
    if all(isinstance(v, str) for v in text):  # the common case (CSV cells): vectorised
        s = text.str.strip().str.lower()
        missing = s.isin(_MISSING)
        out = s.map(_TRUE).astype(float)
        rest = ~missing & out.isna()
        if rest.any():
            num = pd.to_numeric(s[rest], errors="coerce")
            bad = num.isna()
            if bad.any():
                idx = bad.idxmax()
                _bad(source, idx, row_offset, column, text[idx])
            out[rest] = num
        return out
    out = pd.Series(np.nan, index=values.index, dtype=float)
    for idx, v in text.items():
        if isinstance(v, bool):
            out[idx] = float(v)
        elif isinstance(v, (int, float)):
            out[idx] = float(v)
        elif isinstance(v, str):
            s = v.strip().lower()
            if s in _MISSING:
                continue
            if s in _TRUE:
                out[idx] = _TRUE[s]
                continue
            try:
                out[idx] = float(s)
            except ValueError:
                _bad(source, idx, row_offset, column, v)
        else:
            _bad(source, idx, row_offset, column, v)
    return out


def _bad(source: str, idx, row_offset: int, column: str, value) -> None:
    pos = int(idx) + row_offset if isinstance(idx, (int, np.integer)) else idx
    raise OutcomeFormatError(
        f"{source}: row {pos}, column '{column}': cannot read {value!r} as a score; "
        "use a number, True/False, or leave it empty for a missing score")


def task_from_name(path: Path, fmt: str) -> str:
    stem = path.stem
    if fmt == "routellm":
        return stem.split("_", 1)[0]
    return _SPLIT_SUFFIX.sub("", stem)


# -- detection -----------------------------------------------------------------------------

def is_mt_bench(path: Path) -> bool:
    """A RouteLLM MT-Bench folder (question.jsonl + judgements.jsonl), or its judgements.jsonl."""
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name != "judgements.jsonl":
        return False
    return all((folder / f).is_file() for f in MT_BENCH_FILES)


def detect_format(path: Path) -> str:
    if is_mt_bench(path):
        return "mt_bench"
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "long"
    if suffix == ".json":
        with path.open("r", encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if not head.startswith("["):
            raise OutcomeFormatError(f"{path}: expected a JSON list of outcome records")
        if '"scores"' in head or '"question"' in head:
            return "routerdc"
        if '"expert"' in head:
            return "long"
        raise OutcomeFormatError(f"{path}: unknown JSON outcome format: records need "
                                 "question+scores (RouterDC) or prompt+expert+score (long)")
    if suffix == ".csv":
        header = _csv_header(path)
        if any("|model_response" in c or "|total_cost" in c for c in header) or "eval_name" in header:
            return "routerbench"
        if "expert" in header and "score" in header:
            return "long"
        if header and header[0] == "prompt":
            return "routellm"
        raise OutcomeFormatError(
            f"{path}: row 0 (header): unknown CSV outcome format {header[:6]}; expected RouterBench "
            "(prompt, eval_name, <model>, <model>|total_cost, ...), RouteLLM (prompt, <model>...) "
            "or long (prompt, expert, score, ...) columns")
    if suffix in (".sqlite", ".db"):  # a feedback store (composer/feedback.py)
        return "feedback"
    raise OutcomeFormatError(f"{path}: unknown outcome file type '{suffix}'; use .json, .jsonl, .csv "
                             "or a feedback store (.sqlite)")


def _csv_header(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", newline="") as f:
        try:
            return next(csv.reader(f))
        except StopIteration:
            raise OutcomeFormatError(f"{path}: the file is empty") from None


def read_frame(path: str | Path, format: str = "auto") -> pd.DataFrame:
    """One outcome file as a long frame (with `_row`); see the module docstring for the formats."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise OutcomeFormatError(f"unknown outcome format '{format}'; known: auto, {', '.join(FORMATS)}")
    if fmt == "feedback":  # a feedback store builds its own table: composer.outcomes.read_file reads it
        raise OutcomeFormatError(f"{path}: a feedback store is read by composer.outcomes.read_outcomes, not as a frame")
    reader = {"routerdc": read_routerdc, "routellm": read_routellm, "routerbench": read_routerbench,
              "mt_bench": read_mt_bench, "long": read_long}[fmt]
    return reader(path)


# -- readers ---------------------------------------------------------------------------------

def routerdc_score_kind(task: str, scores: np.ndarray) -> str:
    """RouterDC's score type of a file: by its task name, else by its values (multiples of 0.1,
    i.e. k of 10 samples: the share of right samples; other values: an answer probability)."""
    name = task.lower()
    if name in ROUTERDC_PROBABILITY:
        return "correct_if_positive"
    if name in ROUTERDC_MULTI_ATTEMPT:
        return "fraction"
    v = scores[np.isfinite(scores)]
    if v.size and np.isin(v, (0.0, 1.0)).all():
        return "binary"
    tenths = np.abs(v * 10 - np.round(v * 10)) < 1e-9
    return "fraction" if tenths.all() else "correct_if_positive"


def read_routerdc(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OutcomeFormatError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise OutcomeFormatError(f"{path}: expected a JSON list of {{question, scores}} records")
    task = task_from_name(path, "routerdc")
    qid, prompt, expert, score, rows = [], [], [], [], []
    for i, item in enumerate(data):
        row = i + 1
        if not isinstance(item, dict):
            raise OutcomeFormatError(f"{path}: row {row}: expected an object with 'question' and 'scores'")
        q = item.get("question")
        if not isinstance(q, str):
            raise OutcomeFormatError(f"{path}: row {row}, column 'question': missing or not a string")
        scores = item.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise OutcomeFormatError(f"{path}: row {row}, column 'scores': missing or not a {{model: score}} object")
        for model, s in scores.items():
            if s is None:
                s = np.nan
            elif isinstance(s, bool):
                s = float(s)
            elif not isinstance(s, (int, float)):
                raise OutcomeFormatError(f"{path}: row {row}, column 'scores.{model}': {s!r} is not a "
                                         "number; use a number or null for a missing score")
            qid.append(f"{path.stem}:{i}")
            prompt.append(q)
            expert.append(str(model))
            score.append(float(s))
            rows.append(row)
    if not qid:
        raise OutcomeFormatError(f"{path}: no outcome records")
    values = np.asarray(score, dtype=float)
    return pd.DataFrame({"query_id": qid, "prompt": prompt, "task": task, "expert": expert,
                         "score": values, "cost": np.nan, "response": None,
                         "score_kind": routerdc_score_kind(task, values), "_row": rows})


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise OutcomeFormatError(f"{path}: cannot parse CSV: {exc}") from None
    except pd.errors.EmptyDataError:
        raise OutcomeFormatError(f"{path}: the file is empty") from None


def read_routellm(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = _read_csv(path)
    if not len(df.columns) or df.columns[0] != "prompt":
        raise OutcomeFormatError(f"{path}: row 0 (header), column 1: expected 'prompt' first, got "
                                 f"{list(df.columns[:3])}")
    models = [c for c in df.columns[1:] if not c.endswith("_response")]
    if not models:
        raise OutcomeFormatError(f"{path}: row 0 (header): no model score columns after 'prompt'")
    for c in df.columns[1:]:
        if c.endswith("_response") and c[: -len("_response")] not in models:
            raise OutcomeFormatError(f"{path}: row 0 (header), column '{c}': response column for a model "
                                     "without a score column")
    task = task_from_name(path, "routellm")
    ids = [f"{path.stem}:{i}" for i in range(len(df))]
    parts = []
    for m in models:
        resp = df[f"{m}_response"] if f"{m}_response" in df.columns else None
        parts.append(pd.DataFrame({
            "query_id": ids, "prompt": df["prompt"], "task": task, "expert": m,
            "score": parse_scores(df[m], source=str(path), column=m),
            "cost": np.nan,
            "response": resp.where(resp != "", None) if resp is not None else None,
            "_row": np.arange(1, len(df) + 1),
        }))
    return _interleave(parts)


def read_routerbench(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = _read_csv(path)
    cols = list(df.columns)
    for need in ("prompt", "eval_name"):
        if need not in cols:
            raise OutcomeFormatError(f"{path}: row 0 (header): column '{need}' is missing; RouterBench CSVs "
                                     "have prompt, eval_name, <model>, <model>|model_response, <model>|total_cost")
    models = [c[: -len("|model_response")] for c in cols if c.endswith("|model_response")]
    if not models:
        models = [c[: -len("|total_cost")] for c in cols if c.endswith("|total_cost")]
    if not models:
        raise OutcomeFormatError(f"{path}: row 0 (header): no '<model>|model_response' or "
                                 "'<model>|total_cost' columns, so no models to read")
    for m in models:
        if m not in cols:
            raise OutcomeFormatError(f"{path}: row 0 (header), column '{m}': the score column of model "
                                     f"'{m}' is missing (it has a '{m}|model_response' column)")
    bad_task = df["eval_name"].str.strip() == ""
    if bad_task.any():
        i = int(np.flatnonzero(bad_task.to_numpy())[0])
        raise OutcomeFormatError(f"{path}: row {i + 1}, column 'eval_name': empty; every row needs its eval name")
    if "sample_id" in cols:
        ids = df["sample_id"].astype(str).tolist()
    else:
        ids = [f"{path.stem}:{i}" for i in range(len(df))]
    parts = []
    for m in models:
        cost_col, resp_col = f"{m}|total_cost", f"{m}|model_response"
        resp = df[resp_col] if resp_col in cols else None
        parts.append(pd.DataFrame({
            "query_id": ids, "prompt": df["prompt"], "task": df["eval_name"], "expert": m,
            "score": parse_scores(df[m], source=str(path), column=m),
            "cost": (parse_scores(df[cost_col], source=str(path), column=cost_col)
                     if cost_col in cols else np.nan),
            "response": resp.where(resp != "", None) if resp is not None else None,
            "_row": np.arange(1, len(df) + 1),
        }))
    return _interleave(parts)


def _jsonl_records(path: Path, what: str):
    """(line number, object) for each non-blank line; a bad line raises naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OutcomeFormatError(f"{path}: file not found ({what})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutcomeFormatError(f"{path}: line {n}: invalid JSON: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise OutcomeFormatError(f"{path}: line {n}: expected a JSON object ({what})")
        yield n, rec


def _field(path: Path, n: int, rec: dict, key: str, kinds, what: str):
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, kinds):
        raise OutcomeFormatError(f"{path}: line {n}, field '{key}': {'missing' if v is None else repr(v)[:60]}; "
                                 f"expected {what}")
    return v


_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_CONVERSATION = re.compile(r"<\|The Start of Assistant A's Conversation with User\|>(.*?)"
                           r"<\|The End of Assistant A's Conversation with User\|>", re.S)


def _mt_bench_answer(judge_prompt, turn: int) -> str | None:
    """The judged model's answer to `turn`, cut from the judge's prompt (None if not found)."""
    if not isinstance(judge_prompt, str):
        return None
    conv = _CONVERSATION.search(judge_prompt)
    if conv:
        parts = conv.group(1).split("### Assistant A:\n")[1:]
        answers = [p.split("\n\n### User:\n")[0].strip() for p in parts]
        return answers[turn - 1] if len(answers) >= turn else None
    single = _ANSWER.search(judge_prompt)
    return single.group(1).strip() if single and turn == 1 else None


def read_mt_bench(path: str | Path) -> pd.DataFrame:
    """RouteLLM's MT-Bench folder (or its judgements.jsonl): see the module docstring."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    qpath, jpath = folder / "question.jsonl", folder / "judgements.jsonl"
    questions: dict[int, tuple[int, list[str]]] = {}   # id -> (line, turns)
    for n, rec in _jsonl_records(qpath, "an MT-Bench question: question_id, category, turns"):
        qid = _field(qpath, n, rec, "question_id", int, "an integer question id")
        turns = _field(qpath, n, rec, "turns", list, "a list of the user's turns (strings)")
        if not turns or not all(isinstance(t, str) for t in turns):
            raise OutcomeFormatError(f"{qpath}: line {n}, field 'turns': expected a non-empty list of strings")
        if qid in questions:
            raise OutcomeFormatError(f"{qpath}: line {n}: question_id {qid} repeats line {questions[qid][0]}")
        questions[qid] = (n, turns)
    if not questions:
        raise OutcomeFormatError(f"{qpath}: no questions")
    grades: dict[tuple[int, str], dict[int, tuple[int, float, str | None]]] = {}  # (q, model) -> turn -> ...
    models: list[str] = []
    for n, rec in _jsonl_records(jpath, "a judge record: question_id, model, turn, score"):
        qid = _field(jpath, n, rec, "question_id", int, "an integer question id")
        if qid not in questions:
            raise OutcomeFormatError(f"{jpath}: line {n}, field 'question_id': {qid} is not in {qpath.name}")
        model = _field(jpath, n, rec, "model", str, "the judged model's name")
        turn = _field(jpath, n, rec, "turn", int, "the judged turn (1, 2, ...)")
        if not 1 <= turn <= len(questions[qid][1]):
            raise OutcomeFormatError(f"{jpath}: line {n}, field 'turn': {turn}; question {qid} has "
                                     f"{len(questions[qid][1])} turn(s)")
        score = float(_field(jpath, n, rec, "score", (int, float), "the judge's grade, a number 1-10"))
        if score == -1:  # FastChat's mark for a judgement it could not parse: missing, not 0
            score = np.nan
        elif not 1.0 <= score <= MT_BENCH_SCALE:
            raise OutcomeFormatError(f"{jpath}: line {n}, field 'score': {score:g} is outside the judge's "
                                     "1-10 scale (-1 marks a failed judgement)")
        seen = grades.setdefault((qid, model), {})
        if turn in seen:
            raise OutcomeFormatError(f"{jpath}: line {n}: question {qid}, model '{model}', turn {turn} "
                                     f"was already judged on line {seen[turn][0]}")
        seen[turn] = (n, score, _mt_bench_answer(rec.get("user_prompt"), turn))
        if model not in models:
            models.append(model)
    if not models:
        raise OutcomeFormatError(f"{jpath}: no judgements")
    rows = []
    for qid, (line, turns) in questions.items():
        for model in models:
            judged = grades.get((qid, model), {})
            scores = [judged[t][1] for t in range(1, len(turns) + 1) if t in judged]
            # every turn judged: the mean of its grades (RouteLLM's mean over a question's turns);
            # a turn not judged (or unparsable): the question's score for this model is missing
            complete = len(scores) == len(turns) and not np.isnan(scores).any()
            answers = [judged[t][2] for t in sorted(judged) if judged[t][2]]
            rows.append({"query_id": f"mt_bench:{qid}", "prompt": turns[0], "task": "mt_bench",
                         "expert": model,
                         "score": float(np.mean(scores)) / MT_BENCH_SCALE if complete else np.nan,
                         "cost": np.nan, "response": "\n\n".join(answers) if answers else None,
                         "score_kind": "graded", "_row": line})
    return pd.DataFrame(rows)


def read_long(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        df = _read_csv(path)
    else:
        if path.suffix.lower() == ".json":
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise OutcomeFormatError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        else:
            records = [rec for _, rec in _jsonl_records(path, "one outcome per line")]
        df = pd.DataFrame.from_records(records)
    for need in ("prompt", "expert", "score"):
        if need not in df.columns:
            raise OutcomeFormatError(f"{path}: column '{need}' is missing; long outcome files need "
                                     "prompt, expert, score (and optionally query_id, task, cost, response)")
    df = df.replace({"": None}) if path.suffix.lower() == ".csv" else df
    if "task" not in df.columns:
        df["task"] = path.stem
    df["task"] = df["task"].fillna(path.stem)
    if "query_id" not in df.columns:
        key = df["task"].astype(str) + "\x00" + df["prompt"].astype(str)
        df["query_id"] = key.map(lambda k: f"{path.stem}:{hashlib.sha1(k.encode()).hexdigest()[:12]}")
    for col in ("score", "cost"):
        if col in df.columns:
            df[col] = parse_scores(df[col].astype(object), source=str(path), column=col)
    df["_row"] = np.arange(1, len(df) + 1)
    return df


def _interleave(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Stack per-model frames so rows come query by query (stable, readable order)."""
    n = len(parts[0])
    frame = pd.concat(parts, ignore_index=True)
    order = np.arange(len(frame)).reshape(len(parts), n).T.ravel()
    return frame.iloc[order].reset_index(drop=True)
