"""Structured logs, one event per line to stderr, and the ``--log.*`` flags of every boxwatch CLI.

One style everywhere: ``log.info("message", extra=kv(key=value, ...))``; the formatter writes the
fields after the message, as logfmt (``ts=... level=... logger=... msg="..." key=value``) or JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

LEVELS = ["debug", "info", "warn", "error"]
FORMATS = ["logfmt", "json"]


def kv(**fields: object) -> dict:
    """``log.info("msg", extra=kv(gpu=0))`` attaches key=value pairs to a log line."""
    return {"fields": fields}


def _record_fields(record: logging.LogRecord, formatter: logging.Formatter, ts: object) -> dict:
    fields = {"ts": ts, "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
    fields.update(getattr(record, "fields", {}))
    if record.exc_info:
        fields["error"] = formatter.formatException(record.exc_info).splitlines()[-1]
    return fields


class LogfmtFormatter(logging.Formatter):
    """One event per line: ``ts=... level=... logger=... msg="..." key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return " ".join(f"{k}={logfmt_value(v)}" for k, v in _record_fields(record, self, ts).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same keys as :class:`LogfmtFormatter` (``ts`` in unix seconds)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record, self, record.created), default=str)


def logfmt_value(value: object) -> str:
    """``value`` as logfmt writes it: bare when it has no space, ``=``, quote or newline; quoted otherwise."""
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Structured logs to stderr. ``level`` is one of debug, info, warn, error; ``fmt`` logfmt or json."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level.lower(), level.upper()))


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log.level`` and ``--log.format``, as the Prometheus exporters have them."""
    parser.add_argument("--log.level", dest="log_level", default="info", choices=LEVELS,
                        help="only log messages with this severity or above (default: %(default)s)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=FORMATS,
                        help="output format of log messages (default: %(default)s)")

