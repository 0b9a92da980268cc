"""ArchiveSink: template names, no overwrite, durability modes, catalogue rows, redoing half-done work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datapipelines.errors import ConfigurationError
from datapipelines.ingest import ArchivedFile, ArchiveSink, FailurePolicy, IncomingFile, Tags, new_uid
from datapipelines.ingest.files import ORIGINAL_BASENAME, ORIGINAL_UID, work_name
from datapipelines.keys import key_for
from datapipelines.sinks.catalog import Catalog


def claimed(work: Path, name: str, data: bytes = b"data", uid: str | None = None) -> IncomingFile:
    uid = uid or new_uid()
    work.mkdir(exist_ok=True)
    path = work / work_name(uid, name)
    path.write_bytes(data)
    tags = Tags({ORIGINAL_BASENAME: name, ORIGINAL_UID: uid.split(".")[0]})
    return IncomingFile(str(path), name, uid, len(data), 0.0, time.time(), 1, tags, str(work))


def test_the_template_takes_strftime_and_the_placeholders(tmp_path: Path) -> None:
    archive = ArchiveSink(tmp_path / "a", "%Y/{original_uid}/{uid}-{random_id}-{original_basename}")
    file = claimed(tmp_path / "work", "x.txt")
    archive.handle(file)
    year = time.strftime("%Y", time.gmtime(file.received_at))
    [stored] = [p for p in (tmp_path / "a" / year / file.uid).iterdir() if not p.name.endswith(".tags")]
    uid, random_id, name = stored.name.split("-")
    assert (uid, name, len(random_id)) == (file.uid, "x.txt", 16)
    tags = json.loads(Path(str(stored) + ".tags").read_text())
    assert tags["first.core.original_basename"] == "x.txt" and tags["latest.core.uid"] == file.uid
    assert not os.path.exists(file.path)
    assert not [p for p in (tmp_path / "a" / ".partial").iterdir()]  # no temporary debris
    with pytest.raises(ConfigurationError, match=r"unknown placeholder \{basename\}"):
        ArchiveSink(tmp_path / "a", "{basename}")


def test_a_name_collision_never_overwrites(tmp_path: Path) -> None:
    archive = ArchiveSink(tmp_path / "a", "{original_basename}")
    first, second = claimed(tmp_path / "w", "same.txt", b"one"), claimed(tmp_path / "w", "same.txt", b"two")
    archive.handle(first)
    archive.handle(second)
    assert (tmp_path / "a" / "same.txt").read_bytes() == b"one"
    assert (tmp_path / "a" / f"same.{second.uid}.txt").read_bytes() == b"two"
    assert archive.report()["collisions"] == 1

    strict = ArchiveSink(
        tmp_path / "b",
        "{original_basename}",
        on_collision="error",
        failure=FailurePolicy.keep(tmp_path / "trash"),
    )
    strict.handle(claimed(tmp_path / "w", "same.txt", b"one"))
    third = claimed(tmp_path / "w", "same.txt", b"three")
    strict.handle(third)
    assert (tmp_path / "b" / "same.txt").read_bytes() == b"one"
    assert (tmp_path / "trash" / work_name(third.uid, "same.txt")).read_bytes() == b"three"
    reason = json.loads((tmp_path / "trash" / (work_name(third.uid, "same.txt") + ".tags")).read_text())
    assert "already taken" in reason["latest.core.error"]


def test_a_redo_finishes_what_a_crash_left_and_the_catalogue_row_is_upserted(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}", types=[ArchivedFile])
    archive = ArchiveSink(tmp_path / "a", "{original_basename}", catalog=catalog)
    file = claimed(tmp_path / "w", "once.txt")
    # A crash after the link, before the sidecar: "moved but no sidecar".
    (tmp_path / "a").mkdir()
    os.link(file.path, tmp_path / "a" / "once.txt")
    archive.handle(file)
    assert sorted(os.listdir(tmp_path / "a")) == [".partial", "once.txt", "once.txt.tags"]
    assert archive.report()["redone"] == 1 and archive.report()["collisions"] == 0
    # A crash after the sidecar, before the work copy went: done again, one row, same path.
    again = claimed(tmp_path / "w", "once.txt", uid=file.uid)
    os.unlink(tmp_path / "a" / "once.txt")
    os.link(again.path, tmp_path / "a" / "once.txt")
    archive.handle(again)
    assert sorted(os.listdir(tmp_path / "a")) == [".partial", "once.txt", "once.txt.tags"]
    assert catalog.count() == 1
    record = catalog.find_one()
    assert record is not None and record.key == key_for(ArchivedFile, {"uid": file.uid})
    catalog.close()


@pytest.mark.parametrize("durability", ["none", "batch", "file"])
def test_durability_modes_archive_the_same_way(tmp_path: Path, durability: str) -> None:
    archive = ArchiveSink(tmp_path / "a", "{original_basename}", durability=durability, batch_size=3)
    archive.start()
    files = [claimed(tmp_path / "w", f"f{i}") for i in range(5)]
    for file in files[:3]:
        archive.handle(file)
    if durability == "batch":
        assert archive.report()["flushes"] == 1  # three files, one flush
    for file in files[3:]:
        archive.handle(file)
    if durability == "batch":
        assert os.path.exists(files[4].path)  # kept until its batch is on disk
    archive.stop()
    assert all(not os.path.exists(f.path) for f in files)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_file()) == sorted(
        [f"f{i}" for i in range(5)] + [f"f{i}.tags" for i in range(5)]
    )


def test_a_template_cannot_leave_the_root(tmp_path: Path) -> None:
    archive = ArchiveSink(
        tmp_path / "a", "../{original_basename}", failure=FailurePolicy.keep(tmp_path / "t")
    )
    file = claimed(tmp_path / "w", "escape")
    archive.handle(file)
    assert not (tmp_path / "escape").exists()
    assert (tmp_path / "t" / work_name(file.uid, "escape")).exists()


def test_temporary_files_of_a_dead_process_are_cleared_at_start_and_a_live_ones_kept(tmp_path: Path) -> None:
    partial = tmp_path / "a" / ".partial"
    partial.mkdir(parents=True)
    command = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(command, capture_output=True, text=True)
    (partial / f".{dead.stdout.strip()}.abcdef.tmp").write_text("{")
    (partial / f".{os.getpid()}.123456.tmp").write_text("{")
    archive = ArchiveSink(tmp_path / "a")
    archive.start()
    assert os.listdir(partial) == [f".{os.getpid()}.123456.tmp"]
    os.unlink(partial / f".{os.getpid()}.123456.tmp")
    archive.stop()
    assert not partial.exists()
