"""What a generate or update run did, record by record."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Counts:
    """Records added, updated, left as they were (skipped), deleted and restored.

    ``invalid_files`` maps each metadata file that could not be read to why.
    """

    added: int = 0
    updated: int = 0
    skipped: int = 0
    deleted: int = 0
    restored: int = 0
    invalid_files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def invalid(self) -> int:
        return len(self.invalid_files)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "invalid": self.invalid}
