"""The catalogue sink, generation from metadata files, local state and the key-value store.

Every database test runs on SQLite and on PostgreSQL (a fresh schema per
database, dropped afterwards).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text

from datapipelines import ConfigurationError, DataPipeline, DataSource, NotFoundError, UnsupportedError
from datapipelines.database import show_url
from datapipelines.keys import key_for
from datapipelines.sinks.catalog import (
    Catalog,
    CatalogError,
    Counts,
    LocalState,
    canonical_json,
    content_bytes,
)
from datapipelines.sinks.catalog._db import engine_for
from tests.support.clock import FakeClock
from tests.support.postgres import POSTGRES_URL, require_postgres

UTC = datetime.timezone.utc
START = datetime.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A factory of empty database URLs: a SQLite file, or a PostgreSQL schema of its own.

    PostgreSQL URLs are given as plain ``postgresql://``, which the catalogue maps to psycopg 3.
    """
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path / name}.db"
        return
    require_postgres()
    admin = create_engine(POSTGRES_URL)
    schemas: list[str] = []

    def make(name: str) -> str:
        schema = f"dp_catalog_test_{uuid.uuid4().hex[:12]}"
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        url = sqlalchemy.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://", 1)

    yield make
    with admin.begin() as connection:
        for schema in schemas:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def write_document(folder: Path, number: int, **extra: Any) -> Path:
    path = folder / f"doc{number:02d}.json"
    document = {
        "id": f"doc-{number}",
        "document_type": "contract" if number % 2 else "letter",
        "retrieved_at": f"2024-01-{number + 1:02d}T08:00:00+00:00",
        "meta": {"lang": "de", "pages": number},
        **extra,
    }
    path.write_text(json.dumps(document, indent=2))
    return path


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    folder = tmp_path / "metadata"
    (folder / "nested").mkdir(parents=True)
    for number in range(10):
        write_document(folder / "nested" if number >= 5 else folder, number)
    return folder


def timestamps(rows: Iterator[Any]) -> dict[str, tuple[Any, ...]]:
    return {row.key: (row["retrieved_at"], row["last_updated"]) for row in rows}


# -- the acceptance scenario ------------------------------------------------------------
def test_generate_update_find_and_resync(
    database: Callable[[str], str], documents: Path, clock: FakeClock
) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)

    assert catalog.generate(documents, required=["document_type"]) == Counts(added=10)
    assert state.update() == Counts(added=10)

    # A resync with no change touches nothing.
    before = (timestamps(catalog.find()), timestamps(state.find()))
    clock.advance(60)
    assert catalog.generate(documents, required=["document_type"]) == Counts(skipped=10)
    assert state.update() == Counts(skipped=10)
    assert (timestamps(catalog.find()), timestamps(state.find())) == before

    imported = state.find_one(query={"id": "doc-3"})
    assert imported is not None and imported["document_type"] == "contract"
    imported["imported"] = True
    imported.save()

    # Edit the imported document and delete another one.
    clock.advance(60)
    write_document(documents, 3, document_type="invoice")
    (documents / "nested" / "doc07.json").unlink()
    assert catalog.generate(documents, required=["document_type"], prune=True) == Counts(
        updated=1, skipped=8, deleted=1
    )
    clock.advance(60)
    assert state.update() == Counts(updated=1, skipped=8, deleted=1)

    edited = state.find_one(query={"id": "doc-3"})
    assert edited is not None
    assert edited["imported"] is True
    assert edited["document_type"] == "invoice"
    gone = state.find_one(query={"id": "doc-7"}, include_deleted=True)
    assert gone is not None and gone.deleted
    assert gone["deleted_reason"] == "state-missing"  # as mmmeta names it
    assert gone["deleted_at"] == clock.now
    assert state.find_one(query={"id": "doc-7"}) is None
    assert sorted(r["query"]["id"] for r in state.find(imported=False)) == [
        f"doc-{n}" for n in (0, 1, 2, 4, 5, 6, 8, 9)
    ]
    assert state.count(imported=False) == 8
    assert state.count(include_deleted=True) == 10

    before = (timestamps(catalog.find()), timestamps(state.find(include_deleted=True)))
    clock.advance(60)
    assert catalog.generate(documents, required=["document_type"], prune=True) == Counts(skipped=9)
    assert state.update() == Counts(skipped=10)
    assert (timestamps(catalog.find()), timestamps(state.find(include_deleted=True))) == before


