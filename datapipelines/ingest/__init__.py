"""Ingest of incoming files: watch a folder, claim, route, process with retries, archive.

An incoming file is put into a pipeline: a :class:`DirectoryListener` claims it
(an atomic rename into a work folder under a uid) and calls
``pipeline.put(IncomingFile, file)``; the :class:`Router`, each :class:`Step`
and the :class:`ArchiveSink` are sinks. :class:`Ingest` runs them together and
reconciles the work folder at start. See docs/ingest.md.
"""

from .archive import ArchivedFile, ArchiveSink
from .engine import Ingest
from .files import IncomingFile, Tags, new_uid
from .listener import DEFAULT_IGNORE, DirectoryListener
from .policies import BatchPolicy, FailurePolicy, RetryPolicy
from .router import Router
from .rules import Rule, load_rules
from .step import Step
from .targets import Target
from .workers import WorkerPool, WorkQueue

__all__ = [
    "DEFAULT_IGNORE",
    "ArchiveSink",
    "ArchivedFile",
    "BatchPolicy",
    "DirectoryListener",
    "FailurePolicy",
    "IncomingFile",
    "Ingest",
    "RetryPolicy",
    "Router",
    "Rule",
    "Step",
    "Tags",
    "Target",
    "WorkQueue",
    "WorkerPool",
    "load_rules",
    "new_uid",
]
