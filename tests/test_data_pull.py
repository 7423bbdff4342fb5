"""`composer data pull` against a real HTTP mirror on 127.0.0.1 serving ../shared/data."""

from __future__ import annotations

import filecmp
import http.server
import json
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest
from typer.testing import CliRunner

from composer.cli.main import app, register_commands
from composer.data import load_manifest, resolution
from composer.data.manifest import verify

register_commands()
runner = CliRunner()
SUBSET = ["graphs/planetoid", "tabular/german", "README.md"]  # 20 files, 1.7 MB


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under `root`, honouring `Range: bytes=N-` (206) like real mirrors do."""

    def __init__(self, *a, root: Path, log: list, **kw):
        self.root, self.log = root, log
        super().__init__(*a, **kw)

    def do_GET(self):  # noqa: N802
        rel = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).lstrip("/")
        p = self.root / rel
        rng = self.headers.get("Range")
        self.log.append((rel, rng))
        if ".." in Path(rel).parts or not p.is_file():
            self.send_error(404)
            return
        data = p.read_bytes()
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *a):
        pass


@pytest.fixture
def mirror(shared_data):
    """(base URL, request log, set_root) of a mirror serving the shared data folder."""
    log: list = []
    state = {"root": shared_data}

    def handler(*a, **kw):
        return RangeHandler(*a, root=state["root"], log=log, **kw)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", log, lambda r: state.update(root=r)
    srv.shutdown()
    srv.server_close()


def _pull(url, dest, *extra):
    args = ["data", "pull", "--source", url, "--data-dir", str(dest), "--json"]
    for p in SUBSET:
        args += ["--only", p]
    return runner.invoke(app, args + list(extra))


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_shipped_manifest_matches_the_shared_data(shared_data):
    m = load_manifest()
    assert len(m.files) == len(_files(shared_data))
    assert verify(shared_data, m.files) == []
    for f in m.files:  # every file belongs to a documented public source
        assert m.source_of(f.path) is not None, f.path


def test_pull_reproduces_the_layout_byte_for_byte_and_resumes(mirror, shared_data, tmp_path):
    url, log, _ = mirror
    dest = tmp_path / "data"
    # an interrupted earlier pull left the first half of one file as .part
    part_of = "graphs/planetoid/ind.cora.allx"
    src = (shared_data / part_of).read_bytes()
    (dest / "graphs/planetoid").mkdir(parents=True)
    (dest / (part_of + ".part")).write_bytes(src[: len(src) // 2])

    r = _pull(url, dest)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    want = {f.path for f in load_manifest().select(SUBSET)}
    assert len(want) == 20 and _files(dest) == want            # the same layout, no .part left
    for rel in want:
        assert filecmp.cmp(shared_data / rel, dest / rel, shallow=False), rel
    assert d["resumed_files"] == [part_of] and d["fetched"] == 19
    assert (part_of, f"bytes={len(src) // 2}-") in log          # resumed with a Range request
    assert d["bytes"] == sum(f.size for f in load_manifest().select(SUBSET)) - len(src) // 2

    from composer.specialists.data import load_planetoid  # the pulled folder is usable as is

    g = load_planetoid("cora", root=dest)
    assert g.x.shape[0] == 2708

    log.clear()
    r2 = _pull(url, dest)                                       # nothing left to fetch
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.output)["present"] == 20 and log == []


def test_a_file_that_does_not_match_its_checksum_is_not_kept(mirror, shared_data, tmp_path):
    url, _, set_root = mirror
    bad = tmp_path / "mirror"
    shutil.copytree(shared_data / "tabular/german", bad / "tabular/german")
    with open(bad / "tabular/german/german.data", "r+b") as f:  # one flipped byte
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    set_root(bad)
    dest = tmp_path / "data"
    r = runner.invoke(app, ["data", "pull", "--source", url, "--data-dir", str(dest),
                            "--only", "tabular/german"])
    assert r.exit_code == 1
    assert "tabular/german/german.data" in r.output and "does not match the manifest" in r.output
    assert not (dest / "tabular/german/german.data").exists()
    assert not (dest / "tabular/german/german.data.part").exists()


def test_bad_source_and_unknown_subset_are_usage_errors(tmp_path, mirror):
    r = runner.invoke(app, ["data", "pull", "--source", "ftp://example.org/x", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "http(s) URL" in r.output
    r = runner.invoke(app, ["data", "pull", "--source", mirror[0], "--data-dir", str(tmp_path),
                            "--only", "no/such/group"])
    assert r.exit_code == 2 and "no/such/group" in r.output


def test_missing_file_on_the_mirror_names_it(tmp_path, mirror):
    url, _, set_root = mirror
    set_root(tmp_path / "empty")
    r = runner.invoke(app, ["data", "pull", "--source", url, "--data-dir", str(tmp_path / "d"),
                            "--only", "README.md"])
    assert r.exit_code == 1 and "README.md" in r.output and "HTTP 404" in r.output


def test_resolution_order(tmp_path, monkeypatch, repo_root):
    monkeypatch.delenv("COMPOSER_DATA", raising=False)
    path, rule = resolution()
    assert path == repo_root.parent / "shared" / "data" and "beside the source checkout" in rule
    monkeypatch.setenv("COMPOSER_DATA", str(tmp_path / "env"))
    assert resolution() == (tmp_path / "env", "$COMPOSER_DATA")
    assert resolution(tmp_path / "x")[0] == tmp_path / "x"
    r = runner.invoke(app, ["data", "where", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["path"] == str(tmp_path / "env")


def test_user_data_folder_is_the_last_resort(tmp_path, monkeypatch):
    from composer.data import paths

    monkeypatch.delenv("COMPOSER_DATA", raising=False)
    monkeypatch.setattr(paths, "_checkout_data", lambda: tmp_path / "no-such-folder")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    path, rule = resolution()
    assert path == tmp_path / "xdg" / "composer" / "data" and "platformdirs" in rule


def test_sources_lists_every_group(tmp_path):
    r = runner.invoke(app, ["data", "sources", "--json"])
    assert r.exit_code == 0
    rows = json.loads(r.output)
    assert sum(x["files"] for x in rows) == len(load_manifest().files)
    assert any("RouterDC" in x["name"] and x["url"] for x in rows)


def test_verify_reports_a_changed_file(tmp_path, shared_data):
    dest = tmp_path / "d"
    shutil.copytree(shared_data / "tabular/german", dest / "tabular/german")
    r = runner.invoke(app, ["data", "verify", "--data-dir", str(dest), "--only", "tabular/german"])
    assert r.exit_code == 0, r.output
    os.chmod(dest / "tabular/german/values_maps.json", 0o644)
    (dest / "tabular/german/values_maps.json").write_text("{}")
    r = runner.invoke(app, ["data", "verify", "--data-dir", str(dest), "--only", "tabular/german", "--json"])
    assert r.exit_code == 1
    assert any("values_maps.json" in p for p in json.loads(r.output)["problems"])


def test_pull_refuses_manifest_paths_outside_the_folder(tmp_path, mirror):
    from composer.data import PullError, pull
    from composer.data.manifest import FileEntry, Manifest

    m = Manifest([FileEntry("../escape.txt", 1, "0" * 64)], [])
    with pytest.raises(PullError, match="leaves the data folder"):
        pull(mirror[0], tmp_path / "d", manifest=m)

