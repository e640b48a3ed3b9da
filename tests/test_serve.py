"""`wanport serve` over real HTTP on the loopback (one live uvicorn server for the module, the tiny
checkpoint, a queue of 8):

* a task's round trip: 202 -> queued/running -> done with stage times; the mp4 and the JSON report
  are served and the frames equal those of a direct `Pipeline.generate` with the same values;
* 50 tasks posted at once: each is accepted (202) or refused with 429 + Retry-After, every accepted
  one is recorded and completes, each with the frames of the direct API for its seed (three seeds
  in turn, so that the direct side computes three videos);
* cancelling a queued task (at once) and a running one (at the end of its step), after which the
  pipeline still serves;
* bad bodies are refused with 422 and a message naming the problem, and nothing is queued;
* last, the server is killed with SIGKILL in the middle of a task and started again on the same
  output folder (now with a bearer token): finished tasks are still served (same mp4 bytes, same
  report), the interrupted one is failed, no temporary file is left; the token guards every route
  but health.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import signal
import sqlite3

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _serve_helpers import SMALL, Server, clean_env, wait_state  # noqa: E402

QUEUE = 8
MAX_UPLOAD = 4096


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "red.png")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    Image.new("RGB", (64, 64)).save(outside)
    os.symlink(outside, root / "link.png")
    return str(root)


@pytest.fixture(scope="module")
def server(tiny_ckpt, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    args = ["checkpoint_dir=%s" % tiny_ckpt] + SMALL + ["--out-dir", str(out / "srv"), "--queue", str(QUEUE),
                                                        "--image-dir", image_dir, "--max-upload-bytes", str(MAX_UPLOAD)]
    srv = Server(args, str(out / "server.log"))
    srv.out_dir, srv.args, srv.tmp = str(out / "srv"), args, out
    yield srv
    code = srv.stop()
    assert code == 0 or code == -signal.SIGKILL, srv.log()  # the last test kills it


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def direct(tiny_ckpt):
    """The same recipe as the server's, as a direct `wanport.Pipeline` in this process."""
    from wanport import Pipeline

    pipe = Pipeline.from_recipe(None, checkpoint_dir=tiny_ckpt, overrides=SMALL, progress=False)
    cache = {}

    def digest(**values):
        key = tuple(sorted(values.items()))
        if key not in cache:
            cache[key] = hashlib.sha256(pipe.generate(**values).frames.tobytes()).hexdigest()
        return cache[key]

    yield digest
    pipe.close()


def _rows(server):
    db = sqlite3.connect(os.path.join(server.out_dir, "tasks.sqlite3"))
    try:
        return db.execute("SELECT id, state FROM tasks").fetchall()
    finally:
        db.close()


def test_health_and_models(client):
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["model"] == "wan2.1-t2v-tiny" and h["queue"]["max_queued"] == QUEUE
    m = client.get("/v1/models").json()["models"][0]
    assert m["name"] == "wan2.1-t2v-tiny" and m["task"] == "t2v" and "prompt" in m["request_keys"]
    assert "model" not in m["request_keys"] and m["defaults"]["sample"]["steps"] == 1


