"""``wanport serve --ui``: a Gradio page at ``/ui`` on the same task queue as the HTTP API.

The page builds the same request body a client would send (an image is uploaded as
``image_base64``, so the upload limit and the image checks are the API's), submits it through
:meth:`wanport.serve.app.ServeState.submit`, then shows the queue position, step i of N and
finally the video. With a token, the page asks for it (any user name, the token as password).
"""

from __future__ import annotations

import base64
import hmac
import os
import time
from typing import Any, Dict, Optional

from ..errors import WanportError
from .body import RequestError
from .store import FINAL
from .tasks import QueueFull


def _progress(status: Dict[str, Any]) -> str:
    state = status["state"]
    if state == "queued":
        return "queued (position %s)" % status.get("position")
    if state == "running":
        if status.get("steps"):
            return "running: step %d of %d" % (status["step"], status["steps"])
        return "running: encoding the prompt"
    if state == "done":
        total = (status.get("stages") or {}).get("total_s")
        return "done" + (" in %.1f s" % total if total is not None else "")
    if state == "failed":
        return "failed: %s" % status.get("error")
    return state


def build_ui(state):
    import gradio as gr

    info = state.model_info()
    defaults = info["defaults"]
    sample = defaults.get("sample") or {}
    plan = state.pipe._prep.plan

    def run(prompt: str, image: Optional[str], size: str, frames, steps, guide_scale, seed):
        body: Dict[str, Any] = {"prompt": prompt, "size": size, "frames": int(frames), "steps": int(steps),
                                "guide_scale": float(guide_scale), "seed": int(seed)}
        if image:
            if os.path.getsize(image) > state.limits.max_upload_bytes:
                yield "refused: the image is over the server's upload limit of %d bytes" % state.limits.max_upload_bytes, None
                return
            with open(image, "rb") as f:
                body["image_base64"] = base64.b64encode(f.read()).decode("ascii")
        try:
            task = state.submit(body)
        except QueueFull as exc:
            yield "refused: %s" % exc, None
            return
        except (RequestError, WanportError, RuntimeError) as exc:
            yield "refused: %s" % exc, None
            return
        last = None
        while True:
            status = state.queue.status(task.id)
            text = "task %s: %s" % (task.id[:8], _progress(status))
            if status["state"] in FINAL:
                break
            if text != last:
                yield text, None
                last = text
            time.sleep(0.2)
        video = None
        if status["state"] == "done":
            video = os.path.join(state.store.out_dir, state.store.get(task.id)["video"])
        yield text, video

    with gr.Blocks(title="wanport serve") as page:
        gr.Markdown("## wanport: %s (%s) on %s" % (info["name"], info["task"], info["device"]))
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value=defaults.get("prompt") or "", lines=3, elem_id="prompt")
                image = gr.Image(label="Image (optional)", type="filepath", visible=info["task"] != "t2v",
                                 elem_id="image")
                with gr.Row():
                    size = gr.Textbox(label="Size (W*H)", value="%d*%d" % (plan.width, plan.height), elem_id="size")
                    frames = gr.Number(label="Frames (4n+1)", value=plan.frame_num, precision=0, elem_id="frames")
                    steps = gr.Number(label="Steps", value=plan.num_steps, precision=0, elem_id="steps")
                with gr.Row():
                    guide = gr.Number(label="Guide scale", value=plan.guide_scale if not isinstance(
                        plan.guide_scale, tuple) else plan.guide_scale[0], elem_id="guide_scale")
                    seed = gr.Number(label="Seed", value=sample.get("seed", plan.seed), precision=0, elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                video = gr.Video(label="Video", elem_id="video", autoplay=False)
        button.click(run, inputs=[prompt, image, size, frames, steps, guide, seed], outputs=[status, video])
    return page


def mount_ui(app, state):
    import gradio as gr

    page = build_ui(state)
    auth = None
    if state.token is not None:
        token = state.token

        def auth(user: str, password: str) -> bool:
            return hmac.compare_digest(password.encode(), token.encode())
    return gr.mount_gradio_app(app, page, path="/ui", auth=auth, allowed_paths=[state.store.tasks_dir],
                               footer_links=[])


__all__ = ["build_ui", "mount_ui"]
