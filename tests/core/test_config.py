"""DataPipeline.from_config, ``datapipelines check`` and ``datapipelines stats``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from datapipelines import ConfigurationError, DataPipeline, Policy
from datapipelines.cli import main
from datapipelines.sinks import DiskStore, MemoryStore

APP = '''
from dataclasses import dataclass

from datapipelines import DataSource, NotFoundError, sink, source, transformer


@dataclass(frozen=True)
class Raw:
    text: str


@dataclass(frozen=True)
class Weather:
    city: str
    celsius: float


@source(Raw)
def api(query):
    if query["city"] == "Atlantis":
        raise NotFoundError("no such city")
    return Raw(f"{query['city']}:3.5")


@transformer(Raw, Weather)
def parse(raw):
    city, celsius = raw.text.split(":")
    return Weather(city, float(celsius))


recorded = []


@sink(Raw)
def record(item):
    recorded.append(item)


class Stations(DataSource):
    """A 1.x-style class, built with the options of its table."""

    def __init__(self, timeout=1.0):
        self.timeout = timeout

    def __repr__(self):
        return f"Stations(timeout={self.timeout})"

    @DataSource.dispatch
    def get(self, type, query, context=None): ...

    @DataSource.dispatch
    def get_many(self, type, query, context=None): ...

    @get.register(int)
    def get_station(self, query, context=None):
        return query["id"]


def job(pipeline):
    for city in ("Oslo", "Oslo", "Bergen", "Oslo"):
        pipeline.get(Weather, {"city": city})
'''

CONFIG = """
name = "weather"
sinks = ["weatherapp:record"]
sources = ["weatherapp:api", { object = "weatherapp:Stations", timeout = 5 }]
transformers = ["weatherapp:parse"]

[tiers.memory]
maxsize = 500
expirations = { Weather = 300 }

[tiers.disk]
directory = "cache"
expirations = { Weather = 3600 }

