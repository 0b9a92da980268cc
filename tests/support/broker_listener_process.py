"""A broker listener process for tests/ingest/test_ingest_broker_listeners.py:
``python broker_listener_process.py KIND URL INCOMING SOURCE CLIENT`` with KIND ``mqtt`` (SOURCE a
topic, CLIENT the client id) or ``amqp`` (SOURCE a queue). Prints ``ready`` once connected; on
SIGTERM stops and prints its counters as JSON.
"""

from __future__ import annotations

import json
import signal
import sys
import threading


def main(kind: str, url: str, incoming: str, source: str, client: str) -> None:
    if kind == "mqtt":
        from datapipelines.ingest.mqtt_listener import MqttListener

        listener: object = MqttListener(incoming, url, [source], client_id=client, name="{id}.msg")
    else:
        from datapipelines.ingest.amqp_listener import AmqpListener

        listener = AmqpListener(incoming, url, source, name="{id}.msg")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener.start()  # type: ignore[attr-defined]
    print("ready" if listener.report()["connected"] else "not connected", flush=True)  # type: ignore[attr-defined]
    stop.wait()
    listener.stop()  # type: ignore[attr-defined]
    print(json.dumps(listener.report()), flush=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(*sys.argv[1:6])
