"""The repository reads on its own: no citation points outside it, and every
``docs/<page>.md §N`` reference names a page and a section that exist.

The forbidden markers are assembled from pieces so that this file does not match itself.
"""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
SCANNED = ("core", "backends", "docs", "tests", "recipes", "benchmarks", "examples", "README.md", "run.sh")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".yml", ".cfg", ".toml", ".sh", ".rst")
SECTION = "\u00a7"
FORBIDDEN = (
    "spec " + SECTION,  # sections of a private reference file
    ".." + "/shared",  # a folder beside the repository
    "shared" + "/specs",
    "shared" + "/anchors",
)
#: ``docs/<page>.md §1.2`` plus any further ``, §3`` / `` and §4`` of the same citation
_REF = re.compile(r"docs/([\w.-]+\.md)((?:(?:\s*,\s*|\s+and\s+|\s+)" + SECTION + r"\d+(?:\.\d+)*)+)")
_NUM = re.compile(SECTION + r"(\d+(?:\.\d+)*)")
#: a numbered heading: ``## 2. Title`` or ``### 2.3 Title``
_HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


def _files():
    for top in SCANNED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".pytest_cache")]
            for name in files:
                if name.endswith(TEXT_SUFFIXES):
                    yield os.path.join(root, name)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, ROOT)


def test_scan_covers_the_tree():
    files = [_rel(p) for p in _files()]
    for expected in ("README.md", os.path.join("core", "precision.py"), os.path.join("docs", "wan-model.md"),
                     os.path.join("backends", "cuda", "plugin.py"), os.path.join("tests", "test_docs.py")):
        assert expected in files


def test_no_citation_points_outside_the_repository():
    found = []
    for path in _files():
        for n, line in enumerate(_read(path).splitlines(), 1):
            for marker in FORBIDDEN:
                if marker in line:
                    found.append("%s:%d contains %r: cite docs/ or the official Wan code instead" % (_rel(path), n, marker))
    assert not found, "\n".join(found)


def sections(page_text):
    """The section numbers of a docs page: its numbered headings."""
    return set(_HEADING.findall(page_text))


def references(text):
    """(page, section) for every ``docs/page.md §N[, §M]`` in text."""
    out = []
    for m in _REF.finditer(text):
        for num in _NUM.findall(m.group(2)):
            out.append((m.group(1), num))
    return out


def test_reference_parser():
    text = "x (docs/wan-model.md §6.1, §6.2, §3) y docs/measurements.md §1 and §2; docs/wan-model.md §2.3 step 6"
    assert references(text) == [("wan-model.md", "6.1"), ("wan-model.md", "6.2"), ("wan-model.md", "3"),
                                ("measurements.md", "1"), ("measurements.md", "2"), ("wan-model.md", "2.3")]
    assert sections("## 1. A\n### 1.2 B\n#### 7.3.1 C\n## Notes\n") == {"1", "1.2", "7.3.1"}


def test_every_docs_section_reference_exists():
    pages = {}
    refs = []
    for path in _files():
        for n, line in enumerate(_read(path).splitlines(), 1):
            for page, num in references(line):
                refs.append((_rel(path), n, page, num))
    assert any(page == "wan-model.md" for _, _, page, _ in refs)  # the code does cite the page
    missing = []
    for where, n, page, num in refs:
        if page not in pages:
            doc = os.path.join(ROOT, "docs", page)
            pages[page] = sections(_read(doc)) if os.path.isfile(doc) else None
        if pages[page] is None:
            missing.append("%s:%d cites docs/%s, which does not exist" % (where, n, page))
        elif num not in pages[page]:
            missing.append("%s:%d cites docs/%s %s%s, which has no such section" % (where, n, page, SECTION, num))
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("page", ["wan-model.md", "measurements.md"])
def test_numbered_sections_have_stable_anchors(page):
    text = _read(os.path.join(ROOT, "docs", page))
    nums = sections(text)
    assert nums
    anchors = set(re.findall(r'<a id="s([\d-]+)"></a>', text))
    assert {n.replace(".", "-") for n in nums} == anchors
