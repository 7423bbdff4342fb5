"""`composer data pull`: fetch the manifest's files from a mirror, resumable and checked.

A mirror is any HTTP(S) base URL laid out like ../shared/data (`<base>/<path>` for every path in
the manifest). Each file is written to `<dest>/<path>.part` first, resumed with an HTTP Range
request when a partial file is there, checked against the manifest's size and sha256, and only
then renamed into place, so an interrupted pull never leaves a wrong file under its real name and
a second pull fetches only what is missing.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from composer.data.manifest import CHUNK, FileEntry, Manifest, load_manifest, sha256_file
from composer.errors import ComposerError


class PullError(ComposerError):
    """A file could not be fetched or did not match its checksum (the message names it)."""


class PullUsageError(PullError):
    """The request itself is wrong (not an http(s) source, an unknown subset)."""


@dataclass
class PullReport:
    fetched: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"fetched": len(self.fetched), "resumed": len(self.resumed), "present": len(self.present),
                "bytes": self.bytes, "resumed_files": self.resumed}


def _url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(path)


def _target(dest: Path, e: FileEntry) -> Path:
    rel = Path(e.path)
    if rel.is_absolute() or ".." in rel.parts:
        raise PullError(f"manifest path '{e.path}' leaves the data folder")
    return dest / rel


def _matches(p: Path, e: FileEntry) -> bool:
    return p.is_file() and p.stat().st_size == e.size and sha256_file(p) == e.sha256


def _fetch(url: str, part: Path, e: FileEntry, timeout: float, on_bytes: Callable[[int], None]) -> bool:
    """Download into `part`, resuming from its size. True when it resumed."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > e.size:
        part.unlink()
        offset = 0
    req = urllib.request.Request(url, headers={"User-Agent": "composer-data-pull"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - the user names the mirror
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset == e.size:  # already complete
            return True
        raise PullError(f"{e.path}: {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"{e.path}: cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        resumed = bool(offset) and resp.status == 206
        mode = "ab" if resumed else "wb"
        with open(part, mode) as f:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    on_bytes(len(chunk))
            except OSError as exc:
                raise PullError(f"{e.path}: download interrupted ({exc}); run the pull again to resume") from None
    return resumed


def pull(source: str, dest: Path, *, prefixes: list[str] | None = None, manifest: Manifest | None = None,
         timeout: float = 60.0, progress: Callable[[FileEntry, int], None] | None = None) -> PullReport:
    """Fetch every manifest file under `prefixes` (all when None) from `source` into `dest`."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in ("http", "https"):
        raise PullUsageError(f"--source must be an http(s) URL of a mirror, got '{source}'")
    m = manifest or load_manifest()
    entries = m.select(prefixes)
    if not entries:
        raise PullUsageError(f"no manifest file under {', '.join(prefixes or [])}; "
                        f"groups: {', '.join(sorted({s['prefix'] for s in m.sources}))}")
    dest = Path(dest)
    report = PullReport()
    for e in entries:
        target = _target(dest, e)
        if _matches(target, e):
            report.present.append(e.path)
            if progress:
                progress(e, 0)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")

        def on_bytes(n: int, e: FileEntry = e) -> None:
            report.bytes += n
            if progress:
                progress(e, n)

        resumed = _fetch(_url(source, e.path), part, e, timeout, on_bytes)
        if part.stat().st_size != e.size or sha256_file(part) != e.sha256:
            got = part.stat().st_size
            part.unlink()
            raise PullError(f"{e.path}: the mirror's file does not match the manifest "
                            f"({got} bytes, expected {e.size} with sha256 {e.sha256[:12]}...)")
        os.replace(part, target)
        (report.resumed if resumed else report.fetched).append(e.path)
    return report
