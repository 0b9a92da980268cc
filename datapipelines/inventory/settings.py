"""Inventory settings from keyword arguments, the environment and a dotenv file.

``configure()`` is the entry a pybatchintory deployment knows: it builds an
:class:`Inventory` from settings found, highest priority first, in

1. keyword arguments;
2. environment variables ``DATAPIPELINES_INVENTORY_<NAME>`` (``URL``, ``TABLE``,
   ``SOURCE_TABLE``, ...), then pybatchintory's own names
   (``PYBATCHINTORY_INVENTORY_CONN``, ``PYBATCHINTORY_META_CONN``, ...);
3. the dotenv file given as ``dot_env=``, else named by
   ``$DATAPIPELINES_INVENTORY_ENV_FILE`` or ``$PYBATCHINTORY_ENV_FILE``, read
   with the same names;
4. the defaults.

Names are matched without regard to case, as pybatchintory's pydantic settings do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from .inventory import DEFAULT_URL, Inventory
from .source_table import Source
from .storage import DEFAULT_TABLE

PREFIX = "DATAPIPELINES_INVENTORY_"
ENV_FILE = "DATAPIPELINES_INVENTORY_ENV_FILE"
UPSTREAM_ENV_FILE = "PYBATCHINTORY_ENV_FILE"

# pybatchintory's setting names, and the setting each one is here.
UPSTREAM_NAMES = {
    "PYBATCHINTORY_INVENTORY_CONN": "url",
    "PYBATCHINTORY_INVENTORY_CONN_SCHEMA": "schema",
    "PYBATCHINTORY_META_CONN": "source_url",
    "PYBATCHINTORY_META_CONN_SCHEMA": "source_schema",
    "PYBATCHINTORY_META_TABLE_NAME": "source_table",
}


@dataclass(frozen=True)
class Settings:
    """What an :class:`Inventory` is built from; ``source_table`` unset means no default source."""

    url: str = DEFAULT_URL
    table: str = DEFAULT_TABLE
    schema: str | None = None
    source_table: str | None = None
    source_url: str | None = None
    source_schema: str | None = None
    id_column: str = "id"
    weight_column: str | None = None
    max_attempts: int = 3
    lease_seconds: float = 3600.0
    job_identifier: str | None = None


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def read_dotenv(path: str | Path) -> dict[str, str]:
    """``NAME=value`` lines of a dotenv file; ``#`` comments, ``export`` and quotes are allowed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"Cannot read the dotenv file {str(path)!r}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        reason = error.reason
        raise ConfigurationError(f"The dotenv file {str(path)!r} is not UTF-8 text ({reason})") from error
    values = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            raise ConfigurationError(f"{path}, line {number}: expected NAME=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _from_names(values: Mapping[str, str]) -> dict[str, str]:
    """The settings named in ``values`` (environment or dotenv), ours over pybatchintory's."""
    upper = {name.upper(): value for name, value in values.items()}
    found = {setting: upper[name] for name, setting in UPSTREAM_NAMES.items() if name in upper}
    for setting in _FIELDS:
        value = upper.get(PREFIX + setting.upper())
        if value is not None:
            found[setting] = value
    return found


def _typed(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigurationError(f"Unknown inventory setting {name!r}; settings are {', '.join(_FIELDS)}")
    if not isinstance(value, str):
        return value
    kind = str(_FIELDS[name].type)  # the annotation's text: "int", "float", "str | None"...
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ConfigurationError(f"Inventory setting {name!r} must be a number, got {value!r}") from None
    if not value and kind.endswith("| None"):
        return None  # NAME= in a file or the environment unsets an optional setting
    return value


def load_settings(dot_env: str | Path | None = None, **overrides: Any) -> Settings:
    """The inventory settings, from ``overrides``, the environment, a dotenv file and defaults."""
    environment = dict(os.environ)
    file = dot_env or environment.get(ENV_FILE) or environment.get(UPSTREAM_ENV_FILE)
    values = _from_names(read_dotenv(file)) if file else {}
    values.update(_from_names(environment))
    values.update(overrides)
    return Settings(**{name: _typed(name, value) for name, value in values.items()})


def configure(dot_env: str | Path | None = None, **overrides: Any) -> Inventory:
    """An :class:`Inventory` built from :func:`load_settings` (same arguments)."""
    settings = load_settings(dot_env, **overrides)
    source = None
    if settings.source_table:
        source = Source(
            settings.source_table,
            id_column=settings.id_column,
            weight_column=settings.weight_column,
            url=settings.source_url,
            schema=settings.source_schema,
        )
    return Inventory(
        settings.url,
        source=source,
        table=settings.table,
        schema=settings.schema,
        max_attempts=settings.max_attempts,
        lease=settings.lease_seconds,
        job_identifier=settings.job_identifier,
    )
