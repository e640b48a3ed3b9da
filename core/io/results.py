"""One result, three files: ``STEM.json`` (machine-readable), ``STEM.md`` (tables) and, when
matplotlib is installed, ``STEM[-name].png`` charts. Each file is written atomically."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

from .atomic import write_json_atomic, write_text_atomic
from .plots import MISSING, plots_available

#: (file suffix, e.g. "" or "-steps", and a function that writes the PNG at the path it is given)
Plot = Tuple[str, Callable[[str], None]]


def result_stem(out: str) -> str:
    """``--out x.json`` or ``--out x``: the stem ``x`` of the three files."""
    for ext in (".json", ".md", ".png"):
        if out.endswith(ext):
            return out[: -len(ext)]
    return out


def write_results(out: str, data: Any, markdown: str, plots: Sequence[Plot] = (),
                  say: Optional[Callable[[str], None]] = print) -> List[str]:
    """Write the JSON, the markdown and (matplotlib permitting) the PNGs; returns the paths written."""
    stem = result_stem(out)
    written = [stem + ".json", stem + ".md"]
    write_json_atomic(written[0], data)
    write_text_atomic(written[1], markdown)
    if plots:
        if plots_available():
            for suffix, draw in plots:
                path = "%s%s.png" % (stem, suffix)
                draw(path)
                written.append(path)
        elif say is not None:
            say(MISSING)
    if say is not None:
        say("wrote %s" % ", ".join(written))
    return written


__all__ = ["Plot", "result_stem", "write_results"]