# -- the catalogue as a pipeline sink --------------------------------------------------
@dataclasses.dataclass
class Document:
    number: int
    kind: str


@dataclasses.dataclass
class Other:
    number: int


class Documents(DataSource):
    """Serves documents 0..99; the kind can be changed to simulate a new version."""

    def __init__(self) -> None:
        self.kind = "contract"

    def __repr__(self) -> str:
        return "Documents()"

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @get.register(Document)
    def get_document(self, query: Any, context: Any = None) -> Document:
        if not 0 <= query["number"] < 100:
            raise NotFoundError("no such document")
        return Document(query["number"], self.kind)

    @get_many.register(Document)
    def get_documents(self, query: Any, context: Any = None) -> list[Document]:
        return [Document(n, self.kind) for n in range(query["first"], query["first"] + query["count"])]

    @get.register(Other)
    def get_other(self, query: Any, context: Any = None) -> Other:
        return Other(query["number"])


def document_catalog(url: str, clock: FakeClock, **options: Any) -> Catalog:
    return Catalog(url, clock=clock, fields={Document: lambda d: {"document_type": d.kind}}, **options)


def test_pipeline_get_records_source_key_and_query(database: Callable[[str], str], clock: FakeClock) -> None:
    catalog = document_catalog(database("catalog"), clock)
    source = Documents()
    pipeline = DataPipeline([catalog, source])

    assert pipeline.get(Document, {"number": 7}) == Document(7, "contract")
    record = catalog.find_one(type=Document)
    assert record is not None
    assert record.key == key_for(Document, {"number": 7})
    assert record["query"] == {"number": 7}
    assert record["source"] == "Documents()"
    assert record["type"] == f"{__name__}.Document"
    expected = canonical_json({"number": 7, "kind": "contract"}).encode()
    assert (record["size"], record["sha256"]) == (len(expected), hashlib.sha256(expected).hexdigest())
    assert record["retrieved_at"] == record["last_updated"] == START
    assert record["document_type"] == "contract"

    # Getting it again, changed, updates the one row.
    clock.advance(30)
    source.kind = "invoice"
    pipeline.get(Document, {"number": 7})
    assert catalog.count() == 1
    again = catalog.find_one(key=key_for(Document, {"number": 7}))
    assert again is not None and again.id == record.id
    assert again["document_type"] == "invoice"
    assert again["last_updated"] == START + datetime.timedelta(seconds=30)
    assert again["sha256"] != record["sha256"]


def test_pipeline_get_many_records_every_item_in_one_put(
    database: Callable[[str], str], clock: FakeClock
) -> None:
    catalog = document_catalog(database("catalog"), clock)
    pipeline = DataPipeline([catalog, Documents()], query_from={Document: lambda d: {"number": d.number}})
    pipeline.get_many(Document, {"first": 0, "count": 5})
    pipeline.get_many(Document, {"first": 3, "count": 5})
    assert catalog.count() == 8
    assert sorted(r["query"]["number"] for r in catalog.find()) == list(range(8))
    assert catalog.count(document_type="contract", type=Document) == 8


def test_declared_types_limit_what_is_recorded(database: Callable[[str], str], clock: FakeClock) -> None:
    catalog = document_catalog(database("catalog"), clock, types={Document})
    assert catalog.accepts == {Document}
    pipeline = DataPipeline([catalog, Documents()])
    pipeline.get(Other, {"number": 1})
    pipeline.get(Document, {"number": 1})
    assert [r["type"] for r in catalog.find()] == [f"{__name__}.Document"]
    with pytest.raises(UnsupportedError, match="Other"):
        catalog.record(Other, Other(1), query={"number": 1})


