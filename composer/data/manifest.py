"""The shipped manifest of the data folder: every file's path, size and sha256, and where each
group of files comes from publicly.

Regenerate it from a complete data folder (keeps the `sources` already in the manifest):

    python -m composer.data.manifest ../shared/data
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.json")
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str      # relative, with "/" separators
    size: int
    sha256: str


@dataclass
class Manifest:
    files: list[FileEntry]
    sources: list[dict] = field(default_factory=list)  # {prefix, name, url, licence}

    def select(self, prefixes: list[str] | None) -> list[FileEntry]:
        """The files under any of `prefixes` (all files when None or empty)."""
        if not prefixes:
            return list(self.files)
        norm = [p.strip("/") for p in prefixes]
        return [f for f in self.files if any(f.path == p or f.path.startswith(p + "/") for p in norm)]

    def source_of(self, path: str) -> dict | None:
        best = None
        for s in self.sources:
            if (path == s["prefix"] or path.startswith(s["prefix"].rstrip("/") + "/")) and \
                    (best is None or len(s["prefix"]) > len(best["prefix"])):
                best = s
        return best

    def to_json(self) -> str:
        return json.dumps({"format": 1, "sources": self.sources,
                           "files": [vars(f) for f in self.files]}, indent=1) + "\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(path: Path = MANIFEST) -> Manifest:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return Manifest([FileEntry(**f) for f in doc["files"]], doc.get("sources", []))


def build_manifest(root: Path, sources: list[dict] | None = None) -> Manifest:
    """A manifest of every regular file under `root` (sorted by path)."""
    root = Path(root)
    files = [FileEntry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p))
             for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    return Manifest(files, sources or [])


def verify(root: Path, entries: list[FileEntry]) -> list[str]:
    """Problems (missing file, wrong size, wrong sha256) of `entries` under `root`; [] when all match."""
    bad = []
    for e in entries:
        p = Path(root) / e.path
        if not p.is_file():
            bad.append(f"{e.path}: missing")
        elif p.stat().st_size != e.size:
            bad.append(f"{e.path}: {p.stat().st_size} bytes, expected {e.size}")
        elif sha256_file(p) != e.sha256:
            bad.append(f"{e.path}: sha256 differs")
    return bad


if __name__ == "__main__":  # pragma: no cover - maintenance command
    keep = load_manifest().sources if MANIFEST.exists() else []
    MANIFEST.write_text(build_manifest(Path(sys.argv[1]), keep).to_json(), encoding="utf-8")
    print(f"wrote {MANIFEST}")
