"""A `wanport serve` killed with SIGKILL in the middle of a task, then started again on the same
output folder: the finished task is still served (same mp4 bytes, same report), the interrupted
one is failed ("interrupted"), no temporary file is left in tasks/; the bearer token guards every
route but health."""

from __future__ import annotations

import os
import signal

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _serve_helpers import SMALL, Server, clean_env, wait_state  # noqa: E402

TOKEN = "s3cret-token"


def test_kill_9_mid_task_then_restart(tiny_ckpt, tmp_path):
    out = str(tmp_path / "srv")
    args = ["checkpoint_dir=%s" % tiny_ckpt] + SMALL + ["--out-dir", out]
    env = clean_env(WANPORT_SERVE_TOKEN=TOKEN)
    auth = {"Authorization": "Bearer " + TOKEN}
    first = Server(args, str(tmp_path / "first.log"), env=env)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            assert c.get("/v1/health").status_code == 200  # no token needed
            assert c.post("/v1/tasks/video", json={"prompt": "x"}).status_code == 401
            assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            done = c.post("/v1/tasks/video", json={"prompt": "kept", "seed": 9}, headers=auth).json()["id"]
            st = c.get("/v1/tasks/%s?wait=60" % done, headers=auth).json()
            assert st["state"] == "done"
            video = c.get("/v1/tasks/%s/video" % done, headers=auth).content
            report = c.get("/v1/tasks/%s/report" % done, headers=auth).json()
            cut = c.post("/v1/tasks/video", json={"prompt": "cut", "steps": 200}, headers=auth).json()["id"]
            c.headers.update(auth)
            wait_state(c, cut, ("running",), step_at_least=1)
    finally:
        first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL

    second = Server(args, str(tmp_path / "second.log"), env=env)
    try:
        assert "1 interrupted task(s) of an earlier server marked failed" in second.log()
        with httpx.Client(base_url=second.url, timeout=60, headers=auth) as c:
            st = c.get("/v1/tasks/" + done).json()
            assert st["state"] == "done" and st["frames_sha256"]
            assert c.get("/v1/tasks/%s/video" % done).content == video
            assert c.get("/v1/tasks/%s/report" % done).json() == report
            st = c.get("/v1/tasks/" + cut).json()
            assert st["state"] == "failed" and "interrupted" in st["error"]
            assert c.get("/v1/tasks/%s/video" % cut).status_code == 409
            # the restarted server takes new tasks
            new = c.post("/v1/tasks/video", json={"prompt": "again"}).json()["id"]
            assert c.get("/v1/tasks/%s?wait=60" % new).json()["state"] == "done"
        leftovers = [n for n in os.listdir(os.path.join(out, "tasks")) if n.startswith(".")]
        assert leftovers == []
        assert not os.path.exists(os.path.join(out, "tasks", cut + ".mp4"))
    finally:
        assert second.stop() == 0, second.log()
