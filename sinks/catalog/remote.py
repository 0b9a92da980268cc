"""Where a record's actual file lives, from templates: ``{"url": "https://bucket/docs/{name}"}``.

As mmmeta's ``remote`` config: each template is filled by plain replacement
from the record's fields, plus ``{uid}`` (the record's query value, when its
query has one entry, else its key), ``{name}`` (the ``file_name`` field, else
the uid), ``{key}`` and ``{type}``; a field of the same name wins. Placeholders
are plain names: no attribute or index lookups.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from typing import Any

from ._db import CatalogError


def check_templates(templates: Mapping[str, str] | None) -> dict[str, str]:
    """The templates, refused with a clear error when one cannot be filled from names."""
    checked: dict[str, str] = {}
    for name, template in (templates or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise CatalogError(f"Remote template names are identifiers (record.remote.<name>); got {name!r}")
        if not isinstance(template, str):
            raise CatalogError(f"Remote template {name!r} must be a string, got {template!r}")
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as error:
            raise CatalogError(f"Remote template {name!r} ({template!r}): {error}") from None
        for _, placeholder, _, _ in parts:
            if placeholder is not None and not placeholder.isidentifier():
                raise CatalogError(
                    f"Remote template {name!r} ({template!r}): {{{placeholder}}} is not a plain field name"
                )
        checked[name] = template
    return checked


class Remote(Mapping[str, str]):
    """A record's remote locations, by template name: ``record.remote.url`` or ``record.remote["url"]``."""

    def __init__(self, locations: dict[str, str]) -> None:
        self._locations = locations

    def __getattr__(self, name: str) -> str:
        try:
            return self._locations[name]
        except KeyError:
            raise AttributeError(f"no remote template named {name!r}") from None

    def __getitem__(self, name: str) -> str:
        return self._locations[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)

    def __repr__(self) -> str:
        return f"Remote({self._locations!r})"


def render(templates: Mapping[str, str], values: Mapping[str, Any], key: str) -> Remote:
    """Every template filled from ``values``; a missing name raises CatalogError naming it and the record."""
    locations = {}
    for name, template in templates.items():
        try:
            locations[name] = template.format_map(values)
        except KeyError as missing:
            needed = missing.args[0]
            raise CatalogError(
                f"Remote template {name!r} ({template!r}) needs {{{needed}}}, which record {key} lacks"
            ) from None
    return Remote(locations)
