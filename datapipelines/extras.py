"""The optional parts and the extras that install what they need.

Using a part whose package is missing raises :class:`MissingExtraError`, an
ImportError that names the extra to install, instead of a bare
``No module named 'httpx'`` from deep inside the import.
"""

from __future__ import annotations

from typing import NoReturn

from .errors import DataPipelinesError

# Top-level module -> the extra of this project that installs it.
EXTRAS = {
    "httpx": "http",
    "sqlalchemy": "sql",
    "psycopg": "postgres",
    "opentelemetry": "otel",
    "prometheus_client": "prometheus",
    "nats": "nats",
    "paho": "mqtt",
    "pika": "amqp",
}


class MissingExtraError(DataPipelinesError, ImportError):
    """An optional part was used without the package it needs."""


def reraise_naming_extra(part: str, error: ImportError) -> NoReturn:
    """Raise ``error``, met while importing ``part``, as a MissingExtraError naming the extra
    that installs the missing module; as it is when no extra brings that module.

    Call it in the ``except`` clause of the optional import::

        try:
            import httpx
        except ImportError as error:
            reraise_naming_extra("HttpSource", error)
    """
    package = (error.name or "").partition(".")[0]
    extra = EXTRAS.get(package)
    if extra is None:
        raise error
    raise MissingExtraError(
        f'{part} needs {package}, which is not installed: pip install "datapipelines[{extra}]"',
        name=error.name,
    ) from error
