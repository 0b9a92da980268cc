"""Router: the sink that sends each incoming file where its rules say."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from .files import ORIGINAL_UID, IncomingFile, work_name
from .policies import FailurePolicy, link_or_copy
from .rules import Rule, load_rules
from .stats import Counters, tracker_for
from .targets import Target

LOGGER = logging.getLogger(__name__)


class Router(Target):
    """Evaluate every rule on a file and send it to the union of their targets.

    One target gets the file itself; several each get a hard link (a copy across
    filesystems) in their own work folder, under the derived uid ``<uid>.<n>``.
    A file no rule matches gets the ``no_match`` policy (``FailurePolicy.keep(dir)``
    writes it and its tags there, ``.delete()`` drops it).

    ``rules`` is a list of :class:`Rule` or the path of a TOML rules file; a file
    is reloaded in place when it changes (checked every ``reload_every``
    seconds); a broken file keeps the rules in force, logged and counted in
    ``rule_errors``. ``targets`` names the targets a rules file may refer to.
    """

    def __init__(
        self,
        rules: Sequence[Rule] | str | os.PathLike[str],
        *,
        no_match: FailurePolicy,
        targets: Mapping[str, Target] | Sequence[Target] = (),
        name: str = "router",
        reload_every: float = 1.0,
    ) -> None:
        if not isinstance(no_match, FailurePolicy):
            raise ConfigurationError(f"Router no_match must be a FailurePolicy, got {no_match!r}")
        self.name = name
        self.no_match = no_match
        self.reload_every = reload_every
        named = targets if isinstance(targets, Mapping) else {t.name: t for t in targets}
        self._named: dict[str, Target] = dict(named)
        self.counters = Counters("routed_files", "no_match", "rule_errors", "reloads")
        self._lock = threading.Lock()
        self._rules_path: str | None = None
        self._signature: tuple[int, int] | None = None
        self._checked = 0.0
        if isinstance(rules, (str, os.PathLike)):
            self._rules_path = os.fspath(rules)
            self._signature = self._stat()
            self._rules = load_rules(self._rules_path, self._named)
        else:
            self._rules = list(rules)
        self._check_targets(self._rules)

    def __repr__(self) -> str:
        return f"Router({self.name!r})"

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def replace_rules(self, rules: Sequence[Rule]) -> None:
        """Put ``rules`` in force from the next file on (a rules file, if any, still reloads over them)."""
        self._check_targets(rules)
        self._rules = list(rules)

    @staticmethod
    def _check_targets(rules: Sequence[Rule]) -> None:
        for rule in rules:
            for target in rule.targets:
                if not isinstance(target, Target):
                    raise ConfigurationError(f"rule targets must be ingest targets, got {target!r}")

    def targets(self) -> list[Target]:
        found: dict[int, Target] = {id(t): t for t in self._named.values()}
        for rule in self._rules:
            for target in rule.targets:
                found.setdefault(id(target), target)
        return list(found.values())

    # -- rules file -------------------------------------------------------------------
    def _stat(self) -> tuple[int, int] | None:
        assert self._rules_path is not None
        try:
            info = os.stat(self._rules_path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def reload(self) -> bool:
        """Read the rules file again if it changed; True when new rules are in force."""
        if self._rules_path is None:
            return False
        with self._lock:
            self._checked = time.monotonic()
            signature = self._stat()
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                rules = load_rules(self._rules_path, self._named)
            except ConfigurationError as error:
                self.counters.add("rule_errors")
                LOGGER.error("Keeping the previous rules: %s", error)
                return False
            self._rules = rules
            self.counters.add("reloads")
            LOGGER.info("Reloaded %d rules from %s", len(rules), self._rules_path)
            return True

    # -- routing ------------------------------------------------------------------------
    def select(self, file: IncomingFile) -> list[Target]:
        """The union of the targets of every rule ``file`` matches, in rule order."""
        chosen: dict[int, Target] = {}
        for rule in self._rules:
            try:
                matched = rule.matches(file)
            except Exception as error:
                self.counters.add("rule_errors")
                LOGGER.warning("Rule %s %r failed on %r: %r", rule.kind, rule.pattern, file.name, error)
                continue
            if matched:
                for target in rule.targets:
                    chosen.setdefault(id(target), target)
        return list(chosen.values())

    def handle(self, file: IncomingFile) -> None:
        try:
            self._route(file)
        except Exception:
            # Left in the work folder and released: the next reconcile scan routes it again.
            tracker_for(file.work).finished(file.uid)
            raise

    def _route(self, file: IncomingFile) -> None:
        if self._rules_path is not None and time.monotonic() - self._checked >= self.reload_every:
            self.reload()
        targets = self.select(file)
        self.counters.add("routed_files")
        if not targets:
            self.counters.add("no_match")
            self.no_match.apply(file, step=self.name, reason="no rule matched")
            return
        for target in targets:
            self.counters.routed(target.name)
        if len(targets) == 1:
            targets[0].handle(file)
            return
        for target, copy in zip(targets, self._copies(file, targets), strict=True):
            target.handle(copy)

    def _copies(self, file: IncomingFile, targets: list[Target]) -> list[IncomingFile]:
        """One file per target under derived uids, each in its target's work folder; the original goes."""
        tracker = tracker_for(file.work)
        copies = []
        for number, target in enumerate(targets, 1):
            uid = f"{file.uid}.{number}"
            folder = os.path.join(file.work, target.name)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, work_name(uid, file.name))
            tracker.claimed(uid)
            if not os.path.exists(path):
                link_or_copy(file.path, path)
            copies.append(file.with_tags({ORIGINAL_UID: file.original_uid}, uid=uid, path=path))
        os.unlink(file.path)
        tracker.finished(file.uid)
        return copies

    def report(self) -> dict[str, Any]:
        return self.counters.snapshot()
