"""RawResponse to bytes, text and parsed JSON.

Every conversion checks the status first: a 404 raises NotFoundError, any other
non-2xx raises RemoteError, so an error page is never parsed into data.
"""

from __future__ import annotations

import codecs
import json
from abc import ABC
from typing import Any

from datapipelines.context import PipelineContext
from datapipelines.data_transformer import DataTransformer
from datapipelines.errors import DataPipelinesError
from datapipelines.remote import RawResponse, check_status


class JSON(ABC):  # noqa: B024 - a marker with no methods
    """The type of a parsed JSON document; its values are plain dicts and lists.

    ``pipeline.get(JSON, query)`` returns what ``json.loads`` returns;
    ``isinstance(value, JSON)`` holds for any dict or list.
    """


JSON.register(dict)
JSON.register(list)


class DecodeError(DataPipelinesError, ValueError):
    """A payload could not be decoded as the requested text or JSON."""


def charset_of(content_type: str | None, default: str = "utf-8") -> str:
    """The ``charset`` parameter of a Content-Type header, or ``default``."""
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"').lower()
    return default


def text_of(response: RawResponse) -> str:
    check_status(response)
    charset = charset_of(response.content_type)
    try:
        codecs.lookup(charset)
        return response.payload.decode(charset)
    except (LookupError, UnicodeDecodeError) as error:
        raise DecodeError(
            f"Cannot decode the {len(response.payload)}-byte payload of {response.url or response.target} "
            f"as {charset} (Content-Type {response.content_type!r}): {error}"
        ) from error


def json_of(response: RawResponse) -> Any:
    check_status(response)
    # JSON is UTF-8 unless the server names another charset (RFC 8259).
    charset = charset_of(response.content_type, default="")
    document: bytes | str = text_of(response) if charset and charset != "utf-8" else response.payload
    try:
        return json.loads(document)
    except ValueError as error:
        raise DecodeError(
            f"The payload of {response.url or response.target} is not JSON "
            f"(Content-Type {response.content_type!r}, {len(response.payload)} bytes): {error}"
        ) from error


class RawTransformer(DataTransformer):
    """RawResponse -> bytes (the payload), str (charset from Content-Type) and JSON."""

    @DataTransformer.dispatch
    def transform(self, target_type: Any, value: Any, context: PipelineContext | None = None) -> Any:
        """Convert a RawResponse."""

    @transform.register(RawResponse, bytes)
    def _to_bytes(self, value: RawResponse, context: PipelineContext | None = None) -> bytes:
        return check_status(value).payload

    @transform.register(RawResponse, str)
    def _to_str(self, value: RawResponse, context: PipelineContext | None = None) -> str:
        return text_of(value)

    @transform.register(RawResponse, JSON)
    def _to_json(self, value: RawResponse, context: PipelineContext | None = None) -> Any:
        return json_of(value)
