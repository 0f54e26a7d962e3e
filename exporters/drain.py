"""Log template mining: masking plus the Drain algorithm, with JSON persistence.

Drain (He, Zhu, Zheng, Lyu: "Drain: An Online Log Parsing Approach with Fixed Depth Tree",
ICWS 2017) is the algorithm Drain3 implements. boxwatch carries its own small implementation
because the drain3 package pins library versions that conflict with the detector's dependencies.

How a message becomes a template:

1. ``mask()`` replaces variable parts (UUIDs, PCI and MAC addresses, IPs, URLs, paths, hex,
   timestamps, numbers, and words that carry digits) with typed placeholders such as ``<NUM>``.
2. The masked message is split on whitespace. A fixed-depth prefix tree routes it by its token
   count and then by its first ``depth - 2`` tokens (tokens with digits or placeholders go down a
   wildcard branch, and a node with ``max_children`` children sends the rest down it too).
3. In the leaf, the cluster with the highest similarity (share of equal tokens) wins if it reaches
   ``sim_threshold``; the template then keeps the tokens both agree on and replaces the others by a
   wildcard. Otherwise a new cluster (a new, never-seen template) starts.

Wildcards keep the constant part of a token where the differing values share a delimited prefix or
suffix (``rhost=<*>``, ``[<*>]``), which is what the template strings of the Loghub ground truth do.

``Drain.to_dict()`` / ``Drain.from_dict()`` persist the whole state as plain JSON, so cluster ids stay
stable across restarts. Clusters are capped (least recently used are dropped) so memory is bounded.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

WILDCARD = "<*>"
STATE_VERSION = 1

# Ordered: earlier patterns win. Each is (placeholder name, substrings one of which a match needs
# (a cheap test that skips the regex), regex).
_MASKS: list[tuple[str, tuple[str, ...], str]] = [
    ("UUID", ("-",), r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    ("URL", ("://",), r"(?<=://)[^\s\"'<>\[\](){}]+"),
    ("DATETIME", (":",), r"\b(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\w*,?\s+)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\w*"
                 r"\s+\d{1,2},?\s+\d{1,2}:\d{2}:\d{2}(?:\.\d+)?(?:\s+(?:[A-Z]{3,4}\s+)?\d{4}\b)?"),
    ("DATETIME", (":",), r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"),
    ("PCI", (":",), r"\b(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]\b"),
    ("PCI", ("PCI:",), r"(?<=PCI:)[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\b"),
    ("MAC", (":",), r"\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\b"),
    ("IP", (".",), r"(?<![\w.:])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"),
    ("IP", ("::", ":"), r"(?<![\w:])(?:(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}"
           r"|(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4})(?![\w:])"),
    ("PATH", ("/",), r"(?<![^\s=:,(\[\"'])(?:/[^\s/,;:()\[\]\"'=]+)+/?"),
    ("HEX", ("0x", "0X"), r"\b0[xX][0-9a-fA-F]+\b"),
    ("SIZE", ("B",), r"(?<![\w.])\d+(?:\.\d+)?\s?(?:[KMGTP]i?B)\b"),
]
_MASK_RE = [(f"<{name}>", needs, re.compile(pattern)) for name, needs, pattern in _MASKS]
# a word that carries a digit; _mask_word decides whether it is a variable
_DIGIT_WORD = re.compile(r"(?<![^\s=:,(\[\"'#@<>/])[-+]?[\w.\-@]*\d(?:[\w.\-@]*\w)?(?![^\s=:,.)\]\"';>/])")
_VARIABLE_WORD = re.compile(r"^[-+]?\d|\d{4}|[_.\-@]\d|\d[_.\-@]")
_NUMBER = re.compile(r"(?<![A-Za-z\d<])[-+]?\d+(?:\.\d+)?")
_PLACEHOLDER = re.compile(r"<[A-Z]+>|<\*>")
_HAS_VARIABLE = re.compile(r"\d|<[A-Z]+>|<\*>")
_DELIMITER = re.compile(r"[^A-Za-z0-9_]")
_PLACEHOLDER_RUN = re.compile(r"(<[A-Z]+>)(?: \1)+")


def _mask_word(match: re.Match) -> str:
    word = match.group()
    # ids such as blk_-123, rdd_2_3, 2.6.5-1.358, host names like n219076184117.example.com, sizes
    # like 64k are variables; names with a small trailing number (ssh2, tty2, eth0) are not
    return "<NUM>" if _VARIABLE_WORD.search(word) else word


def mask(message: str) -> str:
    """``message`` with its variable parts replaced by typed placeholders (``<IP>``, ``<NUM>``, ...)."""
    for placeholder, needs, pattern in _MASK_RE:
        if any(n in message for n in needs):
            message = pattern.sub(placeholder, message)
    message = _DIGIT_WORD.sub(_mask_word, message)
    message = _NUMBER.sub("<NUM>", message)
    # a list of values of one kind (``delete blk_1 blk_2 ...``) is one variable, whatever its length
    return _PLACEHOLDER_RUN.sub(r"\1", message)


def tokenize(message: str) -> list[str]:
    return message.split()


def to_generic(template: str) -> str:
    """The template with every placeholder written ``<*>``, as log-parsing ground truths write it."""
    text = template.replace("<DATETIME>", "<*>:<*>:<*>")  # as the Loghub ground truth writes one
    text = _PLACEHOLDER.sub(WILDCARD, text)
    prev = None
    while prev != text:
        prev = text
        text = re.sub(r"<\*>\.?<\*>", WILDCARD, text)
    return text


def merge_token(a: str, b: str) -> str:
    """Generalise two different tokens: keep a common prefix that ends, and a common suffix that
    starts, at a delimiter (``rhost=x`` + ``rhost=y`` -> ``rhost=<*>``); else ``<*>``."""
    if a == b:
        return a
    limit = min(len(a), len(b))
    prefix = 0
    for i in range(limit):
        if a[i] != b[i]:
            break
        if _DELIMITER.match(a[i]):
            prefix = i + 1
    # a wildcard or placeholder in the kept part would be split in half: only cut at its edges
    while prefix and "<" in a[:prefix] and a[:prefix].count("<") != a[:prefix].count(">"):
        prefix -= 1
    suffix = 0
    for i in range(1, limit - prefix + 1):
        if a[-i] != b[-i]:
            break
        if _DELIMITER.match(a[-i]):
            suffix = i
    while suffix and a[len(a) - suffix:].count("<") != a[len(a) - suffix:].count(">"):
        suffix -= 1
    if prefix == 0 and suffix == 0:
        return WILDCARD
    return a[:prefix] + WILDCARD + (a[len(a) - suffix:] if suffix else "")


_pattern_cache: dict[str, re.Pattern] = {}


def _token_pattern(token: str) -> re.Pattern:
    pattern = _pattern_cache.get(token)
    if pattern is None:
        if len(_pattern_cache) > 10000:
            _pattern_cache.clear()
        parts = token.split(WILDCARD)
        pattern = re.compile(".+?".join(re.escape(p) for p in parts) + r"\Z", re.S)
        _pattern_cache[token] = pattern
    return pattern


_BRACKETED = re.compile(r"([(\[{])[^()\[\]{}]*([)\]}])")
_WORDISH = re.compile(r"[\w.\-@<>*+]+")


def shape(token: str) -> str:
    """A token's punctuation skeleton: words, numbers and placeholders read ``a`` (``uid=(<NUM>)`` ->
    ``a=(a)``). Two tokens of different shapes are different kinds of thing, not two values of one
    variable, so a message that differs from a template in such a token starts a template of its own."""
    return _WORDISH.sub("a", _BRACKETED.sub(r"\1\2", token))


def token_matches(template_token: str, token: str) -> bool:
    """Whether ``token`` is an instance of ``template_token`` (which may hold ``<*>``)."""
    if template_token == token:
        return True
    if WILDCARD not in template_token:
        return False
    return _token_pattern(template_token).match(token) is not None


@dataclass
class Cluster:
    """One template. ``id`` is stable for the miner's life and across persistence."""

    id: int
    tokens: list[str]
    size: int = 0
    path: list[str] = field(default_factory=list)  # tree keys of its leaf, kept for persistence

    @property
    def template(self) -> str:
        return " ".join(self.tokens)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    clusters: list[int] = field(default_factory=list)


