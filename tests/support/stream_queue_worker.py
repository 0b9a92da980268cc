"""A consumer process for tests/ingest/test_ingest_stream_queue_contract.py: ``python stream_queue_worker.py
ENGINE URL PREFIX MODE`` where ENGINE is ``redis`` or ``nats``.

``hold``: read entries, print their ids, never acknowledge them (until SIGKILLed).
``poison``: acknowledge every entry, but die with ``os._exit(9)`` on the payload ``poison``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def open_queue(engine: str, url: str, prefix: str) -> Any:
    options: dict[str, Any] = {"prefix": prefix, "lease": 0.5, "max_deliveries": 3}
    if engine == "nats":
        from datapipelines.ingest.nats_queue import NatsStreamQueue

        return NatsStreamQueue.from_url(url, "parse", **options)
    import redis

    from datapipelines.ingest.redis_queue import RedisStreamQueue

    return RedisStreamQueue(redis.Redis.from_url(url), "parse", **options)


def main(engine: str, url: str, prefix: str, mode: str) -> None:
    queue = open_queue(engine, url, prefix)
    queue.start()
    print("ready", flush=True)
    while True:
        entries, _dead = queue.read(count=5, block=0.2)
        for entry in entries:
            if mode == "hold":
                print(entry.id, flush=True)
            elif entry.payload == "poison":
                os._exit(9)
            else:
                queue.ack(entry.id)
        if mode == "hold" and not entries:
            time.sleep(0.05)


if __name__ == "__main__":
    main(*sys.argv[1:5])
