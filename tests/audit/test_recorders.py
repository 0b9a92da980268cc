"""Who is handed remote responses is declared (ResponseRecorder), never guessed from a method name."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from datapipelines import (
    DataPipeline,
    DataSink,
    HttpSource,
    NotFoundError,
    RawResponse,
    RemoteError,
    ResponseRecorder,
)
from datapipelines.sinks import AuditRecorder, Catalog
from datapipelines.testing import LocalServer, Reply


@pytest.fixture
def server() -> Iterator[LocalServer]:
    routes = {"/ok": Reply(200, {"ok": True}), "/missing": Reply(404, "gone"), "/broken": Reply(503, "down")}
    with LocalServer(routes) as running:
        yield running


def http(server: LocalServer) -> HttpSource:
    return HttpSource(server.url, max_attempts=1)


def test_a_catalogue_beside_a_remote_source_lets_error_statuses_through(
    server: LocalServer, tmp_path: Path
) -> None:
    # Catalog has a record() method of its own; it must not be taken for a response recorder.
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    pipeline = DataPipeline([catalog, http(server)])
    with pytest.raises(NotFoundError):
        pipeline.get(RawResponse, {"path": "/missing"})
    with pytest.raises(RemoteError) as error:
        pipeline.get(RawResponse, {"path": "/broken"})
    assert error.value.status == 503
    assert pipeline.get(RawResponse, {"path": "/ok"}).status_code == 200
    assert catalog.count() == 1  # only the answer, written back as a sink


def test_the_audit_recorder_beside_a_catalogue_records_every_status(
    server: LocalServer, tmp_path: Path
) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    with AuditRecorder(tmp_path / "audit") as recorder:
        pipeline = DataPipeline([recorder, catalog, http(server)])
        with pipeline.session("mixed") as session_id:
            for path, error in (("/missing", NotFoundError), ("/broken", RemoteError)):
                with pytest.raises(error):
                    pipeline.get(RawResponse, {"path": path})
            pipeline.get(RawResponse, {"path": "/ok"})
        statuses = {row["status"]: row["responses"] for row in recorder.summary(session_id)["by_status"]}
    assert statuses == {200: 1, 404: 1, 503: 1}
    assert catalog.count() == 1


class Undeclared(DataSink):
    """Has every method a recorder has, but never says it is one."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def put(self, type: Any, item: Any, context: Any = None) -> None:
        pass

    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        pass

    def record(self, response: RawResponse, context: Any = None) -> None:
        self.seen.append(response.status_code)

    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None:
        self.seen.append(name)

    def close_session(self, session_id: str) -> None:
        self.seen.append("closed")


class Registered(Undeclared):
    pass


ResponseRecorder.register(Registered)


def test_only_declared_recorders_are_handed_responses_and_sessions(server: LocalServer) -> None:
    undeclared, registered = Undeclared(), Registered()
    pipeline = DataPipeline([undeclared, registered, http(server)])
    with pipeline.session("s"):
        with pytest.raises(NotFoundError):
            pipeline.get(RawResponse, {"path": "/missing"})
    assert undeclared.seen == []
    assert registered.seen == ["s", 404, "closed"]
    assert isinstance(AuditRecorder, type) and issubclass(AuditRecorder, ResponseRecorder)
