"""Live `wanport serve` processes for the serving tests: started as a user starts them, on the
loopback, waited for through /v1/health, stopped by their own pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
#: the smallest tiny run: one latent frame, 32x32 pixels
SMALL = ["sample.size=32*32", "sample.frame_num=1", "sample.steps=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                        "WANPORT_SERVE_TOKEN")}
    env.update(extra)
    return env


class Server:
    """One `wanport serve` process (or a torchrun of it); ``url`` once healthy."""

    def __init__(self, args, log_path: str, port: int = None, launcher=None, env=None, start_timeout: float = 120) -> None:
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        cmd = (launcher or [sys.executable, "-m", "wanport"]) + ["serve"] + [str(a) for a in args] + [
            "--port", str(self.port)]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env or clean_env(),
                                     cwd=REPO, start_new_session=True)
        self.wait_healthy(start_timeout)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_healthy(self, timeout: float) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError("server not healthy after %g s:\n%s" % (timeout, self.log()))

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the session it was started in: torchrun's ranks too
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def wait_state(client, task_id: str, states, timeout: float = 120, step_at_least: int = None):
    """Poll a task until its state is in ``states`` (and, if given, its step has reached a value)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = client.get("/v1/tasks/%s" % task_id).json()
        if st["state"] in states and (step_at_least is None or (st.get("step") or 0) >= step_at_least):
            return st
        if st["state"] in ("done", "failed", "cancelled") and st["state"] not in states:
            raise AssertionError("task ended %s: %s" % (st["state"], st))
        time.sleep(0.05)
    raise AssertionError("task %s not in %s after %g s" % (task_id, states, timeout))
