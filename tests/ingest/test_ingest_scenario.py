"""mfdata's own scenario, run end to end on real files: route, retry, archive, no-match, trash, loop guard."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from datapipelines import DataPipeline
from datapipelines.ingest import (
    ArchiveSink,
    DirectoryListener,
    FailurePolicy,
    IncomingFile,
    Ingest,
    RetryPolicy,
    Router,
    Rule,
    Step,
)
from tests.support.ingest import drop, files_under, wait_for

pytestmark = pytest.mark.timeout(60)


class Parser:
    """Fails ``failures`` times on files named B* before succeeding; records each attempt and when it ran."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, int, float]] = []
        self.lock = threading.Lock()

    def __call__(self, file: IncomingFile) -> None:
        with self.lock:
            self.calls.append((file.name, file.attempt, time.monotonic()))
        if file.name.startswith("B") and file.attempt <= self.failures:
            raise ValueError(f"cannot parse {file.name} yet")


def build(
    tmp_path: Path, parser: Parser, retry_total: int = 3
) -> tuple[DataPipeline, DirectoryListener, Step]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    archive = ArchiveSink(tmp_path / "archive")
    step = Step(
        "parser",
        parser,
        retry=RetryPolicy(total=retry_total, min_wait=0.1, max_wait=0.1),
        failure=FailurePolicy.keep(tmp_path / "trash"),
    )
    router = Router(
        [Rule.fnmatch("A*", archive), Rule.regex(r".*\.csv$", step)],
        no_match=FailurePolicy.keep(tmp_path / "nomatch"),
    )
    return DataPipeline([router]), DirectoryListener(incoming, settle=0.2), step


def test_the_mfdata_scenario(tmp_path: Path) -> None:
    parser = Parser(failures=2)
    pipeline, listener, _ = build(tmp_path, parser)
    with Ingest(pipeline, listener) as ingest:
        started = time.monotonic()
        for name in ("Afoo.txt", "Bbar.csv", "ABx.csv", "Czz"):
            drop(Path(listener.directory), name, name.encode())
        day = time.strftime("%Y%m%d", time.gmtime())
        archived = tmp_path / "archive" / day / "Afoo.txt"
        wait_for(lambda: (archived.parent / "Afoo.txt.tags").exists(), timeout=5)
        assert time.monotonic() - started < 1.0
        assert archived.read_bytes() == b"Afoo.txt"
        tags = json.loads((archived.parent / "Afoo.txt.tags").read_text())
        assert tags["first.core.original_basename"] == "Afoo.txt"
        assert ingest.wait_idle(10)
        time.sleep(0.4)  # long enough for a wrong reinjection after success to show
        stats = pipeline.stats()["ingest"]

    # ABx.csv reached both targets: the archive got its copy, the parser ran on the other.
    assert (tmp_path / "archive" / day / "ABx.csv").read_bytes() == b"ABx.csv"
    assert [c[:2] for c in parser.calls if c[0] == "ABx.csv"] == [("ABx.csv", 1)]
    abx_tags = json.loads((tmp_path / "archive" / day / "ABx.csv.tags").read_text())
    assert abx_tags["latest.core.uid"].endswith((".1", ".2"))
    # Czz was kept, with its tags, in the no-match folder.
    kept = [p.name for p in files_under(tmp_path / "nomatch")]
    assert (
        len(kept) == 2 and any(n.endswith("__Czz") for n in kept) and any(n.endswith(".tags") for n in kept)
    )
    # Bbar.csv: three attempts ~0.1 s apart, and never again once it succeeded.
    bbar = [c for c in parser.calls if c[0] == "Bbar.csv"]
    assert [c[1] for c in bbar] == [1, 2, 3]
    gaps = [b[2] - a[2] for a, b in zip(bbar, bbar[1:], strict=False)]
    assert all(0.09 <= gap <= 0.4 for gap in gaps), gaps
    step = stats["steps"]["parser"]
    assert (step["processed"], step["failed"], step["retried"], step["dead"]) == (4, 2, 2, 0)
    assert stats["steps"]["router"]["no_match"] == 1
    assert stats["steps"]["router"]["routed"] == {"archive": 2, "parser": 2}
    assert stats["listeners"]["incoming"]["claimed"] == 4
    assert stats["in_flight"] == 0
    assert not files_under(tmp_path / "incoming" / ".work") or all(
        p.name == ".status.json" for p in files_under(tmp_path / "incoming" / ".work")
    )
    assert not (tmp_path / "trash").exists()


