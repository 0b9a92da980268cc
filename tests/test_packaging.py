"""The wheel: sinks and transformers ship inside datapipelines, never as top-level packages."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What a source distribution of the project holds; the build runs on a copy of it,
# so it never writes build/ or egg-info into the working tree.
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "datapipelines", "sinks", "transformers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(tree)]
    if importlib.util.find_spec("wheel") is not None:
        # The venv has the whole build backend: no need to download one.
        command.insert(-1, "--no-isolation")
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"wheel build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.timeout(300)
def test_wheel_ships_sinks_and_transformers_inside_datapipelines(wheel_names: list[str]) -> None:
    assert "datapipelines/__init__.py" in wheel_names
    assert "datapipelines/sinks/__init__.py" in wheel_names
    assert "datapipelines/sinks/memory.py" in wheel_names
    assert "datapipelines/transformers/__init__.py" in wheel_names
    assert "datapipelines/py.typed" in wheel_names


@pytest.mark.timeout(300)
def test_wheel_has_no_top_level_sinks_or_transformers(wheel_names: list[str]) -> None:
    top_level = {name.split("/", 1)[0] for name in wheel_names}
    assert "sinks" not in top_level
    assert "transformers" not in top_level, "it would shadow Hugging Face's transformers"
    packages = top_level - {n for n in top_level if n.endswith(".dist-info")}
    assert packages == {"datapipelines"}


@pytest.mark.timeout(300)
def test_wheel_ships_every_package_of_the_source_tree(wheel_names: list[str]) -> None:
    installed_as = {"datapipelines": "datapipelines", "sinks": "datapipelines/sinks",
                    "transformers": "datapipelines/transformers"}
    expected = set()
    for root, prefix in installed_as.items():
        for init in (ROOT / root).rglob("__init__.py"):
            folder = init.parent.relative_to(ROOT / root).as_posix()
            expected.add(f"{prefix}/{folder}/__init__.py".replace("/./", "/"))
    missing = sorted(expected - set(wheel_names))
    assert not missing, f"packages missing from the wheel (add them to pyproject.toml): {missing}"


@pytest.mark.timeout(300)
def test_wheel_ships_the_mit_licence_and_says_so_in_its_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        text = archive.read(licence).decode("utf-8")
        headers = archive.read(metadata).decode("utf-8").split("\n\n", 1)[0].splitlines()
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "datapipelines developers" in text
    assert "License-Expression: MIT" in headers
    assert "License-File: LICENSE" in headers
