"""Deterministic keys: one query, one key, in every process and on every machine.

A key is ``<module.QualName>:v<schema version>:<hash>``; stores put their own
namespace in front. The hash is BLAKE2b over a canonical encoding of the query
that keeps value types apart (``1``, ``1.0``, ``"1"`` and ``True`` differ),
ignores dict order, and handles nested lists, tuples, sets and dicts. Python's
``hash()`` is never used: it is salted per process. A query that cannot be keyed
(an unsupported value, a str that is not valid Unicode, nesting deeper than
``MAX_DEPTH``) raises :class:`~datapipelines.errors.QueryKeyError` naming where.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import marshal
import sys
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .errors import QueryKeyError

SCHEMA_VERSION_ATTRIBUTE = "__schema_version__"
#: How deep containers may nest in a query (a query is one level).
MAX_DEPTH = 100
#: What each of the two key memos may hold, in bytes of queries and keys.
MEMO_BYTES = 8 * 2**20
#: A query bigger than this is keyed afresh each time (hashing it costs more than a lookup saves).
MEMO_ENTRY_BYTES = 2048
# What a memo entry costs beyond the sizes of its objects (the tuple, the dict slot).
_ENTRY_OVERHEAD = 120
_PATH_SHOWN = 200
_schema_versions: dict[Any, int] = {}


class _Memo(dict):  # type: ignore[type-arg]
    """A dict that starts over when its entries would outgrow MEMO_BYTES.

    Starting over is cheaper than LRU bookkeeping on every lookup, and plain
    ``dict.get`` stays the hit path.
    """

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def remember(self, memo_key: Any, entry: Any, size: int) -> None:
        if size > MEMO_ENTRY_BYTES:
            return
        if self.size + size > MEMO_BYTES:
            self.clear()
        self[memo_key] = entry
        self.size += size

    def clear(self) -> None:
        super().clear()
        self.size = 0


_memo = _Memo()  # (type, marshal bytes of the query) -> key
_memo_get = _memo.get  # bound once: the hit path's one call
_items_memo = _Memo()  # (type, *query items) -> (key, classes of keys and values)


def set_schema_version(type_: Any, version: int) -> None:
    """Give ``type_`` a schema version (for types you cannot add an attribute to).

    Bump it when a deploy changes the type: old entries then live under other
    keys and are never read back as the new type.
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(
            f"Schema version of {type_name_of(type_)} must be a non-negative int, got {version!r}"
        )
    _schema_versions[type_] = version
    _memo.clear()
    _items_memo.clear()
    _forget_remembered_keys()


_key_rememberers: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


def on_keys_changed(owner: Any, forget: Callable[[], None]) -> None:
    """Have ``forget`` called whenever keys change (a schema version is set), while ``owner`` lives.

    For a store that remembers which key a query had, as this module's memo does.
    """
    _key_rememberers[owner] = forget


def _forget_remembered_keys() -> None:
    for forget in list(_key_rememberers.values()):
        forget()


def schema_version(type_: Any) -> int:
    version = _schema_versions.get(type_)
    if version is None:
        version = getattr(type_, SCHEMA_VERSION_ATTRIBUTE, 1)
    return int(version)


def type_name_of(type_: Any) -> str:
    """The type's fully qualified name: the same in every process."""
    if isinstance(type_, str):
        return type_
    return f"{getattr(type_, '__module__', '?')}.{getattr(type_, '__qualname__', repr(type_))}"


def _shown(path: str) -> str:
    return path if len(path) <= _PATH_SHOWN else f"{path[:_PATH_SHOWN]}..."


def _check_text(value: str, path: str) -> None:
    # Keys are hashed as UTF-8; a lone surrogate (what os.fsdecode makes of undecodable bytes) has none.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise QueryKeyError(
            f"Query value at {_shown(path)!r} is not valid Unicode ({error.reason} at index "
            f"{error.start}: {value[error.start : error.end]!r}); pass file names as bytes (os.fsencode)"
        ) from None


def _encode(value: Any, path: str, out: list[str], depth: int = 1) -> None:
    # Each value is written with a tag for its type, so different types never collide.
    cls = value.__class__
    if value is None:
        out.append("N")
    elif cls is bool:
        out.append("T" if value else "F")
    elif cls is str:
        if not value.isascii():
            _check_text(value, path)
        out.append(f"s{len(value)}:{value}")
    elif cls is int:
        out.append(f"i{value};")
    elif cls is float:
        # -0.0 == 0.0, so both get the key of 0.0 (adding 0.0 turns -0.0 into 0.0).
        out.append(f"f{(value + 0.0).hex()};")
    elif isinstance(value, enum.Enum):
        out.append(f"e{type_name_of(cls)}(")
        _encode(value.value, path, out, depth)
        out.append(")")
    elif isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            # Also what a container holding itself comes to; far below the recursion limit.
            raise QueryKeyError(f"Query nests deeper than {MAX_DEPTH} levels at {_shown(path)!r}")
        _encode_container(value, path, out, depth + 1)
    elif isinstance(value, bytes):
        out.append(f"b{value.hex()};")
    elif isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        out.append(f"d{cls.__name__}:{value.isoformat()};")
    elif isinstance(value, (decimal.Decimal, uuid.UUID)):
        out.append(f"x{cls.__name__}:{value};")
    elif isinstance(value, (str, int, float)):
        # Plain subclasses (enums are handled above) equal their base value and read
        # the same: they key as that value.
        base = str if isinstance(value, str) else int if isinstance(value, int) else float
        _encode(base(value) if base is not str else str.__str__(value), path, out, depth)
    else:
        raise QueryKeyError(
            f"Query value at {_shown(path)!r} has unsupported type {type_name_of(cls)} ({value!r}); "
            "use None, bool, int, float, str, bytes, enums, dates, Decimal, UUID, "
            "or lists, tuples, sets and dicts of them"
        )


