"""The README's ``python`` code blocks run, in order, as one program; it shows no Python that does not run."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_readme_has_runnable_examples() -> None:
    assert len(BLOCK.findall(README.read_text(encoding="utf-8"))) >= 3


def test_readme_shows_no_python_fragments() -> None:
    fences = re.findall(r"^[ \t]*```([^\n`]*)$", README.read_text(encoding="utf-8"), re.MULTILINE)[::2]
    assert not [f for f in fences if f.strip().lower() in {"py", "py3", "python3", "pycon", "ipython"}]


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # A real module, so dataclasses and pickling find the classes the examples define.
    module = types.ModuleType("readme_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(BLOCK.findall(README.read_text(encoding="utf-8")), start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), module.__dict__)
