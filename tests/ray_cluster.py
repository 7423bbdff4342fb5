"""A real two-node Ray cluster on 127.0.0.1 for tests: `ray start --head` and `ray start --address`,
each node with 1 CPU and a marker resource (node_a / node_b). Every process it starts is found by
its session folder or GCS port and stopped by process id when the test ends; a watchdog stops them
too if the test process dies first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from composer.backends.server import free_port

WATCHDOG = r"""
import os, signal, sys, time
test_pid, marker_a, marker_b, done = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def mine():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker_a in cmd or marker_b in cmd:
                out.append(int(d))
    return out
t_end = time.time() + 3600
while time.time() < t_end and not os.path.exists(done):
    try:
        os.kill(test_pid, 0)
    except OSError:
        break
    time.sleep(1)
if not os.path.exists(done):
    for p in mine():
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
"""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> set[int]:
    return {int(d) for d in os.listdir("/proc") if d.isdigit()}


class TwoNodeCluster:
    def __init__(self):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.head_pids: set[int] = set()
        self.worker_pids: set[int] = set()
        self.done = self.tmp / "done"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def _start(self, args: list[str]) -> set[int]:
        before = _pids()
        subprocess.run([self.ray, "start", *args, "--num-cpus=1", "--node-ip-address=127.0.0.1",
                        "--disable-usage-stats"], env=self.env, check=True, timeout=180,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return {p for p in _pids() - before if self._ours(p)}

    def _ours(self, pid: int) -> bool:
        cmd = _cmdline(pid)
        return str(self.tmp) in cmd or f":{self.port}" in cmd or f"={self.port}" in cmd

    def __enter__(self) -> "TwoNodeCluster":
        subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.tmp), f":{self.port}",
                          str(self.done)], start_new_session=True)
        self.head_pids = self._start(["--head", f"--port={self.port}", f"--temp-dir={self.tmp}",
                                      "--include-dashboard=false", '--resources={"node_a": 1}'])
        self.worker_pids = self._start([f"--address={self.address}", '--resources={"node_b": 1}'])
        return self

    def node_ids(self) -> dict[str, str]:
        """marker resource (node_a / node_b) -> Ray node id, from the cluster itself."""
        out = subprocess.run([sys.executable, "-c", (
            "import ray, json; ray.init(address='%s', log_to_driver=False, logging_level='ERROR'); "
            "print(json.dumps({k: n['NodeID'] for n in ray.nodes() if n['Alive'] "
            "for k in n['Resources'] if k in ('node_a', 'node_b')}))") % self.address],
            env=self.env, capture_output=True, text=True, timeout=120, check=True)
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])

    def raylet_pid(self, worker: bool = True) -> int | None:
        for p in sorted(self.worker_pids if worker else self.head_pids):
            if "raylet" in _cmdline(p).split(" ")[0]:
                return p
        return None

    def all_pids(self) -> set[int]:
        return {p for p in _pids() if p != os.getpid() and self._ours(p)} | self.head_pids | self.worker_pids

    def __exit__(self, *exc) -> None:
        pids = self.all_pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
            time.sleep(1.0)
        self.done.write_text("done")