def _encode_container(value: Any, path: str, out: list[str], depth: int) -> None:
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            encoded_key: list[str] = []
            _encode_key(key, f"{path}.{key}", encoded_key, depth)
            encoded_item: list[str] = []
            _encode(item, f"{path}.{key}", encoded_item, depth)
            items.append("".join(encoded_key) + "=" + "".join(encoded_item))
        out.append("{" + ",".join(sorted(items)) + "}")
    elif isinstance(value, (list, tuple)):
        out.append("[" if isinstance(value, list) else "(")
        for index, item in enumerate(value):
            _encode(item, f"{path}[{index}]", out, depth)
            out.append(",")
        out.append("]" if isinstance(value, list) else ")")
    else:
        members = []
        for item in value:
            encoded: list[str] = []
            _encode(item, f"{path}{{}}", encoded, depth)
            members.append("".join(encoded))
        out.append("<" + ",".join(sorted(members)) + ">")


def _encode_key(key: Any, path: str, out: list[str], depth: int = 1) -> None:
    # Keys are names: a str-valued enum member or str subclass names the same field
    # as the plain str it equals. Values keep their types; keys of other types too.
    _encode(str.__str__(key) if isinstance(key, str) else key, path, out, depth)


def canonical_query(query: Mapping[str, Any]) -> str:
    """The canonical text of a query: equal for equal queries, whatever their dict order."""
    if not isinstance(query, Mapping):
        raise TypeError(f"A query must be a mapping, got {type(query).__name__} ({query!r})")
    parts = []
    for key, value in query.items():
        encoded: list[str] = []
        _encode_key(key, str(key), encoded)
        encoded.append("=")
        _encode(value, str(key), encoded)
        parts.append("".join(encoded))
    return "{" + ",".join(sorted(parts)) + "}"


def compute_key(type_: Any, query: Mapping[str, Any]) -> str:
    digest = hashlib.blake2b(canonical_query(query).encode("utf-8"), digest_size=16).hexdigest()
    return f"{type_name_of(type_)}:v{schema_version(type_)}:{digest}"


def key_for(type_: Any, query: Mapping[str, Any]) -> str:
    """The deterministic key of ``query`` for ``type_``, memoised in this process.

    The memo is indexed by the query's ``marshal`` bytes: marshal writes only
    exact built-in types and tags each (``1``, ``1.0``, ``True`` and ``"1"`` come
    out different, at any depth), so equal bytes always mean the same canonical
    query. A flat query holding other hashable values (enums, dates) is memoised
    by its items plus the classes of its keys and values, since an enum member
    can equal a plain value; anything else is computed each time. Each memo holds
    at most ``MEMO_BYTES`` of queries and keys, and none bigger than
    ``MEMO_ENTRY_BYTES``, so large or many distinct queries never pile up.
    """
    try:
        memo_key = (type_, marshal.dumps(query if query.__class__ is dict else dict(query)))
    except (ValueError, TypeError):
        return _key_by_items(type_, query)
    key = _memo_get(memo_key)
    if key is None:
        key = compute_key(type_, query)
        _memo.remember(memo_key, key, sys.getsizeof(memo_key[1]) + sys.getsizeof(key) + _ENTRY_OVERHEAD)
    return key


def _equal_means_same_key(value: Any) -> bool:
    """Whether two values of the same class that compare equal always encode alike.

    True for enums and for str, int and float (subclasses included); not for
    containers, nor for dates or decimals (equal instants in other zones, 1.0 and
    1.00), whose encodings differ although they compare equal.
    """
    return isinstance(value, (enum.Enum, str, int, float, bytes)) or value is None


def _key_by_items(type_: Any, query: Mapping[str, Any]) -> str:
    try:
        memoisable = all(map(_equal_means_same_key, query.values()))
        if memoisable:
            memo_key = (type_, *query.items())
            classes = (*map(type, query), *map(type, query.values()))
            entry = _items_memo.get(memo_key)
    except (TypeError, AttributeError):  # not a mapping, or an unhashable key
        memoisable = False
    if not memoisable:
        return compute_key(type_, query)
    if entry is not None and entry[1] == classes:
        return entry[0]  # type: ignore[no-any-return]
    key = compute_key(type_, query)
    size = sum(map(sys.getsizeof, query)) + sum(map(sys.getsizeof, query.values()))
    _items_memo.remember(memo_key, (key, classes), size + sys.getsizeof(key) + _ENTRY_OVERHEAD)
    return key
