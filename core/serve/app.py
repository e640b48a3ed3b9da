"""The HTTP task API (FastAPI; imported only when a server starts).

    POST   /v1/tasks/video         JSON body of per-request keys -> 202 {"id": ...}; 422 refused; 429 full
    GET    /v1/tasks/{id}          state, queue position, step i of N, stage times, error  (?wait=S: until final)
    GET    /v1/tasks/{id}/video    the mp4 of a finished task
    GET    /v1/tasks/{id}/report   its JSON report
    DELETE /v1/tasks/{id}          cancel (a running task stops at the end of its current step)
    GET    /v1/health              no token needed
    GET    /v1/models              the loaded model, backend, ops and the per-request keys

With a token (``--token`` or ``WANPORT_SERVE_TOKEN``) every route but health needs
``Authorization: Bearer TOKEN``. Task ids are generated (32 hex digits); files are only ever
served from the server's ``tasks/`` folder, by the path the store recorded for the id.
"""

# no "from __future__ import annotations": FastAPI reads the route annotations (Request) at runtime

import asyncio
import hmac
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..errors import WanportError
from .body import REQUEST_KEYS, BodyLimits, RequestError, check_values, forget_upload, parse_body
from .store import FINAL, TaskStore
from .tasks import QueueFull, TaskQueue

ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ServeState:
    """What the routes share: the pipeline (rank 0's), the queue and store, limits and token."""

    pipe: Any
    queue: TaskQueue
    store: TaskStore
    limits: BodyLimits
    token: Optional[str] = None
    world: int = 1

    def __post_init__(self) -> None:
        self.check_lock = threading.Lock()  # the output-folder probe of the checks is per process

    def check(self, values: Dict[str, Any]) -> None:
        """The generate() checks, with the uploads folder as the (probed, never written) output."""
        with self.check_lock:
            check_values(self.pipe, values, os.path.join(self.limits.upload_dir, "check.mp4"))

    def submit(self, body: Any):
        """Body -> checked values -> queued task (RequestError/ConfigError/InputError, QueueFull)."""
        values = parse_body(body, self.limits)
        try:
            self.check(values)
            return self.queue.submit(values, dict(values))
        except WanportError as exc:
            forget_upload(values, self.limits)
            upload = values.get("image")
            if isinstance(upload, str) and upload and str(exc).find(upload) >= 0 and "image_base64" in body:
                raise type(exc)(str(exc).replace("image %s" % upload, "image_base64 (the uploaded image)")
                                .replace(upload, "the uploaded image")) from None  # no server paths in answers
            raise
        except BaseException:
            forget_upload(values, self.limits)
            raise

    def model_info(self) -> Dict[str, Any]:
        pipe = self.pipe
        recipe = pipe.recipe
        info = {"name": pipe.model, "task": pipe.task, "device": str(pipe.device), "world": self.world,
                "backend": recipe.get("backend"), "precision": (pipe._prep.plan.precision_choice or {}),
                "load_s": pipe.load_s, "ops": pipe.ops, "defaults": {
                    "prompt": recipe.get("prompt"), "negative_prompt": recipe.get("negative_prompt"),
                    "image": recipe.get("image"), "sample": recipe.get("sample")},
                "request_keys": list(REQUEST_KEYS), "max_upload_bytes": self.limits.max_upload_bytes,
                "image_paths": self.limits.image_dir is not None}
        loras = pipe._prep.loras.report() if pipe._prep.loras is not None else None
        info["lora"] = loras
        return info


