"""An ingest described in a TOML file: ``datapipelines ingest run CONFIG`` builds it from here.

Paths are relative to the file's folder, which is also put on ``sys.path`` so
steps named ``module:function`` can live beside it. Every mistake is one
ConfigurationError naming the file and the key (see docs/ingest.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..config import read_toml
from ..errors import ConfigurationError
from .archive import ArchivedFile, ArchiveSink
from .broker_config import broker_from_table
from .broker_listener import BrokerListener
from .distributed import DistributedStep
from .engine import Ingest
from .listener import DEFAULT_IGNORE, DirectoryListener
from .policies import NO_RETRY, BatchPolicy, FailurePolicy, RetryPolicy
from .redis_queue import DEFAULT_PREFIX
from .router import Router
from .rules import load_callable, rules_from_tables
from .step import DEFAULT_STEP_LIMIT, Step
from .stream_queue import SCHEMES
from .targets import Target


@dataclasses.dataclass
class IngestConfig:
    """A parsed config file: the watched folder, the work folder and the pieces of the pipeline."""

    path: str
    listener: DirectoryListener
    router: Router
    targets: dict[str, Target]
    reconcile_every: float = 60.0
    brokers: list[BrokerListener] = dataclasses.field(default_factory=list)

    def build(self) -> Ingest:
        from ..pipeline import DataPipeline

        return Ingest(
            DataPipeline([self.router]),
            self.listener,
            reconcile_every=self.reconcile_every,
            brokers=self.brokers,
        )


class _Reader:
    """Typed access to one table of the file; errors say ``<file>: <key>: ...``."""

    def __init__(self, file: str, where: str, table: Any) -> None:
        self.file, self.where = file, where
        if not isinstance(table, Mapping):
            raise self.error("", "must be a table")
        self.table = table

    def error(self, key: str, message: str) -> ConfigurationError:
        at = f"{self.where}.{key}" if key and self.where else key or self.where
        return ConfigurationError(f"ingest config {self.file}: {at}: {message}")

    def only(self, *keys: str) -> None:
        unknown = sorted(set(self.table) - set(keys))
        if unknown:
            raise self.error(unknown[0], f"unknown key (known: {', '.join(keys)})")

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = ..., check: Any = None) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.table[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            names = " or ".join(k.__name__ for k in _tuple(kinds))
            raise self.error(key, f"must be a {names}, got {value!r}")
        if check is not None and not check(value):
            raise self.error(key, f"has an impossible value {value!r}")
        return value

    def path(self, key: str, default: Any = ..., must_exist: bool = False) -> Any:
        value = self.get(key, str, default)
        if value is None:
            return None
        resolved = os.path.normpath(os.path.join(os.path.dirname(self.file), os.path.expanduser(value)))
        if must_exist and not os.path.isdir(resolved):
            raise self.error(key, f"the folder {resolved} does not exist")
        return resolved

    def sub(self, key: str) -> _Reader:
        return _Reader(self.file, f"{self.where}.{key}" if self.where else key, self.table[key])


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


_NUMBER = (int, float)


def _policy(reader: _Reader, key: str, default: FailurePolicy) -> FailurePolicy:
    if key not in reader.table:
        return default
    value = reader.table[key]
    if value == "delete":
        return FailurePolicy.delete()
    table = reader.sub(key)
    table.only("policy", "dir")
    action = table.get("policy", str, check=lambda v: v in ("keep", "move", "delete"))
    if action == "delete":
        return FailurePolicy.delete()
    return FailurePolicy(action, table.path("dir"))


def _queue_options(step: _Reader) -> dict[str, Any]:
    """``queue = "redis://..."`` or ``queue = { url = ..., prefix = ..., lease = ..., max_length = ... }``."""
    if isinstance(step.table["queue"], str):
        table = _Reader(step.file, f"{step.where}.queue", {"url": step.table["queue"]})
    else:
        table = step.sub("queue")
    table.only("url", "prefix", "lease", "max_length")
    url = table.get("url", str)
    if urlsplit(url).scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise table.error("url", f"{url!r} names no stream engine; use {known}")
    return {
        "url": url,
        "prefix": table.get("prefix", str, DEFAULT_PREFIX, check=bool),
        "lease": float(table.get("lease", _NUMBER, 30.0, check=lambda v: v > 0)),
        "max_length": table.get("max_length", int, 10_000, check=lambda v: v >= 1),
    }


def load_config(path: str | os.PathLike[str]) -> IngestConfig:
    """Parse and check the ingest config at ``path``; nothing starts until ``build().start()``."""
    file = os.path.abspath(os.fspath(path))
    data = read_toml(file, f"ingest config {file}")
    top = _Reader(file, "", data)
    top.only("listener", "router", "rule", "step", "archive", "broker")
    folder = os.path.dirname(file)
    if folder not in sys.path:
        sys.path.insert(0, folder)

    targets: dict[str, Target] = {}

    def add(target: Target, reader: _Reader) -> None:
        if target.name in targets:
            raise reader.error("name", f"two steps or archives are named {target.name!r}")
        targets[target.name] = target

    for index, table in enumerate(top.get("archive", list, [])):
        reader = _Reader(file, f"archive[{index}]", table)
        reader.only("name", "root", "template", "durability", "on_collision", "catalog", "failure")
        catalog_url = reader.get("catalog", str, None)
        catalog = None
        if catalog_url is not None:
            from ..sinks.catalog import Catalog

            if catalog_url.startswith("sqlite:///") and not catalog_url.startswith("sqlite:////"):
                catalog_url = "sqlite:///" + os.path.join(folder, catalog_url[len("sqlite:///") :])
            catalog = Catalog(catalog_url, types=[ArchivedFile])
        try:
            archive = ArchiveSink(
                reader.path("root"),
                reader.get("template", str, "%Y%m%d/{original_basename}"),
                name=reader.get("name", str, "archive"),
                durability=reader.get("durability", str, "none"),
                on_collision=reader.get("on_collision", str, "suffix"),
                catalog=catalog,
                failure=_policy(reader, "failure", None),  # type: ignore[arg-type]
            )
        except ConfigurationError as error:
            raise reader.error("", str(error)) from None
        add(archive, reader)

    then: dict[str, tuple[str, _Reader]] = {}
    for index, table in enumerate(top.get("step", list, [])):
        reader = _Reader(file, f"step[{index}]", table)
        reader.only(
            "name",
            "function",
            "workers",
            "then",
            "retry",
            "failure",
            "batch",
            "step_limit",
            "max_deliveries",
            "queue",
        )
        name = reader.get("name", str)
        function = load_callable(reader.get("function", str), f"ingest config {file}: step[{index}].function")
        retry = NO_RETRY
        if "retry" in reader.table:
            retry_reader = reader.sub("retry")
            retry_reader.only("total", "min_wait", "max_wait", "backoff")
            retry = RetryPolicy(
                total=retry_reader.get("total", int, 0, check=lambda v: v >= 0),
                min_wait=float(retry_reader.get("min_wait", _NUMBER, 10.0, check=lambda v: v >= 0)),
                max_wait=float(retry_reader.get("max_wait", _NUMBER, 120.0, check=lambda v: v >= 0)),
                backoff=float(retry_reader.get("backoff", _NUMBER, 0.0, check=lambda v: v >= 0)),
            )
        batch = None
        if "batch" in reader.table:
            batch_reader = reader.sub("batch")
            batch_reader.only("max_size", "max_wait")
            batch = BatchPolicy(
                batch_reader.get("max_size", int, 100, check=lambda v: v >= 1),
                float(batch_reader.get("max_wait", _NUMBER, 10.0, check=lambda v: v >= 0)),
            )
        options: dict[str, Any] = {
            "retry": retry,
            "failure": _policy(reader, "failure", None),  # type: ignore[arg-type]
            "batch": batch,
            "workers": reader.get("workers", int, 0, check=lambda v: v >= 0),
            "step_limit": reader.get("step_limit", int, DEFAULT_STEP_LIMIT, check=lambda v: v >= 1),
            "max_deliveries": reader.get("max_deliveries", int, 5, check=lambda v: v >= 1),
        }
        try:
            if "queue" in reader.table:
                step: Step = DistributedStep(name, function, **_queue_options(reader), **options)
            else:
                step = Step(name, function, **options)
        except ConfigurationError as error:
            raise reader.error("name", str(error)) from None
        add(step, reader)
        if "then" in reader.table:
            then[name] = (reader.get("then", str), reader)

    router_reader = _Reader(file, "router", data.get("router", {}))
    router_reader.only("rules", "no_match", "name")
    if "no_match" not in router_reader.table:
        raise router_reader.error("no_match", 'is required: "delete" or { policy = "keep", dir = "nomatch" }')
    no_match = _policy(router_reader, "no_match", FailurePolicy.delete())
    router_name = router_reader.get("name", str, "router")
    if "rules" in router_reader.table:
        if "rule" in data:
            raise top.error("rule", "give the rules inline or in router.rules, not both")
        rules_path = router_reader.path("rules")
        if not os.path.isfile(rules_path):
            raise router_reader.error("rules", f"the rules file {rules_path} does not exist")
        router = Router(rules_path, targets=targets, no_match=no_match, name=router_name)
    else:
        rules = rules_from_tables(top.get("rule", list, []), targets, f"ingest config {file}")
        router = Router(rules, targets=targets, no_match=no_match, name=router_name)
    for name, (target_name, reader) in then.items():
        if target_name == router.name:
            targets_then: Target = router
        elif target_name in targets:
            targets_then = targets[target_name]
        else:
            raise reader.error("then", f"no step or archive named {target_name!r}")
        step_target = targets[name]
        assert isinstance(step_target, Step)
        step_target.then = targets_then

    if "listener" not in data:
        raise top.error("listener", 'is required: a table with watch = "<folder>"')
    listen = _Reader(file, "listener", data["listener"])
    listen.only(
        "watch",
        "work",
        "settle",
        "rescan_every",
        "reconcile_every",
        "poll",
        "max_in_flight",
        "min_free_mb",
        "ignore",
        "name",
    )
    poll = listen.get("poll", _NUMBER, 0, check=lambda v: v >= 0)
    try:
        listener = DirectoryListener(
            listen.path("watch", must_exist=True),
            work=listen.path("work", None),
            name=listen.get("name", str, None),
            ignore=listen.get("ignore", list, list(DEFAULT_IGNORE)),
            settle=float(listen.get("settle", _NUMBER, 0.5, check=lambda v: v >= 0)),
            rescan_every=float(listen.get("rescan_every", _NUMBER, 300.0, check=lambda v: v > 0)),
            poll=float(poll) if poll else None,
            max_in_flight=listen.get("max_in_flight", int, 10_000, check=lambda v: v >= 1),
            min_free_bytes=int(listen.get("min_free_mb", _NUMBER, 64, check=lambda v: v >= 0) * 2**20),
        )
    except ConfigurationError as error:
        raise listen.error("watch", str(error)) from None
    reconcile_every = float(listen.get("reconcile_every", _NUMBER, 60.0, check=lambda v: v > 0))
    brokers = [
        broker_from_table(_Reader(file, f"broker[{index}]", table), listener.directory)
        for index, table in enumerate(top.get("broker", list, []))
    ]
    return IngestConfig(file, listener, router, targets, reconcile_every, brokers)