def test_round_trip(client, server, direct):
    r = client.post("/v1/tasks/video", json={"prompt": "a lighthouse", "seed": 5, "frames": 5, "steps": 2})
    assert r.status_code == 202, r.text
    task = r.json()["id"]
    assert len(task) == 32 and r.headers["location"] == "/v1/tasks/" + task
    assert client.get("/v1/tasks/" + task).json()["state"] in ("queued", "running", "done")
    st = client.get("/v1/tasks/%s?wait=60" % task).json()
    assert st["state"] == "done", st
    assert st["error"] is None and st["stages"]["denoise_s"] > 0 and len(st["stages"]["steps_s"]) == 2
    assert st["stages"]["queued_s"] >= 0 and st["finished_at"] >= st["started_at"] >= st["created_at"]
    video = client.get(st["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"
    report = client.get(st["report_url"]).json()
    assert report["seed"] == 5 and report["prompt"] == "a lighthouse" and report["size"]["frames"] == 5
    # the video the server made is the direct API's for the same values
    assert st["frames_sha256"] == direct(prompt="a lighthouse", seed=5, frames=5, steps=2)
    # files live in the server's folder under the generated id
    assert os.path.isfile(os.path.join(server.out_dir, "tasks", task + ".mp4"))
    # the decoded mp4 has the frames' shape
    import imageio.v3 as iio

    frames = iio.imread(video.content, extension=".mp4")
    assert frames.shape == (5, 32, 32, 3)


def test_unknown_task_is_404(client):
    assert client.get("/v1/tasks/" + "0" * 32).status_code == 404
    assert client.get("/v1/tasks/..%2F..%2Fetc").status_code == 404
    assert client.get("/v1/tasks/" + "0" * 32 + "/video").status_code == 404


def test_cancel_queued_and_running(client, server):
    long = client.post("/v1/tasks/video", json={"prompt": "a long one", "steps": 60, "seed": 1}).json()["id"]
    queued = client.post("/v1/tasks/video", json={"prompt": "waits", "seed": 2}).json()["id"]
    assert client.get("/v1/tasks/" + queued).json()["position"] == 1
    r = client.delete("/v1/tasks/" + queued)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.get("/v1/tasks/" + queued).json()["state"] == "cancelled"
    st = wait_state(client, long, ("running",), step_at_least=1)
    r = client.delete("/v1/tasks/" + long)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    st = wait_state(client, long, ("cancelled",), timeout=60)
    assert 1 <= len(st["stages"]["steps_s"]) < 60  # stopped between steps, long before the end
    assert client.get("/v1/tasks/%s/video" % long).status_code == 409
    assert not os.path.exists(os.path.join(server.out_dir, "tasks", long + ".mp4"))
    # the pipeline serves on
    again = client.post("/v1/tasks/video", json={"prompt": "after", "seed": 3}).json()["id"]
    assert client.get("/v1/tasks/%s?wait=60" % again).json()["state"] == "done"
    assert client.delete("/v1/tasks/" + again).status_code == 409


def test_fifty_at_once_with_a_queue_of_eight(client, server, direct):
    before = len(_rows(server))

    def post(i):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return i, c.post("/v1/tasks/video", json={"prompt": "a crowd", "seed": 100 + i % 3, "guide_scale": 1.0})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(50)))
    accepted = {i: r.json()["id"] for i, r in answers if r.status_code == 202}
    refused = [r for i, r in answers if r.status_code == 429]
    assert len(accepted) + len(refused) == 50, [r.status_code for _, r in answers]
    assert QUEUE <= len(accepted) < 50 and refused
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]
    assert len(_rows(server)) == before + len(accepted)  # every accepted task is recorded, no refused one
    for i, task in accepted.items():
        st = client.get("/v1/tasks/%s?wait=60" % task).json()
        assert st["state"] == "done", st
        assert st["frames_sha256"] == direct(prompt="a crowd", seed=100 + i % 3, guide_scale=1.0), i


def _upload(n):
    return base64.b64encode(b"\x89PNG" + b"x" * (n - 4)).decode()


