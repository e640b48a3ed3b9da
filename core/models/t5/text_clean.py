"""Prompt cleaning applied before tokenisation (official ``clean='whitespace'``, docs/wan-model.md §4.1).

Steps, in order: ``ftfy.fix_text``; ``html.unescape`` twice; strip; collapse every run of
whitespace to one space; strip.

The official code collapses with the third-party ``regex`` module, whose ``\\s`` is exactly the
Unicode ``White_Space`` property. The standard ``re`` module's ``\\s`` also matches the four
ASCII separators U+001C..U+001F, so the class is spelled out here instead. The two strips are
``str.strip()`` as in the official code (they *do* remove U+001C..U+001F at the ends).
"""

from __future__ import annotations

import html
import re

# Unicode White_Space (what ``regex``'s \s matches in a str pattern).
_WHITE_SPACE_RUN = re.compile(
    "[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


def clean_text(text: str) -> str:
    """The official ``whitespace`` cleaning of one prompt."""
    import ftfy  # a declared dependency; imported here to keep ``import wanport`` light

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITE_SPACE_RUN.sub(" ", text)
    return text.strip()


__all__ = ["clean_text"]