def test_a_local_state_on_the_catalogues_own_tables_is_refused(database: Callable[[str], str]) -> None:
    url = database("catalog")
    with Catalog(url) as catalog:
        catalog.store["owner"] = "catalogue"
        with pytest.raises(CatalogError, match=r"local state's tables \(catalog_\*\) .* are the catalogue's"):
            LocalState(catalog, url, prefix="catalog")
        assert catalog.store["owner"] == "catalogue"
        LocalState(catalog, url).close()  # the default prefix keeps them apart


def test_direct_put_needs_a_query(tmp_path: Path, clock: FakeClock) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"), clock=clock)
    with pytest.raises(ConfigurationError, match="Document without a query"):
        catalog.put(Document, Document(1, "x"))
    pipeline = DataPipeline([catalog, Documents()], query_from={Document: lambda d: {"number": d.number}})
    pipeline.put(Document, Document(2, "letter"))
    pipeline.put_many(Document, [Document(3, "a"), Document(4, "b")], queries=[{"n": 3}, {"n": 4}])
    assert [r["query"] for r in catalog.find()] == [{"number": 2}, {"n": 3}, {"n": 4}]


def test_put_many_with_repeated_keys_keeps_the_last(tmp_path: Path, clock: FakeClock) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"), clock=clock)
    written = catalog.record_many(str, [({"q": 1}, "first"), ({"q": 1}, "second"), ({"q": 2}, "x")])
    assert written == 2
    record = catalog.find_one(key=key_for(str, {"q": 1}))
    assert record is not None and record["size"] == len("second")


# -- what size and sha256 cover ------------------------------------------------------
class Response:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Opaque:
    pass


def test_content_bytes_rules() -> None:
    assert content_bytes(b"\x00\xff") == b"\x00\xff"
    assert content_bytes(bytearray(b"ab")) == b"ab"
    assert content_bytes("grüß") == "grüß".encode()
    assert content_bytes(Response(b"<html/>")) == b"<html/>"
    assert content_bytes(Document(1, "x")) == b'{"kind":"x","number":1}'
    assert (
        content_bytes({"b": 1, "a": [1, 2]}) == content_bytes({"a": [1, 2], "b": 1}) == b'{"a":[1,2],"b":1}'
    )
    assert (
        content_bytes({"at": datetime.datetime(2024, 1, 1, tzinfo=UTC)})
        == b'{"at":"2024-01-01T00:00:00+00:00"}'
    )
    assert content_bytes(Opaque(), lambda item: b"custom") == b"custom"
    with pytest.raises(TypeError, match="Opaque"):
        content_bytes(Opaque())


def test_uncatalogueable_item_names_type_and_query(tmp_path: Path, clock: FakeClock) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"), clock=clock)
    with pytest.raises(CatalogError, match=r"Opaque \(query \{'id': 5\}\)"):
        catalog.record(Opaque, Opaque(), query={"id": 5})
    bad_fields = Catalog(str(tmp_path / "other.db"), clock=clock, fields={str: lambda s: [s]})
    with pytest.raises(CatalogError, match="not a mapping"):
        bad_fields.record(str, "x", query={"id": 1})
    assert catalog.count() == bad_fields.count() == 0
    custom = Catalog(str(tmp_path / "custom.db"), clock=clock, content={Opaque: lambda item: b"12345"})
    custom.record(Opaque, Opaque(), query={"id": 5})
    record = custom.find_one()
    assert record is not None and record["size"] == 5


