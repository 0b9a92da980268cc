"""The ``[[broker]]`` tables of an ingest config: MQTT and AMQP listeners writing into the watched folder.

Each kind loads its client only when a table asks for it, so a config without
brokers needs neither extra.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .broker_listener import BrokerListener

_COMMON = ("kind", "url", "name", "remember", "label")
_NUMBER = (int, float)


def broker_from_table(reader: Any, incoming: str) -> BrokerListener:
    """The listener one ``[[broker]]`` table describes; ``reader`` is the config's table reader."""
    kind = reader.get("kind", str, check=lambda v: v in ("mqtt", "amqp"))
    shared = {
        "name": reader.get("name", str, "{id}"),
        "remember": float(reader.get("remember", _NUMBER, 7 * 86400.0, check=lambda v: v > 0)),
        "label": reader.get("label", str, None),
    }
    try:
        if kind == "mqtt":
            reader.only(*_COMMON, "topics", "client_id", "session_expiry")
            from .mqtt_listener import MqttListener

            return MqttListener(
                incoming,
                reader.get("url", str),
                reader.get("topics", list),
                client_id=reader.get("client_id", str),
                session_expiry=reader.get("session_expiry", int, 7 * 86400, check=lambda v: v >= 0),
                **shared,
            )
        reader.only(*_COMMON, "queue", "prefetch", "declare")
        from .amqp_listener import AmqpListener

        return AmqpListener(
            incoming,
            reader.get("url", str),
            reader.get("queue", str),
            prefetch=reader.get("prefetch", int, 100, check=lambda v: v >= 1),
            declare=reader.get("declare", bool, True),
            **shared,
        )
    except ConfigurationError as error:
        raise reader.error("", str(error)) from None
