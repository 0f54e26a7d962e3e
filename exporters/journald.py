"""``boxwatch-exporter journald``: the systemd journal as metrics.

A background thread follows the journal through systemd-python (``systemd.journal.Reader``) and
keeps counters: entries per unit and priority, entries per mined log template, never-seen templates,
GPU Xid events and entries it could not use. ``collect()`` only copies them, so a scrape never waits
on the journal.

Where reading starts: at the first start from the end of the journal (or from its start with
``--journal.from-start``); from then on from the cursor saved in ``--state.directory``. The cursor is
saved in one file together with the counters and the template miners' state (written to a temporary
file and renamed over the old one), so the saved counters always cover exactly the entries before the
saved cursor: after a restart the counters continue where they were and no entry is counted twice
or skipped. After a crash the counters fall back to the last save and the entries after it are read
again, so the totals stay exact.

``/metrics`` serves the counters as of the last save, rendered once right after it
(``exporters.exposition``): a counter is published only once the state that covers it is on disk,
so a crash at any moment (a burst between two saves included) never makes a restarted exporter
publish a lower value than before, which Prometheus would read as a reset and ``increase()`` would
count twice. Counters therefore trail the journal by up to ``--state.save-interval`` (1 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from boxwatch.backoff import Backoff
from boxwatch.files import atomic_write
from boxwatch.log import kv
from exporters.drain import Drain
from exporters.exposition import Part, Prepared, Rendered, families_of
from exporters.server import Source, add_collector_flag
from exporters.xid import parse_xid

log = logging.getLogger("boxwatch.journald")

# One configuration for every unit and every log; bench/loghub.py measures exactly this one.
MINER_CONFIG = {"depth": 4, "sim_threshold": 0.4, "max_children": 100}

PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
DEFAULT_PRIORITY = 6  # info, as journalctl shows entries without PRIORITY
INVALID_REASONS = ("binary_message", "missing_message", "missing_priority", "bad_priority", "too_long")
OTHER = "other"
STATE_FILE = "state.json"
STATE_VERSION = 1
MAX_XID_SERIES = 256
MAX_TEMPLATE_LABEL = 300
_SESSION_SCOPE = re.compile(r"\.scope$")


def new_miner(max_clusters: int = 1000) -> Drain:
    """The template miner the exporter runs for each unit (and the Loghub bench measures)."""
    return Drain(max_clusters=max_clusters, **MINER_CONFIG)


# --------------------------------------------------------------------------- flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--journal.directory", dest="journal_directory", type=Path, metavar="DIR",
                       help="read the journal files in this directory (and the files that appear there "
                            "later); default: the system journal")
    where.add_argument("--journal.files", dest="journal_files", type=Path, nargs="+", metavar="FILE",
                       help="read exactly these journal files (a fixed set: use --journal.directory to "
                            "follow rotation)")
    parser.add_argument("--journal.from-start", dest="journal_from_start", action="store_true",
                        help="when there is no saved cursor yet, read the journal from its first entry "
                             "(backfill) instead of from its end")
    parser.add_argument("--journal.max-units", dest="max_units", type=int, metavar="N", default=200,
                        help="units with their own series; entries of further units count as unit=\"other\" "
                             "(default: %(default)s)")
    parser.add_argument("--state.directory", dest="state_directory", type=Path, metavar="DIR",
                        default=Path(os.environ.get("BOXWATCH_JOURNALD_STATE", ".boxwatch/journald")),
                        help="where the cursor, counters and templates are kept (default: %(default)s, or "
                             "$BOXWATCH_JOURNALD_STATE)")
    parser.add_argument("--state.save-interval", dest="save_interval", type=float, metavar="SECONDS", default=1.0,
                        help="seconds between state saves while entries arrive; 0 saves after every batch. "
                             "/metrics serves the counters as of the last save, so they trail the journal "
                             "by up to this long (default: %(default)s)")
    parser.add_argument("--templates.max-per-unit", dest="templates_max_per_unit", type=int, metavar="N", default=50,
                        help="template series per unit; entries of further templates count as "
                             "template_id=\"other\" (default: %(default)s)")
    parser.add_argument("--templates.max-clusters", dest="templates_max_clusters", type=int, metavar="N", default=1000,
                        help="templates the miner remembers per unit, least recently seen forgotten first "
                             "(default: %(default)s)")
    parser.add_argument("--templates.max-line-length", dest="max_line_length", type=int, metavar="N", default=2048,
                        help="characters of a message mined; longer ones are cut and counted as "
                             "invalid reason=\"too_long\" (default: %(default)s)")
    add_collector_flag(parser, "templates", "mine log templates per unit")


def create(args: argparse.Namespace) -> Source:
    for flag, value in (("--journal.max-units", args.max_units),
                        ("--templates.max-per-unit", args.templates_max_per_unit),
                        ("--templates.max-clusters", args.templates_max_clusters),
                        ("--templates.max-line-length", args.max_line_length)):
        if value < 1:
            raise SystemExit(f"{flag}: must be at least 1, got {value}")
    try:
        from systemd import journal  # noqa: F401 - checked here so a missing binding fails at start
    except ImportError as err:
        raise SystemExit(f"the journald exporter needs systemd-python (pip install 'boxwatch[journald]'): {err}") from err
    store = StateStore(args.state_directory)
    state = JournalState(
        max_units=args.max_units,
        templates_max_per_unit=args.templates_max_per_unit,
        templates_max_clusters=args.templates_max_clusters,
        max_line_length=args.max_line_length,
        mine_templates=args.collector_templates,
    )
    saved = store.load()
    if saved is not None:
        try:
            state.restore(saved)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            store.discard(f"unusable content: {err!r}")
            state = JournalState(**state.settings())
    follower = JournalFollower(
        state, store,
        directory=args.journal_directory,
        files=args.journal_files,
        from_start=args.journal_from_start,
        save_interval=args.save_interval,
    )
    collector = JournalCollector(state, follower)
    follower.start()
    return Source({"journal": collector}, close=follower.stop)


# --------------------------------------------------------------------------- state


class StateStore:
    """The state file in ``--state.directory``, written atomically (temporary file, fsync, rename)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / STATE_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(f"--state.directory {directory}: cannot create it: {err}") from err
        if not os.access(directory, os.W_OK):
            raise SystemExit(f"--state.directory {directory}: not writable")

    def load(self) -> dict | None:
        """The saved state, or None. A file that cannot be used is moved aside and logged."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = json.loads(text)
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise ValueError(f"key 'version': expected {STATE_VERSION}, got "
                                 f"{state.get('version') if isinstance(state, dict) else type(state).__name__!r}")
            return state
        except ValueError as err:
            self.discard(str(err))
            return None

    def discard(self, reason: str) -> None:
        """Move an unusable state file aside (kept for inspection) and say so."""
        aside = self.path.with_name(f"{STATE_FILE}.invalid-{int(time.time())}")
        os.replace(self.path, aside)
        log.error("unusable state file moved aside; starting without it",
                  extra=kv(file=str(self.path), moved_to=str(aside), error=reason))

    def save(self, state: dict) -> None:
        atomic_write(self.path, json.dumps(state, separators=(",", ":")))


@dataclass
class Entry:
    """What the exporter uses of one journal entry."""

    unit: str
    priority: int
    message: str | None
    timestamp: float | None
    cursor: str
    kernel: bool
    invalid: tuple[str, ...] = ()


def unit_of(fields: dict) -> str:
    """The unit an entry is counted under: ``kernel`` for kernel messages, else its systemd unit,
    else its syslog identifier or command. Scopes (login sessions, containers) carry an id in their
    name, so their entries count under the program that wrote them."""
    if fields.get("_TRANSPORT") == "kernel":
        return "kernel"
    unit = _text(fields.get("_SYSTEMD_UNIT"))
    if unit and not _SESSION_SCOPE.search(unit):
        return unit
    for key in ("SYSLOG_IDENTIFIER", "_COMM"):
        value = _text(fields.get(key))
        if value:
            return value
    return unit or "unknown"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None:
        return None
    return str(value)


def parse_entry(fields: dict, max_line_length: int) -> Entry:
    """Reduce a ``Reader`` entry to an ``Entry``; problems are listed in ``invalid``, never raised."""
    invalid: list[str] = []
    raw_priority = fields.get("PRIORITY")
    if raw_priority is None:
        invalid.append("missing_priority")
        priority = DEFAULT_PRIORITY
    elif isinstance(raw_priority, int) and 0 <= raw_priority <= 7:
        priority = raw_priority
    else:
        invalid.append("bad_priority")
        priority = DEFAULT_PRIORITY
    message = fields.get("MESSAGE")
    if message is None:
        invalid.append("missing_message")
    elif isinstance(message, bytes):
        invalid.append("binary_message")
        message = None
    elif isinstance(message, list):  # a field given more than once
        message = next((m for m in message if isinstance(m, str)), None)
        if message is None:
            invalid.append("binary_message")
    if message is not None and len(message) > max_line_length:
        invalid.append("too_long")
        message = message[:max_line_length]
    realtime = fields.get("__REALTIME_TIMESTAMP")
    timestamp = realtime.timestamp() if hasattr(realtime, "timestamp") else None
    return Entry(
        unit=unit_of(fields),
        priority=priority,
        message=message,
        timestamp=timestamp,
        cursor=str(fields["__CURSOR"]),
        kernel=fields.get("_TRANSPORT") == "kernel" or fields.get("SYSLOG_IDENTIFIER") == "kernel",
        invalid=tuple(invalid),
    )


@dataclass(frozen=True)
class JournalLimits:
    """What a ``JournalState`` keeps at most: units, template series per unit, clusters per miner, line length."""

    mine_templates: bool = True
    max_units: int = 200
    templates_max_per_unit: int = 50
    templates_max_clusters: int = 1000
    max_line_length: int = 2048


class JournalState:
    """Counters, template miners and the cursor of the last entry counted, under one lock.

    Keyword arguments are the fields of :class:`JournalLimits`.
    """

    def __init__(self, **limits):
        self.limits = JournalLimits(**limits)
        self.lock = threading.Lock()
        self.cursor: str | None = None
        self.started = False  # a first start happened (so an empty journal then means: read from head)
        self.entries: Counter[tuple[str, str]] = Counter()
        self.template_entries: Counter[tuple[str, str]] = Counter()
        self.new_templates: Counter[str] = Counter()
        self.xid: Counter[tuple[str, str]] = Counter()
        self.invalid: Counter[str] = Counter(dict.fromkeys(INVALID_REASONS, 0))
        self.units: set[str] = set()
        self.miners: dict[str, Drain] = {}
        self.exported: dict[str, list[int]] = {}  # unit -> template ids with their own series
        self.last_timestamp: float | None = None
        self.last_lag: float | None = None
        self.dirty = False

    def settings(self) -> dict:
        return dataclasses.asdict(self.limits)

    # ----------------------------------------------------------------- counting

    def add(self, fields: dict) -> None:
        entry = parse_entry(fields, self.limits.max_line_length)
        with self.lock:
            self._count(entry)

    def _count(self, entry: Entry) -> None:
        unit = self._unit_label(entry.unit)
        self.entries[(unit, PRIORITIES[entry.priority])] += 1
        for reason in entry.invalid:
            self.invalid[reason] += 1
        if entry.message is not None:
            if self.limits.mine_templates:
                self._mine(unit, entry.message)
            if entry.kernel:
                self._count_xid(entry.message)
        if entry.timestamp is not None:
            self.last_timestamp = entry.timestamp
            self.last_lag = max(0.0, time.time() - entry.timestamp)
        self.cursor = entry.cursor
        self.dirty = True

    def _unit_label(self, unit: str) -> str:
        if unit in self.units:
            return unit
        if len(self.units) < self.limits.max_units:
            self.units.add(unit)
            return unit
        return OTHER

    def _mine(self, unit: str, message: str) -> None:
        if unit == OTHER:
            self.template_entries[(OTHER, OTHER)] += 1
            return
        miner = self.miners.get(unit)
        if miner is None:
            miner = self.miners[unit] = new_miner(self.limits.templates_max_clusters)
        cluster, is_new = miner.add(message)
        if is_new:
            self.new_templates[unit] += 1
        exported = self.exported.setdefault(unit, [])
        if cluster.id not in exported and is_new and len(exported) < self.limits.templates_max_per_unit:
            exported.append(cluster.id)
        template_id = str(cluster.id) if cluster.id in exported else OTHER
        self.template_entries[(unit, template_id)] += 1

    def _count_xid(self, message: str) -> None:
        event = parse_xid(message)
        if event is None:
            return
        key = (event.pci_bus_id, str(event.xid))
        if key not in self.xid and len(self.xid) >= MAX_XID_SERIES:
            key = (OTHER, str(event.xid))
        self.xid[key] += 1

    # ----------------------------------------------------------------- reading for a scrape

    def snapshot(self) -> dict:
        with self.lock:
            return self.view()

    def view(self) -> dict:
        """Copies of the counters, for the exposition (call with ``lock`` held)."""
        templates = {}
        for unit, ids in self.exported.items():
            miner = self.miners.get(unit)
            known = {c.id: c.template for c in miner.clusters} if miner else {}
            templates[unit] = {i: known[i] for i in ids if i in known}
        return {
            "entries": dict(self.entries),
            "template_entries": dict(self.template_entries),
            "templates": templates,
            "template_counts": {u: len(m.clusters) for u, m in self.miners.items()},
            "new_templates": dict(self.new_templates),
            "xid": dict(self.xid),
            "invalid": dict(self.invalid),
            "last_timestamp": self.last_timestamp,
            "last_lag": self.last_lag,
        }

    # ----------------------------------------------------------------- persistence

    def dump(self) -> dict:
        """Everything a restart needs, consistent with ``cursor`` (call with ``lock`` held)."""
        return {
            "version": STATE_VERSION,
            "cursor": self.cursor,
            "started": True,
            "saved_at": time.time(),
            "entries": [[u, p, n] for (u, p), n in sorted(self.entries.items())],
            "template_entries": [[u, t, n] for (u, t), n in sorted(self.template_entries.items())],
            "new_templates": dict(sorted(self.new_templates.items())),
            "xid": [[pci, x, n] for (pci, x), n in sorted(self.xid.items())],
            "invalid": dict(sorted(self.invalid.items())),
            "units": sorted(self.units),
            "exported": self.exported,
            "miners": {u: m.to_dict() for u, m in sorted(self.miners.items())},
            "last_timestamp": self.last_timestamp,
        }

    def restore(self, state: dict) -> None:
        self.cursor = state.get("cursor")
        self.started = bool(state.get("started"))
        self.entries = Counter({(u, p): int(n) for u, p, n in state.get("entries", [])})
        self.template_entries = Counter({(u, t): int(n) for u, t, n in state.get("template_entries", [])})
        self.new_templates = Counter({u: int(n) for u, n in state.get("new_templates", {}).items()})
        self.xid = Counter({(pci, x): int(n) for pci, x, n in state.get("xid", [])})
        self.invalid.update({r: int(n) for r, n in state.get("invalid", {}).items()})
        self.units = set(state.get("units", []))
        self.exported = {u: [int(i) for i in ids] for u, ids in state.get("exported", {}).items()}
        self.miners = {u: Drain.from_dict(m, max_clusters=self.limits.templates_max_clusters)
                       for u, m in state.get("miners", {}).items()}
        self.last_timestamp = state.get("last_timestamp")


# --------------------------------------------------------------------------- reading the journal


class JournalFollower:
    """The background thread that reads the journal into a ``JournalState`` and saves it."""

    BATCH = 500

    def __init__(self, state: JournalState, store: StateStore, directory: Path | None = None,
                 files: list[Path] | None = None, from_start: bool = False, save_interval: float = 10.0):
        self.state = state
        self.store = store
        self.directory = directory
        self.files = files
        self.from_start = from_start
        self.save_interval = save_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-follower", daemon=True)
        self._last_save = 0.0
        self.up = False
        self.opens = 0
        self.read_errors = 0
        self.save_errors = 0
        self.last_save_timestamp: float | None = None
        self.on_save: list = []  # called with the state's view() after each successful save

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.save(force=True)

    # ----------------------------------------------------------------- loop

    def _run(self) -> None:
        backoff = Backoff(maximum=30.0, initial=0.5)
        while not self._stop.is_set():
            try:
                reader = self._open()
            except Exception as err:  # logged and counted; the loop retries with backoff
                self._failed("cannot open the journal", err)
                self._stop.wait(backoff.next_delay())
                continue
            try:
                backoff.reset()
                self._follow(reader)
            except Exception as err:  # logged and counted; the loop reopens with backoff
                self._failed("journal read failed; reopening", err)
                self._stop.wait(backoff.next_delay())
            finally:
                self.up = False
                reader.close()

    def _failed(self, message: str, err: Exception) -> None:
        self.read_errors += 1
        self.up = False
        log.error(message, exc_info=not isinstance(err, OSError),
                  extra=kv(directory=self.directory, files=self.files, error=err))

    def _open(self):
        from systemd import journal

        if self.directory is not None:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"--journal.directory {self.directory}: not a directory")
            reader = journal.Reader(path=str(self.directory))
        elif self.files:
            reader = journal.Reader(files=[str(f) for f in self.files])
        else:
            reader = journal.Reader()
        self.opens += 1
        self._position(reader)
        self.up = True
        log.info("following the journal", extra=kv(directory=self.directory, files=self.files,
                                                    cursor=self.state.cursor is not None))
        return reader

    def _position(self, reader) -> None:
        """Put ``reader`` just after the last entry counted (see the module docstring)."""
        with self.state.lock:
            cursor, started = self.state.cursor, self.state.started
        if cursor is not None:
            reader.seek_cursor(cursor)
            entry = reader.get_next()
            if entry and not reader.test_cursor(cursor):
                # the saved entry is gone (vacuumed): this one is the first not yet counted
                reader.get_previous()
            return
        if self.from_start or started:
            reader.seek_head()
            return
        reader.seek_tail()
        last = reader.get_previous()
        if not last:  # an empty journal: everything that arrives is new
            reader.seek_head()
        with self.state.lock:
            self.state.started = True
            self.state.cursor = last.get("__CURSOR") if last else None
            self.state.dirty = True
        self.save(force=True)

    def _follow(self, reader) -> None:
        from systemd import journal

        while not self._stop.is_set():
            count = 0
            while count < self.BATCH:
                fields = reader.get_next()
                if not fields:
                    break
                self.state.add(fields)
                count += 1
            if count:
                self.save()
                continue
            self.save()
            event = reader.wait(1.0)
            if event == journal.INVALIDATE:
                log.debug("journal files changed")

    # ----------------------------------------------------------------- saving

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < self.save_interval:
            return
        with self.state.lock:
            if not self.state.dirty and not force:
                return
            data = self.state.dump()
            view = self.state.view()
            self.state.dirty = False
        try:
            self.store.save(data)
        except OSError as err:
            self.save_errors += 1
            with self.state.lock:
                self.state.dirty = True
            log.error("cannot save state", extra=kv(file=str(self.store.path), error=err))
            return
        self._last_save = now
        self.last_save_timestamp = time.time()
        for publish in self.on_save:
            publish(view)


# --------------------------------------------------------------------------- metrics


class JournalCollector:
    """Counters as of the last save (rendered once per save) and the reader's live status."""

    def __init__(self, state: JournalState, follower: JournalFollower):
        self._state = state
        self._follower = follower
        self.prepared = Prepared()
        follower.on_save.append(self.prepare)
        self.prepare(state.snapshot())  # the restored state: what the last run saved

    def describe(self) -> list[Metric]:
        return []

    def prepare(self, snap: dict) -> Rendered:
        return self.prepared.publish(self._state_families(snap), snap)

    def collect(self) -> Iterable[Metric]:
        return families_of(self.parts())

    def parts(self) -> Iterable[Part]:
        yield self.prepared.current
        yield from self._follower_families()

    @staticmethod
    def _state_families(snap: dict) -> Iterable[Metric]:
        yield from _counter("boxwatch_journal_entries", "Journal entries read, by unit and priority.",
                            ["unit", "priority"], snap["entries"])
        yield from _counter("boxwatch_journal_template_entries",
                            "Journal entries by mined log template (template_id=\"other\": beyond the cap).",
                            ["unit", "template_id"], snap["template_entries"])
        info = GaugeMetricFamily("boxwatch_journal_template_info",
                                 "The text of each log template with its own series (placeholders such as "
                                 "<NUM>, <IP>, <*> mark the variable parts).",
                                 labels=["unit", "template_id", "template"])
        for unit in sorted(snap["templates"]):
            for template_id, template in sorted(snap["templates"][unit].items()):
                info.add_metric([unit, str(template_id), template[:MAX_TEMPLATE_LABEL]], 1)
        yield info
        yield from _counter("boxwatch_journal_new_templates",
                            "Log templates never seen before (per unit), since the state was created.",
                            ["unit"], {(u,): n for u, n in snap["new_templates"].items()})
        known = GaugeMetricFamily("boxwatch_journal_templates", "Log templates the miner knows per unit.",
                                  labels=["unit"])
        for unit, n in sorted(snap["template_counts"].items()):
            known.add_metric([unit], n)
        yield known
        yield from _counter("boxwatch_gpu_xid_errors", "NVIDIA Xid events from kernel NVRM: Xid lines.",
                            ["pci_bus_id", "xid"], snap["xid"])
        yield from _counter("boxwatch_journal_invalid_entries",
                            "Journal entries with a problem (binary or missing MESSAGE, missing or bad "
                            "PRIORITY, message cut before mining); they are still counted.",
                            ["reason"], {(r,): n for r, n in snap["invalid"].items()})
        if snap["last_timestamp"] is not None:
            yield GaugeMetricFamily("boxwatch_journal_last_entry_timestamp_seconds",
                                    "Realtime timestamp of the last journal entry read.",
                                    value=snap["last_timestamp"])
        if snap["last_lag"] is not None:
            yield GaugeMetricFamily("boxwatch_journal_lag_seconds",
                                    "How long after it was written the last entry was read.",
                                    value=snap["last_lag"])

    def _follower_families(self) -> Iterable[Metric]:
        follower = self._follower
        yield GaugeMetricFamily("boxwatch_journal_reader_up", "1 while the journal is open and followed.",
                                value=1.0 if follower.up else 0.0)
        yield CounterMetricFamily("boxwatch_journal_opens", "Times the journal was opened (1 + reopens).",
                                  value=follower.opens)
        yield CounterMetricFamily("boxwatch_journal_read_errors",
                                  "Failures opening or reading the journal (each is followed by a reopen).",
                                  value=follower.read_errors)
        yield CounterMetricFamily("boxwatch_journal_state_save_errors",
                                  "Failures writing the state file.", value=follower.save_errors)
        if follower.last_save_timestamp is not None:
            yield GaugeMetricFamily("boxwatch_journal_state_last_save_timestamp_seconds",
                                    "When the cursor, counters and templates were last saved.",
                                    value=follower.last_save_timestamp)


def _counter(name: str, documentation: str, labels: list[str], values: dict) -> Iterable[Metric]:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    yield family
