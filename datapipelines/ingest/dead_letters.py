"""What ``datapipelines ingest dead`` does with a distributed step's dead letters.

A dead-lettered file was given the step's failure policy by the worker that
found it: ``retry`` takes it back from where the policy kept it into the step's
work folder and publishes it again; ``drop`` forgets the letter, the file stays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ..errors import ConfigurationError
from .distributed import (
    DistributedStep,
    QueueUnavailableError,
    file_from_json,
    file_payload,
    unreadable,
)
from .files import TAGS_SUFFIX, work_name
from .stream_queue import StreamQueue, open_stream_queue


def _letters(queue: StreamQueue, ids: list[str] | None) -> list[Mapping[str, str]]:
    letters = queue.dead_letters(count=1_000_000)
    if ids is None:
        return letters
    known = {letter["dead_id"]: letter for letter in letters}
    missing = [i for i in ids if i not in known]
    if missing:
        raise ConfigurationError(f"no dead letter {missing[0]!r} (see `datapipelines ingest dead list`)")
    return [known[i] for i in ids]


def _open(step: DistributedStep) -> StreamQueue:
    try:
        queue = open_stream_queue(step.url, step.name, **step.queue_options)
        queue.dead_letters(count=1)
    except QueueUnavailableError:
        raise
    except Exception as error:  # each engine has its own connection errors
        raise unreadable(step, error) from error
    return queue


def listing(step: DistributedStep) -> list[list[str]]:
    """One row per dead letter: dead id, entry id, deliveries, uid, file name."""
    queue = _open(step)
    try:
        rows = []
        for letter in _letters(queue, None):
            file = json.loads(letter["payload"])
            rows.append([letter["dead_id"], letter["id"], letter["deliveries"], file["uid"], file["name"]])
        return rows
    finally:
        queue.close()


def retry(step: DistributedStep, work: str, ids: list[str] | None) -> list[list[str]]:
    """Put the files of these dead letters (all: None) back on the step's stream; one row each."""
    queue = _open(step)
    try:
        queue.start()
        rows = []
        for letter in _letters(queue, ids):
            file = file_from_json(json.loads(letter["payload"]))
            policy = step.failure_policy(file.work or work)
            kept = (
                None
                if policy.directory is None
                else os.path.join(policy.directory, work_name(file.uid, file.name))
            )
            if kept is None or not os.path.lexists(kept):
                where = "deleted by the failure policy" if kept is None else f"not at {kept} any more"
                rows.append([letter["dead_id"], file.name, f"skipped: the file was {where}"])
                continue
            os.makedirs(os.path.dirname(file.path), exist_ok=True)
            os.rename(kept, file.path)
            try:
                os.unlink(kept + TAGS_SUFFIX)
            except FileNotFoundError:
                pass
            queue.publish(file_payload(file.with_tags({}, attempt=1)))
            queue.drop_dead(letter["dead_id"])
            rows.append([letter["dead_id"], file.name, "published again"])
        return rows
    finally:
        queue.close()


def drop(step: DistributedStep, ids: list[str] | None) -> int:
    """Forget these dead letters (all: None); the files stay where the failure policy put them."""
    queue = _open(step)
    try:
        return queue.drop_dead(*(letter["dead_id"] for letter in _letters(queue, ids)))
    finally:
        queue.close()
