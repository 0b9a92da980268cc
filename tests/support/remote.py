"""The one fake remote adapter of the suite (``RemoteSource(EchoAdapter())``): no network.

It answers every request with a payload naming the request's target: ``b"payload of
mem://a"`` as text/plain, or ``{"url": "mem://a"}`` as application/json with
``json=True``. A target ending in ``broken`` answers 500.
"""

from __future__ import annotations

from typing import Any

from datapipelines.remote import response_for


class EchoAdapter:
    def __init__(self, *, json: bool = False) -> None:
        self.json = json

    def fetch(self, request: Any) -> Any:
        target = request.target
        if self.json:
            payload, content_type = f'{{"url": "{target}"}}'.encode(), "application/json"
        else:
            payload, content_type = f"payload of {target}".encode(), "text/plain"
        status = 500 if target.endswith("broken") else 200
        return response_for(
            request, payload=payload, status_code=status, content_type=content_type, elapsed=0.002
        )
