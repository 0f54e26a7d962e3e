"""Exposition rendered ahead of scrapes: a scrape serves bytes, it does not build metric families.

A source's background thread (the Docker poller, the NVML poller, the journal follower) publishes
what it read as a :class:`Rendered`: metric families rendered once per exposition format a scrape
has asked for (Prometheus text, OpenMetrics) and once more deflated for ``gzip``. Many scrapes then
share those bytes, so a scrape costs the same for 10 containers or 200.

What changes with the clock rather than with the source (the age of a snapshot) is a
:class:`ClockGauge`: rendered once per snapshot with its label sets, the values filled in at
scrape time. Counters kept apart from the snapshot that grow with the source (events per
container) are :class:`Rows`: a row is rendered again only when its values change. Anything else
a collector yields per scrape (small families of fixed size: error counters) is a plain
``Metric``, rendered by prometheus_client at scrape time.

A response is the concatenation of its parts. With ``gzip``, each cached part carries its own
deflate stream ending on a byte boundary (``Z_SYNC_FLUSH``), so the parts join into one standard
gzip member with the CRC of the whole; no part is compressed twice.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted

_EOF = b"# EOF\n"
# What a scrape compresses itself (stats ages, small counters) is compressed fast rather than small.
PER_SCRAPE_LEVEL = 1
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, OS unknown
_FINAL_BLOCK = b"\x03\x00"  # an empty last deflate block: what a fresh compressor's Z_FINISH writes


@dataclass(frozen=True)
class Format:
    """One exposition format as negotiated from an ``Accept`` header."""

    content_type: str
    encoder: Callable

    @property
    def openmetrics(self) -> bool:
        return self.content_type.startswith("application/openmetrics-text")

    def encode(self, families: Sequence[Metric]) -> bytes:
        """The families in this format, without OpenMetrics' ``# EOF`` (added once per response)."""
        if not families:
            return b""
        body = self.encoder(_Families(families))
        return body[: -len(_EOF)] if self.openmetrics and body.endswith(_EOF) else body


class _Families:
    """What prometheus_client's encoders take: an object with ``collect()``."""

    def __init__(self, families: Sequence[Metric]):
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


_FORMATS: dict[str, Format] = {}
_FORMATS_LOCK = threading.Lock()


def negotiate(accept: str | None) -> Format:
    """The format prometheus_client would answer ``accept`` with (one shared object per format)."""
    encoder, content_type = choose_encoder(accept or "")
    found = _FORMATS.get(content_type)
    if found is None:
        with _FORMATS_LOCK:
            found = _FORMATS.setdefault(content_type, Format(content_type, encoder))
    return found


TEXT = negotiate("text/plain")


