"""mp4 output through imageio (ffmpeg), written atomically."""

from __future__ import annotations

import numpy as np
import torch

from .atomic import atomic_path


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, as the official saver maps it
    (clamp, (x + 1) / 2, * 255, truncate)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError("expected a [3, F, H, W] video, got %s" % (tuple(video.shape),))
    x = video.detach().float().clamp(-1, 1).add(1).div(2).mul(255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(video: torch.Tensor, path: str, fps: int, quality: int = 8) -> None:
    import imageio

    frames = to_uint8_frames(video)
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=quality,
                                    macro_block_size=1, ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()


def read_mp4(path: str) -> np.ndarray:
    """[F, H, W, 3] uint8 (for tests and comparisons)."""
    import imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