def make_app(state: ServeState):
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, JSONResponse

    app = FastAPI(title="wanport serve", version="1", docs_url=None, redoc_url=None, openapi_url=None)

    def auth(request: Request) -> None:
        if state.token is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), state.token.encode())):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    def refuse(status: int, message: str, headers=None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.get("/v1/health")
    def health():
        fatal = state.queue.fatal
        body = {"status": "failed" if fatal else "ok", "model": state.pipe.model, "world": state.world,
                "queue": state.queue.depth(), "completed": state.queue.completed, "error": fatal}
        return JSONResponse(body, status_code=503 if fatal else 200)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    def models():
        return {"models": [state.model_info()]}

    limit = state.limits.max_upload_bytes * 4 // 3 + (64 << 10)

    @app.post("/v1/tasks/video", dependencies=[Depends(auth)])
    async def create(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return refuse(422, "the request body is %s bytes, over the server's limit of %d (an image upload may be "
                          "at most %d bytes: --max-upload-bytes)" % (declared, limit, state.limits.max_upload_bytes))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return refuse(422, "the request body is over the server's limit of %d bytes (an image upload may be "
                              "at most %d bytes: --max-upload-bytes)" % (limit, state.limits.max_upload_bytes))
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return refuse(422, "the body is not JSON (%s); send a JSON object such as {\"prompt\": \"...\"}" % exc)
        try:
            task = await asyncio.to_thread(state.submit, body)
        except QueueFull as exc:
            return refuse(429, str(exc), headers={"Retry-After": str(exc.retry_after)})
        except (RequestError, WanportError) as exc:
            return refuse(422, str(exc))
        except RuntimeError as exc:  # the worker is gone (a rank died) or the server is stopping
            return refuse(503, str(exc))
        status = state.queue.status(task.id) or {"state": "queued"}
        return JSONResponse({"id": task.id, "state": status["state"], "position": status.get("position"),
                             "status_url": "/v1/tasks/%s" % task.id}, status_code=202,
                            headers={"Location": "/v1/tasks/%s" % task.id})

    def known(task_id: str) -> Dict[str, Any]:
        status = state.queue.status(task_id) if ID.match(task_id) else None
        if status is None:
            raise HTTPException(404, "no task %r" % task_id)
        return status

    @app.get("/v1/tasks/{task_id}", dependencies=[Depends(auth)])
    async def get_task(task_id: str, wait: float = 0.0):
        status = known(task_id)
        wait = max(0.0, min(float(wait), 60.0))
        if status["state"] not in FINAL and wait > 0:
            await asyncio.to_thread(state.queue.wait_final, task_id, wait)
            status = known(task_id)
        if status["state"] == "done":
            status["video_url"] = "/v1/tasks/%s/video" % task_id
            status["report_url"] = "/v1/tasks/%s/report" % task_id
        return status

    def result_file(task_id: str, column: str) -> str:
        status = known(task_id)
        if status["state"] != "done":
            raise HTTPException(409, "task %s is %s; its files exist once it is done" % (task_id, status["state"]))
        rel = state.store.get(task_id)[column]
        path = os.path.realpath(os.path.join(state.store.out_dir, rel))
        root = os.path.realpath(state.store.tasks_dir)
        if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            raise HTTPException(410, "the %s of task %s is no longer in the output folder" % (column, task_id))
        return path

    @app.get("/v1/tasks/{task_id}/video", dependencies=[Depends(auth)])
    def video(task_id: str):
        return FileResponse(result_file(task_id, "video"), media_type="video/mp4", filename=task_id + ".mp4")

    @app.get("/v1/tasks/{task_id}/report", dependencies=[Depends(auth)])
    def report(task_id: str):
        return FileResponse(result_file(task_id, "report"), media_type="application/json")

    @app.delete("/v1/tasks/{task_id}", dependencies=[Depends(auth)])
    def cancel(task_id: str):
        known(task_id)
        after = state.queue.cancel(task_id)
        if after == "running":
            return JSONResponse({"id": task_id, "state": "running", "cancel_requested": True}, status_code=202)
        if after in ("done", "failed"):
            return refuse(409, "task %s already %s" % (task_id, after))
        return {"id": task_id, "state": after}

    return app


__all__ = ["ServeState", "make_app"]
