"""The message servers of this machine for the ingest tests: NATS JetStream, Mosquitto, RabbitMQ.

Each fixture skips when its server does not answer, except under CI, where a silent server fails the run.
"""

from __future__ import annotations

import os
import socket

import pytest

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
MQTT_URL = os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _answering(url: str, default_port: int) -> str:
    address = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = address.partition(":")
    try:
        with socket.create_connection((host, int(port or default_port)), timeout=0.5):
            return url
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but nothing answers at {url}")
        pytest.skip(f"nothing answers at {url}")


@pytest.fixture(scope="session")
def nats_url() -> str:
    return _answering(NATS_URL, 4222)


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    return _answering(MQTT_URL, 1883)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return _answering(AMQP_URL, 5672)
