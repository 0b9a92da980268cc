"""What mmmeta users rely on: the change log, vanished files, remote locations, dump, date filters.

Every database test runs on SQLite and on PostgreSQL (``database`` from test_catalog).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from datapipelines.cli import main
from datapipelines.keys import key_for
from datapipelines.sinks.catalog import (
    DELETED_REASON,
    META_MISSING,
    ORIGINAL_MISSING,
    Catalog,
    CatalogError,
    Change,
    Counts,
    LocalState,
)
from tests.catalog.test_catalog import START, clock, database, write_document
from tests.support.clock import FakeClock

__all__ = ["clock", "database"]  # fixtures shared with test_catalog
UTC = datetime.timezone.utc
Database = Callable[[str], str]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


# -- the change log (mmmeta's append-only diff log) ------------------------------------------
def test_every_change_is_logged_with_its_columns_and_fields(database: Database, clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock, fields={dict: lambda d: d})
    catalog.record(dict, {"kind": "memo", "type": "letter"}, query={"n": 1}, source="import")
    [added] = catalog.changes()
    assert added == Change(
        key_for(dict, {"n": 1}), "builtins.dict", START, "added",
        ("query", "size", "sha256", "source", "retrieved_at"), ("kind", "type"),
    )  # fmt: skip

    # The same content again changes nothing: no entry, no new last_updated.
    clock.advance(60)
    catalog.record(dict, {"kind": "memo", "type": "letter"}, query={"n": 1}, source="import")
    assert len(catalog.changes()) == 1
    assert catalog.find_one()["last_updated"] == START  # type: ignore[index]

    # A field named like a column is listed as a field, never as the column.
    clock.advance(60)
    catalog.record(dict, {"kind": "memo", "type": "invoice"}, query={"n": 1}, source="import")
    updated = catalog.changes()[-1]
    assert (updated.action, updated.changed_at) == ("updated", START + datetime.timedelta(seconds=120))
    assert updated.fields == ("type",)
    assert set(updated.columns) == {"size", "sha256", "retrieved_at"}

    clock.advance(60)
    since = clock.now
    record = catalog.find_one()
    assert record is not None
    record["reviewed"] = True
    del record["kind"]
    record.save()
    catalog.delete(dict, {"n": 1})
    assert [(c.action, c.fields) for c in catalog.changes(since)] == [
        ("updated", ("kind", "reviewed")),
        ("deleted", ()),
    ]
    assert catalog.changes(since + datetime.timedelta(seconds=1)) == []
    assert [c.action for c in catalog.changes(key=key_for(dict, {"n": 1}))] == [
        "added",
        "updated",
        "updated",
        "deleted",
    ]


def test_generate_logs_added_updated_and_deleted_files(
    database: Database, tmp_path: Path, clock: FakeClock
) -> None:
    folder = tmp_path / "metadata"
    folder.mkdir()
    for number in range(3):
        write_document(folder, number)
    catalog = Catalog(database("catalog"), clock=clock)
    catalog.generate(folder)
    assert [c.action for c in catalog.changes()] == ["added"] * 3
    clock.advance(60)
    catalog.generate(folder)  # nothing changed: nothing logged
    assert len(catalog.changes()) == 3
    clock.advance(60)
    write_document(folder, 1, document_type="invoice", extra="new")
    (folder / "doc02.json").unlink()
    catalog.generate(folder, prune=True)
    later = catalog.changes(clock.now)
    assert [(c.action, c.key, c.fields) for c in later] == [
        ("updated", key_for("document", {"id": "doc-1"}), ("document_type", "extra")),
        ("deleted", key_for("document", {"id": "doc-2"}), ()),
    ]


def test_squash_folds_the_log_into_one_entry_per_record(database: Database, clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock, fields={dict: lambda d: d})
    for step in range(3):
        catalog.record(dict, {"a": step}, query={"n": 1})
        catalog.record(dict, {"b": step}, query={"n": 2})
        clock.advance(60)
    catalog.record(dict, {"c": 1}, query={"n": 3})
    catalog.delete(dict, {"n": 3})
    assert len(catalog.changes()) == 8
    middle = START + datetime.timedelta(seconds=120)

    assert catalog.squash(before=middle) == 2  # two entries per record before it, folded into one each
    assert len(catalog.changes()) == 6
    assert catalog.squash() == 3
    folded = {c.key: c for c in catalog.changes()}
    first = folded[key_for(dict, {"n": 1})]
    assert (first.action, first.fields, first.changed_at) == ("added", ("a",), middle)
    assert folded[key_for(dict, {"n": 2})].fields == ("b",)
    assert folded[key_for(dict, {"n": 3})].action == "deleted"
    assert catalog.squash() == 0


def test_changes_and_squash_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, clock: FakeClock
) -> None:
    url = str(tmp_path / "catalog.db")
    catalog = Catalog(url, clock=clock)
    catalog.record(str, "one", query={"n": 1})
    clock.advance(86400)
    catalog.record(str, "two", query={"n": 1})
    catalog.record(str, "new", query={"n": 2})
    code, out = cli(capsys, "catalog", "--catalog", url, "--json", "changes", "--since", "2024-03-02")
    assert code == 0
    assert [(c["action"], c["key"]) for c in json.loads(out)] == [
        ("updated", key_for(str, {"n": 1})), ("added", key_for(str, {"n": 2}))
    ]  # fmt: skip
    code, out = cli(capsys, "catalog", "--catalog", url, "changes")
    assert out.splitlines()[-1] == "(3 changes)"
    code, out = cli(capsys, "catalog", "--catalog", url, "--json", "squash")
    assert (code, json.loads(out)) == (0, {"removed": 1})
    code, out = cli(capsys, "catalog", "--catalog", url, "squash")
    assert out == "0 change log entries folded away\n"


# -- files that vanished ---------------------------------------------------------------------
@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Metadata files naming actual files beside them, as a scraper leaves them."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for number in range(4):
        (folder / f"doc{number}.pdf").write_bytes(b"%PDF " + bytes([number]) * 100)
        write_document(folder, number, file_name=f"doc{number}.pdf")
    return folder


def test_ensure_files_soft_deletes_records_whose_file_is_gone(
    database: Database, archive: Path, clock: FakeClock
) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)
    assert catalog.generate(archive, ensure_files=True) == Counts(added=4)
    state.update()

    clock.advance(60)
    (archive / "doc1.pdf").unlink()
    (archive / "doc02.json").unlink()
    counts = catalog.generate(archive, ensure=True, ensure_files=True)
    assert (counts.deleted, counts.skipped) == (2, 2)
    assert catalog.count() == 2
    reasons = {r.field("id"): r["deleted_reason"] for r in catalog.find(include_deleted=True) if r.deleted}
    assert reasons == {"doc-1": ORIGINAL_MISSING, "doc-2": META_MISSING}
    assert catalog.summary()["deleted_reasons"] == {META_MISSING: 1, ORIGINAL_MISSING: 1}
    # Running again with nothing new changes nothing, and logs nothing.
    logged = len(catalog.changes())
    clock.advance(60)
    assert catalog.generate(archive, ensure=True, ensure_files=True) == Counts(skipped=3)
    assert len(catalog.changes()) == logged

    # The consumer follows, with the catalogue's reasons; a record gone for good is state-missing.
    assert state.update() == Counts(deleted=2, skipped=2)
    (archive / "doc03.json").unlink()
    catalog.delete("document", {"id": "doc-3"})
    state.update()
    deleted = {r.field("id"): r["deleted_reason"] for r in state.find(include_deleted=True) if r.deleted}
    assert deleted == {"doc-1": ORIGINAL_MISSING, "doc-2": META_MISSING, "doc-3": DELETED_REASON}
    assert state.summary()["deleted_reasons"] == {META_MISSING: 1, ORIGINAL_MISSING: 1, "state-missing": 1}

    # The file comes back: the record is restored, in the catalogue and then in the state.
    (archive / "doc1.pdf").write_bytes(b"%PDF again")
    assert catalog.generate(archive, ensure_files=True).restored == 1
    assert state.update().restored == 1
    assert state.find_one(query={"id": "doc-1"}) is not None


def test_ensure_files_names_bad_file_fields(tmp_path: Path) -> None:
    folder = tmp_path / "metadata"
    folder.mkdir()
    (tmp_path / "secret.pdf").write_bytes(b"outside")
    write_document(folder, 1, file_name="../secret.pdf")
    write_document(folder, 2)
    write_document(folder, 3, file_name="/etc/hostname")
    counts = Catalog(str(tmp_path / "c.db")).generate(folder, ensure_files=True)
    assert counts.invalid_files == {
        "doc01.json": f"file field 'file_name' points outside {str(folder)!r}: '../secret.pdf'",
        "doc02.json": "missing the file field 'file_name' that ensure_files checks",
        "doc03.json": f"file field 'file_name' points outside {str(folder)!r}: '/etc/hostname'",
    }


def test_files_without_metadata_are_catalogued_themselves(
    database: Database, archive: Path, clock: FakeClock
) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    counts = catalog.generate(archive, no_meta=True, type="file")
    assert counts.added == 8  # four pdfs and four json files, each a file
    pdf = catalog.find_one(file_path="doc1.pdf")
    assert pdf is not None
    data = (archive / "doc1.pdf").read_bytes()
    assert (pdf["size"], pdf["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert pdf.field("content_hash") == pdf["sha256"]
    assert (pdf.field("file_name"), pdf.field("file_size"), pdf.uid, pdf.name) == (
        "doc1.pdf", len(data), "doc1.pdf", "doc1.pdf"
    )  # fmt: skip
    assert pdf.key == key_for("file", {"file_path": "doc1.pdf"})

    (archive / "doc1.pdf").unlink()
    (archive / "doc2.pdf").write_bytes(b"changed")
    counts = catalog.generate(archive, no_meta=True, type="file", ensure=True)
    assert (counts.updated, counts.deleted, counts.skipped) == (1, 1, 6)
    gone = catalog.find_one(file_path="doc1.pdf", include_deleted=True)
    assert gone is not None and gone["deleted_reason"] == ORIGINAL_MISSING
    with pytest.raises(CatalogError, match="With no_meta, the key is one of file_name, file_path"):
        catalog.generate(archive, no_meta=True, key="id")
    with pytest.raises(CatalogError, match="choose one"):
        catalog.generate(archive, prune=True, ensure=True)


def test_ensure_on_the_command_line(
    capsys: pytest.CaptureFixture[str], archive: Path, tmp_path: Path
) -> None:
    urls = ["--catalog", str(tmp_path / "c.db"), "--state", str(tmp_path / "s.db")]
    cli(capsys, "catalog", *urls, "generate", str(archive))
    cli(capsys, "catalog", *urls, "update")
    (archive / "doc0.pdf").unlink()
    code, out = cli(capsys, "catalog", *urls, "--json", "generate", str(archive), "--ensure-files")
    assert (code, json.loads(out)["deleted"]) == (0, 1)
    cli(capsys, "catalog", *urls, "update")
    code, out = cli(capsys, "catalog", *urls, "inspect")
    assert "3 records, 1 deleted" in out
    assert [line.split() for line in out.splitlines() if "original-missing" in line] == [
        ["original-missing", "1"], ["original-missing", "1"]
    ]  # fmt: skip
    code, out = cli(capsys, "catalog", *urls, "--json", "inspect")
    summary = json.loads(out)
    assert (
        summary["catalog"]["deleted_reasons"] == summary["state"]["deleted_reasons"] == {ORIGINAL_MISSING: 1}
    )


# -- remote locations ------------------------------------------------------------------------
def test_remote_templates_fill_from_fields(database: Database, archive: Path, clock: FakeClock) -> None:
    templates = {"url": "https://bucket.example/docs/{name}", "uri": "s3://bucket/{document_type}/{uid}"}
    catalog = Catalog(database("catalog"), clock=clock, remote=templates)
    catalog.generate(archive)
    record = catalog.find_one(query={"id": "doc-1"})
    assert record is not None
    assert record.remote.url == "https://bucket.example/docs/doc1.pdf"
    assert record.remote["uri"] == "s3://bucket/contract/doc-1"
    assert dict(record.remote) == {"url": record.remote.url, "uri": record.remote.uri}

    state = LocalState(catalog, database("state"), clock=clock)  # the catalogue's templates by default
    state.update()
    local = state.find_one(query={"id": "doc-1"})
    assert local is not None and local.remote.url == record.remote.url
    local["document_type"] = "archived"  # local fields win, here as everywhere
    assert local.remote.uri == "s3://bucket/archived/doc-1"
    own = LocalState(catalog, database("other"), remote={"path": "/mnt/{key}"}, clock=clock)
    own.update()
    assert own.find_one(query={"id": "doc-1"}).remote.path == f"/mnt/{record.key}"  # type: ignore[union-attr]

    lacking = Catalog(database("lacking"), remote={"url": "https://h/{missing}"})
    lacking.record(str, "x", query={"n": 1})
    with pytest.raises(
        CatalogError, match=r"'url' \('https://h/\{missing\}'\) needs \{missing\}, which record"
    ):
        lacking.find_one().remote  # type: ignore[union-attr]  # noqa: B018


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        ({"url": "https://h/{name.__class__}"}, r"\{name.__class__\} is not a plain field name"),
        ({"url": "https://h/{0}"}, r"\{0\} is not a plain field name"),
        ({"url": "https://h/{"}, "Single '{'"),
        ({"bad name": "x"}, "identifiers"),
        ({"url": 5}, "must be a string"),
    ],
)
def test_bad_remote_templates_are_refused(tmp_path: Path, templates: Any, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Catalog(str(tmp_path / "c.db"), remote=templates)


# -- dump, and fields named like columns ------------------------------------------------------
def test_fields_named_like_columns_are_reachable_and_dumped_apart(
    database: Database, tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "metadata"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"id": "doc-a", "type": "memo", "size": "A4"}))
    url = database("catalog")
    catalog = Catalog(url, clock=clock, remote={"url": "https://h/{uid}"})
    catalog.generate(folder)
    record = catalog.find_one(fields={"type": "memo"})
    assert record is not None
    assert isinstance(record["id"], int) and record["id"] == record.id  # the row id...
    assert record.field("id") == "doc-a"  # ...and the document's own
    assert (record.columns["type"], record.field("type")) == ("document", "memo")
    assert (record["size"], record.field("size")) == (record.columns["size"], "A4")
    assert record.field("absent", "default") == "default"

    out = io.StringIO()
    assert catalog.dump(out) == 1
    [line] = out.getvalue().splitlines()
    document = json.loads(line)
    assert (document["id"], document["type"]) == (record.id, "document")
    assert document["fields"] == {"id": "doc-a", "type": "memo", "size": "A4"}
    assert document["remote"] == {"url": "https://h/doc-a"}
    assert document["deleted_at"] is None

    code, out_text = cli(capsys, "catalog", "--catalog", url, "--remote", "url=https://h/{uid}", "dump")
    assert (code, [json.loads(line) for line in out_text.splitlines()]) == (0, [document])
    code, out_text = cli(capsys, "catalog", "--catalog", url, "--json", "find")
    assert json.loads(out_text)[0]["fields"]["id"] == "doc-a"
    code, out_text = cli(capsys, "catalog", "--catalog", url, "dump", "type=memo")
    assert out_text == ""  # type names the column; the field is reached with fields={...}


# -- URLs from the environment, and when things last changed ---------------------------------------
def test_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATAPIPELINES_CATALOG", raising=False)
    monkeypatch.delenv("DATAPIPELINES_STATE", raising=False)
    with pytest.raises(CatalogError, match=r"No catalogue URL: pass one or set \$DATAPIPELINES_CATALOG"):
        Catalog()
    monkeypatch.setenv("DATAPIPELINES_CATALOG", str(tmp_path / "c.db"))
    Catalog().record(str, "x", query={"n": 1})
    with pytest.raises(CatalogError, match=r"No local state URL: pass one or set \$DATAPIPELINES_STATE"):
        LocalState()
    monkeypatch.setenv("DATAPIPELINES_STATE", str(tmp_path / "s.db"))
    assert LocalState().update() == Counts(added=1)


def test_last_updated_stamps_move_only_when_something_changed(database: Database, clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)
    assert catalog.meta_last_updated is None and state.state_last_updated is None
    catalog.record(str, "x", query={"n": 1})
    assert catalog.meta_last_updated == START
    clock.advance(10)
    catalog.record(str, "x", query={"n": 1})  # the same: no change
    assert catalog.meta_last_updated == START
    state.update()
    assert state.state_last_updated == START + datetime.timedelta(seconds=10)
    clock.advance(10)
    state.update()  # nothing new
    assert state.state_last_updated == START + datetime.timedelta(seconds=10)
    record = state.find_one()
    assert record is not None
    record["imported"] = True
    record.save()
    assert state.state_last_updated == clock.now
    clock.advance(10)
    catalog.delete(str, {"n": 1}, reason="withdrawn")
    assert catalog.meta_last_updated == clock.now
    assert catalog.store["meta_last_updated"] == clock.now  # the store key mmmeta users read


# -- date filters: the command line and the API agree -----------------------------------------------
PUBLISHED = ["2019-04-11", "2019-04-12", "2019-04-12T10:00:00+00:00", "2019-04-13"]


@pytest.mark.parametrize(
    ("bound", "after", "before"),
    [
        ("2019-04-12", [1, 2, 3], [0]),
        (datetime.date(2019, 4, 12), [1, 2, 3], [0]),
        (datetime.datetime(2019, 4, 12, tzinfo=UTC), [1, 2, 3], [0]),
        ("2019-04-12T10:00:00+00:00", [2, 3], [0, 1]),
    ],
)
def test_date_bounds_on_a_text_field(
    database: Database, clock: FakeClock, capsys: pytest.CaptureFixture[str], bound: Any, after: list[int],
    before: list[int],
) -> None:  # fmt: skip
    url = database("catalog")
    catalog = Catalog(url, clock=clock, fields={dict: lambda d: d})
    catalog.record_many(dict, [({"n": n}, {"published_at": day}) for n, day in enumerate(PUBLISHED)])

    def numbers(**filters: Any) -> list[int]:
        return [r["query"]["n"] for r in catalog.find(**filters)]

    assert numbers(published_at_after=bound) == after  # inclusive
    assert numbers(published_at_before=bound) == before  # exclusive
    if isinstance(bound, str):
        for name, expected in (("published_at_after", after), ("published_at_before", before)):
            code, out = cli(capsys, "catalog", "--catalog", url, "--json", "find", f"{name}={bound}")
            assert (code, [r["query"]["n"] for r in json.loads(out)]) == (0, expected)


def test_date_bounds_on_a_date_column(
    database: Database, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database("catalog")
    catalog = Catalog(url, clock=clock)
    for n in range(3):
        catalog.record(str, str(n), query={"n": n})
        clock.advance(86400)  # 2024-03-01, -02, -03 at 12:00 UTC

    def numbers(**filters: Any) -> list[int]:
        return [r["query"]["n"] for r in catalog.find(**filters)]

    for bound in ("2024-03-02", datetime.date(2024, 3, 2), "2024-03-02T00:00:00Z"):
        assert numbers(retrieved_after=bound) == [1, 2]
        assert numbers(retrieved_before=bound) == [0]
    assert numbers(retrieved_after="2024-03-02T12:00:00+00:00") == [1, 2]
    assert numbers(retrieved_before="2024-03-02T13:00:00+01:00") == [0]  # 12:00 UTC
    for name, expected in (("retrieved_after", [1, 2]), ("retrieved_before", [0])):
        code, out = cli(capsys, "catalog", "--catalog", url, "--json", "find", f"{name}=2024-03-02")
        assert [r["query"]["n"] for r in json.loads(out)] == expected


def test_a_catalogue_made_before_soft_deletion_is_upgraded(database: Database, archive: Path) -> None:
    url = database("catalog")
    Catalog(url).generate(archive)
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:  # the tables as an older version made them
        connection.execute(text("DROP INDEX ix_catalog_records_deleted_at"))
        connection.execute(text("ALTER TABLE catalog_records DROP COLUMN deleted_at"))
        connection.execute(text("ALTER TABLE catalog_records DROP COLUMN deleted_reason"))
        connection.execute(text("DROP TABLE catalog_changes"))
    engine.dispose()
    catalog = Catalog(url)
    (archive / "doc0.pdf").unlink()
    assert catalog.generate(archive, ensure_files=True).deleted == 1
    assert catalog.count() == 3 and catalog.count(deleted_reason=ORIGINAL_MISSING) == 1
    assert [c.action for c in catalog.changes()] == ["deleted"]


def test_a_soft_deleted_record_recorded_again_is_restored(database: Database, clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    catalog.record(str, "x", query={"n": 1})
    assert catalog.delete(str, {"n": 1}, reason="withdrawn") is True
    assert catalog.delete(str, {"n": 1}, reason="withdrawn") is False  # already deleted
    assert catalog.count() == 0 and catalog.count(deleted_reason="withdrawn") == 1
    clock.advance(5)
    catalog.record(str, "x", query={"n": 1})  # the same bytes, but it was deleted: restored
    record = catalog.find_one()
    assert record is not None and not record.deleted and record["deleted_reason"] is None
    assert [c.action for c in catalog.changes()] == ["added", "deleted", "restored"]
    assert catalog.changes()[-1].columns == ("retrieved_at", "deleted_at", "deleted_reason")
