"""Routing rules, mfdata's kinds: equal, notequal, fnmatch, notfnmatch, regex, notregex, always, python."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..config import read_toml, resolve
from ..errors import ConfigurationError
from .files import ORIGINAL_BASENAME, IncomingFile

# IncomingFile fields a rule may test instead of a tag.
ATTRIBUTES = ("name", "uid", "size", "mtime", "attempt", "path", "listener")


def _matcher(kind: str, pattern: Any) -> Callable[[str], bool]:
    if kind in ("equal", "notequal"):
        return lambda value: value == str(pattern)
    if kind in ("fnmatch", "notfnmatch"):
        return lambda value: fnmatch.fnmatchcase(value, str(pattern))
    if kind in ("regex", "notregex"):
        compiled = re.compile(str(pattern))
        return lambda value: compiled.match(value) is not None
    raise ConfigurationError(f"unknown rule kind {kind!r}; kinds are {', '.join(KINDS)}")


KINDS = ("equal", "notequal", "fnmatch", "notfnmatch", "regex", "notregex", "always", "python")


def _constructor(kind: str) -> Any:
    def build(cls: Any, pattern: str, *targets: Any, on: str = ORIGINAL_BASENAME) -> Rule:
        return cls(kind, pattern, targets, on)

    build.__name__ = kind
    build.__doc__ = f"A {kind} rule: files whose tag (or attribute) ``on`` passes {kind} ``pattern``."
    return classmethod(build)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Send files matching ``pattern`` (as ``kind`` reads it) on ``on`` to ``targets``.

    ``on`` names a tag (default ``first.core.original_basename``) or an
    IncomingFile attribute (``name``, ``size``, ...). A ``python`` rule's pattern
    is a callable taking the IncomingFile. A file whose tag is missing matches no
    rule on that tag, negated or not.
    """

    kind: str
    pattern: Any
    targets: tuple[Any, ...]
    on: str = ORIGINAL_BASENAME
    _test: Callable[[str], bool] | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigurationError(f"unknown rule kind {self.kind!r}; kinds are {', '.join(KINDS)}")
        targets = self.targets if isinstance(self.targets, (list, tuple)) else (self.targets,)
        object.__setattr__(self, "targets", tuple(targets))
        if self.kind == "python" and not callable(self.pattern):
            raise ConfigurationError(f"a python rule needs a callable, got {self.pattern!r}")
        if self.kind not in ("always", "python"):
            object.__setattr__(self, "_test", _matcher(self.kind, self.pattern))

    def matches(self, file: IncomingFile) -> bool:
        if self.kind == "always":
            return True
        if self.kind == "python":
            return bool(self.pattern(file))
        value = getattr(file, self.on) if self.on in ATTRIBUTES else file.tags.get(self.on)
        if value is None:
            return False
        assert self._test is not None
        return self._test(str(value)) != self.kind.startswith("not")

    # mfdata's names, as constructors: Rule.fnmatch("A*", archive), Rule.always(archive)
    equal = _constructor("equal")
    notequal = _constructor("notequal")
    fnmatch = _constructor("fnmatch")
    notfnmatch = _constructor("notfnmatch")
    regex = _constructor("regex")
    notregex = _constructor("notregex")

    @classmethod
    def always(cls, *targets: Any) -> Rule:
        return cls("always", None, targets)

    @classmethod
    def python(cls, function: Callable[[IncomingFile], bool], *targets: Any) -> Rule:
        return cls("python", function, targets)


def load_callable(reference: str, where: str) -> Callable[..., Any]:
    """The function ``"module:function"`` names (see :func:`datapipelines.config.resolve`); a
    ConfigurationError naming ``where`` otherwise."""
    try:
        found = resolve(reference)
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from error.__cause__
    if not callable(found):
        raise ConfigurationError(f"{where}: {reference!r} is not callable")
    return found  # type: ignore[no-any-return]


def rules_from_tables(tables: Any, targets: Mapping[str, Any], where: str, key: str = "rule") -> list[Rule]:
    """Rules from parsed TOML ``[[rule]]`` tables; errors name ``where`` and the key."""
    if not isinstance(tables, Sequence) or isinstance(tables, str):
        raise ConfigurationError(f"{where}: {key} must be an array of tables ([[{key}]])")
    rules = []
    for index, table in enumerate(tables):
        at = f"{where}: {key}[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{at} must be a table")
        unknown = set(table) - {"kind", "pattern", "on", "targets", "function"}
        if unknown:
            raise ConfigurationError(f"{at}: unknown key {sorted(unknown)[0]!r}")
        kind = table.get("kind")
        if kind not in KINDS:
            raise ConfigurationError(f"{at}.kind: unknown rule kind {kind!r}; kinds are {', '.join(KINDS)}")
        names = table.get("targets")
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names:
            raise ConfigurationError(f"{at}.targets: a non-empty list of target names is required")
        missing = [n for n in names if n not in targets]
        if missing:
            raise ConfigurationError(
                f"{at}.targets: no step or archive named {missing[0]!r} (known: {', '.join(sorted(targets))})"
            )
        pattern: Any = table.get("pattern")
        if kind == "python":
            pattern = load_callable(table.get("function", pattern), f"{at}.function")
        elif kind != "always" and not isinstance(pattern, str):
            raise ConfigurationError(f"{at}.pattern: a string is required for a {kind} rule")
        try:
            rules.append(
                Rule(kind, pattern, tuple(targets[n] for n in names), str(table.get("on", ORIGINAL_BASENAME)))
            )
        except (ConfigurationError, re.error) as error:
            raise ConfigurationError(f"{at}.pattern: {error}") from error
    return rules


def load_rules(path: str, targets: Mapping[str, Any]) -> list[Rule]:
    """The ``[[rule]]`` tables of the TOML file at ``path``."""
    data = read_toml(path, f"rules file {path}")
    return rules_from_tables(data.get("rule", []), targets, f"rules file {path}")
