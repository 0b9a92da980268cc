"""How values live as bytes on shared tiers (disk, Redis), and why bytes are never trusted.

A :class:`Serializer` turns a value of a requested type into bytes and back;
``loads`` raises :class:`SerializationError` for anything it cannot authenticate
or rebuild, and the stores turn that into a logged miss. :class:`Codec` frames
the serializer's bytes in a small envelope: a magic prefix, the deadline after
which the entry is dead, and a tag naming the serializer and the entry's whole
key (type, schema version and query hash), so an entry written by another
serializer, for another type version or under another key is a miss rather than
a wrong object. A signing serializer authenticates that frame with the value.

Choosing (:func:`make_serializer`): with a secret (argument or env
``DATAPIPELINES_SECRET``) the default is pickle signed with HMAC-SHA256, and JSON
or MessagePack asked for by name is signed too; without one it is MessagePack
decoded straight into the requested type (msgspec), which covers plain data and
dataclasses, or JSON where msgspec is not installed. Unsigned pickle is used only
when asked for by name.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import hashlib
import hmac
import json
import os
import pickle
import struct
import typing
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from datapipelines.errors import ConfigurationError, DataPipelinesError, type_name
from datapipelines.keys import schema_version, type_name_of
from datapipelines.store import MISSING

try:  # a core dependency on CPython; elsewhere the default falls back to JSON
    import msgspec
except ImportError:  # pragma: no cover - exercised only where no wheel exists
    msgspec = None  # type: ignore[assignment]


SECRET_ENV = "DATAPIPELINES_SECRET"


class SerializationError(DataPipelinesError, ValueError):
    """A value could not be turned into bytes, or bytes could not be trusted or rebuilt."""


def type_tag(type_: Any) -> str:
    """``module.QualName:v<schema version>``: what an entry claims to hold."""
    return f"{type_name_of(type_)}:v{schema_version(type_)}"


class Serializer(ABC):
    """Turns values into bytes and back; ``loads`` raises SerializationError on bad bytes."""

    #: Written into every entry; an entry by another serializer is a miss.
    name: str = ""

    @abstractmethod
    def dumps(self, value: Any, type_: Any) -> bytes:
        """The bytes of ``value``, stored as a ``type_``."""

    @abstractmethod
    def loads(self, data: bytes, type_: Any) -> Any:
        """The value of ``type_`` in ``data``; SerializationError if it cannot be trusted."""

    def dumps_entry(self, value: Any, type_: Any, frame: bytes) -> bytes:
        """The bytes a store writes after ``frame`` (the entry's stamps, serializer and key).

        A signing serializer authenticates ``frame`` together with the value; the
        default ignores it.
        """
        return self.dumps(value, type_)

    def loads_entry(self, data: bytes, type_: Any, frame: bytes) -> Any:
        """The value in ``data``, read after ``frame``; SerializationError if it cannot be trusted."""
        return self.loads(data, type_)

    def reader_of(self, name: str) -> Serializer | None:
        """The serializer that reads entries another serializer called ``name`` wrote, if this one can.

        Lets a new default read what the previous default left behind instead of missing it.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- JSON -------------------------------------------------------------------------------------------

_TAG = "__dp__"
_PLAIN = frozenset((str, int, float, bool, type(None)))


def _to_json(value: Any) -> Any:
    cls = value.__class__
    if cls in _PLAIN:
        return value
    if cls is list:
        return [_to_json(item) for item in value]
    if cls is dict:
        if _TAG not in value and all(key.__class__ is str for key in value):
            return {key: _to_json(item) for key, item in value.items()}
        return {_TAG: "map", "v": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if cls in (tuple, set, frozenset):
        return {_TAG: cls.__name__, "v": [_to_json(item) for item in value]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {_TAG: "dataclass", "t": type_name_of(cls), "v": fields}
    encode = _SCALAR_ENCODERS.get(cls)
    if encode is None:
        raise TypeError(f"{type_name_of(cls)} is neither plain data nor a dataclass ({value!r:.80})")
    return {_TAG: cls.__name__, "v": encode(value)}


_SCALAR_ENCODERS: dict[type, Callable[[Any], Any]] = {
    bytes: lambda v: base64.b64encode(v).decode("ascii"),
    datetime.datetime: datetime.datetime.isoformat,
    datetime.date: datetime.date.isoformat,
    datetime.time: datetime.time.isoformat,
    datetime.timedelta: datetime.timedelta.total_seconds,
    decimal.Decimal: str,
    uuid.UUID: str,
}

_SCALAR_DECODERS: dict[str, Callable[[Any], Any]] = {
    "bytes": base64.b64decode,
    "datetime": datetime.datetime.fromisoformat,
    "date": datetime.date.fromisoformat,
    "time": datetime.time.fromisoformat,
    "timedelta": lambda v: datetime.timedelta(seconds=v),
    "Decimal": decimal.Decimal,
    "UUID": uuid.UUID,
}

_COLLECTIONS: dict[str, Callable[[Any], Any]] = {"tuple": tuple, "set": set, "frozenset": frozenset}


def _from_json(raw: Any, classes: dict[str, type]) -> Any:
    # Scalars are returned inline rather than through a call each: this is the disk and Redis hit path.
    cls = raw.__class__
    if cls is list:
        return [item if item.__class__ in _PLAIN else _from_json(item, classes) for item in raw]
    if cls is not dict:
        return raw
    tag = raw.get(_TAG)
    if tag is None:
        return {k: v if v.__class__ in _PLAIN else _from_json(v, classes) for k, v in raw.items()}
    if tag == "dataclass":
        target = classes.get(raw["t"])
        if target is None:
            raise SerializationError(
                f"entry holds a {raw['t']}, which is neither the requested type nor a dataclass it refers to"
            )
        fields = raw["v"].items()
        return target(**{k: v if v.__class__ in _PLAIN else _from_json(v, classes) for k, v in fields})
    if tag == "map":
        return {_from_json(k, classes): _from_json(v, classes) for k, v in raw["v"]}
    if tag in _COLLECTIONS:
        return _COLLECTIONS[tag]([v if v.__class__ in _PLAIN else _from_json(v, classes) for v in raw["v"]])
    return _SCALAR_DECODERS[tag](raw["v"])


def _dataclasses_of(type_: Any) -> dict[str, type]:
    """The dataclasses a value of ``type_`` may hold: itself and those its fields name, by name."""
    found: dict[str, type] = {}
    pending = [type_]
    while pending:
        current = pending.pop()
        for arg in typing.get_args(current):
            pending.append(arg)
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            continue
        name = type_name_of(current)
        if name in found:
            continue
        found[name] = current
        try:
            hints = typing.get_type_hints(current)
        except Exception:  # unresolvable forward references: fall back to what is already a type
            hints = {f.name: f.type for f in dataclasses.fields(current)}
        pending.extend(hint for hint in hints.values() if not isinstance(hint, str))
    return found


class JsonSerializer(Serializer):
    """Plain data and dataclasses as JSON; the safe default when there is no secret.

    Covers None, bool, int, float, str, lists and dicts, plus tuples, sets,
    non-string dict keys, bytes, dates, times, timedeltas, Decimal and UUID
    (tagged), and dataclasses. A dataclass is stored with its qualified name and
    rebuilt only if it is the requested type or a dataclass that type's fields
    name: a payload can never make the reader construct an arbitrary class.
    """

    name = "json"

    def __init__(self) -> None:
        self._classes: dict[Any, dict[str, type]] = {}

    def dumps(self, value: Any, type_: Any) -> bytes:
        _check_holds(value, type_)  # never write what loads would reject
        try:
            return json.dumps(_to_json(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as error:
            raise SerializationError(
                f"The JSON serializer cannot store this {type_name(type_)}: {error}. Store plain data or "
                f"dataclasses, or use serializer='signed-pickle' with a secret"
            ) from error

    def loads(self, data: bytes, type_: Any) -> Any:
        classes = self._classes.get(type_)
        if classes is None:
            classes = self._classes[type_] = _dataclasses_of(type_)
        try:
            value = _from_json(json.loads(data), classes)
        except SerializationError:
            raise
        except Exception as error:  # any malformed payload is a bad entry, whatever it breaks
            raise SerializationError(f"not a JSON {type_name(type_)}: {error!r:.200}") from error
        _check_holds(value, type_)
        return value


def _check_holds(value: Any, type_: Any) -> None:
    # A dataclass type is read back as exactly that class, so only that class is written.
    if dataclasses.is_dataclass(type_) and value.__class__ is not type_:
        held = type_name_of(value.__class__)
        raise SerializationError(f"entry holds a {held}, not a {type_name(type_)}")


# -- MessagePack -------------------------------------------------------------------------------------

# Never the first byte of a MessagePack value: marks a payload kept in the JSON form instead.
_JSON_FORM = b"\xc1"
_NOT_TYPED = object()


class MsgpackSerializer(Serializer):
    """MessagePack decoded straight into the requested type by msgspec; the default without a secret.

    A value is written as MessagePack when msgspec decodes it, as the requested
    type, back to an equal value (a dataclass whose fields are what their
    annotations say, plain data of JSON's kinds); anything else (a tuple in a
    field annotated ``list``, a set in a dict, a dataclass without ``__eq__``) is
    written in :class:`JsonSerializer`'s form, so every value reads back as it
    was written. Reading builds only the requested type and the types its
    annotations name, as JSON does; it also reads entries the JSON serializer
    wrote, the default before this one.
    """

    name = "msgpack"

    def __init__(self) -> None:
        if msgspec is None:
            raise ConfigurationError("serializer='msgpack' needs msgspec: pip install msgspec")
        self._encode = msgspec.msgpack.Encoder().encode
        self._decoders: dict[Any, Any] = {}
        self._json = JsonSerializer()

    def _decoder(self, type_: Any) -> Any:
        """msgspec's decoder into ``type_``, or _NOT_TYPED when msgspec cannot decode into it."""
        decoder = self._decoders.get(type_)
        if decoder is None:
            try:
                decoder = msgspec.msgpack.Decoder(type_).decode
            except Exception:  # an unsupported or unresolvable type: msgspec raises TypeError, NameError...
                decoder = _NOT_TYPED
            self._decoders[type_] = decoder
        return decoder

    def dumps(self, value: Any, type_: Any) -> bytes:
        _check_holds(value, type_)
        decode = self._decoder(type_)
        if decode is not _NOT_TYPED:
            try:
                data: bytes = self._encode(value)
                if decode(data) == value:
                    return data
            except Exception:  # not encodable as MessagePack, or not readable back as type_
                pass
        try:
            return _JSON_FORM + self._json.dumps(value, type_)
        except SerializationError as error:
            raise SerializationError(
                f"The MessagePack serializer cannot store this {type_name(type_)}: {error.__cause__}. "
                f"Store plain data or dataclasses, or use serializer='signed-pickle' with a secret"
            ) from error

    def loads(self, data: bytes, type_: Any) -> Any:
        if data[:1] == _JSON_FORM:
            return self._json.loads(data[1:], type_)
        decode = self._decoders.get(type_) or self._decoder(type_)
        if decode is _NOT_TYPED:
            raise SerializationError(f"entry holds MessagePack, which cannot be read as a {type_name(type_)}")
        try:
            return decode(data)
        except Exception as error:  # msgspec's DecodeError, ValidationError, what __post_init__ raises
            raise SerializationError(f"not a MessagePack {type_name(type_)}: {error!r:.200}") from error

    def reader_of(self, name: str) -> Serializer | None:
        return self._json if name == JsonSerializer.name else None


# -- pickle -----------------------------------------------------------------------------------------


def _pickle(value: Any, type_: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:  # pickle raises many types: PicklingError, TypeError, AttributeError...
        raise SerializationError(f"Cannot pickle this {type_name(type_)}: {error}") from error


def _unpickle(data: bytes, type_: Any) -> Any:
    try:
        return pickle.loads(data)
    except Exception as error:
        raise SerializationError(f"not a pickled {type_name(type_)}: {error!r:.200}") from error


class PickleSerializer(Serializer):
    """Unsigned pickle. Unpickling runs code chosen by whoever wrote the bytes.

    Use it only for a tier that nobody else can write (a private directory, a
    Redis only this application reaches); prefer :class:`SignedPickleSerializer`.
    """

    name = "pickle"

    def dumps(self, value: Any, type_: Any) -> bytes:
        return _pickle(value, type_)

    def loads(self, data: bytes, type_: Any) -> Any:
        return _unpickle(data, type_)


class SignedSerializer(Serializer):
    """Another serializer's bytes behind an HMAC-SHA256 signature; bytes that fail it are never read.

    In a store the signature covers the entry's frame as well as the bytes: its
    key (type, schema version and query), serializer, deadline and write time. A
    signed entry copied under another key, or given a later deadline, is a miss.
    Called directly, ``dumps``/``loads`` sign the type's tag with the bytes.
    """

    _MAC_SIZE = hashlib.sha256().digest_size

    def __init__(self, inner: Serializer, secret: str | bytes) -> None:
        if not secret:
            raise ConfigurationError(f"{type(self).__name__} needs a non-empty secret")
        self.inner = inner
        self.name = f"{inner.name}+hmac-sha256"
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def _mac(self, frame: bytes, data: bytes) -> bytes:
        # One call into C: cheaper than hmac.new(...).update(...) by about 2 µs per entry.
        return hmac.digest(self._secret, frame + data, "sha256")

    def dumps_entry(self, value: Any, type_: Any, frame: bytes) -> bytes:
        data = self.inner.dumps(value, type_)
        return self._mac(frame, data) + data

    def loads_entry(self, data: bytes, type_: Any, frame: bytes) -> Any:
        mac, payload = data[: self._MAC_SIZE], data[self._MAC_SIZE :]
        if not hmac.compare_digest(mac, self._mac(frame, payload)):
            raise SerializationError(
                f"bad signature on a {type_name(type_)} (another secret, another key, or tampered)"
            )
        return self.inner.loads(payload, type_)

    def dumps(self, value: Any, type_: Any) -> bytes:
        return self.dumps_entry(value, type_, _type_frame(type_))

    def loads(self, data: bytes, type_: Any) -> Any:
        return self.loads_entry(data, type_, _type_frame(type_))


def _type_frame(type_: Any) -> bytes:
    # Outside a store there is no key: the type's tag is what a value is bound to.
    return type_tag(type_).encode("utf-8") + b"\0"


class SignedPickleSerializer(SignedSerializer):
    """Pickle behind an HMAC-SHA256 signature; bytes that fail the check are never unpickled."""

    def __init__(self, secret: str | bytes) -> None:
        super().__init__(PickleSerializer(), secret)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- choosing -----------------------------------------------------------------------------------------

SERIALIZER_NAMES = ("msgpack", "json", "signed-pickle", "pickle")


def make_serializer(
    serializer: Serializer | str | None = None, secret: str | bytes | None = None
) -> Serializer:
    """The serializer a shared tier uses.

    ``None``: signed pickle when a secret is given (or set in ``DATAPIPELINES_SECRET``),
    MessagePack otherwise (JSON where msgspec is not installed). A name:
    ``"msgpack"`` or ``"json"`` (signed when there is a secret), ``"signed-pickle"``
    (needs a secret) or ``"pickle"`` (unsigned; only for tiers nobody else can
    write). Or an instance.
    """
    if isinstance(serializer, Serializer):
        if secret is not None:
            raise ConfigurationError(f"Pass a secret or a serializer instance ({serializer!r}), not both")
        return serializer
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    if serializer is None:
        if secret:
            return SignedPickleSerializer(secret)
        return MsgpackSerializer() if msgspec is not None else JsonSerializer()
    if serializer in ("msgpack", "json"):
        plain = MsgpackSerializer() if serializer == "msgpack" else JsonSerializer()
        return SignedSerializer(plain, secret) if secret else plain
    if serializer == "signed-pickle":
        if not secret:
            raise ConfigurationError(f"serializer='signed-pickle' needs secret= or env {SECRET_ENV}")
        return SignedPickleSerializer(secret)
    if serializer == "pickle":
        return PickleSerializer()
    raise ConfigurationError(
        f"Unknown serializer {serializer!r}: use one of {', '.join(SERIALIZER_NAMES)} or a Serializer"
    )


# -- the envelope -------------------------------------------------------------------------------------

# DPE1 entries (2.0 pre-releases) named only the type: they read as misses and are replaced.
_MAGIC = b"DPE2"
_STAMPS = struct.Struct("!dd")  # deadline, written at
_TAG_LENGTH = struct.Struct("!H")
_HEADER = len(_MAGIC) + _STAMPS.size
_TAG_START = _HEADER + _TAG_LENGTH.size
_FOREVER = float("inf")


class Codec:
    """Frames a serializer's bytes: ``DPE2``, deadline and write time (wall-clock seconds), tag, payload.

    The deadline lets every reader reject an expired entry by its own clock,
    whatever the backend's eviction does; the write time gives policies the
    entry's age; the tag (the serializer's name and the entry's key,
    ``module.QualName:v<version>:<hash>``) makes an entry from another serializer,
    type, schema version or key a miss. The frame is handed to the serializer,
    so a signing one authenticates it with the value.
    """

    __slots__ = ("serializer", "_name", "_reads_frame")

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer
        self._name = serializer.name.encode() + b" "
        # A serializer that keeps Serializer.loads_entry ignores the frame: the hit path skips slicing it.
        self._reads_frame = type(serializer).loads_entry is not Serializer.loads_entry

    def _tag(self, key: str) -> bytes:
        # The key (see keys.key_for) names the type, its schema version and the query.
        text = self._name + key.encode()
        return _TAG_LENGTH.pack(len(text)) + text

    def encode(self, value: Any, type_: Any, key: str, written_at: float, seconds: float | None) -> bytes:
        """The entry for ``value`` under ``key``, written at ``written_at``, kept ``seconds`` (None: ever)."""
        stamps = _STAMPS.pack(_FOREVER if seconds is None else written_at + seconds, written_at)
        frame = b"".join((_MAGIC, stamps, self._tag(key)))
        return frame + self.serializer.dumps_entry(value, type_, frame)

    def decode(self, blob: Any, type_: Any, key: str, now: float) -> Any:
        """``(value, written_at)`` in ``blob``, MISSING once past its deadline; SerializationError if bad."""
        if blob.__class__ is not bytes or not blob.startswith(_MAGIC) or len(blob) < _TAG_START:
            raise SerializationError(f"not a datapipelines entry ({blob!r:.40})")
        tag = self._tag(key)
        deadline, written_at = _STAMPS.unpack_from(blob, len(_MAGIC))
        if not blob.startswith(tag, _HEADER):
            reader, start = self._reader_of(blob, tag)
            if deadline <= now:
                return MISSING
            return reader.loads_entry(blob[start:], type_, blob[:start]), written_at
        if deadline <= now:
            return MISSING
        start = _HEADER + len(tag)
        if self._reads_frame:
            return self.serializer.loads_entry(blob[start:], type_, blob[:start]), written_at
        return self.serializer.loads(blob[start:], type_), written_at

    def _reader_of(self, blob: bytes, tag: bytes) -> tuple[Serializer, int]:
        """The serializer that reads an entry tagged by another one under the same key, and where
        its payload starts; SerializationError when there is none."""
        end = _TAG_START + _TAG_LENGTH.unpack_from(blob, _HEADER)[0]
        name, _, key = blob[_TAG_START:end].partition(b" ")
        reader = self.serializer.reader_of(name.decode("utf-8", "replace"))
        if reader is None or key != tag[len(self._name) + _TAG_LENGTH.size :] or len(blob) < end:
            found = blob[_TAG_START:end].decode("utf-8", "replace")
            raise SerializationError(f"written as {found!r}, expected {tag[_TAG_LENGTH.size :].decode()!r}")
        return reader, end