def _png():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ({"prompt": "x", "stepz": 3}, "unknown key 'stepz' (did you mean 'steps'?)"),
    ({"model": "wan2.1-t2v-14b"}, "model: cannot change per request"),
    ({"precision": "bf16"}, "precision: cannot change per request"),
    ({"parallel": {"cfg": 2}}, "parallel: cannot change per request"),
    ({"backend": "reference"}, "backend: cannot change per request"),
    ({"output": {"dir": "/tmp"}}, "the server names its output files"),
    ({"steps": "4"}, "sample.steps: expected an integer"),
    ({"seed": 1.5}, "sample.seed: expected an integer"),
    ({"guide_scale": "high"}, "sample.guide_scale"),
    ({"frames": 6}, "sample.frame_num: 6 is not 4n+1"),
    ({"size": [32]}, "size: give"),
    ({"lora_strength": 0.5}, "lora_strength: give an object"),
    ({"lora_strength": {"style": 0.5}}, "not a LoRA loaded unmerged here"),
    ({"image": "../../etc/passwd"}, "outside the server's image folder"),
    ({"image": "/etc/passwd"}, "outside the server's image folder"),
    ({"image": "link.png"}, "outside the server's image folder"),
    ({"image": "red.png"}, "text-to-video and takes no image"),
    ({"image_base64": _upload(MAX_UPLOAD + 10)}, "the server's limit of 4096 bytes"),
    ({"image_base64": "not base64!"}, "not valid base64"),
    ({"image_base64": _png()}, "text-to-video and takes no image"),  # the upload is removed again
    ({"image": "red.png", "image_base64": "aGk="}, "not both"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize("body,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_bodies_are_refused_before_queueing(client, server, body, fragment):
    before = _rows(server)
    r = client.post("/v1/tasks/video", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["error"]
    assert _rows(server) == before
    assert os.listdir(os.path.join(server.out_dir, "uploads")) == []


def test_malformed_and_oversize_bodies(client, server):
    before = _rows(server)
    r = client.post("/v1/tasks/video", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not JSON" in r.json()["error"]
    r = client.post("/v1/tasks/video", content=b"{" + b" " * (MAX_UPLOAD * 2 + (64 << 10)) + b"}")
    assert r.status_code == 422 and "over the server's limit" in r.json()["error"]
    assert _rows(server) == before


TOKEN = "s3cret-token"


def test_kill_9_mid_task_then_restart_with_a_token(client, server):
    finished = [task for task, state in _rows(server) if state == "done"]
    assert finished
    videos = {t: client.get("/v1/tasks/%s/video" % t).content for t in finished[:3]}
    reports = {t: client.get("/v1/tasks/%s/report" % t).json() for t in finished[:3]}
    cut = client.post("/v1/tasks/video", json={"prompt": "cut", "steps": 200}).json()["id"]
    wait_state(client, cut, ("running",), step_at_least=1)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    again = Server(server.args, str(server.tmp / "restarted.log"), env=clean_env(WANPORT_SERVE_TOKEN=TOKEN))
    try:
        assert "1 interrupted task(s) of an earlier server marked failed" in again.log()
        with httpx.Client(base_url=again.url, timeout=60) as c:
            assert c.get("/v1/health").status_code == 200  # no token needed
            assert c.get("/v1/tasks/" + cut).status_code == 401
            assert c.post("/v1/tasks/video", json={"prompt": "x"}).status_code == 401
            assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            c.headers["Authorization"] = "Bearer " + TOKEN
            for task, video in videos.items():
                assert c.get("/v1/tasks/" + task).json()["state"] == "done"
                assert c.get("/v1/tasks/%s/video" % task).content == video
                assert c.get("/v1/tasks/%s/report" % task).json() == reports[task]
            st = c.get("/v1/tasks/" + cut).json()
            assert st["state"] == "failed" and "interrupted" in st["error"]
            assert c.get("/v1/tasks/%s/video" % cut).status_code == 409
            new = c.post("/v1/tasks/video", json={"prompt": "again"}).json()["id"]  # serves on
            assert c.get("/v1/tasks/%s?wait=60" % new).json()["state"] == "done"
        tasks_dir = os.path.join(server.out_dir, "tasks")
        assert [n for n in os.listdir(tasks_dir) if n.startswith(".")] == []
        assert not os.path.exists(os.path.join(tasks_dir, cut + ".mp4"))
    finally:
        assert again.stop() == 0, again.log()
