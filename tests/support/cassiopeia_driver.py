"""A Cassiopeia 5.x program, written as its users write them, run offline.

tests/core/test_cassiopeia.py runs this script in a venv holding Cassiopeia,
cassiopeia-diskstore and this project in the place of datapipelines 1.x. The
Riot API is a local HTTP server with canned answers: every request Cassiopeia's
``requests`` transport sends to ``https://<host>/<path>`` goes to
``http://127.0.0.1:<port>/<host>/<path>`` instead, so Cassiopeia's own code,
``requests`` and a real socket all run; nothing leaves the machine.

It prints one JSON object saying what happened, which the test checks.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests.adapters

PLATFORM_HOST = "euw1.api.riotgames.com"
SUMMONERS = {
    "puuid-ann": {
        "id": "id-ann",
        "name": "Ann",  # cassiopeia-diskstore keys summoners by name too
        "accountId": "account-ann",
        "puuid": "puuid-ann",
        "profileIconId": 7,
        "revisionDate": 1700000000000,
        "summonerLevel": 321,
    }
}
SUMMONER_PATH = f"/{PLATFORM_HOST}/lol/summoner/v4/summoners/by-puuid/"


class FakeRiotAPI(BaseHTTPRequestHandler):
    """Answers summoner-by-puuid from SUMMONERS (404 otherwise); logs path and API key."""

    calls: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.calls.append((self.path, self.headers.get("X-Riot-Token")))
        puuid = self.path[len(SUMMONER_PATH) :] if self.path.startswith(SUMMONER_PATH) else None
        found = SUMMONERS.get(puuid) if puuid else None
        status = 200 if found else 404
        body = found if found else {"status": {"message": "Data not found", "status_code": 404}}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def route_to(port: int) -> None:
    """Send every request of ``requests`` to the local server, keeping host and path in the path."""
    send = requests.adapters.HTTPAdapter.send

    def to_local(self: Any, request: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        request.url = f"http://127.0.0.1:{port}/{parts.netloc}{parts.path}" + (
            f"?{parts.query}" if parts.query else ""
        )
        return send(self, request, **kwargs)

    requests.adapters.HTTPAdapter.send = to_local  # type: ignore[method-assign]


def api_calls() -> int:
    return len(FakeRiotAPI.calls)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRiotAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    route_to(server.server_address[1])

    import cassiopeia as cass
    from cassiopeia import Summoner
    from cassiopeia.datastores import Cache, Kernel
    from cassiopeia.datastores.kernel.common import KernelSource
    from cassiopeia_diskstore import SimpleKVDiskStore

    import datapipelines

    report: dict[str, Any] = {
        "datapipelines_version": getattr(datapipelines, "__version__", "1.x"),
        "datapipelines_file": datapipelines.__file__,
    }
    disk = tempfile.mkdtemp(prefix="cassiopeia-disk-")
    cass.apply_settings(
        {
            "global": {"version_from_match": "patch", "default_region": "EUW"},
            "plugins": {},
            "pipeline": {
                "Cache": {},
                "SimpleKVDiskStore": {"package": "cassiopeia_diskstore", "path": disk},
                "RiotAPI": {"api_key": "RGAPI-from-settings"},
            },
            "logging": {
                "print_calls": False,
                "print_riot_api_key": False,
                "default": "WARNING",
                "core": "WARNING",
            },
        }
    )
    # The first call of every Cassiopeia program: it walks RiotAPI._sources.values().
    cass.set_riot_api_key("RGAPI-set-by-program")
    pipeline = cass.configuration.settings.pipeline
    report["pipeline_elements"] = sorted(type(e).__name__ for e in pipeline._sinks)

    level = Summoner(puuid="puuid-ann", region="EUW").level
    sent_key = FakeRiotAPI.calls[-1][1]
    report["first_load"] = {"level": level, "api_calls": api_calls(), "api_key_sent": sent_key}

    level = Summoner(puuid="puuid-ann", region="EUW").level
    report["second_load"] = {"level": level, "api_calls": api_calls()}

    # With the memory cache emptied, the disk store answers.
    memory = next(e for e in pipeline._sinks if isinstance(e, Cache))
    for type_ in (Summoner, *Summoner._data_types, *(t._dto_type for t in Summoner._data_types)):
        memory.clear(type_)
    level = Summoner(puuid="puuid-ann", region="EUW").level
    report["from_disk"] = {"level": level, "api_calls": api_calls()}

    # expire_sinks drops only what has expired (nothing yet), through Cache and SimpleKVDiskStore.
    cass.configuration.settings.expire_sinks(Summoner)
    level = Summoner(puuid="puuid-ann", region="EUW").level
    report["after_expire"] = {"level": level, "api_calls": api_calls()}

    # clear_sinks empties every sink (SimpleKVDiskStore walks its _sinks.values()): the API again.
    cass.configuration.settings.clear_sinks(Summoner)
    disk_store = next(e for e in pipeline._sinks if isinstance(e, SimpleKVDiskStore))
    report["disk_services"] = len({s for sinks in disk_store._sinks.values() for s in sinks})
    level = Summoner(puuid="puuid-ann", region="EUW").level
    report["after_clear"] = {"level": level, "api_calls": api_calls()}

    missing = Summoner(puuid="puuid-nobody", region="EUW")
    try:
        report["missing"] = {"level": missing.level}
    except datapipelines.NotFoundError as error:
        exists = missing.exists
        report["missing"] = {"error": type(error).__name__, "exists": exists, "api_calls": api_calls()}
    report["paths"] = sorted({path for path, _ in FakeRiotAPI.calls})

    # A Kernel (Cassiopeia's proxy-server source) re-pointed: it walks Kernel._sources.values().
    kernel = Kernel(server_url="http://kernel.invalid", port=1)
    kernel.set_server_url_and_port("http://127.0.0.1", 8999)
    walked = {s for sources in kernel._sources.values() for s in sources}
    kernel_sources = {s for s in walked if isinstance(s, KernelSource)}
    report["kernel"] = {
        "sources": len(kernel_sources),
        "addresses": sorted({f"{s._server_url}:{s._port}" for s in kernel_sources}),
    }
    server.shutdown()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
