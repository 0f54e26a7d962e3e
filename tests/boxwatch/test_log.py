"""boxwatch.log: one structured line per event, the same keys in logfmt and JSON, shared flags."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

import pytest

from boxwatch.log import JsonFormatter, LogfmtFormatter, add_log_flags, kv


def _record(msg: str, exc: bool = False, **fields: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise OSError("disk full")
        except OSError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("boxwatch.test", logging.WARNING, __file__, 1, msg, (), exc_info)
    record.__dict__.update(kv(**fields))
    return record


def test_logfmt_quotes_only_values_that_need_it():
    line = LogfmtFormatter().format(_record("cannot read", gpu=0, path="/a b", empty="", eq="a=b"))
    ts, rest = line.split(" ", 1)
    assert ts.startswith("ts=") and ts.endswith("Z")
    assert rest == 'level=warning logger=boxwatch.test msg="cannot read" gpu=0 path="/a b" empty="" eq="a=b"'


def test_json_has_the_same_keys_and_the_exception_as_error():
    entry = json.loads(JsonFormatter().format(_record("write failed", exc=True, file="x")))
    assert list(entry) == ["ts", "level", "logger", "msg", "file", "error"]
    assert entry["level"] == "warning" and entry["msg"] == "write failed" and entry["file"] == "x"
    assert entry["error"] == "OSError: disk full"
    assert isinstance(entry["ts"], float)


def test_log_flags_defaults_and_choices():
    parser = argparse.ArgumentParser()
    add_log_flags(parser)
    args = parser.parse_args([])
    assert (args.log_level, args.log_format) == ("info", "logfmt")
    assert parser.parse_args(["--log.level", "warn", "--log.format", "json"]).log_level == "warn"
    with pytest.raises(SystemExit):
        parser.parse_args(["--log.level", "verbose"])


@pytest.mark.parametrize(("cli", "argv"), [
    ("exporters.cli", ["gpu", "--log.level", "warn", "--log.format", "json"]),
    ("detector.cli", ["validate-config", "--log.level", "warn", "--log.format", "json"]),
    ("stack.cli", ["--log.level", "warn", "--log.format", "json", "status"]),
])
def test_every_cli_takes_the_same_log_flags(cli, argv):
    args = importlib.import_module(cli).build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == ("warn", "json")
