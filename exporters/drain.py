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

Cost per message does not grow with the number of templates:

- masking runs once per message, word by word through bounded caches (most words recur, and a new
  number masks like a known one: see ``_DIGIT_CLASS``), giving exactly the whole-message result;
- each leaf indexes its templates by (position, token), and a template whose share of equal tokens
  can reach ``sim_threshold`` must equal the message in at least one of any ``n - need + 1``
  positions, so only the templates listed under the message's rarest tokens are compared (the same
  template wins as when comparing all of them: this is exact, not a heuristic);
- template token shapes are kept with the index; a message token's shape is computed at most once;
- a masked message seen before matches the same cluster without a search while its leaf is unchanged.

Every cache is bounded. The persisted state is the same as before the index existed.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
# a word that carries a digit; _mask_word decides whether it is a variable
_DIGIT_WORD = re.compile(r"(?<![^\s=:,(\[\"'#@<>/])[-+]?[\w.\-@]*\d(?:[\w.\-@]*\w)?(?![^\s=:,.)\]\"';>/])")
_VARIABLE_WORD = re.compile(r"^[-+]?\d|\d{4}|[_.\-@]\d|\d[_.\-@]")
_NUMBER = re.compile(r"(?<![A-Za-z\d<])[-+]?\d+(?:\.\d+)?")
_PLACEHOLDER = re.compile(r"<[A-Z]+>|<\*>")
_HAS_VARIABLE = re.compile(r"\d|<[A-Z]+>|<\*>")
_DELIMITER = re.compile(r"[^A-Za-z0-9_]")
_PLACEHOLDER_RUN = re.compile(r"(<[A-Z]+>)(?: \1)+")
_ANY_DIGIT = re.compile(r"\d")


def _mask_word(match: re.Match) -> str:
    word = match.group()
    # ids such as blk_-123, rdd_2_3, 2.6.5-1.358, host names like n219076184117.example.com, sizes
    # like 64k are variables; names with a small trailing number (ssh2, tty2, eth0) are not
    return "<NUM>" if _VARIABLE_WORD.search(word) else word


# One masking step: (substrings one of which a match needs, regex, replacement), in _MASKS' order,
# then words with digits and plain numbers.
_Step = tuple[tuple[str, ...], re.Pattern, str | Callable[[re.Match], str]]
_STEPS: list[_Step] = [(needs, re.compile(pattern), f"<{name}>") for name, needs, pattern in _MASKS] + [
    (("",), _DIGIT_WORD, _mask_word), (("",), _NUMBER, "<NUM>")]


def _apply(steps: Iterable[_Step], text: str) -> str:
    for needs, pattern, replacement in steps:
        for need in needs:
            if need in text:
                text = pattern.sub(replacement, text)
                break
    return text


# Only the DATETIME and SIZE masks can match across a space (and a run of placeholders, collapsed
# last), and each of their matches contains one of these. Every other step matches inside a word,
# and its look-arounds read a space as they read the start or end of a string: without these,
# masking word by word gives exactly the text that masking the whole message gives.
_SPANS_WORDS = re.compile(r"\d:\d\d:\d\d|\d\s?[KMGTP]")
_SPANNING = {"<DATETIME>", "<SIZE>"}
_WORD_CACHE_SIZE = 1 << 16
# The masks tell digits apart only as 0 (``0x``), 1-7 and 8-9 (``[0-7]``, a PCI function): a word
# masks like the word with each digit replaced by its class's first digit, wherever no digit
# is left in the result. So new values of a known kind of word (a port, an IP) are cache hits.
_DIGIT_CLASS = str.maketrans("0123456789", "0111111188")


class _WordMasker:
    """A run of word-local steps, applied to each space-separated word through a bounded cache."""

    def __init__(self, steps: list[_Step]):
        self.steps = steps
        self.cache: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        words = text.split(" ")
        cache = self.cache
        for i, word in enumerate(words):
            masked = cache.get(word)
            words[i] = self._mask_new(word) if masked is None else masked
        return " ".join(words)

    def _mask_new(self, word: str) -> str:
        cache = self.cache
        key = word.translate(_DIGIT_CLASS)
        if key != word:
            masked = cache.get(key)
            if masked is not None and not _ANY_DIGIT.search(masked):
                return masked
        masked = _apply(self.steps, word)
        if len(cache) >= _WORD_CACHE_SIZE:
            cache.clear()
        cache[word if _ANY_DIGIT.search(masked) else key] = masked
        return masked


