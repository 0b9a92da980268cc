"""``python -m datapipelines.demo``: memory -> disk -> Redis -> a slow remote, cold then warm.

Fetches the same items three times through one pipeline and prints how long
each pass took and which tier answered: cold (everything from the remote),
warm (everything from memory), and as a freshly started process would (memory
empty, disk answers). Redis joins when ``REDIS_URL`` (or 127.0.0.1:6379)
answers; its keys live under a namespace unique to this run and are removed at
the end. The disk tier is ``demo-cache/`` in the working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from datapipelines import DataPipeline, DataSource, Store
from datapipelines.cli.audit import summary_text
from datapipelines.errors import element_name
from datapipelines.http import HttpSource
from datapipelines.progress import Progress
from datapipelines.sinks.audit import AuditRecorder
from datapipelines.sinks.disk import DiskStore
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore, redact_url
from datapipelines.testing import LocalServer
from datapipelines.transformers import DataclassTransformer, RawTransformer

ITEMS = 2_000
REMOTE_LATENCY = 0.001  # seconds per remote call
DEMO_DIRECTORY = "demo-cache"


@dataclasses.dataclass(frozen=True)
class Product:
    id: int
    name: str
    price_cents: int


class SlowCatalog(DataSource):
    """Stands in for a remote API: knows every product, and every call takes a while."""

    def __init__(self, latency: float = REMOTE_LATENCY) -> None:
        self.latency = latency
        self.calls = 0

    def __repr__(self) -> str:
        return "remote"

    @DataSource.dispatch
    def get(self, type: Any, query: Mapping[str, Any], context: Any = None) -> Any:
        raise NotImplementedError

    @DataSource.dispatch
    def get_many(self, type: Any, query: Mapping[str, Any], context: Any = None) -> Any:
        raise NotImplementedError

    @get.register(Product)
    def get_product(self, query: Mapping[str, Any], context: Any = None) -> Product:
        self.calls += 1
        time.sleep(self.latency)
        product_id = query["id"]
        return Product(product_id, f"product {product_id}", 100 + product_id % 900)


def connect_redis(namespace: str) -> RedisStore | None:
    """A RedisStore at REDIS_URL (default 127.0.0.1:6379), or None when nothing answers there."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    store = RedisStore(url, namespace=namespace, socket_timeout=1.0, socket_connect_timeout=0.5)
    try:
        store.client.ping()
    except (redis.RedisError, OSError) as error:
        store.close()
        print(f"Redis: skipped, nothing answers at {redact_url(url)} ({error})")
        return None
    return store


def build_tiers(redis_store: RedisStore | None) -> list[Store]:
    """Memory, then disk (emptied, so the first pass is really cold), then Redis if there is one."""
    disk = DiskStore(DEMO_DIRECTORY)
    disk.clear()
    tiers: list[Store] = [MemoryStore(maxsize=10_000), disk]
    return tiers + [redis_store] if redis_store is not None else tiers


def fetch_all(
    pipeline: DataPipeline, ids: range, label: str, query: Callable[[int], Any] = lambda i: {"id": i}
) -> float:
    """Get every product one by one with a progress bar; return the seconds it took."""
    start = time.perf_counter()
    with Progress(label, len(ids)) as bar:
        for product_id in ids:
            pipeline.get(Product, query(product_id))
            bar.advance()
    return time.perf_counter() - start


def run_pass(name: str, pipeline: DataPipeline, tiers: Sequence[Store]) -> dict[str, Any]:
    """One pass over every item: its time, the hits per tier and the remote calls it took."""
    pipeline.reset_stats()
    seconds = fetch_all(pipeline, range(ITEMS), name)
    stats = pipeline.stats()
    hits = {type(t).__name__: stats["tiers"][element_name(t)]["hits"] for t in tiers}
    remote = sum(source["calls"] for source in stats["sources"].values())
    return {"pass": name, "seconds": seconds, "hits": hits, "remote": remote}


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def print_report(results: list[dict[str, Any]], tiers: Sequence[Store]) -> None:
    names = [type(store).__name__ for store in tiers]
    header = f"{'pass':<26}{'total':>10}{'per item':>11}" + "".join(f"{n:>13}" for n in names)
    header += f"{'remote':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        row = f"{result['pass']:<26}{format_seconds(result['seconds']):>10}"
        row += f"{format_seconds(result['seconds'] / ITEMS):>11}"
        row += "".join(f"{result['hits'].get(n, 0):>13}" for n in names) + f"{result['remote']:>9}"
        print(row)
    cold, warm = results[0]["seconds"], results[1]["seconds"]
    print(f"\nwarm is {cold / warm:,.0f}x faster than cold: {format_seconds(cold)} -> {format_seconds(warm)}")


def product_query(product_id: int) -> dict[str, Any]:
    return {"path": "/products", "params": {"id": product_id}}


