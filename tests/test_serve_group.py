"""`wanport serve` as a two-process gloo group with CFG parallelism: under torchrun, rank 0 serves
and each task runs on both ranks (the video equals the single-process one); a rank killed in the
middle of a task fails that task and ends the server with a non-zero status within the
collective timeout, instead of hanging."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _serve_helpers import REPO, Server, clean_env, free_port, wait_state  # noqa: E402

GROUP = ["sample.size=32*32", "sample.frame_num=1", "sample.steps=2", "parallel.cfg=2", "precision=fp32",
         "parallel.timeout_s=20"]


def _frames(data: bytes):
    import imageio.v3 as iio

    return iio.imread(data, extension=".mp4").astype("int16")


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (a child of the launcher with RANK in its environment)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            with open("/proc/%s/environ" % name, "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"RANK") == str(rank).encode():
            return int(name)
    raise AssertionError("no rank %d under pid %d" % (rank, launcher_pid))


def test_torchrun_group_serves_cfg_parallel_tasks(tiny_ckpt, tmp_path):
    from wanport import Pipeline

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "wanport"]
    srv = Server(["checkpoint_dir=%s" % tiny_ckpt] + GROUP + ["--out-dir", str(tmp_path / "srv")],
                 str(tmp_path / "group.log"), launcher=launcher, env=clean_env(OMP_NUM_THREADS="1"))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get("/v1/health").json()["world"] == 2
            ids = [c.post("/v1/tasks/video", json={"prompt": "two ranks", "seed": s}).json()["id"] for s in (1, 2)]
            videos = []
            for task in ids:
                st = c.get("/v1/tasks/%s?wait=90" % task).json()
                assert st["state"] == "done", st
                report = c.get(st["report_url"]).json()
                assert report["parallel"]["world"] == 2 and report["parallel"]["cfg"] == 2
                videos.append(c.get(st["video_url"]).content)
        # Ctrl-C to rank 0 alone (torchrun's agent turns its own SIGINT into a failure): rank 0 shuts
        # the server down and sends "stop"; rank 1 ends with it and torchrun exits 0
        os.kill(_rank_pid(srv.proc.pid, 0), signal.SIGINT)
        code = srv.proc.wait(60)
    finally:
        srv.stop(signal.SIGKILL)
    assert code == 0, srv.log()
    # the same recipe in one process, encoded the same way: the decoded frames agree
    with Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, progress=False,
                              overrides=[o for o in GROUP if not o.startswith("parallel.")]) as pipe:
        pipe.generate(prompt="two ranks", seed=1, output=str(tmp_path / "single.mp4"))
    single = _frames((tmp_path / "single.mp4").read_bytes())
    assert abs(_frames(videos[0]) - single).max() <= 2  # equal videos up to float order in the all-gather


def test_a_rank_killed_mid_task_ends_the_server(tiny_ckpt, tmp_path):
    """Both ranks started as torchrun starts them (without its agent, which would kill rank 0
    itself): the server must notice the dead rank on its own."""
    port, master = free_port(), free_port()
    out = str(tmp_path / "srv")
    procs = []
    for rank in (0, 1):
        env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master), RANK=str(rank), WORLD_SIZE="2",
                        LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        log = open(tmp_path / ("rank%d.log" % rank), "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "wanport", "serve", "checkpoint_dir=%s" % tiny_ckpt]
                                      + GROUP + ["sample.steps=200", "--out-dir", out, "--port", str(port)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO))
    try:
        url = "http://127.0.0.1:%d" % port
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        with httpx.Client(base_url=url, timeout=30) as c:
            task = c.post("/v1/tasks/video", json={"prompt": "doomed"}).json()["id"]
            wait_state(c, task, ("running",), step_at_least=1)
        killed = time.time()
        procs[1].send_signal(signal.SIGKILL)
        code = procs[0].wait(timeout=20 + 30)  # the collective timeout plus a margin: no hang
        assert code != 0 and time.time() - killed < 50
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    log = (tmp_path / "rank0.log").read_text()
    assert "failed inside the parallel pipeline" in log and "the server stops" in log
    db = sqlite3.connect(os.path.join(out, "tasks.sqlite3"))
    state, error = db.execute("SELECT state, error FROM tasks WHERE id=?", (task,)).fetchone()
    db.close()
    assert state == "failed" and "a rank may have died" in error