def _stages() -> list[Callable[[str], str]]:
    """The steps as word maskers between the steps that may span words."""
    stages: list[Callable[[str], str]] = []
    local: list[_Step] = []
    for step in _STEPS:
        if step[2] in _SPANNING:
            if local:
                stages.append(_WordMasker(local))
                local = []
            stages.append(functools.partial(_apply, (step,)))
        else:
            local.append(step)
    return [*stages, _WordMasker(local)] if local else stages


_MASK_WORDS = _WordMasker([step for step in _STEPS if step[2] not in _SPANNING])
_MASK_STAGES = _stages()


def mask(message: str) -> str:
    """``message`` with its variable parts replaced by typed placeholders (``<IP>``, ``<NUM>``, ...)."""
    if _SPANS_WORDS.search(message):
        for stage in _MASK_STAGES:
            message = stage(message)
    else:
        message = _MASK_WORDS(message)
    # a list of values of one kind (``delete blk_1 blk_2 ...``) is one variable, whatever its length
    return _PLACEHOLDER_RUN.sub(r"\1", message) if "> <" in message else message


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
    """One template. ``id`` is stable for the miner's life and across persistence; ``tokens`` are
    the miner's to change (its index of the leaf follows them)."""

    id: int
    tokens: list[str]
    size: int = 0
    path: list[str] = field(default_factory=list)  # tree keys of its leaf, kept for persistence

    @property
    def template(self) -> str:
        return " ".join(self.tokens)


_MEMO_SIZE = 1 << 16


def _memo(function: Callable[..., str]) -> Callable[..., str]:
    """``function`` with its results kept, up to ``_MEMO_SIZE`` (then forgotten all at once)."""
    results: dict = {}

    def memoised(*args):
        result = results.get(args)
        if result is None:
            if len(results) >= _MEMO_SIZE:
                results.clear()
            result = results[args] = function(*args)
        return result

    return functools.wraps(function)(memoised)


@_memo
def _delimited_head(token: str) -> str:
    """What comes before the first wildcard in ``token``, cut after its last delimiter."""
    head = token[:token.index(WILDCARD)]
    cut = max((m.end() for m in _DELIMITER.finditer(head)), default=0)
    return head[:cut]


@_memo
def _delimited_prefixes(token: str) -> tuple[str, ...]:
    return ("", *(token[:m.end()] for m in _DELIMITER.finditer(token)))


@_memo
def _route_key(token: str) -> str:
    """A token's key in the tree: itself, or the wildcard for a token that carries a variable."""
    return WILDCARD if _HAS_VARIABLE.search(token) else token


_merged = _memo(merge_token)


