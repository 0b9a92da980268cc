"""The wheel: sinks and transformers ship inside datapipelines, never as top-level packages;
installed without extras in a clean venv, the core, its tiers and the CLI work, and each
optional part names the extra it needs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.support.venvs import make_venv, need_index

ROOT = Path(__file__).resolve().parents[2]
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
    installed_as = {
        "datapipelines": "datapipelines",
        "sinks": "datapipelines/sinks",
        "transformers": "datapipelines/transformers",
    }
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


# -- installed without extras ------------------------------------------------------


@pytest.fixture(scope="module")
def bare_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv holding the wheel and its core dependencies only."""
    need_index("multipledispatch", tmp_path_factory.mktemp("probe"))
    return make_venv(tmp_path_factory.mktemp("bare") / "venv", (str(wheel),))


def _run(python: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PATH": "", "HOME": str(cwd), **env},
    )


# Runs in the clean venv: the three tiers in one pipeline, and an audit directory to inspect.
CORE_PROGRAM = """
import json, sys
import datapipelines
from datapipelines import DataPipeline, DataSource, RawResponse
from datapipelines.remote import RemoteSource, response_for
from datapipelines.sinks import AuditRecorder, DiskStore, MemoryStore, RedisStore

loaded = sorted(m for m in ("httpx", "sqlalchemy", "psycopg") if m in sys.modules)

class Squares(DataSource):
    calls = 0
    @DataSource.dispatch
    def get(self, type, query, context=None): pass
    @DataSource.dispatch
    def get_many(self, type, query, context=None): pass
    @get.register(int)
    def square(self, query, context=None):
        Squares.calls += 1
        return query["n"] ** 2

class Canned:
    def fetch(self, request):
        return response_for(request, payload=b"{}", status_code=200, content_type="application/json")

redis_url, namespace, workdir = sys.argv[1:4]
memory, disk = MemoryStore(), DiskStore(workdir + "/disk")
redis = RedisStore(redis_url, namespace=namespace)
pipeline = DataPipeline([memory, disk, redis, Squares()])
first = pipeline.get(int, {"n": 7})
again = DataPipeline([MemoryStore(), DiskStore(workdir + "/disk2"), redis, Squares()]).get(int, {"n": 7})
pipeline.invalidate(int, {"n": 7})
with AuditRecorder(workdir + "/audit") as recorder:
    audited = DataPipeline([recorder, RemoteSource(Canned())])
    with audited.session("bare"):
        audited.get(RawResponse, {"path": "/status"})
print(json.dumps({"loaded": loaded, "first": first, "again": again, "calls": Squares.calls}))
"""


@pytest.mark.timeout(600)
def test_the_bare_wheel_has_no_optional_packages(bare_python: Path, tmp_path: Path) -> None:
    done = _run(
        bare_python,
        "-c",
        "import importlib.util as u; print([m for m in ('httpx', 'sqlalchemy') if u.find_spec(m)])",
        cwd=tmp_path,
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.timeout(600)
def test_the_core_and_its_three_tiers_run_without_extras(
    bare_python: Path, tmp_path: Path, redis_url: str
) -> None:
    namespace = f"bare-{uuid.uuid4().hex}"
    done = _run(bare_python, "-c", CORE_PROGRAM, redis_url, namespace, str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    # Importing datapipelines and using the core loaded none of the optional clients.
    assert report["loaded"] == []
    # Computed once; the second pipeline, with empty memory and disk, found it in Redis.
    assert report == {"loaded": [], "first": 49, "again": 49, "calls": 1}


@pytest.mark.timeout(600)
def test_the_cli_help_and_audit_work_without_extras(
    bare_python: Path, tmp_path: Path, redis_url: str
) -> None:
    done = _run(
        bare_python, "-c", CORE_PROGRAM, redis_url, f"bare-{uuid.uuid4().hex}", str(tmp_path), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cli = bare_python.parent / "datapipelines"
    helped = _run(cli, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for group in ("audit", "inventory", "catalog"):
        assert group in helped.stdout
    assert 'pip install "datapipelines[sql]"' in helped.stdout
    # The catalogue's options need no SQLAlchemy to be listed; running a command does.
    assert _run(cli, "catalog", "--help", cwd=tmp_path).returncode == 0
    sessions = _run(cli, "audit", "--dir", str(tmp_path / "audit"), "--json", "sessions", cwd=tmp_path)
    assert sessions.returncode == 0, sessions.stderr
    assert [s["name"] for s in json.loads(sessions.stdout)] == ["bare"]
    verified = _run(cli, "audit", "--dir", str(tmp_path / "audit"), "verify", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("inventory", "status"), "sql"),
        (("inventory", "--help"), "sql"),
        (("catalog", "--catalog", "catalog.db", "inspect"), "sql"),
    ],
)
@pytest.mark.timeout(600)
def test_a_cli_group_without_its_extra_says_which_to_install(
    bare_python: Path, tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    done = _run(bare_python.parent / "datapipelines", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("datapipelines: error: ")
    assert f'pip install "datapipelines[{extra}]"' in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("statement", "part", "extra"),
    [
        ("from datapipelines import HttpSource", "HttpSource needs httpx", "http"),
        ("from datapipelines.http import HttpSource", "HttpSource needs httpx", "http"),
        ("from datapipelines.sinks import Catalog", "Catalog needs sqlalchemy", "sql"),
        ("from datapipelines.sinks import LocalState", "Catalog needs sqlalchemy", "sql"),
        ("from datapipelines import Inventory", "Inventory needs sqlalchemy", "sql"),
        ("import datapipelines.inventory", "Inventory needs sqlalchemy", "sql"),
    ],
)
@pytest.mark.timeout(600)
def test_an_optional_part_without_its_extra_raises_an_import_error_naming_it(
    bare_python: Path, tmp_path: Path, statement: str, part: str, extra: str
) -> None:
    program = f"""
try:
    {statement}
except ImportError as error:
    print(type(error).__name__, "|", error)
"""
    done = _run(bare_python, "-c", program, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f'MissingExtraError | {part}, which is not installed: pip install "datapipelines[{extra}]"'
    )
