"""Output files: atomic writes, mp4 video."""
