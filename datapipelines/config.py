"""``DataPipeline.from_config``: a pipeline described in TOML (or a dict) instead of code.

.. code-block:: toml

    name = "weather"                      # used in every metric
    strict = false
    sinks = ["myapp.audit:ledger"]        # placed after the tiers, before the sources
    sources = ["myapp.weather:api", { object = "myapp.weather:Api", timeout = 5 }]
    transformers = ["myapp.weather:parse"]

    [tiers.memory]                        # in order, fastest first; the kind is the table's name...
    maxsize = 10_000
    expirations = { Weather = 300 }       # seconds per type name; 0 never stores, -1 never expires

    [tiers.disk]
    directory = "cache"                   # relative to the config file's folder

    [tiers.shared]
    kind = "redis"                        # ...or given as kind: memory, disk, redis, audit, module:object
    url = "redis://127.0.0.1:6379/0"
    namespace = "myapp"

    [policies."myapp.weather:Weather"]    # a type by module:object
    ttl = 300
    soft_ttl = 60

Top-level keys come before the first table (TOML puts a key after ``[tiers.x]``
inside that table). A ``module:object`` names an element (used as it is) or a class or factory
(called with the table's other keys). Every mistake raises a
:class:`~datapipelines.ConfigurationError` naming the file and the key.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .context import TYPE_WILDCARD
from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import DataTransformer
from .errors import ConfigurationError, DataPipelinesError, NoConversionError, element_name, type_name
from .policy import Policy
from .store import Store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: tomli is a core dependency there
    import tomli as tomllib

TOP_LEVEL = ("name", "strict", "tiers", "policies", "sinks", "sources", "transformers")
# Options of the built-in tiers that are paths, read relative to the config file.
_PATH_OPTIONS = {"disk": "directory", "audit": "directory"}


def _tier_classes() -> dict[str, Callable[..., Any]]:
    from .sinks import AuditRecorder, DiskStore, MemoryStore, RedisStore

    return {"memory": MemoryStore, "disk": DiskStore, "redis": RedisStore, "audit": AuditRecorder}


def resolve(spec: Any) -> Any:
    """The object a ``module:object`` string names (``object`` may be dotted: ``Class.factory``).

    The pipeline config, ``datapipelines stats --run`` and the ingest config's steps and
    python rules all name their objects so.
    """
    module_name, _, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not module_name or not attribute or ":" in attribute:
        raise ConfigurationError(f"expected 'module:object', got {spec!r}")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as error:
        # A missing module, or one that fails itself (a syntax error, a raise at import).
        raise ConfigurationError(f"cannot import {spec!r} ({type(error).__name__}: {error})") from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no {attribute!r}") from None
    return found


class _Reader:
    """Reads one config, naming the file and key in every error."""

    def __init__(self, origin: str, folder: Path | None) -> None:
        self.origin, self.folder = origin, folder

    def error(self, key: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.origin}: {key}: {message}")

    def resolve(self, key: str, spec: Any) -> Any:
        """The object a ``module:object`` string names."""
        try:
            return resolve(spec)
        except ConfigurationError as error:
            raise self.error(key, str(error)) from error.__cause__

    def build(
        self, key: str, spec: Any, kinds: Mapping[str, Callable[..., Any]], wanted: tuple[type, ...]
    ) -> Any:
        """An element from ``"module:object"``, ``{object = ..., options}`` or a tier table with ``kind``."""
        options: dict[str, Any] = {}
        spec_key = key
        if isinstance(spec, Mapping):
            options = dict(spec)
            field = "kind" if "kind" in options else "object"
            if field not in options:
                raise self.error(key, "needs 'object = \"module:object\"'")
            spec, spec_key = options.pop(field), f"{key}.{field}"
        if isinstance(spec, str) and spec in kinds:
            made = self._call(key, kinds[spec], self._paths(spec, options))
        else:
            target = self.resolve(spec_key, spec)
            if isinstance(target, wanted):
                if options:
                    raise self.error(key, f"{spec} is an element already; it takes no {sorted(options)}")
                made = target
            elif isinstance(target, (DataSource, DataSink, DataTransformer)):
                made = target  # an element of another kind: refused below
            elif callable(target):
                made = self._call(key, target, options)
            else:
                raise self.error(key, f"{spec} is {target!r}, not a class, factory or element")
        if not isinstance(made, wanted):
            names = " or ".join(w.__name__ for w in wanted)
            raise self.error(key, f"{spec} is {made!r}, which is not a {names}")
        return made

    def _paths(self, kind: str, options: dict[str, Any]) -> dict[str, Any]:
        option = _PATH_OPTIONS.get(kind)
        if option in options and self.folder is not None:
            options[option] = str(self.folder / os.path.expanduser(str(options[option])))
        if "types" in options:
            options["types"] = [self.resolve(f"types[{i}]", t) for i, t in enumerate(options["types"])]
        return options

    def _call(self, key: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> Any:
        try:
            return factory(**options)
        except (TypeError, ValueError, DataPipelinesError) as error:
            # A store that cannot open its directory is a mistake in this config too: name the key.
            raise self.error(key, f"{type_name(factory)}: {error}") from error

    def listed(self, config: Mapping[str, Any], key: str) -> list[Any]:
        value = config.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {value!r}")
        return value


def read_toml(path: str | os.PathLike[str], what: str | None = None) -> dict[str, Any]:
    """The parsed TOML file at ``path``; a ConfigurationError starting with ``what`` (default: the
    path) when it cannot be read or parsed. The ingest config and rules files are read so too."""
    what = str(path) if what is None else what
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"{what}: cannot read it ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"{what}: not a TOML file (not UTF-8 text: {error.reason})") from error
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{what}: not valid TOML ({error})") from error


def load(config: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Mapping[str, Any], _Reader]:
    """The config as a dict, and a reader that names where it came from."""
    if isinstance(config, Mapping):
        return config, _Reader("config", None)
    path = Path(config)
    return read_toml(path), _Reader(str(path), path.resolve().parent)


def pipeline_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any], pipeline_class: Callable[..., Any], **options: Any
) -> Any:
    """Build the pipeline a TOML file (a path) or a dict describes; ``options`` go to ``pipeline_class``.

    The class comes from ``DataPipeline.from_config`` (``cls``), so this module never imports the
    pipeline and a subclass's ``from_config`` builds that subclass.
    """
    data, reader = load(config)
    for key in data:
        if key not in TOP_LEVEL:
            raise reader.error(key, f"unknown key; expected one of {', '.join(TOP_LEVEL)}")
    tiers = data.get("tiers", {})
    if not isinstance(tiers, Mapping):
        raise reader.error("tiers", "expected tables such as [tiers.memory]")
    kinds = _tier_classes()
    elements: list[Any] = []
    for name, spec in tiers.items():
        if not isinstance(spec, Mapping):
            raise reader.error(f"tiers.{name}", "expected a table of options")
        table = {"kind": name, **spec} if "kind" not in spec else dict(spec)
        elements.append(reader.build(f"tiers.{name}", table, kinds, (Store, DataSource, DataSink)))
    for group, wanted in (("sinks", (DataSink,)), ("sources", (DataSource,))):
        for index, spec in enumerate(reader.listed(data, group)):
            elements.append(reader.build(f"{group}[{index}]", spec, {}, wanted))
    transformers = [
        reader.build(f"transformers[{i}]", spec, {}, (DataTransformer,))
        for i, spec in enumerate(reader.listed(data, "transformers"))
    ]
    policies = {}
    policy_specs = data.get("policies", {})
    if not isinstance(policy_specs, Mapping):
        raise reader.error("policies", 'expected tables such as [policies."module:Type"]')
    for spec, settings in policy_specs.items():
        if not isinstance(settings, Mapping):
            raise reader.error(f"policies.{spec}", "expected a table such as { ttl = 300 }")
        try:
            policies[reader.resolve(f"policies.{spec}", spec)] = Policy(**settings)
        except (TypeError, ConfigurationError) as error:
            raise reader.error(f"policies.{spec}", str(error)) from error
    settings = {"name": data.get("name", "default"), "strict": data.get("strict", False), **options}
    if not isinstance(settings["name"], str) or not settings["name"]:
        raise reader.error("name", f"expected a non-empty string, got {settings['name']!r}")
    if not isinstance(settings["strict"], bool):
        raise reader.error("strict", f"expected true or false, got {settings['strict']!r}")
    if not elements:
        raise reader.error("tiers", "the pipeline has no tiers, sinks or sources")
    return pipeline_class(elements, transformers, policies=policies, **settings)


def plan_types(pipeline: Any) -> list[Any]:
    """The types a pipeline can answer: what its sources provide and what transformers make of it."""
    found: dict[Any, None] = {}
    for element in pipeline.elements:
        if isinstance(element, DataSource) and element.provides is not TYPE_WILDCARD:
            found.update(dict.fromkeys(element.provides))
    for transformer in pipeline._transformers:
        for targets in transformer.transforms.values():
            found.update(dict.fromkeys(targets))
    answerable = []
    for type_ in found:
        try:
            pipeline.routes(type_)
        except NoConversionError:
            continue
        answerable.append(type_)
    return answerable


def describe_plan(pipeline: Any) -> list[dict[str, Any]]:
    """Per type: each route (who is asked, as which type, the conversion) and what each sink receives."""
    plans = []
    for type_ in plan_types(pipeline):
        routes = []
        for route in pipeline.routes(type_):
            routes.append({
                "ask": route.source_name,
                "tier": route.cached,
                "as": type_name(route.source_type),
                "convert": [f"{element_name(t)} -> {type_name(target)}" for t, target in route.chain],
                "writes_back": [
                    {"sink": element_name(feed.sink), "gets": type_name(feed.store_type)}
                    for feed in route.before + route.after
                ],
            })  # fmt: skip
        plans.append({"type": type_name(type_), "routes": routes})
    return plans