# -- generation from files -----------------------------------------------------------
def test_generate_names_every_invalid_file_and_keeps_going(tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "metadata"
    folder.mkdir()
    write_document(folder, 1)
    (folder / "broken.json").write_text('{"id": "x", ')
    (folder / "list.json").write_text("[1, 2]")
    (folder / "nokey.json").write_text(json.dumps({"document_type": "letter"}))
    (folder / "norequired.json").write_text(json.dumps({"id": "a", "document_type": None}))
    (folder / "baddate.json").write_text(
        json.dumps({"id": "b", "document_type": "x", "retrieved_at": "soon"})
    )
    (folder / "twice.json").write_text(json.dumps({"id": "doc-1", "document_type": "x"}))
    (folder / "clash.json").write_text(json.dumps({"id": "c", "document_type": "x", "a_b": 1, "a": {"b": 2}}))
    (folder / "notes.txt").write_text("not metadata")
    catalog = Catalog(str(tmp_path / "catalog.db"), clock=clock)

    counts = catalog.generate(folder, required=["document_type"])

    assert (counts.added, counts.invalid) == (1, 7)
    problems = counts.invalid_files
    assert problems["broken.json"].startswith("not valid JSON")
    assert problems["list.json"] == "expected a JSON object, found an array"
    assert problems["nokey.json"] == "missing the key field 'id'"
    assert problems["norequired.json"] == "missing required field(s) 'document_type'"
    assert problems["baddate.json"] == "field 'retrieved_at' is not an ISO 8601 date: 'soon'"
    assert problems["twice.json"] == "id='doc-1' is also the key of doc01.json"
    assert "'a_b' appears twice" in problems["clash.json"]
    assert counts.as_dict()["invalid"] == 7


def test_generate_flattens_and_dates_records(tmp_path: Path, documents: Path, clock: FakeClock) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"), clock=clock)
    catalog.generate(documents, type=Document, key="id")
    record = catalog.find_one(query={"id": "doc-6"})
    assert record is not None
    assert record.key == key_for(Document, {"id": "doc-6"})
    assert (record["meta_lang"], record["meta_pages"]) == ("de", 6)
    assert record["source"] == "file:nested/doc06.json"
    assert record["retrieved_at"] == datetime.datetime(2024, 1, 7, 8, tzinfo=UTC)
    document = json.loads((documents / "nested" / "doc06.json").read_text())
    assert record["sha256"] == hashlib.sha256(canonical_json(document).encode()).hexdigest()

    # Re-indenting a file is not a change; without a date field the file's time is used.
    (documents / "nested" / "doc06.json").write_text(json.dumps(document))
    assert catalog.generate(documents, type=Document).skipped == 10
    (documents / "undated.json").write_text(json.dumps({"id": "u"}))
    os.utime(documents / "undated.json", (1_700_000_000, 1_700_000_000))
    assert catalog.generate(documents, type=Document).added == 1
    undated = catalog.find_one(query={"id": "u"})
    assert undated is not None
    assert undated["retrieved_at"] == datetime.datetime.fromtimestamp(1_700_000_000, UTC)


def test_prune_never_deletes_a_record_whose_file_is_only_broken(tmp_path: Path, documents: Path) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"))
    catalog.generate(documents)
    (documents / "doc01.json").write_text("{ broken")
    counts = catalog.generate(documents, prune=True)
    assert (counts.deleted, counts.invalid) == (0, 1)
    assert catalog.find_one(query={"id": "doc-1"}) is not None
    # A file that now holds another key replaces its old record.
    write_document(documents, 2, id="renamed")
    counts = catalog.generate(documents, prune=True)
    assert (counts.added, counts.deleted) == (1, 1)
    assert catalog.find_one(query={"id": "doc-2"}) is None
    # A record that came from a pipeline is never pruned.
    catalog.record(str, "kept", query={"id": "x"})
    assert catalog.generate(documents, prune=True, type=str).deleted == 0


def test_prune_refuses_an_empty_folder_and_a_missing_one(tmp_path: Path, documents: Path) -> None:
    catalog = Catalog(str(tmp_path / "catalog.db"))
    catalog.generate(documents)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogError, match="refusing to prune all 10 records"):
        catalog.generate(empty, prune=True)
    assert catalog.count() == 10
    with pytest.raises(CatalogError, match="'.*missing' does not exist"):
        catalog.generate(tmp_path / "missing")


