"""EncodedStore: what the shared tiers (disk, Redis) have in common.

Both keep bytes that anybody with access could have written, so every value
goes through a :class:`~datapipelines.sinks.serializers.Codec` (serializer,
deadline, write time, type tag) and a bad entry reads as a miss. A subclass
says how to fetch one blob, fetch many in one round trip, and drop one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from datapipelines.store import MISSING, Store

from .serializers import Codec, Serializer, make_serializer


class EncodedStore(Store):
    """A Store whose values are encoded entries in an external backend."""

    def __init__(
        self,
        *,
        serializer: Serializer | str | None,
        secret: str | bytes | None,
        clock: Callable[[], float],
        types: Iterable[Any] | None,
        expirations: Mapping[Any, Any] | None,
        default_expiry: Any,
    ) -> None:
        super().__init__(types=types, expirations=expirations, default_expiry=default_expiry)
        self._codec = Codec(make_serializer(serializer, secret), owner=self, drop=self._drop)
        self._clock = clock

    @property
    def serializer(self) -> Serializer:
        return self._codec.serializer

    # -- backend -------------------------------------------------------------------
    def _fetch(self, key: str) -> Any:
        """The raw entry under ``key`` (None when there is none)."""
        raise NotImplementedError

    def _fetch_many(self, keys: Sequence[str]) -> list[Any]:
        """Raw entries (or None) aligned with ``keys``, in one round trip."""
        raise NotImplementedError

    def _drop(self, key: str) -> None:
        """Delete a bad entry."""
        raise NotImplementedError

    # -- Store primitives ---------------------------------------------------------------
    def _load(self, key: str, type_: Any) -> Any:
        entry = self._codec.read(key, self._fetch(key), type_, self._clock())
        return MISSING if entry is MISSING else entry[0]

    def _load_entry(self, key: str, type_: Any) -> Any:
        now = self._clock()
        entry = self._codec.read(key, self._fetch(key), type_, now)
        return MISSING if entry is MISSING else (entry[0], max(0.0, now - entry[1]))

    def _load_many_entries(self, keys: Sequence[str], type_: Any) -> list[Any]:
        if not keys:
            return []
        return self._codec.read_entries(keys, self._fetch_many(keys), type_, self._clock())

    def close(self) -> None:
        """Release this store's connections."""

    def __enter__(self) -> EncodedStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