def test_an_always_failing_parser_keeps_the_file_and_its_tags_in_trash_and_is_not_reinjected(
    tmp_path: Path,
) -> None:
    parser = Parser(failures=99)
    pipeline, listener, _ = build(tmp_path, parser)
    with Ingest(pipeline, listener) as ingest:
        drop(Path(listener.directory), "Bad.csv", b"garbage")
        assert ingest.wait_idle(10)
        time.sleep(0.4)
        stats = pipeline.stats()["ingest"]["steps"]["parser"]
    assert [c[1] for c in parser.calls] == [1, 2, 3, 4]  # the first attempt and 3 retries, no more
    trashed = files_under(tmp_path / "trash")
    assert [p.name.split("__")[1] for p in trashed if not p.name.endswith(".tags")] == ["Bad.csv"]
    sidecar = next(p for p in trashed if p.name.endswith(".tags"))
    tags = json.loads(sidecar.read_text())
    assert "ValueError: cannot parse Bad.csv yet" in tags["latest.core.error"]
    assert tags["latest.core.attempt"] == "4" and tags["latest.core.error_step"] == "parser"
    assert (stats["processed"], stats["failed"], stats["retried"], stats["dead"]) == (4, 4, 3, 1)


def test_a_self_reinjecting_rule_stops_at_step_limit(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    runs: list[str] = []
    router = Router([], no_match=FailurePolicy.delete())  # the rules are set below: the step loops back
    loop = Step(
        "loop",
        lambda f: runs.append(f.tags["latest.core.step_counter"]),
        then=router,
        step_limit=5,
        failure=FailurePolicy.keep(tmp_path / "trash"),
    )
    router.replace_rules([Rule.always(loop)])
    pipeline = DataPipeline([router])
    with Ingest(pipeline, DirectoryListener(incoming)) as ingest:
        drop(incoming, "again.txt")
        assert ingest.wait_idle(10)
        stats = pipeline.stats()["ingest"]["steps"]["loop"]
    assert runs == ["0", "1", "2", "3", "4", "5"]
    assert stats["looped"] == 1 and stats["dead"] == 1
    sidecar = next(p for p in files_under(tmp_path / "trash") if p.name.endswith(".tags"))
    assert "step_limit 5" in json.loads(sidecar.read_text())["latest.core.reason"]


def test_the_retry_schedule_survives_a_restart(tmp_path: Path) -> None:
    """A file waiting for its retry is on disk with its due time; a new process picks it up then."""
    parser = Parser(failures=1)
    pipeline, listener, step = build(tmp_path, parser)
    step.retry = RetryPolicy(total=2, min_wait=1.5, max_wait=1.5)
    ingest = Ingest(pipeline, listener).start()
    drop(Path(listener.directory), "Blate.csv")
    wait_for(lambda: step.report()["delayed"] == 1)
    ingest.stop()
    parked = [p for p in files_under(Path(listener.work) / "parser")]
    assert len(parked) == 2  # the file and the sidecar holding its due time and attempt
    assert [c[1] for c in parser.calls] == [1]

    # A new process: fresh objects over the same folders.
    parser2 = Parser(failures=1)
    incoming = Path(listener.directory)
    archive = ArchiveSink(tmp_path / "archive")
    step2 = Step("parser", parser2, retry=RetryPolicy(total=2, min_wait=1.5, max_wait=1.5))
    router = Router(
        [Rule.fnmatch("A*", archive), Rule.regex(r".*\.csv$", step2)], no_match=FailurePolicy.delete()
    )
    pipeline2 = DataPipeline([router])
    with Ingest(pipeline2, DirectoryListener(incoming)) as ingest2:
        assert ingest2.wait_idle(10)
    assert [c[1] for c in parser2.calls] == [2]  # resumed as attempt 2, which succeeds
    assert parser2.calls[0][2] - parser.calls[0][2] >= 1.45  # not before its due time
    assert pipeline2.stats()["ingest"]["steps"]["parser"]["reprocessed"] == 1
    assert not any(p.name != ".status.json" for p in files_under(Path(listener.work)))
    assert os.listdir(incoming) == [".work"]


class FlakyCatalog:
    """Stands in for a catalogue whose database fails the first time."""

    def __init__(self) -> None:
        self.rows: dict[str, object] = {}
        self.failures = 1

    def record(self, type: object, item: object, *, query: dict[str, str], source: str | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        self.rows[query["uid"]] = item


def test_a_hand_over_that_fails_is_taken_up_again_by_the_next_reconcile(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    catalog = FlakyCatalog()
    archive = ArchiveSink(tmp_path / "archive", "{original_basename}", catalog=catalog)
    step = Step("check", lambda f: None, then=archive)
    pipeline = DataPipeline([Router([Rule.always(step)], no_match=FailurePolicy.delete())])
    with Ingest(pipeline, DirectoryListener(incoming), reconcile_every=0.3) as ingest:
        drop(incoming, "once.txt")
        wait_for(lambda: len(catalog.rows) == 1, timeout=20)
        assert ingest.wait_idle(10)
        assert ingest.report()["reprocessed"] == 1
    assert sorted(p.name for p in (tmp_path / "archive").iterdir() if p.is_file()) == [
        "once.txt",
        "once.txt.tags",
    ]