[policies."weatherapp:Weather"]
ttl = 300
soft_ttl = 60
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding weatherapp.py and pipeline.toml, importable by tests and subprocesses."""
    (tmp_path / "weatherapp.py").write_text(APP, encoding="utf-8")
    (tmp_path / "pipeline.toml").write_text(CONFIG, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    yield tmp_path
    sys.modules.pop("weatherapp", None)


def test_from_config_builds_tiers_sinks_sources_transformers_and_policies(app: Path) -> None:
    import weatherapp

    pipeline = DataPipeline.from_config(app / "pipeline.toml")
    memory, disk, record, api, stations = pipeline.elements
    assert isinstance(memory, MemoryStore) and memory.maxsize == 500
    assert isinstance(disk, DiskStore) and Path(disk.directory) == app / "cache"  # relative to the file
    assert record is weatherapp.record and api is weatherapp.api
    assert repr(stations) == "Stations(timeout=5)"
    assert pipeline.name == "weather"
    assert pipeline._policies[weatherapp.Weather] == Policy(ttl=300, soft_ttl=60)

    assert pipeline.get(weatherapp.Weather, {"city": "Oslo"}) == weatherapp.Weather("Oslo", 3.5)
    assert weatherapp.recorded == [weatherapp.Raw("Oslo:3.5")]  # the sink got the raw value
    assert memory.lookup(weatherapp.Weather, {"city": "Oslo"}) == weatherapp.Weather("Oslo", 3.5)
    assert pipeline.get(int, {"id": 3}) == 3
    disk.close()


def test_from_config_takes_a_dict_and_keyword_options(app: Path) -> None:
    pipeline = DataPipeline.from_config(
        {"tiers": {"fast": {"kind": "memory", "maxsize": 3}}, "sources": ["weatherapp:api"]}, strict=True
    )
    assert pipeline.name == "default" and pipeline._strict
    assert pipeline.elements[0].maxsize == 3  # type: ignore[union-attr]


def test_from_config_on_a_subclass_builds_that_subclass(app: Path) -> None:
    class Traced(DataPipeline):
        pass

    pipeline = Traced.from_config({"tiers": {"memory": {}}, "sources": ["weatherapp:api"]})
    assert type(pipeline) is Traced
    import weatherapp

    assert pipeline.get(weatherapp.Raw, {"city": "Oslo"}) == weatherapp.Raw("Oslo:3.5")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "[tiers.memory]\nmaxsize = -1\n",
            "pipeline.toml: tiers.memory: MemoryStore: MemoryStore maxsize must be positive",
        ),
        ("[tiers.memory]\nmaxsze = 10\n", "pipeline.toml: tiers.memory: MemoryStore: "),
        (
            "[tiers.cache]\nmaxsize = 10\n",
            "pipeline.toml: tiers.cache.kind: expected 'module:object', got 'cache'",
        ),
        (
            '[tiers.x]\nkind = "nowhere:Store"\n',
            "pipeline.toml: tiers.x.kind: cannot import 'nowhere:Store' "
            "(ModuleNotFoundError: No module named 'nowhere')",
        ),
        (
            'sources = ["weatherapp:missing"]\n',
            "pipeline.toml: sources[0]: module 'weatherapp' has no 'missing'",
        ),
        (
            'sources = ["weatherapp:parse"]\n',
            "pipeline.toml: sources[0]: weatherapp:parse is parse, which is not a DataSource",
        ),
        (
            'sources = [{ object = "weatherapp:api", timeout = 1 }]\n',
            "sources[0]: weatherapp:api is an element already",
        ),
        ('sources = "weatherapp:api"\n', "pipeline.toml: sources: expected a list"),
        (
            'transformers = ["weatherapp:api"]\n',
            "transformers[0]: weatherapp:api is api, which is not a DataTransformer",
        ),
        ("tiers = 3\n", "pipeline.toml: tiers: expected tables"),
        ("tier = {}\n", "pipeline.toml: tier: unknown key"),
        ('name = ""\nsources = ["weatherapp:api"]\n', "pipeline.toml: name: expected a non-empty string"),
        ('strict = "yes"\nsources = ["weatherapp:api"]\n', "pipeline.toml: strict: expected true or false"),
        ('name = "x"\n', "pipeline.toml: tiers: the pipeline has no tiers, sinks or sources"),
        (
            'sources = ["weatherapp:api"]\n[policies."weatherapp:Weather"]\ntll = 3\n',
            "policies.weatherapp:Weather: ",
        ),
        (
            'sources = ["weatherapp:api"]\n[policies."weatherapp:Weather"]\nttl = -5\n',
            "policies.weatherapp:Weather: ",
        ),
        ("[tiers.memory\n", "pipeline.toml: not valid TOML"),
        ('sources = ["weatherapp:api"]\npolicies = 3\n', "pipeline.toml: policies: expected tables"),
        ("[tiers.memory]\nexpirations = 5\n", "tiers.memory: MemoryStore: Expirations must map"),
        ('[tiers.disk]\ndirectory = "/dev/null/cache"\n', "pipeline.toml: tiers.disk: DiskStore: "),
        ('[tiers.audit]\ndirectory = "/dev/null/audit"\n', "pipeline.toml: tiers.audit: AuditRecorder: "),
    ],
)
def test_bad_config_is_one_error_naming_file_and_key(app: Path, config: str, message: str) -> None:
    (app / "pipeline.toml").write_text(config, encoding="utf-8")
    with pytest.raises(ConfigurationError) as caught:
        DataPipeline.from_config(app / "pipeline.toml")
    text = str(caught.value)
    assert "\n" not in text
    assert str(app / "pipeline.toml") in text
    assert message.replace("pipeline.toml: ", "") in text


def test_a_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "garbage.toml").write_bytes(b"\xab\xcd\x00\xff" * 64)
    with pytest.raises(ConfigurationError, match=r"garbage\.toml: not a TOML file \(not UTF-8"):
        DataPipeline.from_config(tmp_path / "garbage.toml")


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("def broken(:\n", "SyntaxError: "),
        ('raise RuntimeError("needs its settings")\n', "RuntimeError: needs"),
    ],
)
def test_a_module_failing_at_import_is_named(app: Path, module: str, message: str) -> None:
    (app / "brokenapp.py").write_text(module, encoding="utf-8")
    (app / "pipeline.toml").write_text('sources = ["brokenapp:api"]\n', encoding="utf-8")
    try:
        done = run_cli("check", "pipeline.toml", cwd=app)
    finally:
        sys.modules.pop("brokenapp", None)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = f"datapipelines: error: pipeline.toml: sources[0]: cannot import 'brokenapp:api' ({message}"
    assert done.stderr.startswith(expected)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nothing\.toml: cannot read it"):
        DataPipeline.from_config(tmp_path / "nothing.toml")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datapipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_prints_the_plan_for_each_type(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(app / "pipeline.toml")]) == 0
    out = capsys.readouterr().out
    assert "pipeline 'weather' is valid" in out
    plan = out.split("\nWeather\n")[1].split("\n\n")[0]
    lines = plan.splitlines()
    assert lines[0].split() == ["ask", "as", "convert", "writes", "back"]
    memory, disk, api = lines[2:5]
    assert memory.startswith("MemoryStore(maxsize=500)") and "Weather" in memory
    assert disk.startswith("DiskStore(") and "MemoryStore(maxsize=500) <- Weather" in disk
    assert api.startswith("api") and "parse -> Weather" in api
    assert "record <- Raw" in api and "DiskStore(" in api  # the raw sink before parsing, the tiers after
    assert "\nint\n" in out and "Stations(timeout=5)" in out.split("\nint\n")[1]


def test_check_json(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["check", "--json", str(app / "pipeline.toml")]) == 0
    report = json.loads(capsys.readouterr().out)
    weather = next(plan for plan in report["types"] if plan["type"] == "Weather")
    api = weather["routes"][-1]
    assert api["ask"] == "api" and api["as"] == "Raw" and api["convert"] == ["parse -> Weather"]
    assert {"sink": "record", "gets": "Raw"} in api["writes_back"]
    assert [e["role"] for e in report["elements"]] == ["tier", "tier", "sink", "source", "source"]


def test_check_of_a_bad_config_is_one_line_and_exit_2(app: Path) -> None:
    (app / "pipeline.toml").write_text('sources = ["weatherapp:nothing"]\n', encoding="utf-8")
    done = run_cli("check", "pipeline.toml", cwd=app)
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr
        == "datapipelines: error: pipeline.toml: sources[0]: module 'weatherapp' has no 'nothing'\n"
    )


def test_stats_runs_a_job_and_prints_its_counters(app: Path) -> None:
    done = run_cli("stats", "pipeline.toml", "--run", "weatherapp:job", "--json", cwd=app)
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    assert report["pipeline"] == "weather"
    assert report["sources"]["api"]["calls"] == 2
    assert report["tiers"]["MemoryStore(maxsize=500)"]["hits"] == 2
    table = run_cli("stats", "pipeline.toml", "--run", "weatherapp:job", cwd=app).stdout.splitlines()
    header = table[0].split()
    assert header[:2] == ["role", "element"] and set(header[2:]) == set(report["sources"]["api"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--serve", "9109"), "--serve: expected [HOST]:PORT such as :9109, got '9109'"),
        (("--run", "weatherapp:nothing"), "--run: module 'weatherapp' has no 'nothing'"),
        (("--run", "weatherapp:recorded"), "--run: weatherapp:recorded is not a function"),
        (
            ("--run", "os:getcwd"),
            "--run: os:getcwd cannot be called as FUNCTION(pipeline) (too many positional arguments)",
        ),
    ],
)
def test_stats_errors_are_one_line(app: Path, args: tuple[str, ...], message: str) -> None:
    done = run_cli("stats", "pipeline.toml", *args, cwd=app)
    assert done.returncode == 2
    assert done.stderr == f"datapipelines: error: {message}\n"


def test_stats_serves_the_metrics_of_the_running_job_until_interrupted(app: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "datapipelines.cli", "stats", "pipeline.toml", "--run", "weatherapp:job",
         "--serve", "127.0.0.1:0"],
        cwd=app, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving the metrics of pipeline 'weather' at http://127.0.0.1:")
        url = first.split(" at ")[1].strip()
        for line in process.stdout:
            if line.startswith("serving until interrupted"):
                break
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        assert 'datapipelines_source_calls_total{pipeline="weather",source="api"} 2.0' in text
        assert 'datapipelines_tier_hits_total{pipeline="weather",tier="MemoryStore(maxsize=500)"} 2.0' in text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None and "Traceback" not in process.stderr.read()


def test_check_and_stats_are_listed_in_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "datapipelines.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "check" in done.stdout and "stats" in done.stdout
