"""The timing-controlled fake OpenAI upstream (composer/evals/fake_upstream.py) as a test process
on 127.0.0.1: started on a free port, ready when /v1/models answers, stopped at teardown (and by
itself after `lifetime` seconds or when the test process dies)."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from composer.backends.server import free_port

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def fake_upstream(delay: float, first_token: float, chunks: int = 10, lifetime: float = 900):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "composer.evals.fake_upstream", "--port", str(port), "--delay",
                             str(delay), "--first-token", str(first_token), "--chunks", str(chunks),
                             "--lifetime", str(lifetime)], cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(base + "/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
