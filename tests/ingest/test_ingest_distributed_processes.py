"""Distributed steps with real processes: SIGTERM hands entries back at once, a poison file is
dead-lettered, two machines never run one file at once, and 20,000 files survive kills and FLUSHALL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from datapipelines.ingest.config import load_config
from datapipelines.ingest.distributed import DistributedStep, queue_status
from tests.support.distributed import calls, environment, start_cli, stop, write_config
from tests.support.ingest import drop, wait_for
from tests.support.resilience import RedisServer, private_redis  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(300)


def count_archived(folder: Path) -> int:
    """Archived files (each has a sidecar beside it), counted without sorting 20,000 names."""
    return sum(1 for entry in os.scandir(folder) if not entry.name.endswith(".tags") and entry.is_file())


def archived(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tags"))


def step_of(config: Path) -> DistributedStep:
    step = load_config(config).targets["parse"]
    assert isinstance(step, DistributedStep)
    return step


def consumers(step: DistributedStep) -> dict[str, int]:
    """Each consumer's pending entries, as ``datapipelines ingest status`` shows them."""
    return {c["name"]: c["pending"] for c in queue_status(step)["consumers"]}


def worker(config: Path, env: dict[str, str], log: Path, *options: str) -> subprocess.Popen[bytes]:
    return start_cli(["ingest", "worker", str(config), "--step", "parse", *options], env, config.parent, log)


