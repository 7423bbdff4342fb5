"""The resumable outcome store of `composer collect`: one long JSONL table plus a run sidecar.

Each line is one (query, expert) outcome with the columns `composer router train` and
`composer eval` read (`query_id, prompt, task, expert, score, cost, response`) and more
(`latency, prompt_tokens, completion_tokens, tokens, grader, reason, judge, judge_cost, ...`).

Crash safety: a chunk's rows are written with one write, then flushed and fsynced, so a kill -9
loses at most the chunk in flight. On open, a torn last line (a kill mid-write) is cut off; rows
are read back keyed by (query_id, expert), first row wins, so nothing is counted twice and a
resumed run skips exactly the pairs already stored.

The sidecar `<store>.meta.json` records what defines the run (prompt set, seed, split, grader,
judge, per-expert max_tokens); resuming with a different definition is refused (exit 2) instead
of silently mixing two runs in one table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from composer.errors import BadRequestError

SCHEMA = "composer.collect/1"
# Keys of the sidecar that must match for a resume; `experts` and `max_tokens` may grow.
RUN_KEYS = ("prompts", "split", "seed", "grader", "judge", "judge_mode", "reference_expert")


class OutcomeStore:
    """Append-only JSONL of outcome rows keyed by (query_id, expert)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")

    # -- rows -------------------------------------------------------------------------------
    def repair(self) -> int:
        """Cut a torn last line (no trailing newline) left by a kill mid-write; bytes cut."""
        if not self.path.exists():
            return 0
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with self.path.open("rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep

    def rows(self) -> list[dict]:
        """Every complete row, first per (query_id, expert), in file order."""
        if not self.path.exists():
            return []
        out, seen = [], set()
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    break  # torn last line: cut by repair() before the next append
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadRequestError(f"{self.path}:{n}: not a JSON row ({exc.msg}); fix or remove "
                                          "that line, or collect into another --out") from None
                key = (str(row.get("query_id")), str(row.get("expert")))
                if key not in seen:
                    seen.add(key)
                    out.append(row)
        return out

    def done(self) -> set[tuple[str, str]]:
        return {(str(r["query_id"]), str(r["expert"])) for r in self.rows()}

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows as one durable append (write, flush, fsync). Returns rows written."""
        lines = [json.dumps({"schema": SCHEMA, **r}, ensure_ascii=False, default=str) + "\n" for r in rows]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        return len(lines)

    # -- run definition ---------------------------------------------------------------------
    def read_meta(self) -> dict | None:
        if not self.meta_path.exists():
            return None
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BadRequestError(f"{self.meta_path}: not valid JSON ({exc.msg}); remove it only if "
                                  f"{self.path} is empty") from None

    def check_and_write_meta(self, meta: dict) -> dict:
        """Refuse a resume whose run definition differs; merge experts and max_tokens; save."""
        old = self.read_meta()
        if old is None and self.path.exists() and self.path.stat().st_size > 0:
            raise BadRequestError(f"{self.path} has rows but no {self.meta_path.name}; "
                                  "collect into another --out")
        if old is not None:
            diff = {k: (old.get(k), meta.get(k)) for k in RUN_KEYS if old.get(k) != meta.get(k)}
            clash = {e: (old["max_tokens"][e], n) for e, n in meta["max_tokens"].items()
                     if e in old.get("max_tokens", {}) and old["max_tokens"][e] != n}
            if clash:
                diff["max_tokens"] = clash
            if diff:
                raise BadRequestError(f"{self.path} holds a different run ({diff}, as stored vs asked); "
                                      "use another --out, or --no-resume to start over (the old file is "
                                      "kept as .bak)")
            meta = {**old, **meta, "experts": list(dict.fromkeys([*old.get("experts", []), *meta["experts"]])),
                    "max_tokens": {**old.get("max_tokens", {}), **meta["max_tokens"]}}
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.meta_path)
        return meta

    def backup(self, stamp: str) -> Path | None:
        """Move the store and its sidecar aside (for --no-resume); never deletes results."""
        if not self.path.exists():
            if self.meta_path.exists():
                self.meta_path.unlink()
            return None
        bak = self.path.with_name(f"{self.path.name}.{stamp}.bak")
        self.path.rename(bak)
        if self.meta_path.exists():
            self.meta_path.rename(bak.with_name(bak.name + ".meta.json"))
        return bak
