"""The message servers of this machine for the ingest tests: NATS JetStream, Mosquitto, RabbitMQ.

The URL fixtures skip when their server does not answer, except under CI, where a silent server fails
the run; ``topic`` and ``queue`` are names no other run uses, cleaned up afterwards.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

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


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def mqtt_publish(url: str, topic: str, payload: bytes, message_id: str | None = None) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(*_host_port(url))
    client.loop_start()
    properties = Properties(PacketTypes.PUBLISH)
    if message_id is not None:
        properties.UserProperty = ("message-id", message_id)
    client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def drop_mqtt_session(url: str, client_id: str) -> None:
    """End the persistent session a test's listener left on the broker."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(*_host_port(url), clean_start=True)
    client.disconnect()


def amqp_publish(url: str, queue: str, payload: bytes, message_id: str | None = None) -> None:
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        connection.channel().basic_publish(
            "", queue, payload, pika.BasicProperties(message_id=message_id, delivery_mode=2)
        )


@pytest.fixture
def topic(mqtt_url: str) -> Iterator[str]:
    name = f"dp-test/{uuid.uuid4().hex[:12]}"
    yield name
    drop_mqtt_session(mqtt_url, client_for(name))


def client_for(topic: str) -> str:
    return "dp-test-" + topic.rsplit("/", 1)[1]


@pytest.fixture
def queue(amqp_url: str) -> Iterator[str]:
    name = f"dp-test-{uuid.uuid4().hex[:12]}"
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        connection.channel().queue_declare(name, durable=True)
    yield name
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        connection.channel().queue_delete(name)
