"""A managed OpenAI-compatible server process per expert (vLLM on GPU hosts, llama.cpp's on CPU).

`load()` starts the configured command, waits until `GET /v1/models` answers (or fails after
`ready_timeout_s` with the server's last output in the error), and `unload()` stops the whole
process group. The child also gets PR_SET_PDEATHSIG so it dies with composer, and an atexit
hook stops any server still running: no orphan on exceptions, Ctrl-C or a crash.

options:
  command: list or string; {model}, {port}, {host}, {ctx}, {python} are filled in.
           (llama.cpp's server runs with --interrupt_requests False: by default it would abort a
           streaming request whenever another arrives, breaking concurrent calls.)
           default: python -m llama_cpp.server --model {model} --host 127.0.0.1 --port {port} --n_ctx {ctx}
           vLLM:    ["vllm", "serve", "{model}", "--port", "{port}"]
  port: fixed port (default: a free one); host (default 127.0.0.1)
  ready_timeout_s: seconds to wait for readiness (default 120)
  served_model: model name the server expects in requests (default: read from /v1/models)
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref

import httpx

from composer.backends.base import Backend
from composer.backends.openai_chat import achat_call, chat_batch
from composer.errors import ExpertLoadError
from composer.models import ModelNotFoundError, resolve_model_path

DEFAULT_COMMAND = ["{python}", "-m", "llama_cpp.server", "--model", "{model}", "--host", "{host}",
                   "--port", "{port}", "--n_ctx", "{ctx}", "--interrupt_requests", "False"]

_live: "weakref.WeakSet[ServerBackend]" = weakref.WeakSet()
_atexit_lock = threading.Lock()
_atexit_done = False


def _stop_all() -> None:
    for b in list(_live):
        b._stop_process()


def _register_atexit() -> None:
    global _atexit_done
    with _atexit_lock:
        if not _atexit_done:
            atexit.register(_stop_all)
            _atexit_done = True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_parent() -> None:  # preexec_fn: runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerBackend(Backend):
    def __init__(self, spec, base_dir=None):
        super().__init__(spec, base_dir)
        self._proc: subprocess.Popen | None = None
        self._log = None
        self.api_base: str | None = spec.api_base
        self._served_model: str | None = spec.options.get("served_model")

    @property
    def managed(self) -> bool:
        return "command" in self.spec.options or self.spec.api_base is None

    @property
    def remote(self) -> bool:  # an external server we only talk to costs no load
        return not self.managed

    def _model_arg(self) -> str:
        if self.spec.model.startswith("embedded:") or os.path.sep in self.spec.model \
                or self.spec.model.endswith(".gguf"):
            from pathlib import Path

            return str(resolve_model_path(self.spec.model, Path(self.base_dir) if self.base_dir else None))
        return self.spec.model  # e.g. a Hugging Face id for vLLM on a GPU host

    def _footprint(self) -> int:
        try:
            from pathlib import Path

            return int(Path(self._model_arg()).stat().st_size * 1.1) + self.spec.context_length * 64 * 1024
        except (OSError, ModelNotFoundError):
            return 0

    def command(self, port: int) -> list[str]:
        cmd = self.spec.options.get("command", DEFAULT_COMMAND)
        parts = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        host = self.spec.options.get("host", "127.0.0.1")
        values = dict(model=self._model_arg(), port=port, host=host, ctx=self.spec.context_length,
                      python=sys.executable)
        return [str(p).format(**values) for p in parts]

    def _load(self) -> None:
        if not self.managed:
            self._wait_ready(None, float(self.spec.options.get("ready_timeout_s", 30)))
            return
        host = self.spec.options.get("host", "127.0.0.1")
        port = int(self.spec.options.get("port") or free_port(host))
        try:
            cmd = self.command(port)
        except ModelNotFoundError as exc:
            raise ExpertLoadError(str(exc), expert=self.name) from None
        self._log = tempfile.TemporaryFile()
        _register_atexit()
        try:
            self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          preexec_fn=die_with_parent)
        except OSError as exc:
            raise ExpertLoadError(f"cannot start server {cmd[0]!r}: {exc.strerror}", expert=self.name) from None
        _live.add(self)
        self.api_base = f"http://{host}:{port}/v1"
        try:
            self._wait_ready(self._proc, float(self.spec.options.get("ready_timeout_s", 120)))
        except BaseException:
            self._stop_process()
            raise

    def _wait_ready(self, proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.api_base.rstrip('/')}/models"
        while True:
            if proc is not None and proc.poll() is not None:
                raise ExpertLoadError(f"server exited with code {proc.returncode} before it was ready; "
                                      f"last output: {self._tail()}", expert=self.name)
            try:
                r = httpx.get(url, timeout=2.0)
                if r.status_code == 200:
                    if not self._served_model:
                        data = r.json().get("data") or [{}]
                        self._served_model = data[0].get("id") or self.spec.model
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ExpertLoadError(f"server not ready at {url} after {timeout:.0f}s; "
                                      f"last output: {self._tail()}", expert=self.name)
            time.sleep(0.25)

    def _tail(self, n: int = 600) -> str:
        if self._log is None:
            return "(none)"
        try:
            self._log.seek(0)
            return self._log.read().decode("utf-8", "replace")[-n:].strip() or "(none)"
        except (OSError, ValueError):
            return "(unreadable)"

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _unload(self) -> None:
        self._stop_process()
        if self.managed:
            self.api_base = self.spec.api_base

    def _call_kw(self) -> dict:
        key = os.environ.get(self.spec.api_key_env) if self.spec.api_key_env else None
        return dict(model=f"openai/{self._served_model}", api_base=self.api_base, api_key=key or "not-needed")

    def _generate(self, queries, on_delta=None):
        return chat_batch(self, queries, on_delta, stream=True, **self._call_kw())

    async def acall(self, q, on_delta=None):
        """A managed server is reached like any OpenAI-compatible upstream, asynchronously."""
        if not self._loaded:
            import asyncio  # noqa: PLC0415

            await asyncio.to_thread(self.load)
        return await achat_call(self, q, on_delta, **self._call_kw())
