"""The metrics bridges are optional: importing datapipelines loads neither, and each names its extra."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from datapipelines.extras import MissingExtraError


def test_importing_datapipelines_loads_no_telemetry_client() -> None:
    # opentelemetry itself may be loaded: redis-py imports it for its own instrumentation when installed.
    code = (
        "import sys, datapipelines\n"
        "from datapipelines import DataPipeline, source, sink, transformer\n"
        "optional = ('datapipelines.otel', 'datapipelines.prometheus', 'prometheus_client',\n"
        "            'datapipelines.config', 'tomllib', 'tomli')\n"
        "loaded = [m for m in optional if m in sys.modules]\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "client", "extra"),
    [
        ("datapipelines.otel", "opentelemetry", "datapipelines[otel]"),
        ("datapipelines.prometheus", "prometheus_client", "datapipelines[prometheus]"),
    ],
)
def test_a_missing_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, client: str, extra: str
) -> None:
    for name in [m for m in sys.modules if m == client or m.startswith(client + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, client, None)  # what an uninstalled package looks like to import
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=re.escape(f'pip install "{extra}"')):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)
