"""mp4 output: H.264 through the ffmpeg binary that imageio-ffmpeg ships, written atomically
and checked before it replaces anything.

ffmpeg is run directly (the same command imageio's writer builds: raw RGB frames on stdin,
libx264, yuv420p, ``-crf`` from imageio's quality scale) because imageio ignores ffmpeg's exit
status: a full disk ("Error writing trailer: No space left on device") would pass as success.
Here a non-zero exit, an empty file, or a file whose frames cannot be counted back is an
:class:`~wanport.errors.OutputError`, and the previous file of that name stays as it was.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from typing import List

import numpy as np
import torch

from ..errors import ConfigError, OutputError
from .atomic import atomic_path


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, as the official saver maps it
    (clamp, (x + 1) / 2, * 255, truncate)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError("expected a [3, F, H, W] video, got %s" % (tuple(video.shape),))
    x = video.detach().float().clamp(-1, 1).add(1).div(2).mul(255)
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def require_encoder(source: str) -> None:
    """Raise a ConfigError naming the fix when the mp4 cannot be written here (the encoder is
    imageio-ffmpeg's ffmpeg). Called before a run that writes its video starts, so a missing
    encoder is not found after the denoising; every rank calls it (no rank goes on alone)."""
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ConfigError("%s: writing the mp4 needs the imageio-ffmpeg package, a dependency of wanport that is "
                          "not installed here: pip install imageio-ffmpeg" % source)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_command(path: str, width: int, height: int, fps: int, quality: int = 8) -> List[str]:
    """The ffmpeg command for raw RGB frames on stdin -> H.264 mp4 at ``path`` (imageio's quality
    scale 0..10: ``crf = int((1 - quality / 10) * 51)``)."""
    crf = int((1 - quality / 10.0) * 51)
    return [ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", "%dx%d" % (width, height),
            "-pix_fmt", "rgb24", "-r", str(int(fps)), "-i", "-", "-an", "-vcodec", "libx264",
            "-pix_fmt", "yuv420p", "-crf", str(crf), "-v", "error", "-f", "mp4", path]


def _tail(text: str, lines: int = 2) -> str:
    """ffmpeg's first error lines, without their ``[muxer @ 0x...]`` prefixes."""
    kept: List[str] = []
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line.strip())
        if line and line not in kept:
            kept.append(line)
    return "; ".join(kept[:lines])


def _status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        return "was killed by %s%s" % (name, " (file size limit)" if name == "SIGXFSZ" else "")
    return "exited with status %d" % code


def encode(frames: np.ndarray, path: str, fps: int, quality: int = 8, label: str = "") -> None:
    """Encode [F, H, W, 3] uint8 frames to ``path``; raise OutputError unless ffmpeg succeeded
    (``label``: the file name for messages, when ``path`` is a temporary file)."""
    f, h, w, _ = frames.shape
    cmd = encode_command(path, w, h, fps, quality)
    # stderr to a file, not a pipe: ffmpeg can never block on a full pipe while we feed it
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        broken = None
        try:
            try:
                for frame in frames:
                    proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            except BrokenPipeError as exc:  # ffmpeg died early; its log says why
                broken = exc
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError as exc:
                    broken = broken or exc
            code = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM (signals.Terminated), ...: stop ffmpeg, then unwind
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        message = _tail(log.read().decode("utf-8", "replace"))
    if code != 0 or broken is not None:
        raise OutputError("writing the video %s failed: ffmpeg %s%s" % (
            label or path, _status(code), (": " + message) if message else ""))


def count_frames(path: str, label: str = "") -> int:
    """Frames of the mp4's video stream as ffmpeg demuxes them (no decode)."""
    cmd = [ffmpeg_exe(), "-v", "error", "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd + ["-progress", "pipe:1", "-nostats"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise OutputError("writing the video %s failed: it cannot be read back: %s" % (
            label or path, _tail(proc.stderr.decode("utf-8", "replace")) or "ffmpeg status %d" % proc.returncode))
    frames = [line.split("=", 1)[1] for line in proc.stdout.decode("utf-8", "replace").splitlines()
              if line.startswith("frame=")]
    return int(frames[-1]) if frames else 0


def verify_mp4(path: str, frames: int, label: str = "") -> None:
    """The written file is non-empty and its container holds ``frames`` video frames."""
    label = label or path
    if os.path.getsize(path) == 0:
        raise OutputError("writing the video %s failed: the file is empty" % label)
    got = count_frames(path, label)
    if got != frames:
        raise OutputError("writing the video %s failed: it holds %d frames, %d were written" % (label, got, frames))


def write_mp4(video: torch.Tensor, path: str, fps: int, quality: int = 8) -> None:
    """[3, F, H, W] in [-1, 1] -> ``path``, via a temporary file in the same folder that replaces
    ``path`` only once ffmpeg succeeded and the file reads back with every frame."""
    frames = to_uint8_frames(video)
    with atomic_path(path, suffix=".mp4") as tmp:
        encode(frames, tmp, fps, quality, label=path)
        verify_mp4(tmp, len(frames), label=path)


def read_mp4(path: str) -> np.ndarray:
    """[F, H, W, 3] uint8 (for tests and comparisons)."""
    import imageio

    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
