"""MQTT and AMQP listeners on the real Mosquitto and RabbitMQ: a message becomes one file, even across a kill.

The kill tests run the listener as a process that ``os._exit``s after renaming the file and before the
acknowledgement (the hook DATAPIPELINES_INGEST_EXIT_BEFORE_ACK), then restart it: the broker delivers
the message again and the folder still holds one file for it, also when the first one was claimed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datapipelines.ingest.amqp_listener import AmqpListener
from datapipelines.ingest.message_files import EXIT_BEFORE_ACK, content_id
from datapipelines.ingest.mqtt_listener import MqttListener
from tests.support.brokers import amqp_publish, amqp_url, client_for, mqtt_publish, mqtt_url, queue, topic  # noqa: F401
from tests.support.ingest import wait_for

PROCESS = str(Path(__file__).resolve().parents[1] / "support" / "broker_listener_process.py")


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def start_listener(kind: str, url: str, incoming: Path, source: str, exit_before_ack: bool) -> Any:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    environment.pop(EXIT_BEFORE_ACK, None)
    if exit_before_ack:
        environment[EXIT_BEFORE_ACK] = "9"
    client = client_for(source) if kind == "mqtt" else ""
    process = subprocess.Popen(
        [sys.executable, PROCESS, kind, url, str(incoming), source, client],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def stop_listener(process: Any) -> dict[str, int]:
    """SIGTERM the listener; its counters."""
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


Publish = Callable[..., None]


@pytest.fixture(params=["mqtt", "amqp"])
def broker(request: pytest.FixtureRequest) -> tuple[str, str, str, Publish]:
    """(kind, url, topic or queue, publish) for one broker of this machine."""
    if request.param == "mqtt":
        url = request.getfixturevalue("mqtt_url")
        return "mqtt", url, request.getfixturevalue("topic"), mqtt_publish
    url = request.getfixturevalue("amqp_url")
    return "amqp", url, request.getfixturevalue("queue"), amqp_publish


@pytest.mark.parametrize("claimed_meanwhile", [False, True], ids=["left-in-folder", "claimed-meanwhile"])
def test_a_listener_killed_between_rename_and_ack_gets_the_message_again_and_keeps_one_file(
    broker: tuple[str, str, str, Publish], tmp_path: Path, claimed_meanwhile: bool
) -> None:
    kind, url, source, publish = broker
    incoming, claimed = tmp_path / "incoming", tmp_path / "claimed"
    incoming.mkdir()
    claimed.mkdir()
    first = start_listener(kind, url, incoming, source, exit_before_ack=True)
    publish(url, source, b"reading 1")
    assert first.wait(20) == 9  # died after the rename, before the acknowledgement
    first.stdout.close()
    [name] = visible_files(incoming)
    assert name == f"{content_id(source, b'reading 1')}.msg"
    assert (incoming / name).read_bytes() == b"reading 1"
    if claimed_meanwhile:  # the folder's DirectoryListener took it before the restart
        shutil.move(incoming / name, claimed / name)

    second = start_listener(kind, url, incoming, source, exit_before_ack=False)
    publish(url, source, b"reading 2")  # comes after the redelivery: once its file is there, both came
    later = f"{content_id(source, b'reading 2')}.msg"
    wait_for(lambda: (incoming / later).exists(), timeout=20)
    counters = stop_listener(second)
    assert counters["duplicates"] == 1 and counters["written"] == 1  # the redelivery was recognised
    assert visible_files(incoming) == ([later] if claimed_meanwhile else sorted([name, later]))
    assert visible_files(claimed) == ([name] if claimed_meanwhile else [])
    assert not [p for p in incoming.iterdir() if p.name.endswith(".part")]


def test_the_publisher_id_names_the_file_when_there_is_one(
    broker: tuple[str, str, str, Publish], tmp_path: Path
) -> None:
    kind, url, source, publish = broker
    if kind == "mqtt":
        listener: Any = MqttListener(tmp_path, url, [source], client_id=client_for(source), name="{id}.json")
    else:
        listener = AmqpListener(tmp_path, url, source, name="{id}.json")
    with listener:
        for _ in range(2):  # the same id twice: one file
            publish(url, source, b"{}", message_id="order-17")
        publish(url, source, b'{"a": 1}', message_id="a/../b c")
        wait_for(lambda: listener.report()["received"] == 3, timeout=20)
    unsafe = listener.files.safe_id("a/../b c")
    assert len(unsafe) == 32 and "/" not in unsafe
    assert visible_files(tmp_path) == sorted(["order-17.json", f"{unsafe}.json"])
    assert listener.report()["duplicates"] == 1


def test_a_message_whose_file_cannot_be_written_stays_with_the_broker_until_it_can(
    broker: tuple[str, str, str, Publish], tmp_path: Path
) -> None:
    kind, url, source, publish = broker
    incoming, away = tmp_path / "incoming", tmp_path / "away"
    incoming.mkdir()
    options: dict[str, Any] = {"name": "{id}.msg", "reconnect_delay": 0.2}
    if kind == "mqtt":
        listener: Any = MqttListener(incoming, url, [source], client_id=client_for(source), **options)
    else:
        listener = AmqpListener(incoming, url, source, **options)
    with listener:
        incoming.rename(away)  # the folder is gone (a lost mount): writing fails
        publish(url, source, b"reading 1", message_id="r1")
        wait_for(lambda: listener.report()["errors"] >= 1, timeout=20)
        assert listener.report()["written"] == 0
        away.rename(incoming)
        wait_for(lambda: listener.report()["written"] == 1, timeout=20)  # delivered again after a reconnect
        report = listener.report()
    assert (incoming / "r1.msg").read_bytes() == b"reading 1"
    assert report["errors"] >= 1 and report["duplicates"] == 0
    assert visible_files(incoming) == ["r1.msg"]