# -- local state -------------------------------------------------------------------
def test_local_fields_survive_and_deleted_records_come_back(
    database: Callable[[str], str], documents: Path, clock: FakeClock
) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)
    catalog.generate(documents)
    state.update()
    record = state.find_one(query={"id": "doc-4"})
    assert record is not None
    record["indexed"] = "2024-05-01"
    record["document_type"] = "local override"
    record.save()
    assert state.count(document_type="local override") == 1
    assert state.count(document_type="letter") == 4

    moved = documents / "doc04.json"
    content = moved.read_bytes()
    moved.unlink()
    catalog.generate(documents, prune=True)
    assert state.update(reason="withdrawn").deleted == 1
    assert state.find_one(query={"id": "doc-4"}, include_deleted=True)["deleted_reason"] == "withdrawn"  # type: ignore[index]

    moved.write_bytes(content)
    catalog.generate(documents)
    assert state.update() == Counts(restored=1, skipped=9)
    back = state.find_one(query={"id": "doc-4"})
    assert back is not None and back["indexed"] == "2024-05-01" and back["deleted_reason"] is None
    del back["document_type"]
    back.save()
    assert state.find_one(query={"id": "doc-4"})["document_type"] == "letter"  # type: ignore[index]


def test_catalog_record_changes_reach_consumers(database: Callable[[str], str], clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)
    catalog.record(str, "text", query={"id": 1})
    state.update()
    clock.advance(5)
    record = catalog.find_one()
    assert record is not None
    record["reviewed"] = True
    record.save()
    assert catalog.find_one()["last_updated"] == clock.now  # type: ignore[index]
    assert state.update() == Counts(updated=1)
    assert state.count(reviewed=True) == 1


def test_find_filters(database: Callable[[str], str], clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock, fields={dict: lambda d: d})
    state = LocalState(catalog, database("state"), clock=clock)
    values: list[Any] = [1, "1", True, 1.5, None, False]
    for number, value in enumerate(values):
        catalog.record(dict, {"value": value, "day": f"2024-01-0{number + 1}"}, query={"n": number})
        clock.advance(3600)
    catalog.record(dict, {}, query={"n": "no value"})
    state.update()

    def numbers(**filters: Any) -> list[Any]:
        return [r["query"]["n"] for r in state.find(**filters)]

    assert numbers(value=1) == [0]
    assert numbers(value="1") == [1]
    assert numbers(value=True) == [2]
    assert numbers(value=1.5) == [3]
    assert numbers(value=None) == [4, "no value"]
    assert numbers(value=False) == [4, 5, "no value"]
    assert numbers(retrieved_after=START + datetime.timedelta(hours=2)) == [2, 3, 4, 5, "no value"]
    assert numbers(retrieved_before=START + datetime.timedelta(hours=2)) == [0, 1]
    assert numbers(
        retrieved_after=START + datetime.timedelta(hours=1),
        retrieved_at_before=START + datetime.timedelta(hours=3),
    ) == [1, 2]
    assert numbers(day_after="2024-01-05") == [4, 5]
    assert numbers(day_before=datetime.date(2024, 1, 2)) == [0]
    assert numbers(limit=2) == [0, 1]
    assert state.count(type=dict) == 7
    assert state.find_one(value="missing") is None
    assert numbers(query={"n": 3}) == [3]
    assert numbers(fields={"value": "1"}) == [1]
    with pytest.raises(CatalogError, match="list for 'value'"):
        state.count(value=[1])
    with pytest.raises(CatalogError, match="'retrieved_after' needs an ISO 8601 date, got 'yesterday'"):
        state.count(retrieved_after="yesterday")
    record = state.find_one(value=1)
    assert record is not None
    with pytest.raises(CatalogError, match="'size' is kept by the catalogue"):
        record["size"] = 0
    with pytest.raises(CatalogError, match="Field 'x'"):
        record["x"] = object()


