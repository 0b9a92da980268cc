"""The smallest shared tier: a dict of bytes, built on EncodedStore's five byte-level methods.

It proves the seam: the store contract (tests/tiers/test_store_contract.py) runs on it
as on disk and Redis, with no code of its own beyond moving bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datapipelines.sinks.encoded import EncodedStore


class DictOfBytesStore(EncodedStore):
    """Entries as bytes in a dict. Expiry is the envelope's deadline alone: a dict never evicts."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.blobs: dict[str, bytes] = {}

    def fetch(self, key: str) -> bytes | None:
        return self.blobs.get(key)

    def fetch_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.blobs.get(key) for key in keys]

    def save_many(self, entries: Sequence[tuple[str, bytes]], seconds: float | None) -> None:
        self.blobs.update(entries)

    def delete_many(self, keys: Sequence[str]) -> int:
        return sum(self.blobs.pop(key, None) is not None for key in keys)

    def clear(self) -> None:
        self.blobs.clear()
