"""What the catalogue measures: the bytes of an item, canonical JSON, flat fields.

Size and SHA-256 are computed over one well-defined byte string per item:

* ``bytes``, ``bytearray``, ``memoryview``: the bytes as they are;
* ``str``: its UTF-8 encoding;
* an object whose ``payload`` attribute is bytes (a raw HTTP response): the payload;
* a dataclass instance, mapping, list, tuple, number, bool or None: its canonical
  JSON (sorted keys, no spaces, UTF-8, datetimes as ISO 8601), so equal values
  give equal hashes whatever their key order.

Anything else needs a function of its own (``Catalog(content={T: to_bytes})``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from datapipelines.errors import type_name


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=canonical_json)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"a {type_name(type(value))} ({value!r:.80}) cannot be written as JSON")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal data, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def content_bytes(item: Any, convert: Callable[[Any], bytes] | None = None) -> bytes:
    """The bytes the catalogue sizes and hashes for ``item`` (see the module docstring)."""
    if convert is not None:
        data = convert(item)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"content function for {type_name(type(item))} returned {type_name(type(data))}")
        return bytes(data)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    payload = getattr(item, "payload", None)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if (dataclasses.is_dataclass(item) and not isinstance(item, type)) or isinstance(
        item, (Mapping, list, tuple, int, float, type(None))
    ):
        return canonical_json(item).encode("utf-8")
    raise TypeError(
        f"Cannot compute the bytes of a {type_name(type(item))} for the catalogue: give it a bytes "
        f"'payload' attribute, make it a dataclass or dict, or pass "
        f"content={{{type_name(type(item))}: function returning bytes}}"
    )


def flatten(mapping: Mapping[str, Any], separator: str = "_") -> dict[str, Any]:
    """Nested mappings as one level: ``{"a": {"b": 1}}`` becomes ``{"a_b": 1}``.

    Two paths that flatten to one name raise ValueError naming it, rather than
    one silently hiding the other.
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Mapping[str, Any]) -> None:
        for key, item in value.items():
            name = f"{prefix}{separator}{key}" if prefix else str(key)
            if isinstance(item, Mapping) and item:
                walk(name, item)
            elif name in flat:
                raise ValueError(f"field {name!r} appears twice once nested keys are joined by {separator!r}")
            else:
                flat[name] = item

    walk("", mapping)
    return flat
