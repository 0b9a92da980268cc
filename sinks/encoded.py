"""EncodedStore: a shared tier (disk, Redis, yours) is five byte-level methods.

Bytes on a shared tier may have been written by anybody with access, so every
value goes through a :class:`~datapipelines.sinks.serializers.Codec` (serializer,
deadline, write time, and a tag binding the entry to its key and type); an entry
that fails any check is damaged: logged, deleted, and a miss. A concrete tier
moves bytes only:

* ``fetch(key) -> bytes | None``
* ``fetch_many(keys) -> list[bytes | None]``, in one round trip
* ``save_many([(key, bytes), ...], seconds)``, each kept ``seconds`` (None: no expiry)
* ``delete_many(keys) -> int``, how many were there
* ``clear()``

They are public, the tier's whole contract with this class (and with the async
twins ``afetch``, ``afetch_many``, ``asave_many``, ``adelete_many``, ``aclear``);
the underscore primitives of :class:`~datapipelines.store.Store` take and return
Python values, and this class implements them once for every tier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from datapipelines.errors import DamagedEntryError, type_name
from datapipelines.store import MISSING, Store

from .serializers import Codec, SerializationError, Serializer, make_serializer

# The serializers' logger: where a damaged entry has always been reported.
LOGGER = logging.getLogger("datapipelines.sinks.serializers")


class EncodedStore(Store):
    """A Store whose values are encoded entries in an external backend of bytes."""

    def __init__(
        self,
        *,
        serializer: Serializer | str | None = None,
        secret: str | bytes | None = None,
        clock: Callable[[], float] = time.time,
        types: Iterable[Any] | None = None,
        expirations: Mapping[Any, Any] | None = None,
        default_expiry: Any = None,
    ) -> None:
        """``clock`` gives wall-clock seconds: entries carry their deadline, checked by every reader."""
        super().__init__(types=types, expirations=expirations, default_expiry=default_expiry)
        self._codec = Codec(make_serializer(serializer, secret))
        self._clock = clock

    @property
    def serializer(self) -> Serializer:
        return self._codec.serializer

    # -- the five byte-level methods a tier implements ---------------------------------------------
    def fetch(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, None when there are none."""
        raise NotImplementedError

    def fetch_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes (or None) under each of ``keys``, aligned with them, in one round trip."""
        raise NotImplementedError

    def save_many(self, entries: Sequence[tuple[str, bytes]], seconds: float | None) -> None:
        """Store every ``(key, bytes)``, kept ``seconds`` (None: no expiry), in one round trip."""
        raise NotImplementedError

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove ``keys``; how many of them were there."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove every entry of this store (and nothing else)."""
        raise NotImplementedError

    # -- Store primitives, once for every tier -------------------------------------------------------
    def _load(self, key: str, type_: Any) -> Any:
        entry = self._read(key, type_, self._clock())
        return entry if entry is MISSING else entry[0]

    def _load_entry(self, key: str, type_: Any) -> Any:
        now = self._clock()
        entry = self._read(key, type_, now)
        return entry if entry is MISSING else (entry[0], max(0.0, now - entry[1]))

    def _read(self, key: str, type_: Any, now: float) -> Any:
        """``(value, written_at)`` under ``key`` or MISSING; DamagedEntryError for a damaged entry."""
        blob = self.fetch(key)
        if blob is None:
            return MISSING
        try:
            return self._codec.decode(blob, type_, key, now)
        except SerializationError as error:
            raise self._damaged(key, type_, error) from error

    def _load_many_entries(self, keys: Sequence[str], type_: Any) -> list[Any]:
        if not keys:
            return []
        blobs, now = self.fetch_many(keys), self._clock()
        entries = [self._decoded(key, blob, type_, now) for key, blob in zip(keys, blobs, strict=True)]
        return [entry if entry is MISSING else (entry[0], max(0.0, now - entry[1])) for entry in entries]

    def _decoded(self, key: str, blob: bytes | None, type_: Any, now: float) -> Any:
        """``(value, written_at)`` of a fetched ``blob``, or MISSING: a damaged one among others is a miss."""
        if blob is None:
            return MISSING
        try:
            return self._codec.decode(blob, type_, key, now)
        except SerializationError as error:
            self._damaged(key, type_, error)
            return MISSING

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        now, encode = self._clock(), self._codec.encode
        # Encode everything first: a value that cannot be stored fails the call before any write.
        self.save_many([(key, encode(value, type_, key, now, seconds)) for key, value in entries], seconds)

    def _delete_many(self, keys: Sequence[str]) -> int:
        return self.delete_many(keys) if keys else 0

    def _damaged(self, key: str, type_: Any, error: SerializationError) -> DamagedEntryError:
        """Log and delete the damaged entry under ``key``; the miss a single lookup raises for it."""
        LOGGER.warning("%r dropped a bad %s entry under %s: %s", self, type_name(type_), key, error)
        self.delete_many([key])
        return DamagedEntryError(
            f"{self!r} dropped a damaged {type_name(type_)} entry under {key}: {error}",
            type=type_,
            tried=[repr(self)],
        )

    def close(self) -> None:
        """Release this store's connections."""

    def __enter__(self) -> EncodedStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