def http_pass(tiers: Sequence[Store], count: int = 200) -> None:
    """The same tiers in front of a real HTTP server on 127.0.0.1, recorded in an audit session,
    then replayed from the recorded bytes with the server gone."""
    catalog = SlowCatalog(latency=0)
    route = {"/products": lambda hit: dataclasses.asdict(catalog.get_product({"id": int(hit.params["id"])}))}
    audit = os.path.join(DEMO_DIRECTORY, "audit")
    shutil.rmtree(audit, ignore_errors=True)  # like the disk tier: every run starts cold
    converters = [RawTransformer(), DataclassTransformer(Product)]
    with LocalServer(route) as server, AuditRecorder(audit) as recorder:
        pipeline = DataPipeline([*tiers, recorder, HttpSource(server.url)], converters)
        print(f"\n{count} products over HTTP from {server.url}, recorded in audit session 'demo':")
        with pipeline.session("demo", meta={"items": count}) as session_id:
            for label in ("http cold", "http warm"):
                seconds = fetch_all(pipeline, range(count), label, product_query)
                print(f"{label:<16} {format_seconds(seconds):>10}  server requests: {len(server.hits)}")
        server.stop()
        offline = DataPipeline([MemoryStore(), recorder], converters)
        seconds = fetch_all(offline, range(count), "replay offline", product_query)
        print(f"{'replay offline':<16} {format_seconds(seconds):>10}  (server stopped, same objects)")
        print(summary_text(recorder, session_id))


def serve(pipeline: DataPipeline, address: str | None) -> Any:
    """With ``--serve [HOST]:PORT``: the pipeline's Prometheus metrics, served while the demo runs."""
    if address is None:
        return None
    from datapipelines.cli.stats import parse_address
    from datapipelines.prometheus import serve_metrics

    host, port = parse_address(address)
    server = serve_metrics(pipeline, port=port, addr=host)
    print(f"metrics: {server.url}")
    return server


def ingest_pass() -> None:
    """Files dropped into a folder: routed by rules, one step failing twice before it succeeds,
    archived with their tags, then the counters."""
    from datapipelines.cli.ingest import print_report
    from datapipelines.ingest import (
        ArchiveSink,
        DirectoryListener,
        FailurePolicy,
        Ingest,
        RetryPolicy,
        Router,
        Rule,
        Step,
    )

    root = os.path.join(DEMO_DIRECTORY, "ingest")
    shutil.rmtree(root, ignore_errors=True)
    incoming = os.path.join(root, "incoming")
    os.makedirs(incoming)
    failures = {"flaky.csv": 2}

    def parse(file: Any) -> None:
        if failures.get(file.name, 0) >= file.attempt:
            raise ValueError(f"{file.name}: attempt {file.attempt} fails")
        print(f"  parser: {file.name} parsed on attempt {file.attempt}")

    archive = ArchiveSink(os.path.join(root, "archive"), "%Y%m%d/{original_basename}")
    parser = Step(
        "parser",
        parse,
        retry=RetryPolicy(total=3, min_wait=0.2, max_wait=1.0),
        then=archive,
        failure=FailurePolicy.keep(os.path.join(root, "trash")),
    )
    router = Router(
        [Rule.regex(r".*\.csv$", parser), Rule.fnmatch("*.txt", archive)],
        no_match=FailurePolicy.keep(os.path.join(root, "nomatch")),
    )
    pipeline = DataPipeline([router])
    print(f"\nIngest: files dropped into {incoming}, *.csv -> parser -> archive, *.txt -> archive")
    with Ingest(pipeline, DirectoryListener(incoming, settle=0.2)) as ingest:
        for name in ("flaky.csv", "clean.csv", "notes.txt", "unknown.bin"):
            temporary = os.path.join(incoming, name + ".part")
            with open(temporary, "w") as handle:
                handle.write(f"contents of {name}\n")
            os.rename(temporary, os.path.join(incoming, name))
        ingest.wait_idle(30)
        report = ingest.report()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".tags") and "archive" in folder:
                with open(os.path.join(folder, name)) as handle:
                    tags = json.load(handle)
                attempt = tags.get("latest.core.attempt", "1")
                print(
                    f"  {os.path.relpath(os.path.join(folder, name), root)}: original "
                    f"{tags['first.core.original_basename']}, uid {tags['latest.core.uid']}, "
                    f"attempt {attempt}"
                )
            elif not name.startswith(".") and "archive" not in folder and "incoming" not in folder:
                print(f"  {os.path.relpath(os.path.join(folder, name), root)}")
    print()
    print_report(report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datapipelines.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="[HOST]:PORT", help="serve the pipeline's metrics until Ctrl-C")
    options = parser.parse_args(argv)
    namespace = f"datapipelines-demo-{uuid.uuid4().hex[:8]}"
    redis_store = connect_redis(namespace)
    tiers = build_tiers(redis_store)
    pipeline = DataPipeline([*tiers, SlowCatalog()], name="demo")
    server = serve(pipeline, options.serve)
    chain = " -> ".join([repr(store) for store in tiers] + [f"remote ({REMOTE_LATENCY * 1e3:g} ms a call)"])
    print(f"{ITEMS:,} products through {chain}\n")
    try:
        results = [run_pass("cold", pipeline, tiers), run_pass("warm", pipeline, tiers)]
        tiers[0].clear()  # as a new process would start: memory empty, disk and Redis still warm
        results.append(run_pass("new process (memory empty)", pipeline, tiers))
        print_report(results, tiers)
        http_pass(tiers)
        ingest_pass()
        if server is not None:
            from datapipelines.cli.stats import wait_for_interrupt

            print(f"\nmetrics at {server.url} until interrupted (Ctrl-C)", flush=True)
            wait_for_interrupt()
    finally:
        if server is not None:
            server.close()
        if redis_store is not None:
            redis_store.clear()
            redis_store.close()
            print(f"Redis: removed the demo keys ({namespace}:*)")
        tiers[1].close()  # type: ignore[attr-defined]
    print(f"Disk: values kept in {os.path.abspath(DEMO_DIRECTORY)} (`make clean` removes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
