"""``datapipelines ingest worker``: processes that work a distributed step, on any machine.

Each process loads the same ingest config, takes the step by name and runs a
:class:`~datapipelines.ingest.distributed.StepWorker` until SIGTERM (which
finishes the file in hand and hands the rest back at once). With several
processes a supervisor starts them, replaces those that die, and passes SIGTERM
and Ctrl-C on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from ..errors import ConfigurationError
from .config import IngestConfig, load_config
from .distributed import DistributedStep, StepWorker, open_started

LOGGER = logging.getLogger(__name__)


def distributed_step(config: IngestConfig, name: str) -> DistributedStep:
    """The distributed step ``name`` of ``config``, or a ConfigurationError listing those there are."""
    step = config.targets.get(name)
    if isinstance(step, DistributedStep):
        return step
    known = sorted(n for n, t in config.targets.items() if isinstance(t, DistributedStep))
    raise ConfigurationError(
        f"ingest config {config.path}: no distributed step named {name!r} "
        f"(distributed steps have a queue = ...; here: {', '.join(known) or 'none'})"
    )


def check_reachable(step: DistributedStep) -> None:
    """Raise QueueUnavailableError now, once, rather than in every worker process."""
    open_started(step.url, step.name, **step.queue_options).close()


def work(config_path: str, step_name: str, consumer: str | None, count: int | None) -> dict[str, Any]:
    """Work ``step_name`` in this process until SIGTERM or SIGINT; the step's counters then."""
    step = distributed_step(load_config(config_path), step_name)
    worker = StepWorker(step, consumer=consumer, count=count)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    worker.run()
    return step.report()


def _child(config_path: str, step_name: str, consumer: str | None, count: int | None, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work(config_path, step_name, consumer, count)


def supervise(
    config_path: str, step_name: str, processes: int, consumer: str | None, count: int | None
) -> int:
    """Run ``processes`` worker processes until SIGTERM or SIGINT, replacing any that dies; how many
    were replaced."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    state = {"stop": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: state.update(stop=True))

    def spawn(number: int) -> Any:
        name = None if consumer is None else f"{consumer}-{number}"
        process = context.Process(
            target=_child,
            args=(config_path, step_name, name, count, level),
            name=f"ingest-worker-{step_name}",
        )
        process.start()
        return process

    children = [spawn(number) for number in range(1, processes + 1)]
    restarts = 0
    while not state["stop"]:
        for index, process in enumerate(children):
            if not process.is_alive() and not state["stop"]:
                process.join()
                restarts += 1
                LOGGER.warning("Worker %d of step %s ended (exit code %s); starting another",
                               process.pid, step_name, process.exitcode)  # fmt: skip
                children[index] = spawn(index + 1)
        time.sleep(0.2)
    for process in children:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in children:
        process.join()
    return restarts