def _deflate(data: bytes, level: int = 6) -> bytes:
    """Raw deflate of ``data`` ending on a byte boundary, to be followed by more deflate data."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class Rendered:
    """Metric families rendered on demand per format (and deflated), each at most once.

    ``source`` is what the families were made from (a snapshot); ``extra`` are the clock gauges of
    that source, published with it so that a scrape never mixes two snapshots.
    """

    def __init__(self, families: Iterable[Metric], source: object = None, extra: Sequence[ClockGauge] = ()):
        self._families = tuple(families)
        self.source = source
        self.extra = tuple(extra)
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._lock = threading.Lock()

    @property
    def families(self) -> tuple[Metric, ...]:
        return self._families

    def body(self, fmt: Format) -> bytes:
        return self._get(fmt, False)

    def deflated(self, fmt: Format) -> bytes:
        return self._get(fmt, True)

    def _get(self, fmt: Format, deflated: bool) -> bytes:
        key = (fmt.content_type, deflated)
        found = self._bodies.get(key)
        if found is None:
            plain = self.body(fmt) if deflated else b""  # before the lock: body() takes it too
            with self._lock:
                found = self._bodies.get(key)
                if found is None:
                    found = self._deflate(fmt, plain) if deflated else self._render(fmt)
                    self._bodies[key] = found
        return found

    def _render(self, fmt: Format) -> bytes:
        return fmt.encode(self.families)

    def _deflate(self, fmt: Format, plain: bytes) -> bytes:
        return _deflate(plain)


class ClockGauge:
    """A gauge of ``now - t`` per fixed label set, e.g. the age of each container's stats.

    Rendered once per format with placeholder values; a scrape only formats the numbers.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 rows: Sequence[tuple[Sequence[str], float]], clock: Callable[[], float] = time.time):
        self._family = GaugeMetricFamily(name, documentation, labels=list(labels))
        for values, _ in rows:
            self._family.add_metric(list(values), 0.0)
        self._times = [t for _, t in rows]
        self._clock = clock
        self._templates = Rendered([self._family])
        self._split: dict[str, tuple[bytes, list[bytes]]] = {}

    def families(self) -> list[Metric]:
        now = self._clock()
        family = GaugeMetricFamily(self._family.name, self._family.documentation, labels=[])
        for sample, t in zip(self._family.samples, self._times, strict=True):
            family.samples.append(sample._replace(value=max(0.0, now - t)))
        return [family]

    def warm(self, fmt: Format) -> None:
        self._template(fmt)

    def _template(self, fmt: Format) -> tuple[bytes, list[bytes]]:
        found = self._split.get(fmt.content_type)
        if found is None:
            lines = self._templates.body(fmt).splitlines(keepends=True)
            head = b"".join(line for line in lines if line.startswith(b"#"))
            prefixes = [line[: line.rindex(b" ") + 1] for line in lines if not line.startswith(b"#")]
            found = self._split[fmt.content_type] = (head, prefixes)
        return found

    def body(self, fmt: Format) -> bytes:
        """The family with ages at millisecond precision, as of now."""
        if not self._times:
            return b""
        head, prefixes = self._template(fmt)
        now = self._clock()
        return head + b"".join(b"%s%.3f\n" % (prefix, max(0.0, now - t))
                               for prefix, t in zip(prefixes, self._times, strict=True))


class Rows:
    """A family whose samples come in rows of which few change between scrapes (event counts per
    container name): each row is rendered once per format and values, a scrape joins their bytes.

    ``family()`` makes the family empty (name, help, type, labels); ``fill(family, key, values)`` adds
    the samples of one row. ``part(version, rows)`` reads ``rows()`` (``(key, values)`` pairs, in
    exposition order) only when ``version`` changed since the last call, and returns the rows as a
    :class:`Rendered` (so that their gzip'd bytes are kept too until the next change).

    Scrapes render without a lock: two that render the same changed row at once both make the same
    bytes, and a row is looked up by its values, so a stale one is never served.
    """

    def __init__(self, family: Callable[[], Metric], fill: Callable[[Metric, Hashable, Any], None]):
        self._family = family
        self._fill = fill
        self._version: object = object()
        self._current = _RowsRendered(self, ())
        self._heads: dict[str, tuple[bytes, bytes]] = {}  # format -> (HELP and TYPE lines, the same deflated)
        # (format, key) -> (values, (sample lines, the same deflated))
        self._lines: dict[tuple[str, Hashable], tuple[Any, tuple[bytes, bytes]]] = {}

    def part(self, version: object, rows: Callable[[], Iterable[tuple[Hashable, Any]]]) -> Rendered:
        if version == self._version:
            return self._current
        current = _RowsRendered(self, tuple(rows()))
        self._current, self._version = current, version
        live = {key for key, _ in current.rows}
        for cached in [c for c in list(self._lines) if c[1] not in live]:
            self._lines.pop(cached, None)
        return current

    def family(self, rows: Iterable[tuple[Hashable, Any]]) -> Metric:
        family = self._family()
        for key, values in rows:
            self._fill(family, key, values)
        return family

    def render(self, fmt: Format, rows: Iterable[tuple[Hashable, Any]], deflated: bool = False) -> bytes:
        """The rows in ``fmt``; ``deflated``: as parts of one deflate stream, each row compressed once."""
        head = self._heads.get(fmt.content_type)
        if head is None:
            plain = fmt.encode([self._family()])
            head = self._heads[fmt.content_type] = (plain, _deflate(plain))
        return head[deflated] + b"".join([self._row(fmt, key, values)[deflated] for key, values in rows])

    def _row(self, fmt: Format, key: Hashable, values: Any) -> tuple[bytes, bytes]:
        """(plain, deflated) sample lines of one row."""
        cached = self._lines.get((fmt.content_type, key))
        if cached is not None and cached[0] == values:
            return cached[1]
        lines = b"".join(line for line in fmt.encode([self.family([(key, values)])]).splitlines(keepends=True)
                         if not line.startswith(b"#"))
        both = (lines, _deflate(lines))
        self._lines[(fmt.content_type, key)] = (values, both)
        return both