def test_saves_merge_and_are_allowed_while_iterating(
    database: Callable[[str], str], clock: FakeClock
) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    state = LocalState(catalog, database("state"), clock=clock)
    catalog.record_many(int, [({"n": n}, n) for n in range(5)])
    state.update()
    for record in state.find():
        record["seen"] = True
        record.save()
    assert state.count(seen=True) == 5
    # The same record read twice, then changed in both copies: both changes are kept.
    first, second = state.find_one(query={"n": 0}), state.find_one(query={"n": 0})
    assert first is not None and second is not None
    first["a"] = 1
    second["b"] = 2
    first.save()
    second.save()
    merged = state.find_one(a=1)
    assert merged is not None and (merged["b"], merged["seen"]) == (2, True)


def test_catalog_and_state_can_share_one_sqlite_file(tmp_path: Path, documents: Path) -> None:
    url = str(tmp_path / "one.db")
    catalog = Catalog(url)
    state = LocalState(catalog, url)
    catalog.generate(documents)
    assert state.update().added == 10
    (documents / "doc00.json").unlink()
    catalog.generate(documents, prune=True)
    assert state.update().deleted == 1


# -- key-value store ----------------------------------------------------------------
def test_store_keeps_value_types(database: Callable[[str], str], clock: FakeClock) -> None:
    catalog = Catalog(database("catalog"), clock=clock)
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5, 678)
    values = {"n": 17, "ratio": 0.1, "when": naive, "name": "x/y", "flag": False, "nothing": None}
    for key, value in values.items():
        catalog.store[key] = value
    for key, value in values.items():
        assert catalog.store[key] == value
        assert type(catalog.store[key]) is type(value)
    assert catalog.touch("last_run") == START
    assert catalog.store["last_run"] == START
    catalog.store["n"] = "seventeen"
    assert catalog.store["n"] == "seventeen"
    assert sorted(catalog.store) == sorted([*values, "last_run"])
    del catalog.store["n"]
    assert "n" not in catalog.store
    with pytest.raises(KeyError):
        catalog.store["n"]
    # Another process reading the same database sees the same typed values.
    assert Catalog(catalog.engine.url.render_as_string(hide_password=False)).store["ratio"] == 0.1


@pytest.mark.parametrize(
    ("key", "message"),
    [("a/b", "'a/b' contains '/'"), ("", "cannot be empty"), (5, "strings; got int 5")],
)
def test_store_rejects_bad_keys(tmp_path: Path, key: Any, message: str) -> None:
    store = Catalog(str(tmp_path / "catalog.db")).store
    with pytest.raises(CatalogError, match=message):
        store[key] = 1
    with pytest.raises(CatalogError, match=message):
        store[key]
    assert len(store) == 0


def test_store_rejects_values_it_cannot_type(tmp_path: Path) -> None:
    store = Catalog(str(tmp_path / "catalog.db")).store
    with pytest.raises(CatalogError, match=r"'day': cannot store a date"):
        store["day"] = datetime.date(2024, 1, 1)
    assert "day" not in store


# -- URLs --------------------------------------------------------------------------
def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_for("postgresql://user:pw@db/cat").url.drivername == "postgresql+psycopg"
    assert engine_for("postgres://db/cat").url.drivername == "postgresql+psycopg"
    assert engine_for("postgresql+psycopg://db/cat").url.drivername == "postgresql+psycopg"
    with pytest.raises(CatalogError, match="got mysql://"):
        engine_for("mysql://db/cat")
    assert show_url(engine_for("postgresql://user:secret@db/x").url) == "postgresql+psycopg://user:***@db/x"
    monkeypatch.chdir(tmp_path)  # a bare relative path: its folder is made in the working directory
    assert engine_for(str(Path("some") / "catalog.db")).url.database == "some/catalog.db"
    assert (tmp_path / "some").is_dir()
