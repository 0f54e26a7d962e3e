"""Label matchers as Prometheus and Alertmanager write them: ``name="v"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"``.

A label a series does not have matches as the empty string, as in PromQL. Regexes are
anchored (fully matched), as in PromQL and Alertmanager.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(".*"|[^"\s]*)\s*$')


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op in ("=", "!="):
            return (actual == self.value) == (self.op == "=")
        return bool(re.fullmatch(self.value, actual)) == (self.op == "=~")

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def parse_matcher(text: str) -> Matcher:
    """``'gpu="0"'`` -> ``Matcher("gpu", "=", "0")``; ``ValueError`` with the reason otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected a matcher string like gpu=\"0\", got {text!r}")
    match = _MATCHER.match(text)
    if match is None:
        raise ValueError(f'expected name="value" (or !=, =~, !~), got {text!r}')
    name, op, raw = match.groups()
    value = raw
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except ValueError:
            raise ValueError(f"bad quoted value in {text!r}") from None
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"bad regular expression in {text!r}: {err}") from None
    return Matcher(name, op, value)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