class _Leaf:
    """The clusters of one tree leaf (messages of one token count) and an index of their tokens.

    ``exact[i]`` maps a token to the ids of the clusters whose template has exactly that token at
    position ``i``. Tokens with a wildcard inside (``rhost=<*>``, ``[<*>]``) are in ``partial[i]``
    under their constant head cut after its last delimiter (``rhost=``, ``[``): a message token that
    one of them matches starts with that, so it finds them by looking up its own prefixes that end
    at a delimiter. A token that is only a wildcard is not indexed: it never counts as equal."""

    __slots__ = ("order", "wildcards", "shapes", "exact", "partial", "version", "_next")

    def __init__(self, length: int):
        self.order: dict[int, int] = {}  # id -> rank in the leaf: on a tie the older cluster wins
        self.wildcards: dict[int, int] = {}  # id -> number of wildcard-only tokens
        self.shapes: dict[int, list[str]] = {}  # id -> shape of each template token
        self.exact: list[dict[str, set[int]]] = [{} for _ in range(length)]
        # position -> delimited head -> token -> ids
        self.partial: list[dict[str, dict[str, set[int]]]] = [{} for _ in range(length)]
        self.version = 0  # changes whenever a cluster comes, goes or changes its template
        self._next = 0

    def add(self, cluster: Cluster) -> None:
        self.version += 1
        self.order[cluster.id] = self._next
        self._next += 1
        self.wildcards[cluster.id] = cluster.tokens.count(WILDCARD)
        self.shapes[cluster.id] = [shape(t) for t in cluster.tokens]
        for i, token in enumerate(cluster.tokens):
            self._index(i, token, cluster.id)

    def remove(self, cluster: Cluster) -> None:
        if self.order.pop(cluster.id, None) is None:
            return
        self.version += 1
        del self.wildcards[cluster.id], self.shapes[cluster.id]
        for i, token in enumerate(cluster.tokens):
            self._unindex(i, token, cluster.id)

    def retoken(self, cluster: Cluster, tokens: list[str]) -> None:
        """Give ``cluster`` the template ``tokens`` (of the same length), keeping its rank."""
        self.version += 1
        shapes = self.shapes[cluster.id]
        for i, (old, new) in enumerate(zip(cluster.tokens, tokens, strict=True)):
            if old != new:
                self._unindex(i, old, cluster.id)
                self._index(i, new, cluster.id)
                shapes[i] = shape(new)
        cluster.tokens = tokens
        self.wildcards[cluster.id] = tokens.count(WILDCARD)

    def _table(self, i: int, token: str) -> dict[str, set[int]]:
        if WILDCARD not in token:
            return self.exact[i]
        return self.partial[i].setdefault(_delimited_head(token), {})

    def _index(self, i: int, token: str, cid: int) -> None:
        if token != WILDCARD:
            self._table(i, token).setdefault(token, set()).add(cid)

    def _unindex(self, i: int, token: str, cid: int) -> None:
        if token == WILDCARD:
            return
        table = self._table(i, token)
        ids = table[token]
        ids.discard(cid)
        if not ids:
            del table[token]
            if not table and WILDCARD in token:
                del self.partial[i][_delimited_head(token)]

    def _matching(self, i: int, token: str) -> list[set[int]]:
        """The id sets of the clusters whose template token at ``i`` matches ``token``."""
        found = self.exact[i].get(token)
        groups = [found] if found else []
        partial = self.partial[i]
        if partial:
            for head in _delimited_prefixes(token):
                table = partial.get(head)
                if table:
                    groups.extend(ids for t, ids in table.items() if token_matches(t, token))
        return groups

    def candidates(self, tokens: list[str], probes: int) -> set[int]:
        """Every cluster that matches ``tokens`` in at least one of the ``probes`` positions where
        the fewest clusters do: with ``probes = n - need + 1``, every cluster that matches in
        ``need`` positions."""
        hits = []
        for i, token in enumerate(tokens):
            groups = self._matching(i, token)
            hits.append((sum(len(g) for g in groups), i, groups))
        hits.sort()
        found: set[int] = set()
        for _, _, groups in hits[:probes]:
            for ids in groups:
                found |= ids
        return found


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    leaf: _Leaf | None = None


