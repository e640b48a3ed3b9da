"""``wanport serve``: one resident :class:`wanport.Pipeline` behind an HTTP task API (and an
optional Gradio page), on one device or a torchrun group (docs/serving.md).

* :mod:`.body` -- a request body -> the per-call values of ``Pipeline.generate`` (allowed keys,
  reload-only keys refused, image paths confined to a folder, uploads size-limited), then the
  same checks as ``wanport run`` before anything is queued;
* :mod:`.store` -- tasks and results in SQLite inside the output folder (a restart serves
  finished videos and marks interrupted tasks failed);
* :mod:`.tasks` -- the bounded queue and the one worker that runs the pipeline (progress,
  cancellation between steps);
* :mod:`.group` -- under torchrun: rank 0 broadcasts each task to the other ranks (heartbeats
  while idle, so a dead rank is noticed within the collective timeout);
* :mod:`.app` -- the FastAPI application (bearer token, health, models, tasks);
* :mod:`.ui` -- the Gradio page on the same queue; :mod:`.main` -- the command.

Nothing here is imported by the rest of wanport; FastAPI, uvicorn and Gradio are imported only
when a server starts (``pip install 'wanport[serve]'``).
"""
