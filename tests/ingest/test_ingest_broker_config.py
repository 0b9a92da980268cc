"""Brokers in the ingest TOML: a message goes from MQTT or AMQP through the folder to the archive.
Also MessageFiles' crash rule and its checks, and the extra named when a broker client is missing."""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
from pathlib import Path

import pytest

from datapipelines.errors import ConfigurationError
from datapipelines.extras import MissingExtraError
from datapipelines.ingest.amqp_listener import AmqpListener
from datapipelines.ingest.config import load_config
from datapipelines.ingest.message_files import MessageFiles
from datapipelines.ingest.mqtt_listener import MqttListener
from tests.support.brokers import amqp_publish, amqp_url, client_for, mqtt_publish, mqtt_url, queue, topic  # noqa: F401
from tests.support.ingest import files_under, wait_for

CONFIG = """
[listener]
watch = "incoming"
settle = 0.1

[router]
no_match = "delete"

[[rule]]
kind = "fnmatch"
pattern = "*.json"
targets = ["archive"]

[[archive]]
name = "archive"
root = "archive"
template = "{{original_basename}}"

[[broker]]
kind = "mqtt"
url = "{mqtt}"
topics = ["{topic}"]
client_id = "{client}"
name = "{{source}}-{{id}}.json"

[[broker]]
kind = "amqp"
url = "{amqp}"
queue = "{queue}"
name = "{{id}}.json"
prefetch = 10
"""


def write_config(folder: Path, **values: str) -> Path:
    (folder / "incoming").mkdir(exist_ok=True)
    path = folder / "ingest.toml"
    path.write_text(CONFIG.format(**values))
    return path


def test_messages_from_both_brokers_of_a_config_reach_the_archive(
    tmp_path: Path,
    mqtt_url: str,  # noqa: F811
    amqp_url: str,  # noqa: F811
    topic: str,  # noqa: F811
    queue: str,  # noqa: F811
) -> None:
    client = client_for(topic)
    path = write_config(tmp_path, mqtt=mqtt_url, amqp=amqp_url, topic=topic, client=client, queue=queue)
    config = load_config(path)
    assert [type(b) for b in config.brokers] == [MqttListener, AmqpListener]
    with config.build() as ingest:
        mqtt_publish(mqtt_url, topic, b'{"t": 21.5}', message_id="r1")
        amqp_publish(amqp_url, queue, b'{"order": 7}', message_id="o7")
        wait_for(lambda: len(files_under(tmp_path / "archive")) == 4, timeout=30)  # two files, two .tags
        assert ingest.wait_idle(30)
        brokers = ingest.report()["brokers"]
    source = topic.replace("/", "_")
    archived = sorted(p.name for p in files_under(tmp_path / "archive") if not p.name.endswith(".tags"))
    assert archived == sorted([f"{source}-r1.json", "o7.json"])
    assert (tmp_path / "archive" / "o7.json").read_bytes() == b'{"order": 7}'
    assert brokers[f"mqtt-{client_for(topic)}"]["written"] == 1 and brokers[f"amqp-{queue}"]["written"] == 1


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "kafka"', r"broker\[0\]\.kind: has an impossible value 'kafka'"),
        ('kind = "mqtt"\nurl = "mqtt://h"\nclient_id = "c"', r"broker\[0\]\.topics: is required"),
        ('kind = "mqtt"\nurl = "mqtt://h"\ntopics = ["t"]', r"broker\[0\]\.client_id: is required"),
        ('kind = "amqp"\nurl = "amqp://h"\nqueue = "q"\ntopics = ["t"]', r"broker\[0\]\.topics: unknown key"),
        ('kind = "amqp"\nurl = "amqp://h"\nqueue = "q"\nname = "x.json"', r"broker\[0\]: .*must hold \{id\}"),
        ('kind = "mqtt"\nurl = "http://h"\ntopics = ["t"]\nclient_id = "c"', r"broker\[0\]: .*'http://h' is"),
    ],
)
def test_a_bad_broker_table_names_the_file_and_key(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "incoming").mkdir()
    path = tmp_path / "ingest.toml"
    path.write_text(f'[listener]\nwatch = "incoming"\n[router]\nno_match = "delete"\n[[broker]]\n{table}\n')
    with pytest.raises(ConfigurationError, match=rf"ingest config {re.escape(str(path))}: {message}"):
        load_config(path)


def test_a_marker_without_its_rename_is_finished_by_the_redelivery(tmp_path: Path) -> None:
    files = MessageFiles(tmp_path, name="{id}.bin")
    # What a kill between the marker and the rename leaves: the complete temporary file and its marker.
    (tmp_path / ".m1.bin.part").write_bytes(b"payload")
    (tmp_path / ".received" / "m1").touch()
    assert files.write("m1", b"payload") is False  # recognised: not written again, only renamed
    assert (tmp_path / "m1.bin").read_bytes() == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".received", "m1.bin"]


def test_a_file_half_written_before_a_kill_is_written_again_whole(tmp_path: Path) -> None:
    files = MessageFiles(tmp_path, name="{id}.bin")
    (tmp_path / ".m1.bin.part").write_bytes(b"pay")  # no marker yet: the content may be incomplete
    assert files.write("m1", b"payload") is True
    assert (tmp_path / "m1.bin").read_bytes() == b"payload"


def test_markers_are_forgotten_after_remember_seconds(tmp_path: Path) -> None:
    files = MessageFiles(tmp_path, remember=60)
    assert files.write("old", b"1") and files.write("new", b"2")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / ".received" / "old", (an_hour_ago, an_hour_ago))
    assert files.prune() == 1
    os.unlink(tmp_path / "old")
    assert files.write("old", b"1") is True  # outside the window: a new message
    assert files.write("new", b"2") is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "fixed"}, "must hold {id}"),
        ({"name": "{id}/x"}, "no '/'"),
        ({"name": ".{id}"}, "not start with '.'"),
        ({"name": "{id}-{topic}"}, "the fields are {id} and {source}"),
        ({"remember": 0}, "remember must be > 0"),
    ],
)
def test_impossible_file_rules_are_refused(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        MessageFiles(tmp_path, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "client", "extra"),
    [
        ("datapipelines.ingest.nats_queue", "nats", "datapipelines[nats]"),
        ("datapipelines.ingest.mqtt_listener", "paho", "datapipelines[mqtt]"),
        ("datapipelines.ingest.amqp_listener", "pika", "datapipelines[amqp]"),
    ],
)
def test_a_missing_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, client: str, extra: str
) -> None:
    for name in [m for m in sys.modules if m == client or m.startswith(client + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, client, None)  # what an uninstalled package looks like to import
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=re.escape(f'pip install "{extra}"')):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)
