"""MqttListener: every message of some MQTT topics becomes an incoming file (paho-mqtt, QoS 1).

The session is persistent (MQTT 5, clean start off, a session expiry) and
acknowledgements are manual: a message is acknowledged once its file is in the
folder for good, and one left unacknowledged by a listener that died is sent
again by the broker when the listener with the same ``client_id`` reconnects.
A message's id is its user property ``message-id`` when the publisher sets one,
otherwise a digest of its topic and payload.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ConfigurationError
from ..extras import reraise_naming_extra
from .broker_listener import BrokerListener
from .message_files import content_id

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError as error:
    reraise_naming_extra("MqttListener", error)

MESSAGE_ID = "message-id"


class MqttListener(BrokerListener):
    """Subscribe ``client_id`` to ``topics`` (QoS 1) on the broker at ``url``
    (``mqtt://[user:password@]host[:port]``, ``mqtts://`` for TLS) and write each message into
    ``incoming``. ``client_id`` names the persistent session: keep it stable across restarts,
    and give each listener its own. ``session_expiry``: seconds the broker keeps the session
    (and queues messages) while the listener is away."""

    kind = "mqtt"

    def __init__(
        self,
        incoming: str | os.PathLike[str],
        url: str,
        topics: Iterable[str],
        *,
        client_id: str,
        session_expiry: int = 7 * 86400,
        **options: Any,
    ) -> None:
        super().__init__(incoming, label=options.pop("label", None) or f"mqtt-{client_id}", **options)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigurationError(f"MqttListener: {url!r} is not an mqtt://host[:port] URL")
        self.topics = list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ConfigurationError(f"MqttListener: topics must be non-empty strings, got {self.topics!r}")
        if not client_id:
            raise ConfigurationError("MqttListener: client_id is required (it names the persistent session)")
        self.url, self.client_id, self.session_expiry = url, client_id, session_expiry
        self._address = (parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
        self._credentials = (parts.username, parts.password)
        self._tls = parts.scheme == "mqtts"

    def serve(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if self._credentials[0] is not None:
            client.username_pw_set(*self._credentials)
        if self._tls:
            client.tls_set()
        refused: list[str] = []

        def on_connect(client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
                return
            client.subscribe([(topic, 1) for topic in self.topics])

        def on_subscribe(_client: Any, _userdata: Any, _mid: Any, reasons: Any, _properties: Any) -> None:
            failed = [str(reason) for reason in reasons if reason.is_failure]
            if failed:
                refused.append(f"subscribing to {self.topics}: {failed[0]}")
            else:
                connected()  # only now: a message published from here on is ours

        def on_message(client: Any, _userdata: Any, message: Any) -> None:
            properties = dict(getattr(message.properties, "UserProperty", None) or [])
            message_id = properties.get(MESSAGE_ID) or content_id(message.topic, message.payload)
            self.take(message_id, message.payload, message.topic)
            client.ack(message.mid, message.qos)

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = self.session_expiry
        client.connect(*self._address, keepalive=30, clean_start=False, properties=session)
        try:
            while not stop.is_set():
                code = client.loop(timeout=0.2)
                if refused:
                    raise ConnectionError(f"the broker at {self.url} refused: {refused[0]}")
                if code != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"lost the broker at {self.url}: {mqtt.error_string(code)}")
        finally:
            client.disconnect()
