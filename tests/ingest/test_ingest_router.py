"""Router: mfdata's rule kinds, the union of targets, copies under derived uids, rules files reloaded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from datapipelines.errors import ConfigurationError
from datapipelines.ingest import FailurePolicy, IncomingFile, Router, Rule, Step, Tags, Target, new_uid
from datapipelines.ingest.files import ORIGINAL_BASENAME, work_name
from tests.support.ingest import wait_for


class Collect(Target):
    def __init__(self, name: str) -> None:
        self.name = name
        self.files: list[IncomingFile] = []

    def handle(self, file: IncomingFile) -> None:
        self.files.append(file)


def claimed(work: Path, name: str, tags: dict[str, str] | None = None) -> IncomingFile:
    uid = new_uid()
    path = work / work_name(uid, name)
    path.write_bytes(b"data")
    return IncomingFile(
        str(path),
        name,
        uid,
        4,
        0.0,
        time.time(),
        1,
        Tags({ORIGINAL_BASENAME: name, **(tags or {})}),
        str(work),
    )


@pytest.mark.parametrize(
    ("kind", "pattern", "matches", "misses"),
    [
        ("equal", "a.txt", "a.txt", "b.txt"),
        ("notequal", "a.txt", "b.txt", "a.txt"),
        ("fnmatch", "A*", "Afoo", "bfoo"),
        ("notfnmatch", "A*", "bfoo", "Afoo"),
        ("regex", r".*\.csv$", "x.csv", "x.csvx"),
        ("notregex", r".*\.csv$", "x.txt", "x.csv"),
    ],
)
def test_rule_kinds(tmp_path: Path, kind: str, pattern: str, matches: str, misses: str) -> None:
    rule = Rule(kind, pattern, (Collect("t"),))
    assert rule.matches(claimed(tmp_path, matches))
    assert not rule.matches(claimed(tmp_path, misses))


def test_rules_on_attributes_other_tags_python_and_always(tmp_path: Path) -> None:
    file = claimed(tmp_path, "x.bin", {"first.mqtt.topic": "sensors/a"})
    target = Collect("t")
    assert Rule.fnmatch("sensors/*", target, on="first.mqtt.topic").matches(file)
    assert not Rule.fnmatch("*", target, on="missing.tag").matches(file)
    assert not Rule.notfnmatch("*", target, on="missing.tag").matches(file)
    assert Rule.equal("4", target, on="size").matches(file)
    assert Rule.python(lambda f: f.size == 4, target).matches(file)
    assert Rule.always(target).matches(file)
    with pytest.raises(ConfigurationError, match="unknown rule kind 'glob'"):
        Rule("glob", "*", (target,))


def test_every_rule_counts_and_several_targets_get_hard_linked_copies(tmp_path: Path) -> None:
    a, b = Collect("a"), Collect("b")
    router = Router([Rule.fnmatch("A*", a), Rule.regex(r".*\.csv$", b, a)], no_match=FailurePolicy.delete())
    file = claimed(tmp_path, "ABx.csv")
    router.handle(file)
    assert len(a.files) == 1 and len(b.files) == 1  # a matched twice but gets one copy
    copies = [a.files[0], b.files[0]]
    assert sorted(c.uid for c in copies) == [f"{file.uid}.1", f"{file.uid}.2"]
    assert all(c.tags["first.core.original_uid"] == file.uid for c in copies)
    assert not os.path.exists(file.path)
    assert os.path.samefile(a.files[0].path, b.files[0].path)  # one inode, two names
    assert Path(a.files[0].path).parent == tmp_path / "a" and Path(b.files[0].path).parent == tmp_path / "b"
    assert router.report()["routed"] == {"a": 1, "b": 1}


def test_one_target_gets_the_file_itself(tmp_path: Path) -> None:
    a = Collect("a")
    router = Router([Rule.always(a)], no_match=FailurePolicy.delete())
    file = claimed(tmp_path, "x")
    router.handle(file)
    assert a.files == [file]


def test_no_match_keep_and_delete(tmp_path: Path) -> None:
    kept = Router([], no_match=FailurePolicy.keep(tmp_path / "nomatch"))
    file = claimed(tmp_path, "lonely")
    kept.handle(file)
    entries = sorted(os.listdir(tmp_path / "nomatch"))
    assert entries == [f"{file.uid}__lonely", f"{file.uid}__lonely.tags"]
    dropped = Router([], no_match=FailurePolicy.delete())
    other = claimed(tmp_path, "gone")
    dropped.handle(other)
    assert not os.path.exists(other.path)
    assert dropped.report()["no_match"] == 1


RULES = """
[[rule]]
kind = "fnmatch"
pattern = "A*"
targets = ["a"]
"""


def test_a_rules_file_is_reloaded_in_place_and_a_broken_one_keeps_the_old_rules(tmp_path: Path) -> None:
    a, b = Collect("a"), Collect("b")
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    router = Router(rules, targets=[a, b], no_match=FailurePolicy.delete(), reload_every=0.0)
    router.handle(claimed(tmp_path, "A1"))
    assert len(a.files) == 1
    rules.write_text(RULES.replace('"a"', '"b"'))
    os.utime(rules, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    router.handle(claimed(tmp_path, "A2"))
    assert len(b.files) == 1 and router.report()["reloads"] == 1
    rules.write_text("[[rule]\nkind = ")  # broken TOML
    os.utime(rules, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    router.handle(claimed(tmp_path, "A3"))
    assert len(b.files) == 2  # the previous rules still apply
    assert router.report()["rule_errors"] == 1
    rules.write_text(RULES.replace('"a"', '"nowhere"'))
    os.utime(rules, ns=(time.time_ns() + 3 * 10**9, time.time_ns() + 3 * 10**9))
    router.handle(claimed(tmp_path, "A4"))
    assert len(b.files) == 3 and router.report()["rule_errors"] == 2


def test_a_broken_rules_file_at_start_names_the_file_and_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nkind = "glob"\npattern = "*"\ntargets = ["a"]\n')
    with pytest.raises(ConfigurationError, match=r"rules.toml: rule\[0\].kind: unknown rule kind 'glob'"):
        Router(rules, targets=[Collect("a")], no_match=FailurePolicy.delete())


def test_routing_feeds_a_running_step(tmp_path: Path) -> None:
    seen: list[str] = []
    step = Step("s", lambda f: seen.append(f.name))
    router = Router([Rule.always(step)], no_match=FailurePolicy.delete())
    router.handle(claimed(tmp_path, "one"))
    wait_for(lambda: seen == ["one"])
    step.stop()
