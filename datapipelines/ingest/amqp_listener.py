"""AmqpListener: every message of an AMQP 0-9-1 queue (RabbitMQ) becomes an incoming file (pika).

Acknowledgements are manual: a message is acknowledged once its file is in the
folder for good; a listener that dies before that closes its connection, and
the broker delivers the message again (to it once restarted, or to another).
A message's id is its ``message_id`` property when the publisher sets one,
otherwise a digest of its routing key and body.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from ..extras import reraise_naming_extra
from .broker_listener import BrokerListener
from .message_files import content_id

try:
    import pika
except ImportError as error:
    reraise_naming_extra("AmqpListener", error)


class AmqpListener(BrokerListener):
    """Consume ``queue`` on the broker at ``url`` (``amqp://user:password@host:port/vhost``, vhost
    ``/`` written ``%2F``) and write each message into ``incoming``. ``prefetch``: messages the
    broker sends ahead of their acknowledgements. ``declare``: declare ``queue`` durable if it
    does not exist."""

    kind = "amqp"

    def __init__(
        self,
        incoming: str | os.PathLike[str],
        url: str,
        queue: str,
        *,
        prefetch: int = 100,
        declare: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(incoming, label=options.pop("label", None) or f"amqp-{queue}", **options)
        if not queue:
            raise ConfigurationError("AmqpListener: queue is required")
        if prefetch < 1:
            raise ConfigurationError(f"AmqpListener: prefetch must be >= 1, got {prefetch}")
        try:
            self._parameters = pika.URLParameters(url)
        except Exception as error:
            raise ConfigurationError(f"AmqpListener: {url!r} is not an amqp:// URL: {error}") from None
        self.url, self.queue, self.prefetch, self.declare = url, queue, prefetch, declare

    def serve(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            if self.declare:
                channel.queue_declare(self.queue, durable=True)

            def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
                message_id = properties.message_id or content_id(method.routing_key, body)
                self.take(message_id, body, method.routing_key)
                channel.basic_ack(method.delivery_tag)

            channel.basic_consume(self.queue, on_message, auto_ack=False)
            connected()
            while not stop.is_set():
                connection.process_data_events(time_limit=0.2)
        finally:
            if connection.is_open:
                connection.close()
