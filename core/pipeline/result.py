"""What ``Pipeline.generate`` returns on the main rank: the frames, the run report, ``save``."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] uint8 -> [3, F, H, W] float32 in [-1, 1] that maps back to exactly these bytes
    through the mp4 writer's conversion (each value at the centre of its byte's interval)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).to(torch.float64)
    return ((x + 0.5) / 255.0 * 2.0 - 1.0).to(torch.float32)


class GenerateResult:
    """One generated video.

    * ``frames``: ``[F, H, W, 3]`` uint8 (numpy), what the mp4 holds before compression;
    * ``video``: the decoded ``[3, F, H, W]`` float32 tensor in [-1, 1] on the host, when
      ``generate(..., video_tensor=True)``, else None;
    * ``report``: the run report (the same dict as the JSON report of ``wanport run``);
    * ``save(path)``: the mp4 and the JSON report beside it, each written to a temporary file
      and renamed.
    """

    def __init__(self, frames: np.ndarray, report: Dict[str, Any], video: Optional[torch.Tensor] = None) -> None:
        self.frames = frames
        self.report = report
        self.video = video

    @property
    def fps(self) -> int:
        return int(self.report["size"]["fps"])

    def __repr__(self) -> str:
        f, h, w, _ = self.frames.shape
        return "GenerateResult(%d frames %dx%d @ %d fps, seed %s)" % (f, w, h, self.fps, self.report.get("seed"))

    def save(self, path: str) -> Tuple[str, str]:
        """Write ``path`` (``.mp4`` added when missing) and the JSON report beside it (same stem);
        returns (video path, report path). The report's ``output`` and ``stages.write_s`` are set."""
        import time

        import wanport.io.video as video_io

        from ..io.atomic import write_json_atomic

        path = os.fspath(path)
        stem = path[:-4] if path.endswith(".mp4") else path
        video_path, report_path = stem + ".mp4", stem + ".json"
        start = time.perf_counter()
        video = self.video if self.video is not None else frames_to_video(self.frames)
        video_io.write_mp4(video, video_path, self.fps)
        self.report.setdefault("stages", {})["write_s"] = round(time.perf_counter() - start, 4)
        self.report["output"] = dict(self.report.get("output") or {}, video=os.path.abspath(video_path),
                                     report=os.path.abspath(report_path))
        write_json_atomic(report_path, self.report)
        return video_path, report_path


__all__ = ["GenerateResult", "frames_to_video"]
