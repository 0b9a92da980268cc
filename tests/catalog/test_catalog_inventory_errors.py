"""Broken databases, typo'd schemes and unreachable servers: one clear error naming the URL.

The command line prints one ``datapipelines: error: ...`` line and exits 2; the
libraries raise ``DataPipelinesError`` subclasses with the driver's error as
``__cause__``; a broken file is left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datapipelines import database
from datapipelines.cli import main
from datapipelines.errors import ConfigurationError, DatabaseError, DataPipelinesError
from datapipelines.inventory import Inventory
from datapipelines.sinks.catalog import Catalog, CatalogError, LocalState


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    return path


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    """A real SQLite file holding a catalogue, an inventory and a big table, cut to a third."""
    path = tmp_path / "full.db"
    Catalog(str(path)).record_many(str, [({"n": n}, "x" * 400) for n in range(200)])
    with Inventory(f"sqlite:///{path}", source="catalog_records") as inventory:
        inventory.acquire_batch("j", count=5)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE filler (x TEXT)")
    connection.executemany("INSERT INTO filler VALUES (?)", [("y" * 500,)] * 200)
    connection.commit()
    connection.close()
    data = path.read_bytes()
    cut = path.with_name("truncated.db")
    cut.write_bytes(data[: len(data) // 3])
    return cut


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listened, so it stays ours)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line(err: str, *expected: str) -> None:
    assert err.startswith("datapipelines: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


# Each command with {path} for the broken file ({ok} a good catalogue), and what the error names.
BROKEN_FILE_COMMANDS = [
    (["catalog", "--catalog", "{path}", "find"], "catalogue"),
    (["catalog", "--catalog", "{path}", "find", "--count"], "catalogue"),
    (["catalog", "--catalog", "{path}", "inspect"], "catalogue"),
    (["catalog", "--catalog", "{path}", "dump"], "catalogue"),
    (["catalog", "--catalog", "{path}", "changes"], "catalogue"),
    (["catalog", "--catalog", "{ok}", "--state", "{path}", "update"], "local state"),
    (["inventory", "--url", "sqlite:///{path}", "status"], "inventory database"),
    (["inventory", "--url", "sqlite:///{path}", "list"], "inventory database"),
    (["inventory", "--url", "sqlite:///{path}", "retry"], "inventory database"),
]


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
@pytest.mark.parametrize(("argv", "named"), BROKEN_FILE_COMMANDS)
def test_cli_on_a_broken_file(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, tmp_path: Path, kind: str,
    argv: list[str], named: str,
) -> None:  # fmt: skip
    path: Path = request.getfixturevalue(kind)
    Catalog(str(tmp_path / "ok.db")).close()
    before = digest(path)
    code, err = run(capsys, *(arg.format(path=path, ok=tmp_path / "ok.db") for arg in argv))
    assert code == 2
    assert_one_line(err, f"{named} sqlite:///{path}")
    assert digest(path) == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == [path.name]


def test_a_missing_sqlite_file_is_named_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.db"
    for command in (["find"], ["inspect"], ["dump"], ["changes"], ["squash"]):
        code, err = run(capsys, "catalog", "--catalog", str(missing), *command)
        assert code == 2
        assert_one_line(err, f"No catalogue at {str(missing)!r} (--catalog)", "generate` creates one")
    # A typo'd catalogue must not soft-delete every local record as gone from it.
    state = tmp_path / "state.db"
    Catalog(str(tmp_path / "real.db")).record(str, "x", query={"n": 1})
    assert (
        run(capsys, "catalog", "--catalog", str(tmp_path / "real.db"), "--state", str(state), "update")[0]
        == 0
    )
    before = digest(state)
    code, err = run(capsys, "catalog", "--catalog", str(missing), "--state", str(state), "update")
    assert code == 2 and "No catalogue at" in err
    code, err = run(
        capsys, "catalog", "--catalog", str(tmp_path / "real.db"), "--state", str(missing), "find"
    )
    assert code == 2 and "No local state at" in err
    assert digest(Path(state)) == before
    assert not missing.exists()


def test_typod_schemes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "inventory", "--url", f"sqlit:///{tmp_path / 'x'}", "status")
    assert code == 2
    assert_one_line(err, "sqlit:///", "no installed database driver")
    code, err = run(capsys, "catalog", "--catalog", f"sqlit:///{tmp_path / 'x'}", "find")
    assert code == 2
    assert_one_line(err, "sqlit://")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_postgresql_cli(capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    url = f"postgresql://reader:s3cret@127.0.0.1:{closed_port}/nowhere"
    code, err = run(capsys, "inventory", "--url", url, "status")
    assert code == 2
    assert_one_line(err, f"reader:***@127.0.0.1:{closed_port}/nowhere")
    assert "s3cret" not in err
    for command in (["find"], ["inspect"]):
        code, err = run(capsys, "catalog", "--catalog", url, *command)
        assert code == 2
        assert_one_line(err, f"catalogue postgresql+psycopg://reader:***@127.0.0.1:{closed_port}/nowhere")
        assert "s3cret" not in err


# -- the libraries -------------------------------------------------------------------------
def test_library_errors_name_the_url_and_keep_the_cause(
    garbage: Path, truncated: Path, closed_port: int, tmp_path: Path
) -> None:
    url = f"postgresql://reader:s3cret@127.0.0.1:{closed_port}/nowhere"
    hidden = f"reader:\\*\\*\\*@127.0.0.1:{closed_port}"
    with pytest.raises(DatabaseError, match=f"inventory database .*{hidden}.*Connection refused") as info:
        Inventory(url, source="items").acquire_batch("j")
    assert "Connection refused" in str(info.value.__cause__)  # the driver's own error
    assert "s3cret" not in str(info.value)
    with pytest.raises(DatabaseError, match=f"catalogue .*{hidden}") as info:
        Catalog(url)
    assert "Connection refused" in str(info.value.__cause__)

    with pytest.raises(DatabaseError, match=f"catalogue sqlite:///{garbage}: file is not a database") as info:
        Catalog(str(garbage))
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(DatabaseError, match=f"local state sqlite:///{garbage}"):
        LocalState(str(tmp_path / "ok.db"), str(garbage))
    with pytest.raises(DatabaseError, match=f"inventory database sqlite:///{garbage}"):
        Inventory(f"sqlite:///{garbage}").exists()
    with pytest.raises(DatabaseError, match=f"sqlite:///{truncated}"):
        Inventory(f"sqlite:///{truncated}").batches()
    with pytest.raises(DatabaseError, match=f"sqlite:///{truncated}"):
        list(Catalog(str(truncated)).find())


def test_typod_scheme_for_the_inventory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="sqlit://") as info:
        Inventory(f"sqlit:///{tmp_path / 'x'}")
    assert info.value.__cause__ is not None
    with pytest.raises(CatalogError, match="got sqlit://"):
        Catalog(f"sqlit:///{tmp_path / 'x'}")
    assert issubclass(DatabaseError, DataPipelinesError)


def test_a_silent_postgresql_costs_a_bounded_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts TCP and never answers: opening gives up after the connect timeout,
    the default one (here lowered to 1 s) or the URL's own."""
    monkeypatch.setattr(database, "CONNECT_TIMEOUT", 1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        default, explicit = (
            f"postgresql://u@127.0.0.1:{port}/x",
            f"postgresql://u@127.0.0.1:{port}/x?connect_timeout=1",
        )
        for open_it in (
            lambda: Catalog(default),
            lambda: Inventory(default).exists(),
            lambda: Catalog(explicit),
        ):
            started = time.monotonic()
            with pytest.raises(DatabaseError, match=f"127.0.0.1:{port}"):
                open_it()
            assert time.monotonic() - started < 20  # psycopg's own default is to wait for ever


def test_postgresql_without_its_driver_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    # None in sys.modules makes the import raise ImportError, as in a venv without the extra.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    url = "postgresql://postgres@127.0.0.1:5432/test"
    for argv in (("inventory", "--url", url, "status"), ("catalog", "--catalog", url, "find")):
        code, err = run(capsys, *argv)
        assert code == 2
        assert_one_line(err, "postgresql+psycopg://", 'pip install "datapipelines[postgres]"')
