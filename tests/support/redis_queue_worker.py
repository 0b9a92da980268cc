"""A consumer process for tests/ingest/test_ingest_redis_queue.py:
``python redis_queue_worker.py URL PREFIX MODE``.

``hold``: read entries, print their ids, never acknowledge them (until SIGKILLed).
``poison``: acknowledge every entry, but die with ``os._exit(9)`` on the payload ``poison``.
"""

from __future__ import annotations

import os
import sys
import time

import redis

from datapipelines.ingest.redis_queue import RedisStreamQueue


def main(url: str, prefix: str, mode: str) -> None:
    client = redis.Redis.from_url(url)
    queue = RedisStreamQueue(client, "parse", prefix=prefix, lease=0.5, max_deliveries=3)
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
    main(*sys.argv[1:4])
