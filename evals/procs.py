"""Benchmark processes: a subprocess on 127.0.0.1 that dies with the benchmark, ready when a URL
answers 200, stopped with SIGTERM (then killed). Shared by the gateway, stream and service
benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from composer.backends.server import die_with_parent

REPO = Path(__file__).resolve().parents[1]


def bench_env(key: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "RAY_AUTH_MODE": "disabled",
            "COMPOSER_API_KEYS": key, "LITELLM_MASTER_KEY": key}


class Proc:
    """A subprocess on 127.0.0.1 that dies with this process; ready when `url` answers."""

    def __init__(self, name: str, cmd: list[str], url: str, headers: dict | None = None, ready_s: float = 240,
                 key: str = "sk-bench"):
        self.name, self.cmd, self.url, self.headers, self.ready_s = name, cmd, url, headers or {}, ready_s
        self.key = key
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = None

    def __enter__(self) -> "Proc":
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=bench_env(self.key), cwd=REPO,
                                     preexec_fn=die_with_parent)
        t_end = time.monotonic() + self.ready_s
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.url, headers=self.headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not start:\n{Path(self.log.name).read_text(errors='replace')[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
