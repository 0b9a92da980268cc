"""Every ``python`` block of every docs/*.md runs: each file as one program, in order, in an empty folder.

A new page is picked up by itself, and so is a block indented under a list item.
Each file runs in a fresh interpreter (a page's
schema versions, adapters or servers never leak into another's), with tracebacks
pointing at the page's own line numbers. The blocks may use the services a user
would have: Redis at 127.0.0.1:6379 and PostgreSQL at 127.0.0.1:5432. Python
fragments that do not run (``py``, ``python3``, ``pycon`` fences) are refused:
code that is shown is code that runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^[ \t]*```([^\n`]*)$", re.MULTILINE)
# A python block, at any indentation (under a list item); it closes at the same indentation.
BLOCK = r"^([ \t]*)```python\n(.*?)^\1```"
FRAGMENT_LANGUAGES = frozenset({"py", "py3", "python3", "pycon", "ipython"})

# Runs one page: each block compiled under the page's name at its own line, in one module.
RUNNER = r"""
import re, sys, textwrap, types
path, block = sys.argv[1:]
text = open(path, encoding="utf-8").read()
module = types.ModuleType("docs_example")
sys.modules[module.__name__] = module  # dataclasses and pickle find the classes a page defines
for match in re.finditer(block, text, re.DOTALL | re.MULTILINE):
    line = text.count("\n", 0, match.start(2))
    exec(compile("\n" * line + textwrap.dedent(match.group(2)), path, "exec"), module.__dict__)
"""


def python_blocks(text: str) -> list[str]:
    return [match.group(2) for match in re.finditer(BLOCK, text, re.DOTALL | re.MULTILINE)]


def opening_fences(text: str) -> list[str]:
    """The info string of every opening fence (closing fences alternate with them)."""
    return [match.group(1).strip() for match in FENCE.finditer(text)][::2]


def test_the_docs_have_pages_with_runnable_examples() -> None:
    assert PAGES
    assert sum(len(python_blocks(page.read_text(encoding="utf-8"))) for page in PAGES) >= 20


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_no_page_shows_python_that_does_not_run(page: Path) -> None:
    fences = opening_fences(page.read_text(encoding="utf-8"))
    fragments = [language for language in fences if language.lower() in FRAGMENT_LANGUAGES]
    assert not fragments, f"{page.name}: make these ```python blocks that run, or text: {fragments}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_block_of_the_page_runs_in_order(page: Path, tmp_path: Path) -> None:
    if not python_blocks(page.read_text(encoding="utf-8")):
        pytest.skip(f"{page.name} has no python blocks")
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(page), BLOCK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, f"{page.name} failed:\n{done.stderr[-4000:]}"
