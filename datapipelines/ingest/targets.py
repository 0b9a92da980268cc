"""Target: the base of every sink an incoming file can be routed to (steps, archives, routers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..context import PipelineContext
from ..data_sink import DataSink
from .files import IncomingFile


class Target(DataSink):
    """A sink of :class:`IncomingFile` with a name, unique within one ingest.

    The name is also the folder (under the work folder) that holds files handed
    to this target, so a reconcile scan knows where each one was going.
    """

    name: str

    @property
    def accepts(self) -> Any:
        return {IncomingFile}

    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        if type is not IncomingFile:
            raise self.unsupported(type)
        self.handle(item)

    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        if type is not IncomingFile:
            raise self.unsupported(type)
        for item in items:
            self.handle(item)

    def handle(self, file: IncomingFile) -> None:
        """Take ``file`` over; from here on this target decides what becomes of it."""
        raise NotImplementedError

    def resume(self, file: IncomingFile, tags: dict[str, str] | None) -> None:
        """Take back a file a reconcile scan found in this target's work folder (tags from its sidecar)."""
        self.handle(file)

    def take_up(self, folder: str, found: list[tuple[IncomingFile, dict[str, str] | None]]) -> int:
        """Take back every file one reconcile scan found in this target's work folder ``folder``; how
        many are done again (a target that knows some are still on their way elsewhere leaves those)."""
        for file, tags in found:
            self.resume(file, tags)
        return len(found)

    def targets(self) -> list[Target]:
        """The targets this one hands files to (for walking the whole graph)."""
        return []

    def start(self) -> None:
        """Start background work (threads, worker processes); called by the ingest before any file."""

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is in hand and stop background work."""

    def idle(self) -> bool:
        """True when nothing is queued or running here."""
        return True

    def report(self) -> dict[str, Any]:
        return {}


def walk(roots: Iterable[Any]) -> list[Target]:
    """Every target reachable from ``roots``, each once, in the order first met."""
    seen: dict[int, Target] = {}
    stack = [r for r in roots if isinstance(r, Target)][::-1]
    while stack:
        target = stack.pop()
        if id(target) in seen:
            continue
        seen[id(target)] = target
        stack.extend(reversed(target.targets()))
    return list(seen.values())
