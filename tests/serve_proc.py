"""Start a real `composer serve` subprocess on 127.0.0.1 for tests; it stops by itself.

The child dies with the test process (PR_SET_PDEATHSIG) and is stopped with SIGTERM (graceful
drain) at teardown, then killed if it has not exited in time. Waiting loops are bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from composer.backends.server import die_with_parent, free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSER = str(Path(sys.executable).with_name("composer"))


def sigint_as_a_terminal_would() -> None:
    """preexec_fn for children that a test Ctrl-Cs: a shell starts background jobs with SIGINT
    ignored, the child would inherit that, and Python installs its KeyboardInterrupt handler only
    when SIGINT is not ignored at start-up; restore the default so SIGINT means what it means at a
    terminal wherever the suite runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProc:
    def __init__(self, config: Path, keys: str, extra: list[str] | None = None, ready_s: float = 180,
                 global_args: list[str] | None = None):  # global_args: before `serve` (--log-format ...)
        self.config, self.keys, self.extra, self.ready_s = config, keys, extra or [], ready_s
        self.global_args = global_args or []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="composer-serve-", suffix=".log", delete=False)
        self.ray_logs: str | None = None

    def start(self) -> "ServerProc":
        env = {**os.environ, "COMPOSER_API_KEYS": self.keys, "HF_HUB_OFFLINE": "1",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "RAY_AUTH_MODE": "disabled"}
        cmd = [COMPOSER, *self.global_args, "serve", "--config", str(self.config), "--port", str(self.port), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=REPO, preexec_fn=die_with_parent)
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            text = self.output()
            if "ready on" in text:
                self.ray_logs = text.split("ray logs ")[-1].split(")")[0].strip()
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"composer serve exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"composer serve not ready after {self.ready_s}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