class _RowsRendered(Rendered):
    """The rows of :class:`Rows` as of one version."""

    def __init__(self, owner: Rows, rows: tuple[tuple[Hashable, Any], ...]):
        super().__init__(())
        self._owner = owner
        self.rows = rows

    @property
    def families(self) -> tuple[Metric, ...]:
        return (self._owner.family(self.rows),)

    def _render(self, fmt: Format) -> bytes:
        return self._owner.render(fmt, self.rows)

    def _deflate(self, fmt: Format, plain: bytes) -> bytes:
        return self._owner.render(fmt, self.rows, deflated=True)


Part = Rendered | ClockGauge | Metric


class Prepared:
    """The latest :class:`Rendered` of one collector, replaced as a whole by its source's thread.

    Rendering happens in ``publish`` for every format (and gzip) scrapes have asked for so far, so
    the next scrape finds its bytes ready; how long that took is ``render_seconds``.
    """

    def __init__(self) -> None:
        self.current: Rendered | None = None
        self.render_seconds: float | None = None
        self._wanted: dict[tuple[str, bool], Format] = {(TEXT.content_type, False): TEXT}
        self._lock = threading.Lock()

    def want(self, fmt: Format, gzip: bool) -> None:
        if (fmt.content_type, gzip) not in self._wanted:
            self._wanted[(fmt.content_type, gzip)] = fmt

    def publish(self, families: Iterable[Metric], source: object = None,
                extra: Sequence[ClockGauge] = ()) -> Rendered:
        """Render ``families`` (and warm ``extra``), then make them the current rendering."""
        with self._lock:
            started = time.perf_counter()
            rendered = Rendered(families, source, extra)
            for (_, gzip), fmt in list(self._wanted.items()):
                rendered.deflated(fmt) if gzip else rendered.body(fmt)
                for gauge in extra:
                    gauge.warm(fmt)
            self.current = rendered
            self.render_seconds = time.perf_counter() - started
            return rendered


def families_of(parts: Iterable[Part]) -> Iterable[Metric]:
    """The metric families behind ``parts`` (for a ``CollectorRegistry``)."""
    for part in parts:
        if isinstance(part, Rendered):
            yield from part.families
        elif isinstance(part, ClockGauge):
            yield from part.families()
        else:
            yield part


def assemble(parts: Iterable[Part], fmt: Format, gzip: bool) -> bytes:
    """One response body from ``parts``: cached bytes where there are, rendered ones elsewhere."""
    pieces: list[tuple[bytes, bytes | None]] = []  # (plain, deflated if cached)
    pending: list[Metric] = []

    def flush_pending() -> None:
        if pending:
            pieces.append((fmt.encode(pending), None))
            pending.clear()

    for part in parts:
        if isinstance(part, Rendered):
            flush_pending()
            pieces.append((part.body(fmt), part.deflated(fmt) if gzip else None))
        elif isinstance(part, ClockGauge):
            flush_pending()
            pieces.append((part.body(fmt), None))
        else:
            pending.append(part)
    flush_pending()
    if fmt.openmetrics:
        pieces.append((_EOF, None))
    if not gzip:
        return b"".join(plain for plain, _ in pieces)
    out, crc, size = [_GZIP_HEADER], 0, 0
    for plain, deflated in pieces:
        crc = zlib.crc32(plain, crc)
        size += len(plain)
        out.append(deflated if deflated is not None else _deflate(plain, PER_SCRAPE_LEVEL))
    out.append(_FINAL_BLOCK)
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


def respond(accept: str | None, accept_encoding: str | None) -> tuple[Format, bool]:
    """The format and whether to gzip, from a request's ``Accept`` and ``Accept-Encoding``."""
    return negotiate(accept), gzip_accepted(accept_encoding or "")