class Drain:
    """Online template miner. ``add(message)`` returns ``(cluster, is_new)``.

    Parameters
    ----------
    depth:
        depth of the prefix tree, counting the root and the token-count level (Drain's default 4:
        two leading tokens route a message).
    sim_threshold:
        minimum share of equal tokens for a message to join a cluster.
    max_children:
        children per tree node before further tokens share the wildcard branch.
    max_clusters:
        clusters kept; beyond it the least recently matched one is forgotten.
    """

    def __init__(self, depth: int = 4, sim_threshold: float = 0.4, max_children: int = 100,
                 max_clusters: int = 1000):
        if depth < 3:
            raise ValueError("depth must be at least 3")
        self.depth = depth
        self.sim_threshold = sim_threshold
        self.max_children = max_children
        self.max_clusters = max_clusters
        self._clusters: OrderedDict[int, Cluster] = OrderedDict()
        self._root = _Node()
        self._next_id = 1

    # ----------------------------------------------------------------- public

    @property
    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    def add(self, message: str) -> tuple[Cluster, bool]:
        """Mine one (unmasked) message."""
        return self.add_masked(mask(message))

    def add_masked(self, masked: str) -> tuple[Cluster, bool]:
        tokens = tokenize(masked)
        path = self._path(tokens)
        leaf = self._leaf(path, create=True)
        best = self._best_match(leaf, tokens)
        if best is None:
            cluster = self._new_cluster(tokens)
            cluster.path = path
            leaf.clusters.append(cluster.id)
            self._evict()
            return cluster, True
        best.tokens = [merge_token(t, m) for t, m in zip(best.tokens, tokens, strict=True)]
        best.size += 1
        self._clusters.move_to_end(best.id)
        return best, False

    def match(self, message: str) -> Cluster | None:
        """The cluster ``message`` belongs to, without learning from it."""
        tokens = tokenize(mask(message))
        leaf = self._leaf(self._path(tokens), create=False)
        return None if leaf is None else self._best_match(leaf, tokens)

    # ----------------------------------------------------------------- tree

    def _path(self, tokens: list[str]) -> list[str]:
        """Tree keys for ``tokens``: their count, then the leading tokens (or the wildcard)."""
        path = [str(len(tokens))]
        node: _Node | None = self._root.children.get(path[0])
        for token in tokens[: self.depth - 2]:
            key = WILDCARD if _HAS_VARIABLE.search(token) else token
            if node is not None and key not in node.children and key != WILDCARD \
                    and len(node.children) + (WILDCARD not in node.children) > self.max_children:
                key = WILDCARD
            path.append(key)
            node = None if node is None else node.children.get(key)
        return path

    def _leaf(self, path: list[str], create: bool) -> _Node | None:
        node = self._root
        for key in path:
            child = node.children.get(key)
            if child is None:
                if not create:
                    return None
                child = node.children[key] = _Node()
            node = child
        return node

    def _best_match(self, leaf: _Node, tokens: list[str]) -> Cluster | None:
        best, best_key = None, (-1.0, -1)
        for cid in leaf.clusters:
            cluster = self._clusters.get(cid)
            if cluster is None:
                continue
            sim, params = self._similarity(cluster.tokens, tokens)
            if (sim, params) > best_key:
                best, best_key = cluster, (sim, params)
        if best is not None and best_key[0] >= self.sim_threshold:
            return best
        return None

    @staticmethod
    def _similarity(template: list[str], tokens: list[str]) -> tuple[float, int]:
        if not tokens:
            return 1.0, 0
        same = params = 0
        for t, m in zip(template, tokens, strict=True):
            if t == WILDCARD:
                params += 1
            elif token_matches(t, m):
                same += 1
            elif shape(t) != shape(m):
                return -1.0, 0
        return same / len(tokens), params

    def _new_cluster(self, tokens: list[str]) -> Cluster:
        cluster = Cluster(self._next_id, list(tokens), 1)
        self._next_id += 1
        self._clusters[cluster.id] = cluster
        return cluster

    def _evict(self) -> None:
        while len(self._clusters) > self.max_clusters:
            self._clusters.popitem(last=False)  # leaves keep stale ids; _best_match skips them

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "config": {"depth": self.depth, "sim_threshold": self.sim_threshold,
                       "max_children": self.max_children, "max_clusters": self.max_clusters},
            "next_id": self._next_id,
            "clusters": [{"id": c.id, "tokens": c.tokens, "size": c.size, "path": c.path}
                         for c in self._clusters.values()],
        }

    @classmethod
    def from_dict(cls, state: dict, **overrides) -> Drain:
        """Rebuild a miner from ``to_dict()`` output; the tree is rebuilt from the templates."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported template state version {state.get('version')!r}")
        drain = cls(**{**state["config"], **overrides})
        for item in state["clusters"]:
            tokens = [str(t) for t in item["tokens"]]
            path = [str(k) for k in item.get("path") or drain._path(tokens)]
            cluster = Cluster(int(item["id"]), tokens, int(item["size"]), path)
            drain._clusters[cluster.id] = cluster
            drain._leaf(path, create=True).clusters.append(cluster.id)
        drain._next_id = max(int(state["next_id"]), max(drain._clusters, default=0) + 1)
        drain._evict()
        return drain


def mine(messages: Iterable[str], **config) -> list[int]:
    """Cluster id of every message, mined in order with one fresh ``Drain(**config)``."""
    drain = Drain(**config)
    return [drain.add(m)[0].id for m in messages]