def test_sigterm_finishes_the_file_in_hand_and_hands_the_rest_back_at_once(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    config = write_config(
        tmp_path, redis_url, redis_namespace, "tests.support.distributed:record_slowly", lease=60
    )
    names = [f"s{i}" for i in range(10)]
    for name in names:
        drop(tmp_path / "incoming", name)
    env = environment(tmp_path / "calls.txt", DP_TEST_SLEEP="0.3")
    ingest = load_config(config).build()
    with ingest:
        step = step_of(config)
        first = worker(config, env, tmp_path / "first.log", "--consumer", "first", "--count", "10")
        wait_for(lambda: consumers(step).get("first") == 10, timeout=30)
        wait_for(lambda: calls(tmp_path / "calls.txt"), timeout=10)  # one file done, the next in hand
        stopped_at = time.time()
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0, (tmp_path / "first.log").read_text()
        took = time.time() - stopped_at
        handed_back = queue_status(step)["outstanding"]
        assert 0 < handed_back < 10
        with redis.Redis.from_url(redis_url) as client:  # handed back: their lease has run out already
            expired = client.xpending_range(f"{redis_namespace}:parse", "parse", "-", "+", 100, idle=59_000)
        assert len(expired) == handed_back
        second = worker(config, env, tmp_path / "second.log", "--consumer", "second")
        try:
            wait_for(lambda: len(archived(tmp_path / "archive")) == 10, timeout=30)
        finally:
            assert stop(second) == 0
        assert time.time() - stopped_at < 30  # far inside the lease
    assert took < 2.0  # the file in hand (0.3 s) and no more
    ran = calls(tmp_path / "calls.txt")
    assert sorted(Counter(uid for uid, *_ in ran).values()) == [1] * 10  # each file ran once
    by_first = [row for row in ran if row[1] == first.pid]
    assert len(by_first) == 10 - handed_back and max(end for *_, end in by_first) > stopped_at
    assert archived(tmp_path / "archive") == names


def test_a_file_that_kills_its_worker_is_dead_lettered_with_its_delivery_count(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    config = write_config(
        tmp_path,
        redis_url,
        redis_namespace,
        "tests.support.distributed:die_on_poison",
        lease=1.0,
        max_deliveries=3,
    )
    fine = [f"fine{i:03d}" for i in range(100)]
    for name in ["poison.bin", *fine]:
        drop(tmp_path / "incoming", name)
    env = environment(tmp_path / "calls.txt")
    workers = worker(config, env, tmp_path / "workers.log", "-n", "2", "--count", "5")
    step = step_of(config)

    def dead_list() -> str:
        result = run_cli("ingest", "dead", "list", str(config), "--step", "parse", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        with load_config(config).build() as ingest:
            wait_for(lambda: len(archived(tmp_path / "archive")) == 100 and queue_status(step)["dead"], 90)
            assert ingest.wait_idle(30)
            listing = dead_list()
            assert "poison.bin" in listing and " 3 " in listing
            kept = list((tmp_path / "trash").iterdir())
            assert [p.name.endswith("__poison.bin") for p in kept if not p.name.endswith(".tags")] == [True]
            tags = json.loads(next(p for p in kept if p.name.endswith(".tags")).read_text())
            assert tags["latest.core.reason"] == "delivered 3 times without an answer (max_deliveries 3)"

            wrong = run_cli("ingest", "dead", "drop", str(config), "--step", "parse", "0-1", cwd=tmp_path)
            assert wrong.returncode == 2 and "no dead letter '0-1'" in wrong.stderr
            assert "Traceback" not in wrong.stderr
            again = run_cli("ingest", "dead", "retry", str(config), "--step", "parse", "--all", cwd=tmp_path)
            assert again.returncode == 0 and "published again" in again.stdout, again.stderr
            assert not any(p.name.endswith("__poison.bin") for p in (tmp_path / "trash").iterdir())
            wait_for(lambda: queue_status(step)["dead"] == 1 and "poison.bin" in dead_list(), 90)
            dropped = run_cli("ingest", "dead", "drop", str(config), "--step", "parse", "--all", cwd=tmp_path)
            assert "1 dead letter(s) dropped" in dropped.stdout
            assert "no dead letters" in dead_list()
    finally:
        assert stop(workers) == 0, (tmp_path / "workers.log").read_text()
    assert archived(tmp_path / "archive") == fine
    assert any(p.name.endswith("__poison.bin") for p in (tmp_path / "trash").iterdir())


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datapipelines.cli", *arguments],
        cwd=cwd, env=environment(cwd / "calls.txt"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_two_machines_with_their_own_folders_never_run_one_file_at_once(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = write_config(shared, redis_url, redis_namespace, "tests.support.distributed:record_slowly")
    names = [f"m{i:04d}" for i in range(600)]
    for name in names:
        drop(shared / "incoming", name)
    env = environment(tmp_path / "calls.txt", DP_TEST_SLEEP="0.002")
    machines = []
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        log = tmp_path / name / "worker.log"
        arguments = ["ingest", "worker", str(config), "--step", "parse", "--consumer", name]
        machines.append(start_cli([*arguments, "--log-level", "INFO"], env, tmp_path / name, log))
    try:
        for log in (tmp_path / "alpha" / "worker.log", tmp_path / "beta" / "worker.log"):
            wait_for(lambda log=log: "reading from" in log.read_text(), 30)  # both read before files come
        with load_config(config).build() as ingest:
            wait_for(lambda: len(archived(shared / "archive")) == 600, 90)
            assert ingest.wait_idle(30)
    finally:
        for machine in machines:
            assert stop(machine) == 0
    ran = calls(tmp_path / "calls.txt")
    assert Counter(uid for uid, *_ in ran).most_common(1)[0][1] == 1  # no file ran twice, at once or not
    assert {pid for _, pid, *_ in ran} == {machine.pid for machine in machines}  # both machines worked
    assert archived(shared / "archive") == names


FILES = 20_000
BATCH = 20


def test_twenty_thousand_files_survive_worker_kills_a_listener_kill_and_flushall(
    tmp_path: Path,
    private_redis: RedisServer,  # noqa: F811
) -> None:
    config = write_config(
        tmp_path, private_redis.url, "dp", "tests.support.distributed:record", lease=2.0, reconcile_every=1.0
    )
    incoming = tmp_path / "incoming"
    names = [f"a{i:05d}.dat" for i in range(FILES)]
    payload = os.urandom(1024)
    past = time.time() - 60
    for name in names:
        path = incoming / name
        path.write_bytes(payload)
        os.utime(path, (past, past))
    env = environment(tmp_path / "calls.txt")
    logs = tmp_path / "logs"
    logs.mkdir()
    started = [0]

    def new_worker() -> subprocess.Popen[bytes]:
        started[0] += 1
        return worker(config, env, logs / f"worker{started[0]}.log", "--count", str(BATCH))

    def new_listener() -> subprocess.Popen[bytes]:
        return start_cli(["ingest", "run", str(config)], env, tmp_path, logs / "listener.log")

    workers = [new_worker(), new_worker()]
    listener = new_listener()
    client = redis.Redis.from_url(private_redis.url)
    try:
        wait_for(lambda: count_archived(tmp_path / "archive") >= 500, timeout=60, interval=0.05)
        # From then on, every 2 s a worker is killed and a replacement started; in between, the listener
        # dies once (and starts again), and Redis loses everything once.
        for number, event in enumerate(["kill", "listener", "kill", "flushall", "kill"], 1):
            # 1 s apart, or sooner on a fast machine: each event must find work still to do.
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and count_archived(tmp_path / "archive") < number * FILES // 8:
                time.sleep(0.05)
            done = count_archived(tmp_path / "archive")
            assert done < FILES, f"every file archived before the {event}: too late to count"
            if event == "kill":
                victim = workers.pop(0)
                victim.kill()
                victim.wait(10)
                workers.append(new_worker())
            elif event == "listener":
                listener.kill()
                listener.wait(10)
                listener = new_listener()
            else:
                wait_for(lambda: client.xlen("dp:parse") > 0, timeout=60)  # entries are lost, not none
                client.flushall()
        wait_for(lambda: count_archived(tmp_path / "archive") == FILES, timeout=200, interval=0.5)
        wait_for(lambda: not client.xlen("dp:parse") and not client.zcard("dp:parse:delayed"), timeout=30)
        time.sleep(1.5)  # a reconcile scan more: it must find nothing to publish again
    finally:
        assert stop(listener) == 0, (logs / "listener.log").read_text()[-3000:]
        for process in workers:
            assert stop(process) == 0
        client.close()

    archive = tmp_path / "archive"
    assert archived(archive) == names  # every file once: no uid-suffixed second copy
    required = {"first.core.original_basename", "first.core.original_uid", "first.core.received_at",
                "first.core.original_dirname", "0.parse.enter_step", "latest.core.uid"}  # fmt: skip
    for name in names:
        tags = json.loads((archive / f"{name}.tags").read_text())
        assert required <= set(tags) and tags["first.core.original_basename"] == name, tags
    left = [p for p in incoming.rglob("*") if p.is_file() and p.name != ".status.json"]
    assert left == []
    ran = Counter(uid for uid, *_ in calls(tmp_path / "calls.txt"))
    assert len(ran) == FILES
    again = sum(count - 1 for count in ran.values())
    # Each of the 3 killed workers held at most BATCH entries; FLUSHALL took the entries of the
    # files the 2 running workers held, which the reconcile scan then published again.
    assert again <= (3 + 2) * BATCH, again
    status = json.loads((incoming / ".work" / ".status.json").read_text())["ingest"]
    # The files FLUSHALL took were published again, and counted (the listener restarted before it).
    assert status["steps"]["parse"]["reprocessed"] >= 1