# Below this many clusters in a leaf, comparing with each is cheaper than looking up the index.
_SCAN_ALL = 4
# Masked messages a miner remembers the cluster of (see Drain._recent).
_RECENT_SIZE = 1024


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
        self._need: dict[int, int | None] = {}  # token count -> equal tokens needed to join
        # masked message -> (its leaf, the leaf's version, its cluster), for a message that left
        # its leaf as it was: until the leaf changes, the message matches that cluster again and
        # leaves it as it is (a leaf's best match depends on its clusters' templates only)
        self._recent: dict[str, tuple[_Leaf, int, Cluster]] = {}

    # ----------------------------------------------------------------- public

    @property
    def clusters(self) -> list[Cluster]:
        return list(self._clusters.values())

    def add(self, message: str) -> tuple[Cluster, bool]:
        """Mine one (unmasked) message."""
        return self.add_masked(mask(message))

    def add_masked(self, masked: str) -> tuple[Cluster, bool]:
        recent = self._recent.get(masked)
        if recent is not None and recent[0].version == recent[1]:
            best = recent[2]
        else:
            tokens = tokenize(masked)
            path = self._path(tokens)
            leaf = self._leaf(path, create=True)
            best = self._best_match(leaf, tokens)
            if best is None:
                cluster = self._new_cluster(tokens)
                cluster.path = path
                leaf.add(cluster)
                self._evict()
                return cluster, True
            merged = self._merge(best.tokens, tokens)
            if merged != best.tokens:
                leaf.retoken(best, merged)
            else:
                if len(self._recent) >= _RECENT_SIZE:
                    self._recent.clear()
                self._recent[masked] = (leaf, leaf.version, best)
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
            key = _route_key(token)
            if node is not None and key not in node.children and key != WILDCARD \
                    and len(node.children) + (WILDCARD not in node.children) > self.max_children:
                key = WILDCARD
            path.append(key)
            node = None if node is None else node.children.get(key)
        return path

    def _leaf(self, path: list[str], create: bool) -> _Leaf | None:
        node = self._root
        for key in path:
            child = node.children.get(key)
            if child is None:
                if not create:
                    return None
                child = node.children[key] = _Node()
            node = child
        if node.leaf is None and create:
            node.leaf = _Leaf(int(path[0]))
        return node.leaf

    def _needed(self, length: int) -> int | None:
        """Fewest equal tokens that make a message of ``length`` tokens join a cluster (None: none do)."""
        if length not in self._need:
            if length == 0:  # an empty message is equal to the empty template
                self._need[length] = 0 if self.sim_threshold <= 1.0 else None
            else:
                self._need[length] = next((s for s in range(length + 1) if s / length >= self.sim_threshold), None)
        return self._need[length]

    def _best_match(self, leaf: _Leaf, tokens: list[str]) -> Cluster | None:
        """The cluster with the most equal tokens (then the most wildcards, then the oldest), if it
        reaches ``sim_threshold``; a cluster that differs from ``tokens`` in a token of another
        shape never matches."""
        need = self._needed(len(tokens))
        if need is None or not leaf.order:
            return None
        if need == 0 or len(leaf.order) <= _SCAN_ALL:
            ids: Iterable[int] = leaf.order
        else:
            ids = leaf.candidates(tokens, len(tokens) - need + 1)
        best, best_key = None, (need, -1, 0)  # beaten by any cluster with `need` equal tokens
        line_shapes: list[str | None] = [None] * len(tokens)
        for cid in ids:
            cluster = self._clusters[cid]
            wildcards = leaf.wildcards[cid]
            if cluster.tokens == tokens:
                same = len(tokens) - wildcards
            else:
                same = self._equal_tokens(cluster.tokens, leaf.shapes[cid], tokens, line_shapes)
            key = (same, wildcards, -leaf.order[cid])
            if key > best_key:
                best, best_key = cluster, key
        return best

    @staticmethod
    def _merge(template: list[str], tokens: list[str]) -> list[str]:
        if template == tokens:
            return template
        return [t if t == m or (t == WILDCARD and WILDCARD not in m) else _merged(t, m)
                for t, m in zip(template, tokens, strict=True)]

    @staticmethod
    def _equal_tokens(template: list[str], shapes: list[str], tokens: list[str],
                      line_shapes: list[str | None]) -> int:
        """Tokens of ``tokens`` that ``template`` matches (wildcard-only tokens not counted), or -1
        when a differing token has another shape than the template's."""
        same = 0
        for i, t in enumerate(template):
            if t == WILDCARD:
                continue
            m = tokens[i]
            if t == m or (WILDCARD in t and _token_pattern(t).match(m) is not None):
                same += 1
                continue
            token_shape = line_shapes[i]
            if token_shape is None:
                token_shape = line_shapes[i] = shape(m)
            if shapes[i] != token_shape:
                return -1
        return same

    def _new_cluster(self, tokens: list[str]) -> Cluster:
        cluster = Cluster(self._next_id, list(tokens), 1)
        self._next_id += 1
        self._clusters[cluster.id] = cluster
        return cluster

    def _evict(self) -> None:
        while len(self._clusters) > self.max_clusters:
            _, cluster = self._clusters.popitem(last=False)
            leaf = self._leaf(cluster.path, create=False)
            if leaf is not None:
                leaf.remove(cluster)

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
        """Rebuild a miner from ``to_dict()`` output; the tree and its index are rebuilt from the templates."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported template state version {state.get('version')!r}")
        drain = cls(**{**state["config"], **overrides})
        for item in state["clusters"]:
            tokens = [str(t) for t in item["tokens"]]
            path = [str(k) for k in item.get("path") or ()]
            if not path or path[0] != str(len(tokens)):
                path = drain._path(tokens)
            cluster = Cluster(int(item["id"]), tokens, int(item["size"]), path)
            if cluster.id in drain._clusters:
                raise ValueError(f"template state: cluster id {cluster.id} appears twice")
            drain._clusters[cluster.id] = cluster
            drain._leaf(path, create=True).add(cluster)
        drain._next_id = max(int(state["next_id"]), max(drain._clusters, default=0) + 1)
        drain._evict()
        return drain


def mine(messages: Iterable[str], **config) -> list[int]:
    """Cluster id of every message, mined in order with one fresh ``Drain(**config)``."""
    drain = Drain(**config)
    return [drain.add(m)[0].id for m in messages]
